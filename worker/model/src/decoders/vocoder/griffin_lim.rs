//! Fast Griffin-Lim (Perraudin et al. 2013) as torchaudio's `griffinlim`: mel -> linear magnitude
//! (non-negative least squares), then phase by alternating projections with momentum. The initial
//! phase is zero, so the output is a pure function of the input.

use super::{check_log_mel, lock, Vocoder};
use crate::decoders::mel::{MelConfig, MelFrontEnd};
use crate::Result;
use std::sync::Mutex;
use tch::{Device, Tensor};

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct GriffinLimConfig {
    pub iters: usize,
    /// torchaudio's default; 0 gives plain Griffin-Lim.
    pub momentum: f64,
}

impl Default for GriffinLimConfig {
    fn default() -> Self {
        Self {
            iters: 32,
            momentum: 0.99,
        }
    }
}

pub struct GriffinLim {
    cfg: GriffinLimConfig,
    front: Mutex<MelFrontEnd>,
}

impl GriffinLim {
    pub fn new(cfg: &GriffinLimConfig, mel: &MelConfig, device: Device) -> Result<Self> {
        if !(0.0..1.0).contains(&cfg.momentum) {
            return Err(crate::ModelError::Input(format!(
                "griffin_lim momentum must be in [0, 1), got {}",
                cfg.momentum
            )));
        }
        Ok(Self {
            cfg: cfg.clone(),
            front: Mutex::new(MelFrontEnd::new(mel, device)?),
        })
    }
}

impl Vocoder for GriffinLim {
    /// Returns `(frames - 1) * hop_length` samples (the inverse of a centred STFT).
    fn vocode(&self, log_mel: &Tensor) -> Result<Tensor> {
        let fe = lock(&self.front)?;
        let mc = fe.config();
        check_log_mel(log_mel, mc.n_mels)?;
        let _g = tch::no_grad_guard();
        let frames = log_mel.size()[2] as usize;
        let length = (frames - 1) * mc.hop_length;
        let lin = fe.mel_to_linear(&log_mel.to_kind(tch::Kind::Float).exp())?;
        let mag = if mc.power == 1.0 {
            lin
        } else {
            lin.pow_tensor_scalar(1.0 / mc.power)
        };
        // Zero initial phase: deterministic.
        let mut angles = Tensor::polar(&mag.ones_like(), &mag.zeros_like());
        let mut prev = angles.zeros_like();
        let beta = self.cfg.momentum / (1.0 + self.cfg.momentum);
        for _ in 0..self.cfg.iters {
            let wave = fe.istft(&(&mag * &angles), length)?;
            let rebuilt = fe.stft(&wave)?;
            let a = &rebuilt - &prev * beta;
            angles = &a / (a.abs() + 1e-16);
            prev = rebuilt;
        }
        fe.istft(&(&mag * &angles), length)
    }
}
