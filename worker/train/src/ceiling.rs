//! `tutti train ceiling`: what a representation keeps of the music, measured before any model is
//! trained on it. Held-out clips are composed and rendered exactly as the dataset would (labels
//! known: tempo, mode, instruments), passed through each candidate (audio -> features -> audio)
//! and scored with the evaluation's analyzers (tempo within 8%, mode, instrument families heard)
//! plus a multi-resolution STFT distance to the source. The source audio itself is scored too:
//! the analyzers' own ceiling, against which a round trip keeps a share.
//!
//! Every analysis runs at the analyzers' 16 kHz (a candidate at another rate is resampled
//! exactly in the frequency domain), so rows differ only by what the representation loses.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use tch::{nn, Device, Kind, Tensor};

use super::dataset::{draw_piece, read_config, DatasetConfig};
use super::eval::{analyzers, classifier};
use super::music::corpus::Corpus;
use super::render::Renderer;
pub use super::resample::resample;
use super::Result;
use tutti_model::mel::{MelConfig, MelFrontEnd};
use tutti_model::pack::RenderPack;
use tutti_model::vocoder::{self, GriffinLimConfig, Vocoder, VocoderConfig};

/// The analyzers' sample rate (their mel front end is the default 16 kHz, 64-band one).
pub const ANALYSIS_RATE: u32 = 16_000;

/// One representation: a mel analysis and the vocoder that turns it back into audio.
pub struct Candidate {
    pub name: String,
    pub mel: MelConfig,
    vocoder: Box<dyn Vocoder>,
    _store: Option<nn::VarStore>,
}

impl Candidate {
    /// A mel representation inverted by Griffin-Lim.
    pub fn griffin_lim(name: &str, mel: MelConfig, iters: usize) -> Result<Self> {
        let cfg = VocoderConfig::GriffinLim(GriffinLimConfig {
            iters,
            ..Default::default()
        });
        let vs = nn::VarStore::new(Device::Cpu);
        let vocoder = vocoder::build(&cfg, &mel, vs.root())?;
        Ok(Self {
            name: name.into(),
            mel,
            vocoder,
            _store: Some(vs),
        })
    }

    /// A trained mel VAE's round trip (`vae.rs`: log-mel -> latent -> log-mel) before
    /// Griffin-Lim: the learned-latent row.
    pub fn vae(run: &Path, iters: usize) -> Result<Self> {
        let st = super::vae::read_state(run)?;
        let gl = Self::griffin_lim("", st.mel.clone(), iters)?;
        let (rt, mel) = super::vae::VaeRoundTrip::load(run, gl.vocoder)?;
        let c = &st.config;
        Ok(Self {
            name: format!(
                "VAE ({}-channel latent, {}x shorter in time, {} steps) over {} kHz, {} mels, Griffin-Lim {iters}",
                c.latent_channels,
                c.factor,
                st.step,
                mel.sample_rate as f64 / 1000.0,
                mel.n_mels
            ),
            mel,
            vocoder: Box::new(rt),
            _store: gl._store,
        })
    }

    /// A pack's own mel and vocoder (e.g. a trained Vocos).
    pub fn from_pack(dir: &Path) -> Result<Self> {
        let (cfg, parts) = RenderPack::load(dir, Device::Cpu)?;
        Ok(Self {
            name: format!(
                "{}: {} Hz, {} mels, {}",
                dir.display(),
                cfg.mel.sample_rate,
                cfg.mel.n_mels,
                vocoder_name(&cfg.vocoder)
            ),
            mel: cfg.mel,
            vocoder: parts.vocoder,
            _store: None,
        })
    }
}

fn vocoder_name(v: &VocoderConfig) -> &'static str {
    match v {
        VocoderConfig::GriffinLim(_) => "Griffin-Lim",
        VocoderConfig::Vocos(_) => "Vocos",
        VocoderConfig::Hifigan(_) => "HiFi-GAN",
    }
}

/// The standard candidates: today's representation, more bands, higher rates, more
/// Griffin-Lim iterations.
pub fn standard_candidates() -> Result<Vec<Candidate>> {
    let base = MelConfig::default();
    let mel = |sr: u32, n_fft: usize, hop: usize, n_mels: usize| MelConfig {
        sample_rate: sr,
        n_fft,
        hop_length: hop,
        win_length: n_fft,
        n_mels,
        fmax: Some(sr as f64 / 2.0),
        ..base.clone()
    };
    Ok(vec![
        Candidate::griffin_lim(
            "16 kHz, 64 mels, n_fft 1024, hop 256, Griffin-Lim 32 (today)",
            base.clone(),
            32,
        )?,
        Candidate::griffin_lim(
            "16 kHz, 128 mels, n_fft 1024, hop 256, Griffin-Lim 32",
            mel(16_000, 1024, 256, 128),
            32,
        )?,
        Candidate::griffin_lim(
            "16 kHz, 256 mels, n_fft 2048, hop 256, Griffin-Lim 32",
            mel(16_000, 2048, 256, 256),
            32,
        )?,
        Candidate::griffin_lim(
            "22.05 kHz, 128 mels, n_fft 1024, hop 256, Griffin-Lim 32",
            mel(22_050, 1024, 256, 128),
            32,
        )?,
        Candidate::griffin_lim(
            "24 kHz, 128 mels, n_fft 1536, hop 384, Griffin-Lim 32",
            mel(24_000, 1536, 384, 128),
            32,
        )?,
        Candidate::griffin_lim(
            "16 kHz, 128 mels, n_fft 1024, hop 256, Griffin-Lim 100",
            mel(16_000, 1024, 256, 128),
            100,
        )?,
    ])
}

/// What a ceiling run needs.
#[derive(Debug, Clone)]
pub struct CeilingOptions {
    pub clips: usize,
    /// Id of the first held-out clip (far above any dataset's ids: never trained on).
    pub first_id: usize,
    /// A rendered dataset (16 kHz): its settings choose the music, and the instrument
    /// classifier trains on its clips.
    pub dataset: PathBuf,
    pub soundfont: PathBuf,
    pub corpus: Option<PathBuf>,
}

/// Sums over clips for one row.
#[derive(Debug, Clone, Default)]
pub struct Score {
    pub clips: usize,
    pub tempo_hits: usize,
    pub mode_hits: usize,
    pub families_heard: usize,
    pub families: usize,
    pub mrstft: f64,
    pub vocode_s: f64,
}

impl Score {
    pub fn tempo(&self) -> f64 {
        self.tempo_hits as f64 / self.clips.max(1) as f64
    }
    pub fn mode(&self) -> f64 {
        self.mode_hits as f64 / self.clips.max(1) as f64
    }
    pub fn instruments(&self) -> f64 {
        self.families_heard as f64 / self.families.max(1) as f64
    }
}

/// Analysis of one clip at 16 kHz against its labels.
struct Analyzer {
    front: MelFrontEnd,
    cfg: MelConfig,
    clf: classifier::Classifier,
}

impl Analyzer {
    fn score(
        &self,
        s: &mut Score,
        wave: &[f32],
        bpm: f32,
        mode: tutti_shared::prompt::Mode,
        fams: &[super::music::Family],
    ) -> Result<()> {
        let cfg = &self.cfg;
        let (mel, frames) = analyzers::log_mel(&self.front, wave)?;
        let fps = cfg.sample_rate as f64 / cfg.hop_length as f64;
        s.clips += 1;
        if analyzers::tempo(&mel, cfg.n_mels, frames, fps)
            .is_some_and(|b| analyzers::tempo_ok(b, bpm as f64, 0.08))
        {
            s.tempo_hits += 1;
        }
        if analyzers::key(&analyzers::chroma(&self.front, cfg, wave)?).1 == mode {
            s.mode_hits += 1;
        }
        let p = self.clf.predict(&mel, cfg.n_mels, frames);
        s.families += fams.len();
        s.families_heard += classifier::FAMILIES
            .iter()
            .zip(&p)
            .filter(|(f, p)| fams.contains(f) && **p >= 0.5)
            .count();
        Ok(())
    }
}

/// Multi-resolution STFT distance (as the Parallel WaveGAN / Vocos losses): spectral convergence
/// plus mean absolute log-magnitude difference, averaged over 512/1024/2048-point STFTs.
pub fn mrstft_distance(reference: &[f32], other: &[f32]) -> Result<f64> {
    let n = reference.len().min(other.len());
    let mut total = 0.0;
    let sizes = [(512i64, 128i64), (1024, 256), (2048, 512)];
    for (fft, hop) in sizes {
        let w = Tensor::hann_window_periodic(fft, true, (Kind::Float, Device::Cpu));
        let mag = |x: &[f32]| -> Result<Tensor> {
            Ok(Tensor::from_slice(&x[..n])
                .view([1, -1])
                .f_stft(fft, hop, fft, Some(&w), false, true, true, false)?
                .abs())
        };
        let (a, b) = (mag(reference)?, mag(other)?);
        let sc = (&a - &b).norm().double_value(&[]) / a.norm().double_value(&[]).max(1e-9);
        let lm = (a.clamp_min(1e-5).log() - b.clamp_min(1e-5).log())
            .abs()
            .mean(Kind::Float)
            .double_value(&[]);
        total += sc + lm;
    }
    Ok(total / sizes.len() as f64)
}

/// Scores the source audio (row 0) and each candidate's round trip on `opts.clips` held-out
/// clips; returns the scores and the markdown table.
pub fn run(
    opts: &CeilingOptions,
    candidates: &[Candidate],
    progress: bool,
) -> Result<(Vec<Score>, String)> {
    let ds: DatasetConfig = read_config(&opts.dataset)?;
    // The classifier always trains on the analyzers' 64-band features (a 128-band dataset is
    // re-analysed from its audio), so every row is judged by the same one.
    let analysis = MelConfig::default();
    let an = Analyzer {
        front: analyzers::front_end(&analysis)?,
        clf: classifier::Classifier::train(&opts.dataset, 3000)?,
        cfg: analysis,
    };
    let renderer = Renderer::load(&opts.soundfont, ANALYSIS_RATE)?;
    let corpus = opts.corpus.as_deref().map(Corpus::open).transpose()?;
    let fronts: Vec<MelFrontEnd> = candidates
        .iter()
        .map(|c| MelFrontEnd::new(&c.mel, Device::Cpu))
        .collect::<tutti_model::Result<_>>()?;
    let mut source = Score::default();
    let mut scores = vec![Score::default(); candidates.len()];
    let _g = tch::no_grad_guard();
    for i in 0..opts.clips {
        let id = opts.first_id + i;
        let (piece, _) = draw_piece(&ds, id, corpus.as_ref());
        let fams = piece.families_heard(ds.seconds);
        let (wave16, _) = renderer.render(&piece, ds.seconds)?;
        an.score(&mut source, &wave16, piece.bpm, piece.mode, &fams)?;
        let mut by_rate: Vec<(u32, Vec<f32>)> = vec![(ANALYSIS_RATE, wave16)];
        for ((c, front), s) in candidates.iter().zip(&fronts).zip(scores.iter_mut()) {
            let sr = c.mel.sample_rate;
            let src = match by_rate.iter().find(|(r, _)| *r == sr) {
                Some((_, w)) => w.clone(),
                None => {
                    let (w, _) = renderer.at_rate(sr).render(&piece, ds.seconds)?;
                    by_rate.push((sr, w.clone()));
                    w
                }
            };
            let t0 = Instant::now();
            let mel = front.log_mel(&Tensor::from_slice(&src).view([1, -1]))?;
            let mut back = Vec::<f32>::try_from(
                c.vocoder
                    .vocode(&mel)?
                    .squeeze_dim(0)
                    .to_kind(Kind::Float)
                    .contiguous(),
            )?;
            s.vocode_s += t0.elapsed().as_secs_f64();
            back.resize(src.len(), 0.0);
            let (src16, back16) = (
                resample(&src, sr, ANALYSIS_RATE)?,
                resample(&back, sr, ANALYSIS_RATE)?,
            );
            an.score(s, &back16, piece.bpm, piece.mode, &fams)?;
            s.mrstft += mrstft_distance(&src16, &back16)?;
        }
        if progress {
            eprintln!("ceiling: clip {}/{}", i + 1, opts.clips);
        }
    }
    let md = table(&source, candidates, &scores, opts.clips);
    let mut all = vec![source];
    all.extend(scores);
    Ok((all, md))
}

fn table(source: &Score, candidates: &[Candidate], scores: &[Score], clips: usize) -> String {
    let pct = |v: f64| format!("{:.0}%", 100.0 * v);
    let keep = |v: f64, of: f64| {
        if of > 0.0 {
            format!("{:.0}%", 100.0 * v / of)
        } else {
            "-".into()
        }
    };
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Round trip on {clips} held-out rendered clips (10 s), analysed at 16 kHz. Kept: each \
         score as a share of the source audio's. MR-STFT: spectral convergence + log-magnitude \
         L1 over 512/1024/2048-point STFTs, lower is better.\n"
    );
    let _ = writeln!(
        md,
        "| representation | tempo within 8% (kept) | mode right (kept) | instruments heard (kept) | MR-STFT distance | vocode s per clip | keeps >= 90% of all three |"
    );
    let _ = writeln!(md, "| --- | --- | --- | --- | --- | --- | --- |");
    let _ = writeln!(
        md,
        "| source audio (no round trip) | {} | {} | {} | 0 | - | - |",
        pct(source.tempo()),
        pct(source.mode()),
        pct(source.instruments())
    );
    for (c, s) in candidates.iter().zip(scores) {
        let ok = [
            (s.tempo(), source.tempo()),
            (s.mode(), source.mode()),
            (s.instruments(), source.instruments()),
        ]
        .iter()
        .all(|(v, of)| *v >= 0.9 * of);
        let _ = writeln!(
            md,
            "| {} | {} ({}) | {} ({}) | {} ({}) | {:.3} | {:.2} | {} |",
            c.name,
            pct(s.tempo()),
            keep(s.tempo(), source.tempo()),
            pct(s.mode()),
            keep(s.mode(), source.mode()),
            pct(s.instruments()),
            keep(s.instruments(), source.instruments()),
            s.mrstft / s.clips.max(1) as f64,
            s.vocode_s / s.clips.max(1) as f64,
            if ok { "yes" } else { "no" }
        );
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resampling_keeps_a_tone_and_the_distance_sees_loss() {
        let sr = 24_000u32;
        let tone: Vec<f32> = (0..sr as usize)
            .map(|i| (2.0 * std::f32::consts::PI * 440.0 * i as f32 / sr as f32).sin())
            .collect();
        let down = resample(&tone, sr, 16_000).unwrap();
        assert_eq!(down.len(), 16_000);
        let want: Vec<f32> = (0..16_000)
            .map(|i| (2.0 * std::f32::consts::PI * 440.0 * i as f32 / 16_000.0).sin())
            .collect();
        let err = down
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(err < 1e-3, "max error {err}");
        assert_eq!(mrstft_distance(&want, &want).unwrap(), 0.0);
        let quiet: Vec<f32> = want.iter().map(|v| v * 0.5).collect();
        assert!(mrstft_distance(&want, &quiet).unwrap() > 0.3);
    }
}
