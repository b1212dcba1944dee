//! Per-frame controls: the beat grid of a requested tempo and the pitch-class profile of a
//! requested key, projected to the denoiser's width and added to its hidden states frame by
//! frame (after `proj_in`, where Stable Audio's DiT adds its input-concat conditioning), so a
//! tempo is not one more global number but a phase the model reads at every latent frame.
//!
//! - Beat grid: `[sin 2πb, cos 2πb, sin 2πr, cos 2πr]` per frame, `b` the beat phase and `r`
//!   the bar phase at the frame's time (a downbeat at 0 s for a request; the renders' own
//!   downbeat in training). Without a tempo, a learned `unknown` vector instead.
//! - Key: the Krumhansl-Kessler profile of the asked key and mode rotated to the tonic
//!   (zero-mean, unit norm; the mean of both modes when only the key is known), then the mode
//!   as one-hot: 14 numbers, constant over the clip. Without key and mode, `unknown`.
//! - Instruments: which of the ten instrument families the prompt names
//!   (`prompt::parse_instruments`, the same reading for a caption in training and a request),
//!   one number each, constant over the clip. The text encoder sees the words too, but pooled
//!   with everything else a prompt says; this input names the timbre alone, and guidance can
//!   steer by it. Naming none: `unknown`.
//!
//! Weights (in `conditioners.safetensors`, under `frames.`): `beat.weight` [dim, 4],
//! `beat.unknown` [dim], `key.weight` [dim, 14], `key.unknown` [dim], `instruments.weight`
//! [dim, 10], `instruments.unknown` [dim]. All start at zero, so a model that gains these
//! controls starts out computing what it computed without them.
//!
//! A pack declares them with `[frame_conditioning]` in `model.toml`; a pack without the table
//! gets no frame input at all (its forward is the one it always had).

use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};
use tutti_shared::prompt::{self, vocab, Controls, Mode};

/// Features of one frame of the beat grid.
pub const GRID_FEATURES: i64 = 4;
/// Features of a key: 12 pitch classes and the mode one-hot.
pub const KEY_FEATURES: i64 = 14;
/// Features of the instruments: one per family of `vocab::INSTRUMENTS`.
pub const INSTRUMENT_FEATURES: usize = vocab::INSTRUMENTS.len();

/// `[frame_conditioning]` in `model.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrameCondConfig {
    /// Width of the added states: the denoiser's inner width (heads x head dim).
    pub dim: i64,
    #[serde(default)]
    pub beat_grid: bool,
    #[serde(default)]
    pub key_profile: bool,
    /// The instrument families a prompt names; absent in packs made before it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub instruments: bool,
}

impl FrameCondConfig {
    pub fn validate(&self, inner_dim: i64) -> Result<(), String> {
        if self.dim != inner_dim {
            return Err(format!(
                "frame_conditioning.dim {} must equal the denoiser's width {inner_dim}",
                self.dim
            ));
        }
        if !self.beat_grid && !self.key_profile && !self.instruments {
            return Err(
                "frame_conditioning declares none of beat_grid, key_profile, instruments".into(),
            );
        }
        Ok(())
    }

    /// Whether the config declares the projection that weight `name` (under `frames.`) belongs to.
    pub fn declares(&self, name: &str) -> bool {
        match name.split('.').next() {
            Some("beat") => self.beat_grid,
            Some("key") => self.key_profile,
            Some("instruments") => self.instruments,
            _ => false,
        }
    }

    /// Whether a pack with `self` can start a run with `run`: the same width, and every part
    /// of `self` in `run` (the parts the pack lacks start at zero).
    pub fn is_within(&self, run: &FrameCondConfig) -> bool {
        self.dim == run.dim
            && (!self.beat_grid || run.beat_grid)
            && (!self.key_profile || run.key_profile)
            && (!self.instruments || run.instruments)
    }
}

/// Where the beats of a clip fall: tempo, meter and the time of a downbeat.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BeatGrid {
    pub bpm: f32,
    pub beats_per_bar: u32,
    pub downbeat_s: f64,
}

impl BeatGrid {
    /// The grid of a request: its tempo, the meter its prompt names (3 for a waltz or 3/4,
    /// otherwise 4), a downbeat at the start.
    pub fn for_request(controls: &Controls, prompt: &str) -> Option<Self> {
        controls
            .bpm
            .filter(|b| b.is_finite() && *b > 0.0)
            .map(|bpm| Self {
                bpm,
                beats_per_bar: beats_per_bar(prompt),
                downbeat_s: 0.0,
            })
    }

    /// `[frames * 4]` row-major features of frames `first..first + frames` at `fps`.
    pub fn features(&self, first: usize, frames: usize, fps: f64) -> Vec<f32> {
        let beat_s = 60.0 / self.bpm as f64;
        let bar = self.beats_per_bar.max(1) as f64;
        let tau = 2.0 * std::f64::consts::PI;
        let mut out = Vec::with_capacity(frames * GRID_FEATURES as usize);
        for i in first..first + frames {
            let beats = (i as f64 / fps - self.downbeat_s) / beat_s;
            let (b, r) = (beats.rem_euclid(1.0), (beats / bar).rem_euclid(1.0));
            out.extend(
                [
                    (tau * b).sin(),
                    (tau * b).cos(),
                    (tau * r).sin(),
                    (tau * r).cos(),
                ]
                .map(|v| v as f32),
            );
        }
        out
    }
}

/// The meter a prompt names: 3 beats for a waltz or 3/4, else 4.
pub fn beats_per_bar(prompt: &str) -> u32 {
    let p = prompt.to_lowercase();
    if p.contains("waltz") || p.contains("3/4") {
        3
    } else {
        4
    }
}

const MAJOR: [f64; 12] = [
    6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88,
];
const MINOR: [f64; 12] = [
    6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17,
];

/// The 14 key features, or `None` when neither key nor mode is known.
pub fn key_features(key: Option<u8>, mode: Option<Mode>) -> Option<[f32; 14]> {
    if key.is_none() && mode.is_none() {
        return None;
    }
    let mut out = [0f32; 14];
    if let Some(k) = key {
        let k = (k % 12) as usize;
        let prof: [f64; 12] = std::array::from_fn(|pc| {
            let i = (pc + 12 - k) % 12;
            match mode {
                Some(Mode::Major) => MAJOR[i],
                Some(Mode::Minor) => MINOR[i],
                None => 0.5 * (MAJOR[i] + MINOR[i]),
            }
        });
        let mean = prof.iter().sum::<f64>() / 12.0;
        let norm = prof.iter().map(|v| (v - mean).powi(2)).sum::<f64>().sqrt();
        for (o, v) in out.iter_mut().zip(prof) {
            *o = ((v - mean) / norm) as f32;
        }
    }
    match mode {
        Some(Mode::Major) => out[12] = 1.0,
        Some(Mode::Minor) => out[13] = 1.0,
        None => {}
    }
    Some(out)
}

/// The instrument features of a text, or `None` when it names no instrument family.
pub fn instrument_features(text: &str) -> Option<[f32; INSTRUMENT_FEATURES]> {
    let named = prompt::parse_instruments(text);
    if named.is_empty() {
        return None;
    }
    Some(std::array::from_fn(|i| {
        f32::from(vocab::INSTRUMENTS.get(i).is_some_and(|w| named.contains(w)))
    }))
}

/// One clip's per-frame controls, as numbers (what [`FrameConditioner::forward`] embeds).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FrameControls {
    /// `[frames * 4]` beat-grid features, or unknown.
    pub grid: Option<Vec<f32>>,
    pub key: Option<[f32; 14]>,
    pub instruments: Option<[f32; INSTRUMENT_FEATURES]>,
}

impl FrameControls {
    /// A request's controls over `frames` latent frames from the start.
    pub fn for_request(controls: &Controls, prompt: &str, frames: usize, fps: f64) -> Self {
        Self {
            grid: BeatGrid::for_request(controls, prompt).map(|g| g.features(0, frames, fps)),
            key: key_features(controls.key, controls.mode),
            instruments: instrument_features(prompt),
        }
    }
}

#[derive(Debug)]
struct Projection {
    weight: Tensor,
    unknown: Tensor,
}

impl Projection {
    fn new(p: nn::Path, dim: i64, features: i64) -> Self {
        Self {
            weight: p.var("weight", &[dim, features], nn::Init::Const(0.0)),
            unknown: p.var("unknown", &[dim], nn::Init::Const(0.0)),
        }
    }
}

/// The per-frame controls' projections of a pack.
#[derive(Debug)]
pub struct FrameConditioner {
    cfg: FrameCondConfig,
    beat: Option<Projection>,
    key: Option<Projection>,
    instruments: Option<Projection>,
}

impl FrameConditioner {
    /// Registers the variables under `p` (the conditioners' store, path `frames`).
    pub fn new(p: nn::Path, cfg: &FrameCondConfig) -> Self {
        Self {
            cfg: cfg.clone(),
            beat: cfg
                .beat_grid
                .then(|| Projection::new(&p / "beat", cfg.dim, GRID_FEATURES)),
            key: cfg
                .key_profile
                .then(|| Projection::new(&p / "key", cfg.dim, KEY_FEATURES)),
            instruments: cfg
                .instruments
                .then(|| Projection::new(&p / "instruments", cfg.dim, INSTRUMENT_FEATURES as i64)),
        }
    }

    pub fn config(&self) -> &FrameCondConfig {
        &self.cfg
    }

    /// States `[B, frames, dim]` (f32, on the weights' device) to add to the denoiser's hidden
    /// states; differentiable in the weights (the pipeline calls it under `no_grad`).
    pub fn forward(&self, rows: &[FrameControls], frames: i64) -> Tensor {
        let dev = self
            .beat
            .as_ref()
            .or(self.key.as_ref())
            .or(self.instruments.as_ref())
            .map_or(Device::Cpu, |p| p.weight.device());
        let (b, dim) = (rows.len() as i64, self.cfg.dim);
        let mut out = Tensor::zeros([b, frames, dim], (Kind::Float, dev));
        if let Some(p) = &self.beat {
            let known: Vec<f32> = rows.iter().map(|r| f32::from(r.grid.is_some())).collect();
            let mut feats = Vec::with_capacity((b * frames * GRID_FEATURES) as usize);
            for r in rows {
                match &r.grid {
                    Some(g) if g.len() == (frames * GRID_FEATURES) as usize => {
                        feats.extend_from_slice(g)
                    }
                    Some(g) => {
                        // A grid of other length (caller error): pad or cut to `frames`.
                        let mut g = g.clone();
                        g.resize((frames * GRID_FEATURES) as usize, 0.0);
                        feats.extend(g);
                    }
                    None => {
                        feats.extend(std::iter::repeat_n(0.0, (frames * GRID_FEATURES) as usize))
                    }
                }
            }
            let x = Tensor::from_slice(&feats)
                .to_device(dev)
                .view([b, frames, GRID_FEATURES]);
            let k = Tensor::from_slice(&known).to_device(dev).view([b, 1, 1]);
            out = out + x.matmul(&p.weight.tr()) * &k + p.unknown.view([1, 1, dim]) * (1.0 - &k);
        }
        if let Some(p) = &self.key {
            out += constant(p, rows.iter().map(|r| r.key), dev);
        }
        if let Some(p) = &self.instruments {
            out += constant(p, rows.iter().map(|r| r.instruments), dev);
        }
        out
    }
}

/// `[B, 1, dim]` states of a control constant over the clip: its projection where known, the
/// projection's `unknown` vector where not.
fn constant<const N: usize>(
    p: &Projection,
    rows: impl Iterator<Item = Option<[f32; N]>>,
    dev: Device,
) -> Tensor {
    let (mut known, mut feats) = (Vec::new(), Vec::new());
    for r in rows {
        known.push(f32::from(r.is_some()));
        feats.extend(r.unwrap_or([0.0; N]));
    }
    let b = known.len() as i64;
    let x = Tensor::from_slice(&feats)
        .to_device(dev)
        .view([b, N as i64]);
    let k = Tensor::from_slice(&known).to_device(dev).view([b, 1]);
    let dim = p.unknown.size()[0];
    let e: Tensor = x.matmul(&p.weight.tr()) * &k + p.unknown.view([1, dim]) * (1.0 - &k);
    e.unsqueeze(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_phases_follow_the_tempo() {
        // 120 BPM at 62.5 frames/s: a beat every 31.25 frames, a 4/4 bar every 125.
        let g = BeatGrid {
            bpm: 120.0,
            beats_per_bar: 4,
            downbeat_s: 0.0,
        };
        let f = g.features(0, 126, 62.5);
        let at = |i: usize, j: usize| f[i * 4 + j];
        assert!((at(0, 1) - 1.0).abs() < 1e-6 && at(0, 0).abs() < 1e-6);
        // Frame 125 = 2 s = beat 4 = the next downbeat.
        assert!((at(125, 1) - 1.0).abs() < 1e-5 && (at(125, 3) - 1.0).abs() < 1e-5);
        // 0.25 s = half a beat: cos = -1; an eighth of the bar: bar phase pi/4.
        let i = (0.25f64 * 62.5) as usize;
        let beats = i as f64 / 62.5 / 0.5;
        assert!((at(i, 1) as f64 - (2.0 * std::f64::consts::PI * beats).cos()).abs() < 1e-5);
        assert!((at(i, 2) as f64 - (2.0 * std::f64::consts::PI * beats / 4.0).sin()).abs() < 1e-5);
        // A crop from frame 100 reads the same phases as the whole clip there.
        assert_eq!(g.features(100, 26, 62.5), f[400..].to_vec());
        assert_eq!(beats_per_bar("a gentle waltz, 90 BPM"), 3);
        assert_eq!(beats_per_bar("house, 124 BPM"), 4);
    }

    #[test]
    fn key_profile_rotates_with_the_tonic() {
        let c = key_features(Some(0), Some(Mode::Major)).unwrap();
        let a = key_features(Some(9), Some(Mode::Minor)).unwrap();
        assert_eq!(c[12..], [1.0, 0.0]);
        assert_eq!(a[12..], [0.0, 1.0]);
        // The tonic weighs most; A minor's profile is C minor's moved up 9 semitones.
        let cm = key_features(Some(0), Some(Mode::Minor)).unwrap();
        for pc in 0..12 {
            assert!((a[(pc + 9) % 12] - cm[pc]).abs() < 1e-6);
        }
        assert!(c[0] > c[1] && a[9] > a[10]);
        let norm: f32 = c[..12].iter().map(|v| v * v).sum();
        assert!((norm - 1.0).abs() < 1e-5);
        assert_eq!(key_features(None, None), None);
        assert_eq!(
            key_features(None, Some(Mode::Minor)).unwrap()[..12],
            [0.0; 12]
        );
    }

    #[test]
    fn unknown_rows_get_the_unknown_vectors() {
        let cfg = FrameCondConfig {
            dim: 3,
            beat_grid: true,
            key_profile: true,
            instruments: true,
        };
        let vs = nn::VarStore::new(Device::Cpu);
        let fc = FrameConditioner::new(vs.root() / "frames", &cfg);
        tch::no_grad(|| {
            for (i, (_, mut v)) in vs.variables().into_iter().enumerate() {
                v.copy_(&(Tensor::randn(v.size(), (Kind::Float, Device::Cpu)) + i as f64));
            }
        });
        let g = BeatGrid {
            bpm: 100.0,
            beats_per_bar: 4,
            downbeat_s: 0.0,
        };
        let rows = [
            FrameControls::default(),
            FrameControls {
                grid: Some(g.features(0, 5, 62.5)),
                key: key_features(Some(2), Some(Mode::Major)),
                instruments: instrument_features("strings and drums"),
            },
        ];
        let out = tch::no_grad(|| fc.forward(&rows, 5));
        assert_eq!(out.size(), [2, 5, 3]);
        let vars = vs.variables();
        let unknown = &vars["frames.beat.unknown"]
            + &vars["frames.key.unknown"]
            + &vars["frames.instruments.unknown"];
        for t in 0..5 {
            assert!(out.get(0).get(t).allclose(&unknown, 1e-6, 1e-6, false));
        }
        // Known rows vary over frames with the grid.
        assert!(!out
            .get(1)
            .get(0)
            .allclose(&out.get(1).get(3), 1e-4, 1e-4, false));
        // The instruments add their columns: strings (5) and drums (9).
        let w = &vars["frames.instruments.weight"];
        let inst = w.select(1, 5) + w.select(1, 9);
        let rest = &out.get(1).get(0) - inst;
        let rows_without = [FrameControls {
            instruments: None,
            ..rows[1].clone()
        }];
        let without = tch::no_grad(|| fc.forward(&rows_without, 5)).get(0).get(0)
            - &vars["frames.instruments.unknown"];
        assert!(rest.allclose(&without, 1e-5, 1e-5, false));
    }

    #[test]
    fn instrument_features_mark_the_named_families() {
        let f = instrument_features("brooding trap beat with strings and drums").unwrap();
        assert_eq!(f, [0., 0., 0., 0., 0., 1., 0., 0., 0., 1.]);
        assert_eq!(instrument_features("a calm track in D minor, 80 BPM"), None);
        let cfg = |instruments| FrameCondConfig {
            dim: 8,
            beat_grid: true,
            key_profile: true,
            instruments,
        };
        assert!(cfg(false).is_within(&cfg(true)));
        assert!(!cfg(true).is_within(&cfg(false)));
        assert!(!FrameCondConfig {
            dim: 4,
            ..cfg(false)
        }
        .is_within(&cfg(true)));
        assert!(cfg(false).declares("key.weight") && !cfg(false).declares("instruments.unknown"));
    }
}
