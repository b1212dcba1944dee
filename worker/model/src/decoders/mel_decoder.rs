//! Latent -> log-mel decoders. The denoiser works on a latent `[B, C, T]`; a decoder turns it
//! into the natural-log mel spectrogram `[B, n_mels, frames]` that the vocoders take.

use crate::decoders::mel::MelConfig;
use crate::{ModelError, Result};
use tch::nn::{self, Module};
use tch::Tensor;

/// The decoder a pack declares (`[decoder]` in `model.toml`, tagged by `kind`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DecoderConfig {
    /// The latent is the normalised log-mel: `log_mel = latent * scale + shift`.
    Identity {
        #[serde(default = "one")]
        scale: f64,
        #[serde(default)]
        shift: f64,
    },
    /// A small 1-D convolutional VAE decoder.
    ConvVae(ConvVaeConfig),
}

fn one() -> f64 {
    1.0
}

impl Default for DecoderConfig {
    fn default() -> Self {
        Self::Identity {
            scale: 1.0,
            shift: 0.0,
        }
    }
}

/// `conv_in` (latent -> channels[0]), then per stage `up.N`: nearest upsampling by
/// `upsample_factors[N]`, a conv to `channels[N + 1]` (or the last width), SiLU and a residual
/// block; then `conv_out` to `n_mels`. Frames = latent length * product(upsample_factors).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct ConvVaeConfig {
    pub latent_channels: usize,
    /// Widths: `channels[0]` after `conv_in`, `channels[N + 1]` after stage N (the last width
    /// repeats when there are fewer).
    pub channels: Vec<usize>,
    pub upsample_factors: Vec<usize>,
}

impl Default for ConvVaeConfig {
    fn default() -> Self {
        Self {
            latent_channels: 8,
            channels: vec![256, 128, 128],
            upsample_factors: vec![2, 2],
        }
    }
}

pub trait Decoder: Send + Sync {
    /// `latent [B, C, T]` -> `log_mel [B, n_mels, frames]`.
    fn decode(&self, latent: &Tensor) -> Result<Tensor>;
}

/// Builds the decoder; its weights (if any) are variables under `vs_path`, which the caller loads
/// from the pack's `decoder.safetensors`.
pub fn build(cfg: &DecoderConfig, vs_path: nn::Path, mel: &MelConfig) -> Result<Box<dyn Decoder>> {
    match cfg {
        DecoderConfig::Identity { scale, shift } => Ok(Box::new(Identity {
            n_mels: mel.n_mels as i64,
            scale: *scale,
            shift: *shift,
        })),
        DecoderConfig::ConvVae(c) => Ok(Box::new(ConvVae::new(&vs_path, c, mel.n_mels)?)),
    }
}

fn check_latent(latent: &Tensor, channels: i64) -> Result<()> {
    if latent.dim() != 3 || latent.size()[1] != channels {
        return Err(ModelError::Input(format!(
            "decoder expects a latent [batch, {channels}, frames], got {:?}",
            latent.size()
        )));
    }
    Ok(())
}

struct Identity {
    n_mels: i64,
    scale: f64,
    shift: f64,
}

impl Decoder for Identity {
    fn decode(&self, latent: &Tensor) -> Result<Tensor> {
        check_latent(latent, self.n_mels)?;
        Ok(latent * self.scale + self.shift)
    }
}

fn conv3(p: nn::Path, c_in: usize, c_out: usize) -> nn::Conv1D {
    let cfg = nn::ConvConfig {
        padding: 1,
        ..Default::default()
    };
    nn::conv1d(p, c_in as i64, c_out as i64, 3, cfg)
}

struct Stage {
    factor: i64,
    conv: nn::Conv1D,
    res1: nn::Conv1D,
    res2: nn::Conv1D,
}

/// libtorch tensors are `Send` but not `Sync`; the mutex makes the module shareable (decoding is
/// one call at a time per model anyway).
struct ConvVae(std::sync::Mutex<Net>);

struct Net {
    latent_channels: i64,
    conv_in: nn::Conv1D,
    stages: Vec<Stage>,
    conv_out: nn::Conv1D,
}

impl ConvVae {
    fn new(p: &nn::Path, cfg: &ConvVaeConfig, n_mels: usize) -> Result<Self> {
        Ok(Self(std::sync::Mutex::new(Net::new(p, cfg, n_mels)?)))
    }
}

impl Net {
    fn new(p: &nn::Path, cfg: &ConvVaeConfig, n_mels: usize) -> Result<Self> {
        if cfg.latent_channels == 0 || cfg.channels.is_empty() || cfg.channels.contains(&0) {
            return Err(ModelError::Input(
                "conv_vae decoder needs latent_channels and non-empty, positive channels".into(),
            ));
        }
        if cfg.upsample_factors.contains(&0) {
            return Err(ModelError::Input(
                "conv_vae upsample factors must be >= 1".into(),
            ));
        }
        let width = |i: usize| cfg.channels[i.min(cfg.channels.len() - 1)];
        let stages = cfg
            .upsample_factors
            .iter()
            .enumerate()
            .map(|(i, &f)| {
                let q = p / "up" / i;
                let (c_in, c_out) = (width(i), width(i + 1));
                Stage {
                    factor: f as i64,
                    conv: conv3(&q / "conv", c_in, c_out),
                    res1: conv3(&q / "res" / "conv1", c_out, c_out),
                    res2: conv3(&q / "res" / "conv2", c_out, c_out),
                }
            })
            .collect();
        Ok(Self {
            latent_channels: cfg.latent_channels as i64,
            conv_in: conv3(p / "conv_in", cfg.latent_channels, width(0)),
            stages,
            conv_out: conv3(p / "conv_out", width(cfg.upsample_factors.len()), n_mels),
        })
    }
}

impl Decoder for ConvVae {
    fn decode(&self, latent: &Tensor) -> Result<Tensor> {
        let net = self
            .0
            .lock()
            .map_err(|_| ModelError::Input("decoder poisoned by an earlier panic".into()))?;
        net.forward(latent)
    }
}

impl Net {
    fn forward(&self, latent: &Tensor) -> Result<Tensor> {
        check_latent(latent, self.latent_channels)?;
        let _g = tch::no_grad_guard();
        let mut x = self.conv_in.forward(latent);
        for s in &self.stages {
            if s.factor > 1 {
                let t = x.size()[2];
                x = x.upsample_nearest1d([t * s.factor], None);
            }
            x = s.conv.forward(&x).silu();
            x = &x + s.res2.forward(&s.res1.forward(&x).silu());
        }
        Ok(self.conv_out.forward(&x.silu()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn identity_and_conv_vae_shapes() {
        let mel = MelConfig::default();
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg: DecoderConfig = toml::from_str("kind = \"identity\"\nscale = 2.0").unwrap();
        let d = build(&cfg, vs.root() / "decoder", &mel).unwrap();
        let z = Tensor::ones([1, 64, 5], (Kind::Float, Device::Cpu));
        assert_eq!(d.decode(&z).unwrap().double_value(&[0, 0, 0]), 2.0);
        assert!(d
            .decode(&Tensor::ones([1, 8, 5], (Kind::Float, Device::Cpu)))
            .is_err());

        let cfg: DecoderConfig =
            toml::from_str("kind = \"conv_vae\"\nchannels = [16, 8]\nupsample_factors = [2, 3]")
                .unwrap();
        let d = build(&cfg, vs.root() / "vae", &mel).unwrap();
        let z = Tensor::randn([2, 8, 5], (Kind::Float, Device::Cpu));
        assert_eq!(d.decode(&z).unwrap().size(), vec![2, 64, 30]);
        let names: Vec<String> = vs.variables().into_keys().collect();
        assert!(
            names.contains(&"vae.up.1.res.conv2.weight".to_string()),
            "{names:?}"
        );
    }
}
