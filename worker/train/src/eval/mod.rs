//! `tutti train eval PACK`: generates from a fixed, held-out prompt set and measures prompt
//! adherence with the analyzers: tempo within 8%, requested mode detected, diversity across
//! seeds. Writes `report.md`, spectrogram PNGs and WAVs. `calibrate` runs the same analyzers on
//! rendered dataset clips, to show how far the analyzers themselves can be trusted.

pub mod analyzers;
pub mod classifier;
pub mod prompts;
pub mod vocoder_check;

use std::fmt::Write as _;
use std::path::Path;

use tch::Device;
use tutti_shared::prompt::{self, Mode};

use super::{data, file_err, plot, Result};
use tutti_model::Family;
use tutti_model::Pipeline;

/// Settings of an evaluation.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    pub steps: usize,
    pub seconds: f32,
    pub seeds: usize,
    pub guidance: Option<f64>,
    /// Evaluate only the first prompts.
    pub limit: Option<usize>,
    /// Dataset to train the instrument-family classifier on (none: not measured).
    pub classifier_dataset: Option<std::path::PathBuf>,
    /// Prompts to use instead of the held-out set (e.g. the README's).
    pub prompts: Vec<String>,
}

impl Default for EvalOptions {
    fn default() -> Self {
        Self {
            steps: 30,
            seconds: 10.0,
            seeds: 2,
            guidance: None,
            limit: None,
            classifier_dataset: None,
            prompts: Vec::new(),
        }
    }
}

/// One prompt's results.
#[derive(Debug, Clone)]
pub struct EvalRow {
    pub prompt: String,
    pub bpm: Option<f32>,
    pub mode: Option<Mode>,
    pub measured_bpm: Vec<f64>,
    pub measured_mode: Vec<Mode>,
    /// Mean log-mel distance between seeds.
    pub seed_distance: f64,
    /// Requested families and, per seed, how many of them the classifier hears.
    pub families: Vec<crate::music::Family>,
    pub families_heard: Vec<usize>,
}

#[derive(Debug, Clone)]
pub struct Report {
    pub rows: Vec<EvalRow>,
    pub tempo_accuracy: Option<f64>,
    /// Tempo within 8% at a metrical level (`analyzers::METRICAL_FACTORS`).
    pub tempo_metrical: Option<f64>,
    pub mode_accuracy: Option<f64>,
    pub family_accuracy: Option<f64>,
    pub mean_seed_distance: f64,
    pub markdown: String,
}

fn ratio(hits: usize, n: usize) -> Option<f64> {
    (n > 0).then(|| hits as f64 / n as f64)
}

fn mode_word(m: Mode) -> &'static str {
    match m {
        Mode::Major => "major",
        Mode::Minor => "minor",
    }
}

/// Generates every prompt with `seeds` seeds and measures it.
pub fn evaluate(pack: &Path, out: &Path, opts: &EvalOptions) -> Result<Report> {
    std::fs::create_dir_all(out).map_err(|e| file_err(out, e))?;
    let p = Pipeline::load(pack, Device::Cpu)?;
    // The analyzers' own front end (16 kHz, 64 bands) whatever the pack's mel, so that packs on
    // other representations are measured alike; audio at another rate is resampled to it.
    let pack_rate = p.config().mel.sample_rate;
    let mel_cfg = tutti_model::mel::MelConfig::default();
    let front = analyzers::front_end(&mel_cfg)?;
    let fps = mel_cfg.sample_rate as f64 / mel_cfg.hop_length as f64;
    let list: Vec<&str> = if opts.prompts.is_empty() {
        prompts::PROMPTS.to_vec()
    } else {
        opts.prompts.iter().map(String::as_str).collect()
    };
    let list = &list[..opts.limit.unwrap_or(list.len()).min(list.len())];
    let mut rows = Vec::new();
    let clf = match &opts.classifier_dataset {
        Some(ds) => Some(classifier::Classifier::train(ds, 3000)?),
        None => None,
    };
    for (i, text) in list.iter().enumerate() {
        let mut params = p.default_params(text, opts.seconds);
        params.controls = prompt::parse_controls(text, opts.seconds);
        params.steps = opts.steps;
        params.seed = 1000 + i as u64;
        params.variations = opts.seeds;
        if let Some(g) = opts.guidance {
            params.guidance_scale = g;
        }
        let mut st = p.prepare(&params)?;
        p.denoise(&mut st, opts.steps, &mut |_| {
            std::ops::ControlFlow::Continue(())
        })?;
        let audio = p.render(&st)?;
        let mut mels = Vec::new();
        let (mut bpms, mut modes) = (Vec::new(), Vec::new());
        let families = classifier::families_in(text);
        let mut families_heard = Vec::new();
        for (s, wave) in audio.iter().enumerate() {
            let wave = &crate::resample::resample(wave, pack_rate, mel_cfg.sample_rate)?;
            let (mel, frames) = analyzers::log_mel(&front, wave)?;
            if let Some(c) = &clf {
                let p = c.predict(&mel, mel_cfg.n_mels, frames);
                let heard = classifier::FAMILIES
                    .iter()
                    .zip(&p)
                    .filter(|(f, p)| families.contains(f) && **p >= 0.5)
                    .count();
                families_heard.push(heard);
            }
            if let Some(b) = analyzers::tempo(&mel, mel_cfg.n_mels, frames, fps) {
                bpms.push(b);
            }
            modes.push(analyzers::key(&analyzers::chroma(&front, &mel_cfg, wave)?).1);
            if s == 0 {
                plot::spectrogram_png(
                    &out.join(format!("prompt{i:02}.png")),
                    mel_cfg.n_mels,
                    frames,
                    &mel,
                )?;
            }
            write_wav(
                &out.join(format!("prompt{i:02}_seed{s}.wav")),
                wave,
                mel_cfg.sample_rate,
            )?;
            mels.push(mel);
        }
        let mut dist = Vec::new();
        for a in 0..mels.len() {
            for b in a + 1..mels.len() {
                dist.push(analyzers::mel_distance(&mels[a], &mels[b]));
            }
        }
        let c = params.controls;
        rows.push(EvalRow {
            prompt: text.to_string(),
            bpm: c.bpm,
            mode: c.mode,
            measured_bpm: bpms,
            measured_mode: modes,
            seed_distance: if dist.is_empty() {
                0.0
            } else {
                dist.iter().sum::<f64>() / dist.len() as f64
            },
            families,
            families_heard,
        });
    }
    Ok(report(
        pack,
        opts,
        rows,
        clf.map(|c| (c.held_out_accuracy, c.held_out_recall)),
    ))
}

fn report(pack: &Path, opts: &EvalOptions, rows: Vec<EvalRow>, clf: Option<(f64, f64)>) -> Report {
    let (mut t_hit, mut t_n, mut m_hit, mut m_n) = (0, 0, 0, 0);
    let mut t_metrical = 0;
    let (mut f_hit, mut f_n) = (0, 0);
    let mut md = String::new();
    let _ = writeln!(md, "# Evaluation of `{}`\n", pack.display());
    let _ = writeln!(md, "{} prompts x {} seeds, {} s, {} steps. Tempo: onset autocorrelation, within 8%. Mode: 4096-point chroma vs Temperley key profiles. Diversity: mean log-mel L1 distance between seeds.\n", rows.len(), opts.seeds, opts.seconds, opts.steps);
    let _ = writeln!(
        md,
        "| # | prompt | BPM asked | BPM measured | mode asked | mode detected | instruments heard | seed distance |"
    );
    let _ = writeln!(md, "| --- | --- | --- | --- | --- | --- | --- | --- |");
    for (i, r) in rows.iter().enumerate() {
        if let Some(b) = r.bpm {
            for m in &r.measured_bpm {
                t_n += 1;
                t_hit += usize::from(analyzers::tempo_ok(*m, b as f64, 0.08));
                t_metrical += usize::from(analyzers::tempo_metrical(*m, b as f64, 0.08));
            }
        }
        if let Some(mode) = r.mode {
            for m in &r.measured_mode {
                m_n += 1;
                m_hit += usize::from(*m == mode);
            }
        }
        for h in &r.families_heard {
            f_n += r.families.len();
            f_hit += h;
        }
        let heard: Vec<String> = r
            .families_heard
            .iter()
            .map(|h| format!("{h}/{}", r.families.len()))
            .collect();
        let bpms: Vec<String> = r.measured_bpm.iter().map(|b| format!("{b:.0}")).collect();
        let modes: Vec<&str> = r.measured_mode.iter().map(|m| mode_word(*m)).collect();
        let _ = writeln!(
            md,
            "| {i} | {} | {} | {} | {} | {} | {} | {:.3} |",
            r.prompt,
            r.bpm.map_or("-".into(), |b| format!("{b:.0}")),
            bpms.join(", "),
            r.mode.map_or("-", mode_word),
            modes.join(", "),
            if r.families.is_empty() {
                "-".to_string()
            } else {
                heard.join(", ")
            },
            r.seed_distance
        );
    }
    let tempo_accuracy = ratio(t_hit, t_n);
    let tempo_metrical = ratio(t_metrical, t_n);
    let mode_accuracy = ratio(m_hit, m_n);
    let mean_seed_distance =
        rows.iter().map(|r| r.seed_distance).sum::<f64>() / rows.len().max(1) as f64;
    let pct = |v: Option<f64>| v.map_or("n/a".into(), |v| format!("{:.0}%", 100.0 * v));
    let family_accuracy = ratio(f_hit, f_n);
    let _ = writeln!(md, "\n**Tempo within 8%: {} of {t_n} generations ({} at a metrical level of it: x1, x2, x1/2, x3/2, x2/3). Mode right: {} of {m_n}. Requested instrument families heard: {} of {f_n}. Mean seed distance: {mean_seed_distance:.3}.**", pct(tempo_accuracy), pct(tempo_metrical), pct(mode_accuracy), pct(family_accuracy));
    match clf {
        Some((a, r)) => {
            let _ = writeln!(md, "\nInstrument classifier (log-mel statistics + MLP, trained on the rendered clips): {:.0}% per-family accuracy on held-out rendered clips; it hears {:.0}% of the families present there (the ceiling of the figure above).", 100.0 * a, 100.0 * r);
        }
        None => {
            let _ = writeln!(
                md,
                "\nInstrument family: not measured (no classifier dataset given)."
            );
        }
    }
    Report {
        rows,
        tempo_accuracy,
        tempo_metrical,
        mode_accuracy,
        family_accuracy,
        mean_seed_distance,
        markdown: md,
    }
}

/// Writes the report's markdown to `out/report.md`.
pub fn write_report(out: &Path, r: &Report) -> Result<()> {
    let p = out.join("report.md");
    std::fs::write(&p, &r.markdown).map_err(|e| file_err(&p, e))
}

/// How right the analyzers are on rendered clips with exact labels, and how they go wrong.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Calibration {
    pub clips: usize,
    /// Tempo within 8% of the true BPM.
    pub tempo: f64,
    /// Tempo within 8% at one of the metrical levels (`analyzers::METRICAL_FACTORS`).
    pub tempo_metrical: f64,
    /// Mode right.
    pub mode: f64,
    /// Mode wrong because the relative key (same pitch set) was found.
    pub mode_relative: f64,
}

impl Calibration {
    /// The report's line.
    pub fn markdown(&self) -> String {
        let p = |v: f64| format!("{:.0}%", 100.0 * v);
        format!(
            "Analyzers on {} rendered training clips (ground truth): tempo within 8% {}, at a metrical level of it (x1, x2, x1/2, x3/2, x2/3) {}; mode right {}, the relative key found instead {}.",
            self.clips,
            p(self.tempo),
            p(self.tempo_metrical),
            p(self.mode),
            p(self.mode_relative)
        )
    }
}

/// The analyzers on the last `n` rendered clips of a dataset (the classifier trains on the first).
pub fn calibrate(dataset: &Path, n: usize) -> Result<Calibration> {
    let cfg = crate::dataset::read_config(dataset)?;
    let rows = data::read_manifest(dataset)?;
    let an = tutti_model::mel::MelConfig::default();
    let front = analyzers::front_end(&an)?;
    let fps = an.sample_rate as f64 / an.hop_length as f64;
    let (mut t, mut tm, mut m, mut rel, mut k) = (0, 0, 0, 0, 0);
    for r in rows.iter().rev().take(n) {
        let wave = crate::resample::resample(
            &data::read_audio(dataset, r.id)?,
            cfg.mel.sample_rate,
            an.sample_rate,
        )?;
        let (mel, frames) = analyzers::log_mel(&front, &wave)?;
        if let Some(b) = analyzers::tempo(&mel, an.n_mels, frames, fps) {
            t += usize::from(analyzers::tempo_ok(b, r.bpm as f64, 0.08));
            tm += usize::from(analyzers::tempo_metrical(b, r.bpm as f64, 0.08));
        }
        let (tonic, mode, _) = analyzers::key(&analyzers::chroma(&front, &an, &wave)?);
        m += usize::from(mode == r.mode);
        rel += usize::from(mode != r.mode && tonic == analyzers::relative_tonic(r.tonic, r.mode));
        k += 1;
    }
    let share = |v: usize| v as f64 / k.max(1) as f64;
    Ok(Calibration {
        clips: k,
        tempo: share(t),
        tempo_metrical: share(tm),
        mode: share(m),
        mode_relative: share(rel),
    })
}

fn write_wav(path: &Path, wave: &[f32], sr: u32) -> Result<()> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: sr,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).map_err(|e| file_err(path, e))?;
    for s in wave {
        w.write_sample((s.clamp(-1.0, 1.0) * 32767.0) as i16)
            .map_err(|e| file_err(path, e))?;
    }
    w.finalize().map_err(|e| file_err(path, e))
}

pub use self::prompts::PROMPTS;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_report_markdown() {
        let r = report(
            Path::new("p"),
            &EvalOptions::default(),
            vec![EvalRow {
                prompt: "x, 120 BPM".into(),
                bpm: Some(120.0),
                mode: Some(Mode::Minor),
                measured_bpm: vec![121.0, 60.0],
                measured_mode: vec![Mode::Minor, Mode::Major],
                seed_distance: 0.5,
                families: vec![crate::music::Family::Piano],
                families_heard: vec![1, 0],
            }],
            Some((0.9, 0.8)),
        );
        assert_eq!(r.tempo_accuracy, Some(0.5));
        assert_eq!(r.tempo_metrical, Some(1.0)); // 60 is half time
        assert_eq!(r.mode_accuracy, Some(0.5));
        assert!(r.markdown.contains(
            "| 0 | x, 120 BPM | 120 | 121, 60 | minor | minor, major | 1/1, 0/1 | 0.500 |"
        ));
        assert_eq!(r.family_accuracy, Some(0.5));
    }
}
