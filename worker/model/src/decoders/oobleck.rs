//! The Oobleck waveform VAE of Stable Audio (diffusers' `AutoencoderOobleck`): latents `[B, C, T]`
//! decode to audio `[B, channels, T * hop]` and audio encodes to a diagonal Gaussian over latents.
//!
//! Weights use diffusers' names (`decoder.conv1`, `decoder.block.N.{snake1,conv_t1,res_unitK}`,
//! `decoder.snake1`, `decoder.conv2`; the encoder mirrors them). Convolutions are weight-normalised
//! and stored unfused (`weight_g`, `weight_v`); they are fused once at load with torch's own
//! `_weight_norm` (the norm over every dim but 0, which for a transposed convolution is its input
//! channel). Snake's log-scale `alpha`/`beta` are exponentiated at load too.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::weights::source::{read_json, TensorSource};
use crate::{ModelError, Result};

/// Latent frames the VAE decodes at once (about 12 s of SAO audio; a 47 s clip of SAO 1.0
/// decoded whole peaks at ~1 GB per activation), each window with the decoder's receptive
/// radius of context on both sides so that the audio equals the whole decode.
pub const DECODE_CHUNK_FRAMES: i64 = 256;

/// `vae/config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OobleckConfig {
    pub encoder_hidden_size: i64,
    pub downsampling_ratios: Vec<i64>,
    pub channel_multiples: Vec<i64>,
    pub decoder_channels: i64,
    pub decoder_input_channels: i64,
    pub audio_channels: i64,
    pub sampling_rate: i64,
}

impl OobleckConfig {
    /// Stable Audio Open 1.0 and Small (diffusers' defaults).
    pub fn stable_audio_open() -> Self {
        Self {
            encoder_hidden_size: 128,
            downsampling_ratios: vec![2, 4, 4, 8, 8],
            channel_multiples: vec![1, 2, 4, 8, 16],
            decoder_channels: 128,
            decoder_input_channels: 64,
            audio_channels: 2,
            sampling_rate: 44100,
        }
    }

    /// Audio samples per latent frame.
    pub fn hop_length(&self) -> i64 {
        self.downsampling_ratios.iter().product()
    }

    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ModelError::Input(format!("oobleck vae: {m}")));
        if self.downsampling_ratios.is_empty()
            || self.downsampling_ratios.len() != self.channel_multiples.len()
        {
            return bad("downsampling_ratios and channel_multiples must be non-empty and as long as each other".into());
        }
        if let Some(s) = self
            .downsampling_ratios
            .iter()
            .find(|&&s| s < 2 || s % 2 != 0)
        {
            return bad(format!(
                "downsampling ratio {s} is not supported (even ratios only: odd ones change the length)"
            ));
        }
        let dims = [
            self.encoder_hidden_size,
            self.decoder_channels,
            self.decoder_input_channels,
            self.audio_channels,
            self.sampling_rate,
        ];
        if dims.iter().chain(&self.channel_multiples).any(|&d| d <= 0) {
            return bad("sizes and channel multiples must be positive".into());
        }
        Ok(())
    }
}

/// `Snake1d` with log-scale parameters: `x + 1/(e^β + 1e-9) · sin²(e^α · x)`.
#[derive(Debug)]
struct Snake {
    alpha: Tensor,
    inv_beta: Tensor,
}

impl Snake {
    fn load(src: &mut TensorSource, p: &str, c: i64) -> Result<Self> {
        let alpha = src.take(&format!("{p}.alpha"), &[1, c, 1])?.exp();
        let beta = src.take(&format!("{p}.beta"), &[1, c, 1])?.exp();
        Ok(Self {
            alpha,
            inv_beta: (beta + 1e-9).reciprocal(),
        })
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        // One temporary, updated in place, rather than one per op: Snake is memory-bound, and at
        // the decoder's last blocks (`[1, 128, 2^19..2^21]` f32, 0.25-1 GB a tensor) each extra
        // temporary is a fresh allocation to fault in and a full pass over memory; on CPU the
        // out-of-place form cost about as much as the dilated convolution after it. Same ops in
        // the same order: the result is bit-identical.
        let mut t = &self.alpha * x;
        let _ = t.sin_();
        let _ = t.square_();
        let _ = t.g_mul_(&self.inv_beta);
        let _ = t.g_add_(x);
        t
    }
}

/// A weight-normalised `Conv1d` or `ConvTranspose1d`, fused.
#[derive(Debug)]
struct Conv {
    weight: Tensor,
    bias: Option<Tensor>,
    stride: i64,
    padding: i64,
    dilation: i64,
    transposed: bool,
}

struct ConvSpec {
    cin: i64,
    cout: i64,
    k: i64,
    stride: i64,
    padding: i64,
    dilation: i64,
    bias: bool,
    transposed: bool,
}

impl ConvSpec {
    fn plain(cin: i64, cout: i64, k: i64, padding: i64) -> Self {
        Self {
            cin,
            cout,
            k,
            stride: 1,
            padding,
            dilation: 1,
            bias: true,
            transposed: false,
        }
    }
}

impl Conv {
    fn load(src: &mut TensorSource, p: &str, s: ConvSpec) -> Result<Self> {
        // Conv1d weights are [out, in, k]; ConvTranspose1d weights are [in, out, k].
        let shape = if s.transposed {
            [s.cin, s.cout, s.k]
        } else {
            [s.cout, s.cin, s.k]
        };
        let v = src.take(&format!("{p}.weight_v"), &shape)?;
        let g = src.take(&format!("{p}.weight_g"), &[shape[0], 1, 1])?;
        let bias = if s.bias {
            Some(src.take(&format!("{p}.bias"), &[s.cout])?)
        } else {
            None
        };
        Ok(Self {
            weight: Tensor::internal_weight_norm(&v, &g, 0),
            bias,
            stride: s.stride,
            padding: s.padding,
            dilation: s.dilation,
            transposed: s.transposed,
        })
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        if self.transposed {
            x.conv_transpose1d(
                &self.weight,
                self.bias.as_ref(),
                [self.stride],
                [self.padding],
                [0],
                1,
                [self.dilation],
            )
        } else {
            x.conv1d(
                &self.weight,
                self.bias.as_ref(),
                [self.stride],
                [self.padding],
                [self.dilation],
                1,
            )
        }
    }
}

/// `OobleckResidualUnit`: `x + conv2(snake2(conv1(snake1(x))))`, conv1 k7 dilated, conv2 k1.
#[derive(Debug)]
struct ResidualUnit {
    snake1: Snake,
    conv1: Conv,
    snake2: Snake,
    conv2: Conv,
}

impl ResidualUnit {
    fn load(src: &mut TensorSource, p: &str, c: i64, dilation: i64) -> Result<Self> {
        Ok(Self {
            snake1: Snake::load(src, &format!("{p}.snake1"), c)?,
            conv1: Conv::load(
                src,
                &format!("{p}.conv1"),
                ConvSpec {
                    dilation,
                    ..ConvSpec::plain(c, c, 7, 3 * dilation)
                },
            )?,
            snake2: Snake::load(src, &format!("{p}.snake2"), c)?,
            conv2: Conv::load(src, &format!("{p}.conv2"), ConvSpec::plain(c, c, 1, 0))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let h = self.conv1.forward(&self.snake1.forward(x));
        let mut y = self.conv2.forward(&self.snake2.forward(&h));
        drop(h);
        // In place: the residual sum needs no tensor of its own (see `Snake::forward`).
        let _ = y.g_add_(x);
        y
    }
}

fn res_units(src: &mut TensorSource, p: &str, c: i64) -> Result<[ResidualUnit; 3]> {
    Ok([
        ResidualUnit::load(src, &format!("{p}.res_unit1"), c, 1)?,
        ResidualUnit::load(src, &format!("{p}.res_unit2"), c, 3)?,
        ResidualUnit::load(src, &format!("{p}.res_unit3"), c, 9)?,
    ])
}

/// A stride-s (transposed) convolution of kernel 2s and padding ceil(s/2).
fn strided(cin: i64, cout: i64, stride: i64, transposed: bool) -> ConvSpec {
    ConvSpec {
        stride,
        transposed,
        ..ConvSpec::plain(cin, cout, 2 * stride, (stride + 1) / 2)
    }
}

#[derive(Debug)]
struct DecoderBlock {
    snake1: Snake,
    conv_t1: Conv,
    res: [ResidualUnit; 3],
}

/// `OobleckDecoder`.
#[derive(Debug)]
pub struct OobleckDecoder {
    conv1: Conv,
    blocks: Vec<DecoderBlock>,
    snake1: Snake,
    conv2: Conv,
}

impl OobleckDecoder {
    /// Takes `decoder.*` from `src`.
    pub fn from_source(cfg: &OobleckConfig, src: &mut TensorSource) -> Result<Self> {
        cfg.validate()?;
        let ch = cfg.decoder_channels;
        let mults: Vec<i64> = std::iter::once(1)
            .chain(cfg.channel_multiples.iter().copied())
            .collect();
        let n = cfg.downsampling_ratios.len();
        let conv1 = Conv::load(
            src,
            "decoder.conv1",
            ConvSpec::plain(cfg.decoder_input_channels, ch * mults[n], 7, 3),
        )?;
        let mut blocks = Vec::with_capacity(n);
        for (i, &stride) in cfg.downsampling_ratios.iter().rev().enumerate() {
            let (cin, cout) = (ch * mults[n - i], ch * mults[n - i - 1]);
            let p = format!("decoder.block.{i}");
            blocks.push(DecoderBlock {
                snake1: Snake::load(src, &format!("{p}.snake1"), cin)?,
                conv_t1: Conv::load(
                    src,
                    &format!("{p}.conv_t1"),
                    strided(cin, cout, stride, true),
                )?,
                res: res_units(src, &p, cout)?,
            });
        }
        Ok(Self {
            conv1,
            blocks,
            snake1: Snake::load(src, "decoder.snake1", ch)?,
            conv2: Conv::load(
                src,
                "decoder.conv2",
                ConvSpec {
                    bias: false,
                    ..ConvSpec::plain(ch, cfg.audio_channels, 7, 3)
                },
            )?,
        })
    }

    /// Latents `[B, C, T]` → audio `[B, channels, T * hop]`.
    pub fn forward(&self, latents: &Tensor) -> Tensor {
        let mut x = self.conv1.forward(latents);
        for b in &self.blocks {
            x = b.conv_t1.forward(&b.snake1.forward(&x));
            for r in &b.res {
                x = r.forward(&x);
            }
        }
        self.conv2.forward(&self.snake1.forward(&x))
    }
}

#[derive(Debug)]
struct EncoderBlock {
    res: [ResidualUnit; 3],
    snake1: Snake,
    conv1: Conv,
}

/// `OobleckEncoder`.
#[derive(Debug)]
pub struct OobleckEncoder {
    conv1: Conv,
    blocks: Vec<EncoderBlock>,
    snake1: Snake,
    conv2: Conv,
}

impl OobleckEncoder {
    /// Takes `encoder.*` from `src`.
    pub fn from_source(cfg: &OobleckConfig, src: &mut TensorSource) -> Result<Self> {
        cfg.validate()?;
        let h = cfg.encoder_hidden_size;
        let mults: Vec<i64> = std::iter::once(1)
            .chain(cfg.channel_multiples.iter().copied())
            .collect();
        let conv1 = Conv::load(
            src,
            "encoder.conv1",
            ConvSpec::plain(cfg.audio_channels, h, 7, 3),
        )?;
        let mut blocks = Vec::new();
        for (i, &stride) in cfg.downsampling_ratios.iter().enumerate() {
            let (cin, cout) = (h * mults[i], h * mults[i + 1]);
            let p = format!("encoder.block.{i}");
            blocks.push(EncoderBlock {
                res: res_units(src, &p, cin)?,
                snake1: Snake::load(src, &format!("{p}.snake1"), cin)?,
                conv1: Conv::load(
                    src,
                    &format!("{p}.conv1"),
                    strided(cin, cout, stride, false),
                )?,
            });
        }
        let d = h * mults[mults.len() - 1];
        Ok(Self {
            conv1,
            blocks,
            snake1: Snake::load(src, "encoder.snake1", d)?,
            conv2: Conv::load(src, "encoder.conv2", ConvSpec::plain(d, h, 3, 1))?,
        })
    }

    /// Audio `[B, channels, S]` → the latent distribution's (mean, std), each `[B, h/2, S / hop]`.
    pub fn forward(&self, audio: &Tensor) -> (Tensor, Tensor) {
        let mut x = self.conv1.forward(audio);
        for b in &self.blocks {
            for r in &b.res {
                x = r.forward(&x);
            }
            x = b.conv1.forward(&b.snake1.forward(&x));
        }
        let x = self.conv2.forward(&self.snake1.forward(&x));
        let parts = x.chunk(2, 1);
        (parts[0].shallow_clone(), parts[1].softplus() + 1e-4)
    }
}

/// `AutoencoderOobleck`: the decoder, and the encoder when loaded with it.
#[derive(Debug)]
pub struct Oobleck {
    cfg: OobleckConfig,
    decoder: OobleckDecoder,
    encoder: Option<OobleckEncoder>,
}

impl Oobleck {
    /// Loads `config.json` and `diffusion_pytorch_model.safetensors` from `dir` (diffusers'
    /// `vae/`). Without `with_encoder` the encoder's weights are checked for presence only.
    pub fn load(dir: &Path, device: Device, kind: Kind, with_encoder: bool) -> Result<Self> {
        let cfg: OobleckConfig = read_json(&dir.join("config.json"), "vae config")?;
        let path = dir.join("diffusion_pytorch_model.safetensors");
        let mut src = TensorSource::read(&path, device, kind)?;
        let model = Self::from_source(&cfg, &mut src, with_encoder)?;
        src.finish()?;
        Ok(model)
    }

    /// Takes the weights from `src`; the caller finishes `src`.
    pub fn from_source(
        cfg: &OobleckConfig,
        src: &mut TensorSource,
        with_encoder: bool,
    ) -> Result<Self> {
        let decoder = OobleckDecoder::from_source(cfg, src)?;
        // The encoder's weights are read (and so checked) either way; kept only if asked for.
        let encoder = OobleckEncoder::from_source(cfg, src)?;
        Ok(Self {
            cfg: cfg.clone(),
            decoder,
            encoder: with_encoder.then_some(encoder),
        })
    }

    pub fn config(&self) -> &OobleckConfig {
        &self.cfg
    }

    /// Latents `[B, C, T]` → audio `[B, channels, T * hop]` (no scaling, no clamp).
    pub fn decode(&self, latents: &Tensor) -> Tensor {
        self.decoder.forward(latents)
    }

    /// How many latent frames on each side an output sample depends on: conv1's 3, then per
    /// block the transposed convolution's (at most 1.5, counted 2) input frames and the residual units' 3·(1+3+9)
    /// samples at the block's rate, then conv2's 3 samples (all converted to latent frames).
    pub fn receptive_radius_frames(&self) -> i64 {
        let mut rate = 1.0;
        let mut r = 3.0;
        for &s in self.cfg.downsampling_ratios.iter().rev() {
            r += 2.0 / rate;
            rate *= s as f64;
            r += 39.0 / rate;
        }
        (r + 3.0 / rate).ceil() as i64
    }

    /// [`Self::decode`] in windows of `chunk` latent frames, each decoded with `overlap` frames of
    /// context on both sides and cropped to its own samples: the peak activations are those of
    /// one window (a 47 s clip of SAO 1.0 decodes whole to ~1 GB per activation). With `overlap`
    /// at least [`Self::receptive_radius_frames`] every sample sees exactly the inputs it sees in
    /// the whole decode, so the result equals it up to float rounding.
    pub fn decode_chunked(&self, latents: &Tensor, chunk: i64, overlap: i64) -> Result<Tensor> {
        if chunk < 1 || overlap < 0 {
            return Err(ModelError::Input(format!(
                "chunked decode needs chunk >= 1 and overlap >= 0, got {chunk} and {overlap}"
            )));
        }
        let t = latents.size()[2];
        if chunk >= t {
            return Ok(self.decode(latents));
        }
        let hop = self.cfg.hop_length();
        let mut parts = Vec::new();
        let mut s = 0;
        while s < t {
            let len = chunk.min(t - s);
            let a = (s - overlap).max(0);
            let e = (s + len + overlap).min(t);
            let audio = self.decode(&latents.narrow(2, a, e - a));
            parts.push(audio.narrow(2, (s - a) * hop, len * hop));
            s += len;
        }
        Ok(Tensor::cat(&parts, 2))
    }

    /// Samples `[start, end)` of [`Self::decode`]'s output (`end` clamped to its length),
    /// decoding only the latent frames they depend on: their own and
    /// [`Self::receptive_radius_frames`] more on each side, in windows of `chunk` as
    /// [`Self::decode_chunked`]. The latent is the model's whole window whatever the asked
    /// duration (47 s for SAO 1.0), so an 11 s clip decodes about a quarter of it; every kept
    /// sample sees exactly the inputs it sees in the whole decode.
    pub fn decode_span(
        &self,
        latents: &Tensor,
        start: i64,
        end: i64,
        chunk: i64,
    ) -> Result<Tensor> {
        let hop = self.cfg.hop_length();
        let t = latents.size()[2];
        let end = end.min(t * hop);
        if start < 0 || start >= end {
            return Err(ModelError::Input(format!(
                "decode span [{start}, {end}) is empty or outside the {t}-frame latent"
            )));
        }
        let r = self.receptive_radius_frames();
        let a = (start / hop - r).max(0);
        let e = ((end + hop - 1) / hop + r).min(t);
        let audio = self.decode_chunked(&latents.narrow(2, a, e - a), chunk, r)?;
        Ok(audio.narrow(2, start - a * hop, end - start))
    }

    /// Audio `[B, channels, S]` → (mean, std) of the latent distribution.
    pub fn encode(&self, audio: &Tensor) -> Result<(Tensor, Tensor)> {
        let enc = self
            .encoder
            .as_ref()
            .ok_or_else(|| ModelError::Input("this vae was loaded without its encoder".into()))?;
        Ok(enc.forward(audio))
    }
}
