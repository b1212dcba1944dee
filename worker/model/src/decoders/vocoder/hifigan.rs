//! HiFi-GAN generator with the layout and checkpoint keys of transformers' `SpeechT5HifiGan`
//! (weight norm folded into plain `weight`s, as its checkpoints store them): `conv_pre`,
//! `upsampler.N` (transposed convs), `resblocks.M.convs1.K` / `convs2.K` (M = stage * kernels +
//! kernel), `conv_post`, and the `mean` / `scale` buffers used when `normalize_before`.

use super::{check_log_mel, lock, Vocoder};
use crate::decoders::mel::MelConfig;
use crate::{ModelError, Result};
use std::sync::Mutex;
use tch::nn::{self, Module};
use tch::Tensor;

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct HifiGanConfig {
    /// Mel bins in; `None` takes the pack's `n_mels`.
    pub model_in_dim: Option<usize>,
    pub upsample_initial_channel: usize,
    /// Their product must equal the mel hop length.
    pub upsample_rates: Vec<usize>,
    pub upsample_kernel_sizes: Vec<usize>,
    pub resblock_kernel_sizes: Vec<usize>,
    pub resblock_dilation_sizes: Vec<Vec<usize>>,
    pub leaky_relu_slope: f64,
    pub normalize_before: bool,
    /// The checkpoint was trained on log10 mels (SpeechT5): convert tutti's natural-log input.
    pub log10_input: bool,
}

impl Default for HifiGanConfig {
    /// transformers' `SpeechT5HifiGanConfig` defaults.
    fn default() -> Self {
        Self {
            model_in_dim: None,
            upsample_initial_channel: 512,
            upsample_rates: vec![4, 4, 4, 4],
            upsample_kernel_sizes: vec![8, 8, 8, 8],
            resblock_kernel_sizes: vec![3, 7, 11],
            resblock_dilation_sizes: vec![vec![1, 3, 5]; 3],
            leaky_relu_slope: 0.1,
            normalize_before: true,
            log10_input: false,
        }
    }
}

struct ResBlock {
    convs1: Vec<nn::Conv1D>,
    convs2: Vec<nn::Conv1D>,
}

struct Net {
    cfg: HifiGanConfig,
    n_mels: usize,
    conv_pre: nn::Conv1D,
    upsampler: Vec<nn::ConvTranspose1D>,
    resblocks: Vec<ResBlock>,
    conv_post: nn::Conv1D,
    mean: Tensor,
    scale: Tensor,
}

pub struct HifiGan(Mutex<Net>);

fn conv(p: nn::Path, c_in: usize, c_out: usize, k: usize, dilation: usize) -> nn::Conv1D {
    let cfg = nn::ConvConfig {
        padding: ((k * dilation - dilation) / 2) as i64,
        dilation: dilation as i64,
        ..Default::default()
    };
    nn::conv1d(p, c_in as i64, c_out as i64, k as i64, cfg)
}

impl HifiGan {
    pub fn new(p: &nn::Path, cfg: &HifiGanConfig, mel: &MelConfig) -> Result<Self> {
        let bad = |m: String| Err(ModelError::Input(format!("hifigan config: {m}")));
        let n_up = cfg.upsample_rates.len();
        if n_up == 0 || cfg.upsample_kernel_sizes.len() != n_up {
            return bad(
                "upsample_rates and upsample_kernel_sizes must be non-empty, same length".into(),
            );
        }
        let kernels = cfg.resblock_kernel_sizes.len();
        if kernels == 0 || cfg.resblock_dilation_sizes.len() != kernels {
            return bad("resblock kernel and dilation lists must be non-empty, same length".into());
        }
        let hop: usize = cfg.upsample_rates.iter().product();
        if hop != mel.hop_length {
            return bad(format!(
                "upsample_rates multiply to {hop}, the mel hop is {}",
                mel.hop_length
            ));
        }
        if cfg.upsample_initial_channel >> n_up == 0 {
            return bad("upsample_initial_channel too small for the number of stages".into());
        }
        let n_mels = cfg.model_in_dim.unwrap_or(mel.n_mels);
        if n_mels != mel.n_mels {
            return bad(format!(
                "model_in_dim {n_mels} differs from n_mels {}",
                mel.n_mels
            ));
        }
        let ch0 = cfg.upsample_initial_channel;
        let conv_pre = conv(p / "conv_pre", n_mels, ch0, 7, 1);
        let mut upsampler = Vec::new();
        let mut resblocks = Vec::new();
        for (i, (&r, &k)) in cfg
            .upsample_rates
            .iter()
            .zip(&cfg.upsample_kernel_sizes)
            .enumerate()
        {
            let (c_in, c_out) = (ch0 >> i, ch0 >> (i + 1));
            let tc = nn::ConvTransposeConfig {
                stride: r as i64,
                padding: (k as i64 - r as i64) / 2,
                ..Default::default()
            };
            upsampler.push(nn::conv_transpose1d(
                p / "upsampler" / i,
                c_in as i64,
                c_out as i64,
                k as i64,
                tc,
            ));
            for (j, (&rk, dil)) in cfg
                .resblock_kernel_sizes
                .iter()
                .zip(&cfg.resblock_dilation_sizes)
                .enumerate()
            {
                let q = p / "resblocks" / (i * kernels + j);
                resblocks.push(ResBlock {
                    convs1: dil
                        .iter()
                        .enumerate()
                        .map(|(n, &d)| conv(&q / "convs1" / n, c_out, c_out, rk, d))
                        .collect(),
                    convs2: (0..dil.len())
                        .map(|n| conv(&q / "convs2" / n, c_out, c_out, rk, 1))
                        .collect(),
                });
            }
        }
        let last = ch0 >> n_up;
        Ok(Self(Mutex::new(Net {
            cfg: cfg.clone(),
            n_mels,
            conv_pre,
            upsampler,
            resblocks,
            conv_post: conv(p / "conv_post", last, 1, 7, 1),
            mean: p.zeros_no_train("mean", &[n_mels as i64]),
            scale: p.ones_no_train("scale", &[n_mels as i64]),
        })))
    }
}

impl Net {
    fn forward(&self, log_mel: &Tensor) -> Tensor {
        let slope = self.cfg.leaky_relu_slope;
        let leaky = |x: &Tensor, s: f64| x.maximum(&(x * s));
        let mut x = if self.cfg.log10_input {
            log_mel / std::f64::consts::LN_10
        } else {
            log_mel.shallow_clone()
        };
        if self.cfg.normalize_before {
            x = (x - self.mean.view([-1, 1])) / self.scale.view([-1, 1]);
        }
        let mut h = self.conv_pre.forward(&x);
        let kernels = self.cfg.resblock_kernel_sizes.len();
        for (i, up) in self.upsampler.iter().enumerate() {
            h = up.forward(&leaky(&h, slope));
            let mut acc: Option<Tensor> = None;
            for rb in &self.resblocks[i * kernels..(i + 1) * kernels] {
                let mut r = h.shallow_clone();
                for (c1, c2) in rb.convs1.iter().zip(&rb.convs2) {
                    let y = c2.forward(&leaky(&c1.forward(&leaky(&r, slope)), slope));
                    r = y + &r;
                }
                acc = Some(match acc {
                    Some(a) => a + r,
                    None => r,
                });
            }
            h = acc.unwrap_or(h) / kernels as f64;
        }
        // transformers applies the final leaky ReLU with torch's default slope (0.01).
        self.conv_post
            .forward(&leaky(&h, 0.01))
            .tanh()
            .squeeze_dim(1)
    }
}

impl Vocoder for HifiGan {
    /// Returns `frames * hop_length` samples.
    fn vocode(&self, log_mel: &Tensor) -> Result<Tensor> {
        let net = lock(&self.0)?;
        check_log_mel(log_mel, net.n_mels)?;
        let _g = tch::no_grad_guard();
        Ok(net.forward(log_mel))
    }
}
