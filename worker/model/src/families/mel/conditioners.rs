//! Numeric conditioners: duration, tempo, key and mode, embedded into the denoiser's global
//! conditioning the way Stable Audio embeds `seconds_start`/`seconds_total`.
//!
//! A number (duration in seconds, tempo in BPM) is clamped to `[min, max]`, normalised to `[0, 1]`
//! and embedded by stable-audio-tools' `NumberEmbedder`: learned Fourier features
//! `[x, sin(2π x w), cos(2π x w)]` (`w`: `fourier_dim / 2` learned frequencies) followed by a linear
//! layer to `embed_dim`. Key (pitch class 0-11) and mode (major = 0, minor = 1) are categorical: a
//! learned table of 12 (resp. 2) rows, because pitch classes are cyclic, not ordered. Every
//! conditioner has a learned `unknown` vector used when the value is `None`.
//!
//! Layout of the global conditioning vector (`denoiser.global_states_input_dim`):
//!
//! ```text
//! [ pooled text embedding (text hidden size) | duration | tempo | key | mode ]
//! ```
//!
//! each numeric block `embed_dim` wide, present only if the pack declares that conditioner, in this
//! fixed order. So `global_states_input_dim = text_hidden + embed_dim * (number declared)`.
//!
//! Weights (`conditioners.safetensors`): `duration.fourier` [fourier_dim/2],
//! `duration.proj.weight` [embed_dim, fourier_dim + 1], `duration.proj.bias` [embed_dim],
//! `duration.unknown` [embed_dim]; the same under `tempo.`; `key.table` [12, embed_dim],
//! `key.unknown`; `mode.table` [2, embed_dim], `mode.unknown`.

use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};
use tutti_shared::prompt::{Controls, Mode};

/// Range of a numeric conditioner; values are clamped into it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct NumberRange {
    pub min: f32,
    pub max: f32,
}

/// `[conditioners]` in `model.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ConditionerConfig {
    /// Width of each numeric embedding.
    pub embed_dim: i64,
    /// Number of Fourier features of the number embedders (even).
    pub fourier_dim: i64,
    /// Requested length in seconds. A table without it has none (the struct's default declares
    /// one, and a pack written without it must not read back with it).
    #[serde(default)]
    pub duration: Option<NumberRange>,
    /// Tempo in BPM; absent from the table: none.
    #[serde(default)]
    pub tempo: Option<NumberRange>,
    /// Tonic pitch class.
    pub key: bool,
    /// Major or minor.
    pub mode: bool,
}

impl Default for ConditionerConfig {
    fn default() -> Self {
        Self::builtin(768, 256, 47.0)
    }
}

impl ConditionerConfig {
    /// The built-in model: all four conditioners.
    pub fn builtin(embed_dim: i64, fourier_dim: i64, max_duration_s: f32) -> Self {
        Self {
            embed_dim,
            fourier_dim,
            duration: Some(NumberRange {
                min: 0.0,
                max: max_duration_s,
            }),
            tempo: Some(NumberRange {
                min: 40.0,
                max: 240.0,
            }),
            key: true,
            mode: true,
        }
    }

    /// Duration only (a Stable Audio-like pack).
    pub fn duration_only(embed_dim: i64, fourier_dim: i64, max_duration_s: f32) -> Self {
        Self {
            tempo: None,
            key: false,
            mode: false,
            ..Self::builtin(embed_dim, fourier_dim, max_duration_s)
        }
    }

    /// Number of declared conditioners.
    pub fn count(&self) -> i64 {
        [
            self.duration.is_some(),
            self.tempo.is_some(),
            self.key,
            self.mode,
        ]
        .iter()
        .filter(|&&b| b)
        .count() as i64
    }

    /// Width of the numeric part of the global conditioning.
    pub fn output_dim(&self) -> i64 {
        self.embed_dim * self.count()
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.embed_dim <= 0 || self.fourier_dim <= 0 || self.fourier_dim % 2 != 0 {
            return Err(
                "conditioners.embed_dim must be positive and fourier_dim positive and even".into(),
            );
        }
        for (name, r) in [("duration", self.duration), ("tempo", self.tempo)] {
            let ok = r.is_none_or(|r| r.min.is_finite() && r.max.is_finite() && r.max > r.min);
            if !ok {
                return Err(format!("conditioners.{name}: max must be greater than min"));
            }
        }
        Ok(())
    }
}

#[derive(Debug)]
struct NumberEmbedder {
    range: NumberRange,
    fourier: Tensor,
    proj: nn::Linear,
    unknown: Tensor,
}

impl NumberEmbedder {
    fn new(p: nn::Path, cfg: &ConditionerConfig, range: NumberRange) -> Self {
        Self {
            range,
            fourier: p.var(
                "fourier",
                &[cfg.fourier_dim / 2],
                nn::Init::Randn {
                    mean: 0.0,
                    stdev: 1.0,
                },
            ),
            proj: nn::linear(
                &p / "proj",
                cfg.fourier_dim + 1,
                cfg.embed_dim,
                Default::default(),
            ),
            unknown: p.var(
                "unknown",
                &[cfg.embed_dim],
                nn::Init::Randn {
                    mean: 0.0,
                    stdev: 0.02,
                },
            ),
        }
    }

    fn embed(&self, values: &[Option<f32>]) -> Tensor {
        let dev = self.fourier.device();
        let normed: Vec<f32> = values
            .iter()
            .map(|v| {
                let v = v
                    .unwrap_or(self.range.min)
                    .clamp(self.range.min, self.range.max);
                (v - self.range.min) / (self.range.max - self.range.min)
            })
            .collect();
        let x = Tensor::from_slice(&normed).to_device(dev).unsqueeze(1);
        let freqs = &x * self.fourier.unsqueeze(0) * (2.0 * std::f64::consts::PI);
        let feats = Tensor::cat(&[&x, &freqs.sin(), &freqs.cos()], 1);
        let emb = feats.apply(&self.proj);
        known_or_unknown(emb, values.iter().map(Option::is_some), &self.unknown)
    }
}

#[derive(Debug)]
struct TableEmbedder {
    table: Tensor,
    unknown: Tensor,
}

impl TableEmbedder {
    fn new(p: nn::Path, cfg: &ConditionerConfig, rows: i64) -> Self {
        Self {
            table: p.var(
                "table",
                &[rows, cfg.embed_dim],
                nn::Init::Randn {
                    mean: 0.0,
                    stdev: 1.0,
                },
            ),
            unknown: p.var(
                "unknown",
                &[cfg.embed_dim],
                nn::Init::Randn {
                    mean: 0.0,
                    stdev: 0.02,
                },
            ),
        }
    }

    fn embed(&self, values: &[Option<i64>]) -> Tensor {
        let rows = self.table.size()[0];
        let idx: Vec<i64> = values
            .iter()
            .map(|v| v.unwrap_or(0).rem_euclid(rows))
            .collect();
        let emb = self
            .table
            .index_select(0, &Tensor::from_slice(&idx).to_device(self.table.device()));
        known_or_unknown(emb, values.iter().map(Option::is_some), &self.unknown)
    }
}

fn known_or_unknown(emb: Tensor, known: impl Iterator<Item = bool>, unknown: &Tensor) -> Tensor {
    let known: Vec<f32> = known.map(|k| if k { 1.0 } else { 0.0 }).collect();
    let k = Tensor::from_slice(&known)
        .to_device(emb.device())
        .to_kind(emb.kind())
        .unsqueeze(1);
    &emb * &k + unknown.unsqueeze(0) * (1.0 - &k)
}

/// The declared numeric conditioners of a pack.
#[derive(Debug)]
pub struct Conditioners {
    cfg: ConditionerConfig,
    duration: Option<NumberEmbedder>,
    tempo: Option<NumberEmbedder>,
    key: Option<TableEmbedder>,
    mode: Option<TableEmbedder>,
}

impl Conditioners {
    pub fn new(p: nn::Path, cfg: &ConditionerConfig) -> Self {
        Self {
            cfg: cfg.clone(),
            duration: cfg
                .duration
                .map(|r| NumberEmbedder::new(&p / "duration", cfg, r)),
            tempo: cfg.tempo.map(|r| NumberEmbedder::new(&p / "tempo", cfg, r)),
            key: cfg.key.then(|| TableEmbedder::new(&p / "key", cfg, 12)),
            mode: cfg.mode.then(|| TableEmbedder::new(&p / "mode", cfg, 2)),
        }
    }

    pub fn config(&self) -> &ConditionerConfig {
        &self.cfg
    }

    /// Embeds each sample's controls: f32 `[B, output_dim]` on `device` (`[B, 0]` when nothing is
    /// declared).
    pub fn embed(&self, controls: &[Controls], device: Device) -> Tensor {
        let _guard = tch::no_grad_guard();
        let mut parts = Vec::new();
        if let Some(d) = &self.duration {
            parts.push(
                d.embed(
                    &controls
                        .iter()
                        .map(|c| Some(c.duration_s))
                        .collect::<Vec<_>>(),
                ),
            );
        }
        if let Some(t) = &self.tempo {
            parts.push(t.embed(&controls.iter().map(|c| c.bpm).collect::<Vec<_>>()));
        }
        if let Some(k) = &self.key {
            parts.push(
                k.embed(
                    &controls
                        .iter()
                        .map(|c| c.key.map(i64::from))
                        .collect::<Vec<_>>(),
                ),
            );
        }
        if let Some(m) = &self.mode {
            let modes: Vec<Option<i64>> = controls
                .iter()
                .map(|c| {
                    c.mode.map(|m| match m {
                        Mode::Major => 0,
                        Mode::Minor => 1,
                    })
                })
                .collect();
            parts.push(m.embed(&modes));
        }
        if parts.is_empty() {
            return Tensor::zeros([controls.len() as i64, 0], (Kind::Float, device));
        }
        Tensor::cat(&parts, 1)
            .to_kind(Kind::Float)
            .to_device(device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_without_a_tempo_reads_back_without_one() {
        let cfg = ConditionerConfig::duration_only(64, 32, 11.0);
        let text = toml::to_string(&cfg).expect("write");
        let back: ConditionerConfig = toml::from_str(&text).expect("read");
        assert_eq!(back, cfg);
        assert_eq!(back.tempo, None);
        // A table that names nothing still gets the built-in widths and flags.
        let empty: ConditionerConfig = toml::from_str("").expect("read");
        assert_eq!(empty.embed_dim, ConditionerConfig::default().embed_dim);
    }

    fn controls(bpm: Option<f32>, key: Option<u8>, mode: Option<Mode>) -> Controls {
        Controls {
            duration_s: 10.0,
            bpm,
            key,
            mode,
        }
    }

    #[test]
    fn layout_unknowns_and_clamping() {
        let cfg = ConditionerConfig::builtin(4, 6, 30.0);
        let vs = nn::VarStore::new(Device::Cpu);
        let c = Conditioners::new(vs.root(), &cfg);
        assert_eq!(cfg.output_dim(), 16);
        let e = c.embed(
            &[
                controls(None, None, None),
                controls(Some(120.0), Some(9), Some(Mode::Minor)),
                controls(Some(1000.0), Some(9), Some(Mode::Major)),
                controls(Some(240.0), Some(2), Some(Mode::Major)),
            ],
            Device::Cpu,
        );
        assert_eq!(e.size(), [4, 16]);
        let vars = vs.variables();
        // Row 0: tempo, key and mode are unknown.
        assert_eq!(e.get(0).narrow(0, 4, 4), vars["tempo.unknown"]);
        assert_eq!(e.get(0).narrow(0, 8, 4), vars["key.unknown"]);
        assert_eq!(e.get(0).narrow(0, 12, 4), vars["mode.unknown"]);
        // Row 1: key A = table row 9, minor = row 1.
        assert_eq!(e.get(1).narrow(0, 8, 4), vars["key.table"].get(9));
        assert_eq!(e.get(1).narrow(0, 12, 4), vars["mode.table"].get(1));
        // Tempo is clamped to its range: 1000 BPM embeds like 240 (up to GEMM row rounding).
        assert!(e
            .get(2)
            .narrow(0, 4, 4)
            .allclose(&e.get(3).narrow(0, 4, 4), 1e-6, 1e-6, false));
        assert_ne!(e.get(1).narrow(0, 4, 4), e.get(3).narrow(0, 4, 4));
    }
}
