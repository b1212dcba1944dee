//! Vocos (Siuzdak 2023): a ConvNeXt backbone over the mel frames and a head that predicts the
//! log magnitude and phase of an STFT, inverted with an iSTFT. Checkpoint keys as the original
//! `vocos` package: `backbone.embed`, `backbone.norm`, `backbone.convnext.N.{dwconv, norm,
//! pwconv1, pwconv2, gamma}`, `backbone.final_layer_norm`, `head.out`, `head.istft.window`.
//! The head's STFT uses the mel's `n_fft` and `hop_length` (window = `n_fft`).

use super::{check_log_mel, lock, Vocoder};
use crate::decoders::mel::MelConfig;
use crate::{ModelError, Result};
use std::sync::Mutex;
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

/// How the head's iSTFT trims its frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IstftPadding {
    /// Vocos' default: `frames * hop` samples, `(n_fft - hop) / 2` trimmed at each end.
    Same,
    /// `torch.istft(center=True)`: `(frames - 1) * hop` samples.
    Center,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct VocosConfig {
    /// Mel bins in; `None` takes the pack's `n_mels`.
    pub input_channels: Option<usize>,
    pub dim: usize,
    pub intermediate_dim: usize,
    pub num_layers: usize,
    pub layer_norm_eps: f64,
    pub padding: IstftPadding,
}

impl Default for VocosConfig {
    /// The published `charactr/vocos-mel-24khz` backbone.
    fn default() -> Self {
        Self {
            input_channels: None,
            dim: 512,
            intermediate_dim: 1536,
            num_layers: 8,
            layer_norm_eps: 1e-6,
            padding: IstftPadding::Same,
        }
    }
}

struct Block {
    dwconv: nn::Conv1D,
    norm: nn::LayerNorm,
    pwconv1: nn::Linear,
    pwconv2: nn::Linear,
    gamma: Tensor,
}

struct Net {
    n_mels: usize,
    n_fft: i64,
    hop: i64,
    padding: IstftPadding,
    embed: nn::Conv1D,
    norm: nn::LayerNorm,
    blocks: Vec<Block>,
    final_norm: nn::LayerNorm,
    out: nn::Linear,
    window: Tensor,
}

pub struct Vocos(Mutex<Net>);

impl Vocos {
    pub fn new(p: &nn::Path, cfg: &VocosConfig, mel: &MelConfig) -> Result<Self> {
        let n_mels = cfg.input_channels.unwrap_or(mel.n_mels);
        if n_mels != mel.n_mels || cfg.dim == 0 || cfg.intermediate_dim == 0 {
            return Err(ModelError::Input(format!(
                "vocos config: input_channels {n_mels} must equal n_mels {}, dims positive",
                mel.n_mels
            )));
        }
        let (dim, inter) = (cfg.dim as i64, cfg.intermediate_dim as i64);
        let ln = |q: nn::Path| {
            let c = nn::LayerNormConfig {
                eps: cfg.layer_norm_eps,
                ..Default::default()
            };
            nn::layer_norm(q, vec![dim], c)
        };
        let k7 = |groups: i64| nn::ConvConfig {
            padding: 3,
            groups,
            ..Default::default()
        };
        let b = p / "backbone";
        let blocks = (0..cfg.num_layers)
            .map(|i| {
                let q = &b / "convnext" / i;
                Block {
                    dwconv: nn::conv1d(&q / "dwconv", dim, dim, 7, k7(dim)),
                    norm: ln(&q / "norm"),
                    pwconv1: nn::linear(&q / "pwconv1", dim, inter, Default::default()),
                    pwconv2: nn::linear(&q / "pwconv2", inter, dim, Default::default()),
                    gamma: q.var(
                        "gamma",
                        &[dim],
                        nn::Init::Const(1.0 / cfg.num_layers as f64),
                    ),
                }
            })
            .collect();
        let n_fft = mel.n_fft as i64;
        let h = p / "head";
        let mut window = (&h / "istft").zeros_no_train("window", &[n_fft]);
        tch::no_grad(|| {
            window.f_copy_(&Tensor::hann_window_periodic(
                n_fft,
                true,
                (Kind::Float, window.device()),
            ))
        })?;
        Ok(Self(Mutex::new(Net {
            n_mels,
            n_fft,
            hop: mel.hop_length as i64,
            padding: cfg.padding,
            embed: nn::conv1d(&b / "embed", n_mels as i64, dim, 7, k7(1)),
            norm: ln(&b / "norm"),
            blocks,
            final_norm: ln(&b / "final_layer_norm"),
            out: nn::linear(&h / "out", dim, n_fft + 2, Default::default()),
            window,
        })))
    }
}

impl Net {
    fn forward(&self, log_mel: &Tensor) -> Result<Tensor> {
        let channels_last =
            |x: &Tensor, ln: &nn::LayerNorm| ln.forward(&x.transpose(1, 2)).transpose(1, 2);
        let mut x = channels_last(&self.embed.forward(log_mel), &self.norm);
        for b in &self.blocks {
            let y = b.dwconv.forward(&x).transpose(1, 2);
            let y = b
                .pwconv2
                .forward(&b.pwconv1.forward(&b.norm.forward(&y)).gelu("none"));
            x = &x + (y * &b.gamma).transpose(1, 2);
        }
        let x = self.final_norm.forward(&x.transpose(1, 2));
        let spec = self.out.forward(&x).transpose(1, 2);
        let parts = spec.chunk(2, 1);
        let mag = parts[0].exp().clamp_max(1e2);
        let s = Tensor::polar(&mag, &parts[1]);
        self.istft(&s)
    }

    fn istft(&self, s: &Tensor) -> Result<Tensor> {
        let frames = s.size()[2];
        match self.padding {
            IstftPadding::Center => Ok(s.f_istft(
                self.n_fft,
                self.hop,
                self.n_fft,
                Some(&self.window),
                true,
                false,
                true,
                (frames - 1) * self.hop,
                false,
            )?),
            IstftPadding::Same => istft_same(s, &self.window, self.n_fft, self.hop),
        }
    }
}

/// Vocos' "same" iSTFT: windowed inverse FFT per frame, overlap-added at hop spacing (a transposed
/// conv with an identity kernel), normalised by the window envelope, `(n_fft - hop) / 2` trimmed
/// at each end: `frames * hop` samples from complex `[B, n_fft/2 + 1, frames]`.
fn istft_same(s: &Tensor, window: &Tensor, n: i64, hop: i64) -> Result<Tensor> {
    let frames = s.size()[2];
    let pad = (n - hop) / 2;
    let frames_td = s.f_fft_irfft(n, 1, "backward")? * window.view([1, -1, 1]);
    let eye = Tensor::eye(n, (frames_td.kind(), frames_td.device())).view([n, 1, n]);
    let ola = |x: &Tensor| x.f_conv_transpose1d(&eye, None::<Tensor>, [hop], [0], [0], 1, [1]);
    let y = ola(&frames_td)?.squeeze_dim(1);
    let env = ola(&window
        .square()
        .view([1, -1, 1])
        .expand([1, n, frames], false))?
    .view([-1]);
    let len = y.size()[1];
    let y = y.narrow(1, pad, len - 2 * pad);
    let env = env.narrow(0, pad, len - 2 * pad);
    if env.min().double_value(&[]) <= 1e-11 {
        return Err(ModelError::Input(
            "vocos istft: the window envelope has zeros".into(),
        ));
    }
    Ok(y / env)
}

impl Vocoder for Vocos {
    /// Returns `frames * hop_length` samples (`same`) or `(frames - 1) * hop_length` (`center`).
    fn vocode(&self, log_mel: &Tensor) -> Result<Tensor> {
        let net = lock(&self.0)?;
        check_log_mel(log_mel, net.n_mels)?;
        let _g = tch::no_grad_guard();
        net.forward(&log_mel.to_kind(Kind::Float))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn istft_same_inverts_a_same_padded_stft() {
        let (n, hop) = (64i64, 16i64);
        let window = Tensor::hann_window_periodic(n, true, (Kind::Float, Device::Cpu));
        let x = Tensor::randn([2, 40 * hop], (Kind::Float, Device::Cpu));
        // Vocos' analysis for "same": pad (n - hop) / 2 both sides, frames at hop spacing.
        let pad = (n - hop) / 2;
        let xp = x
            .unsqueeze(1)
            .pad([pad, pad], "reflect", None)
            .squeeze_dim(1);
        let spec = xp.stft(n, hop, n, Some(&window), false, true, true, false);
        let frames = spec.size()[2];
        let y = istft_same(&spec, &window, n, hop).unwrap();
        assert_eq!(y.size(), vec![2, frames * hop]);
        let len = x.size()[1].min(y.size()[1]);
        let d = (x.narrow(1, 0, len) - y.narrow(1, 0, len))
            .abs()
            .max()
            .double_value(&[]);
        assert!(d < 1e-4, "round trip differs by {d}");
    }
}
