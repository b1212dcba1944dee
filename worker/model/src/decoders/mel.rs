//! The mel front end: waveform -> natural-log mel magnitude spectrogram, as librosa computes it
//! (`librosa.feature.melspectrogram(power=1)`, Slaney mel scale and area normalisation, periodic
//! Hann window, centred frames), and the pieces the vocoders share (STFT, iSTFT, mel -> linear).

use crate::{ModelError, Result};
use tch::{Device, Kind, Tensor};

/// How centred frames pad the signal's ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PadMode {
    Reflect,
    /// Zeros (librosa's default since 0.10).
    Constant,
}

/// Mel analysis parameters; a pack's `model.toml` `[mel]` table.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct MelConfig {
    pub sample_rate: u32,
    pub n_fft: usize,
    pub hop_length: usize,
    pub win_length: usize,
    pub n_mels: usize,
    pub fmin: f64,
    /// Defaults to 8000; `None` means Nyquist.
    pub fmax: Option<f64>,
    /// 1 = magnitude, 2 = power.
    pub power: f64,
    /// `log_mel = ln(max(mel, log_floor))`.
    pub log_floor: f64,
    pub center: bool,
    pub pad_mode: PadMode,
}

impl Default for MelConfig {
    fn default() -> Self {
        Self {
            sample_rate: 16000,
            n_fft: 1024,
            hop_length: 256,
            win_length: 1024,
            n_mels: 64,
            fmin: 0.0,
            fmax: Some(8000.0),
            power: 1.0,
            log_floor: 1e-5,
            center: true,
            pad_mode: PadMode::Reflect,
        }
    }
}

impl MelConfig {
    pub fn fmax_hz(&self) -> f64 {
        self.fmax.unwrap_or(self.sample_rate as f64 / 2.0)
    }

    pub fn n_freqs(&self) -> usize {
        self.n_fft / 2 + 1
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ModelError::Input(format!("mel config: {m}")));
        if self.sample_rate == 0 || self.n_fft < 2 || self.hop_length == 0 || self.n_mels == 0 {
            return bad("sample_rate, n_fft, hop_length and n_mels must be positive".into());
        }
        if self.win_length == 0 || self.win_length > self.n_fft {
            return bad(format!(
                "win_length {} must be in 1..=n_fft",
                self.win_length
            ));
        }
        let nyquist = self.sample_rate as f64 / 2.0;
        if !(self.fmin >= 0.0 && self.fmin < self.fmax_hz() && self.fmax_hz() <= nyquist) {
            return bad(format!("need 0 <= fmin < fmax <= {nyquist}"));
        }
        if !(self.power > 0.0 && self.log_floor > 0.0) {
            return bad("power and log_floor must be positive".into());
        }
        Ok(())
    }
}

/// Slaney's mel scale (librosa `hz_to_mel(htk=False)`): linear below 1 kHz, logarithmic above.
fn hz_to_mel(f: f64) -> f64 {
    let (f_sp, min_log_hz) = (200.0 / 3.0, 1000.0);
    let min_log_mel = min_log_hz / f_sp;
    if f >= min_log_hz {
        min_log_mel + (f / min_log_hz).ln() / (6.4f64.ln() / 27.0)
    } else {
        f / f_sp
    }
}

fn mel_to_hz(m: f64) -> f64 {
    let (f_sp, min_log_hz) = (200.0 / 3.0, 1000.0);
    let min_log_mel = min_log_hz / f_sp;
    if m >= min_log_mel {
        min_log_hz * ((6.4f64.ln() / 27.0) * (m - min_log_mel)).exp()
    } else {
        f_sp * m
    }
}

/// `librosa.filters.mel(htk=False, norm="slaney")` as f32 `[n_mels, n_fft/2 + 1]`, with librosa's
/// f64 arithmetic and its two roundings to f32 (weights, then the normalised weights).
pub fn slaney_filterbank(cfg: &MelConfig) -> Tensor {
    let (n_mels, n_freqs) = (cfg.n_mels, cfg.n_freqs());
    let val = 1.0 / (cfg.n_fft as f64 * (1.0 / cfg.sample_rate as f64));
    let fft_freqs: Vec<f64> = (0..n_freqs).map(|i| i as f64 * val).collect();
    let (lo, hi) = (hz_to_mel(cfg.fmin), hz_to_mel(cfg.fmax_hz()));
    let step = (hi - lo) / (n_mels + 1) as f64;
    let mel_f: Vec<f64> = (0..n_mels + 2)
        .map(|i| {
            mel_to_hz(if i == n_mels + 1 {
                hi
            } else {
                lo + i as f64 * step
            })
        })
        .collect();
    let mut w = vec![0f32; n_mels * n_freqs];
    for m in 0..n_mels {
        let (d0, d1) = (mel_f[m + 1] - mel_f[m], mel_f[m + 2] - mel_f[m + 1]);
        let enorm = 2.0 / (mel_f[m + 2] - mel_f[m]);
        for (k, &f) in fft_freqs.iter().enumerate() {
            let lower = -(mel_f[m] - f) / d0;
            let upper = (mel_f[m + 2] - f) / d1;
            let v = lower.min(upper).max(0.0) as f32;
            w[m * n_freqs + k] = (v as f64 * enorm) as f32;
        }
    }
    Tensor::from_slice(&w).view([n_mels as i64, n_freqs as i64])
}

/// Log-mel analysis on one device, with the window and filterbank prepared once.
#[derive(Debug)]
pub struct MelFrontEnd {
    cfg: MelConfig,
    window: Tensor,
    filterbank: Tensor,
    /// Pseudo-inverse of the filterbank `[n_freqs, n_mels]`, for mel -> linear magnitude.
    pinv: Tensor,
}

impl MelFrontEnd {
    pub fn new(cfg: &MelConfig, device: Device) -> Result<Self> {
        cfg.validate()?;
        let fb = slaney_filterbank(cfg);
        let pinv = fb
            .to_kind(Kind::Double)
            .f_pinverse(1e-10)?
            .to_kind(Kind::Float);
        Ok(Self {
            cfg: cfg.clone(),
            // Built in f64 and rounded once per use, as close to librosa's window as f32 allows.
            window: Tensor::f_hann_window_periodic(
                cfg.win_length as i64,
                true,
                (Kind::Double, device),
            )?,
            filterbank: fb.to_device(device),
            pinv: pinv.to_device(device),
        })
    }

    pub fn config(&self) -> &MelConfig {
        &self.cfg
    }

    /// `[n_mels, n_fft/2 + 1]` f32.
    pub fn filterbank(&self) -> &Tensor {
        &self.filterbank
    }

    /// The periodic Hann window (`win_length`, f64).
    pub fn window(&self) -> &Tensor {
        &self.window
    }

    /// Frames that `log_mel` yields for `samples` samples.
    pub fn frames_for(&self, samples: usize) -> usize {
        let hop = self.cfg.hop_length;
        if self.cfg.center {
            1 + samples / hop
        } else {
            1 + samples.saturating_sub(self.cfg.n_fft) / hop
        }
    }

    /// Complex STFT `[B, n_fft/2 + 1, frames]` of `wave` `[B, samples]`.
    pub fn stft(&self, wave: &Tensor) -> Result<Tensor> {
        if wave.dim() != 2 {
            return Err(ModelError::Input(format!(
                "expected a waveform [batch, samples], got {:?}",
                wave.size()
            )));
        }
        let n_fft = self.cfg.n_fft as i64;
        // Centre padding by hand: tch passes `align_to_window`, which libtorch rejects with
        // `center = true`. Same result as torch.stft(center=True) / librosa's centred frames.
        let padded = if self.cfg.center {
            let mode = match self.cfg.pad_mode {
                PadMode::Reflect => "reflect",
                PadMode::Constant => "constant",
            };
            let p = n_fft / 2;
            if self.cfg.pad_mode == PadMode::Reflect && wave.size()[1] <= p {
                return Err(ModelError::Input(format!(
                    "reflect padding needs more than {p} samples, got {}",
                    wave.size()[1]
                )));
            }
            wave.unsqueeze(1).f_pad([p, p], mode, None)?.squeeze_dim(1)
        } else {
            wave.shallow_clone()
        };
        let window = self.window.to_kind(wave.kind());
        Ok(padded.f_stft(
            n_fft,
            self.cfg.hop_length as i64,
            self.cfg.win_length as i64,
            Some(&window),
            false,
            true,
            true,
            false,
        )?)
    }

    /// Inverse of [`Self::stft`]: complex `[B, n_freqs, frames]` -> `[B, length]`.
    pub fn istft(&self, spec: &Tensor, length: usize) -> Result<Tensor> {
        let real = if spec.kind() == Kind::ComplexDouble {
            Kind::Double
        } else {
            Kind::Float
        };
        let window = self.window.to_device(spec.device()).to_kind(real);
        Ok(spec.f_istft(
            self.cfg.n_fft as i64,
            self.cfg.hop_length as i64,
            self.cfg.win_length as i64,
            Some(&window),
            self.cfg.center,
            false,
            true,
            length as i64,
            false,
        )?)
    }

    /// Mel spectrogram `[B, n_mels, frames]` (`|STFT|^power` through the filterbank).
    pub fn mel(&self, wave: &Tensor) -> Result<Tensor> {
        let mag = self.stft(wave)?.abs();
        let spec = if self.cfg.power == 1.0 {
            mag
        } else {
            mag.pow_tensor_scalar(self.cfg.power)
        };
        Ok(self.filterbank.to_kind(spec.kind()).matmul(&spec))
    }

    /// `ln(max(mel, log_floor))`, `[B, n_mels, frames]`.
    pub fn log_mel(&self, wave: &Tensor) -> Result<Tensor> {
        Ok(self.mel(wave)?.clamp_min(self.cfg.log_floor).log())
    }

    /// Non-negative least-squares estimate of the linear spectrogram `[B, n_freqs, frames]` (same
    /// power as the mel) from a mel spectrogram (not its log): the pseudo-inverse solution clamped
    /// at 0, refined by multiplicative (NMF-style) updates, which keep it non-negative and reduce
    /// `|filterbank @ linear - mel|`.
    pub fn mel_to_linear(&self, mel: &Tensor) -> Result<Tensor> {
        if mel.dim() != 3 || mel.size()[1] != self.cfg.n_mels as i64 {
            return Err(ModelError::Input(format!(
                "expected a mel spectrogram [batch, {}, frames], got {:?}",
                self.cfg.n_mels,
                mel.size()
            )));
        }
        let fb = self.filterbank.to_kind(mel.kind());
        let fb_t = fb.tr();
        let mel = mel.clamp_min(0.0);
        // A small floor so that bins the clamp zeroed can still grow.
        let mut lin = self
            .pinv
            .to_kind(mel.kind())
            .f_matmul(&mel)?
            .clamp_min(1e-8);
        let num = fb_t.matmul(&mel);
        let gram = fb_t.matmul(&fb);
        for _ in 0..MEL_INVERSE_ITERS {
            lin = &lin * &num / (gram.matmul(&lin) + 1e-12);
        }
        Ok(lin)
    }
}

/// Multiplicative refinement steps in [`MelFrontEnd::mel_to_linear`].
const MEL_INVERSE_ITERS: usize = 32;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slaney_scale_round_trips() {
        for f in [0.0, 440.0, 999.0, 1000.0, 4000.0, 8000.0] {
            assert!((mel_to_hz(hz_to_mel(f)) - f).abs() < 1e-9);
        }
        assert!((hz_to_mel(1000.0) - 15.0).abs() < 1e-12);
    }

    #[test]
    fn frames_and_validation() {
        let fe = MelFrontEnd::new(&MelConfig::default(), Device::Cpu).unwrap();
        assert_eq!(fe.frames_for(16000), 63);
        let wave = Tensor::zeros([2, 16000], (Kind::Float, Device::Cpu));
        assert_eq!(fe.log_mel(&wave).unwrap().size(), vec![2, 64, 63]);
        let bad = MelConfig {
            fmax: Some(9000.0),
            ..Default::default()
        };
        assert!(MelFrontEnd::new(&bad, Device::Cpu).is_err());
    }
}
