//! A small instrument-family classifier trained on the rendered clips: log-mel statistics (per
//! band mean, standard deviation and mean positive frame difference) into a two-layer MLP with
//! one sigmoid output per family (multi-label). Clips whose id ends in 0 are held out to measure
//! it; the evaluation then asks it which families a generated clip contains.

use std::path::Path;

use rand::seq::SliceRandom;
use tch::nn::{self, Module, OptimizerConfig};
use tch::{Device, Kind, Tensor};

use crate::data::{self, ManifestRow};
use crate::music::Family;
use crate::{rng_for, Result, TrainError};
use tutti_model::mel::MelConfig;

pub const FAMILIES: [Family; 10] = [
    Family::Piano,
    Family::ElectricPiano,
    Family::Organ,
    Family::AcousticGuitar,
    Family::ElectricGuitar,
    Family::Strings,
    Family::Flute,
    Family::SynthPad,
    Family::Bass,
    Family::Drums,
];

/// Families a prompt names (longest words first, so "electric piano" is not also "piano").
pub fn families_in(prompt: &str) -> Vec<Family> {
    let mut text = prompt.to_lowercase();
    let mut fams: Vec<Family> = FAMILIES.to_vec();
    fams.sort_by_key(|f| std::cmp::Reverse(f.word().len()));
    let mut out = Vec::new();
    for f in fams {
        if let Some(i) = text.find(f.word()) {
            out.push(f);
            text.replace_range(i..i + f.word().len(), "");
        }
    }
    out
}

/// Features of a log-mel `[n_mels, frames]`.
pub fn features(mel: &[f32], n_mels: usize, frames: usize) -> Vec<f32> {
    let mut f = Vec::with_capacity(3 * n_mels);
    for m in 0..n_mels {
        let row = &mel[m * frames..(m + 1) * frames];
        let mean = row.iter().sum::<f32>() / frames as f32;
        let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / frames as f32;
        let flux = row.windows(2).map(|w| (w[1] - w[0]).max(0.0)).sum::<f32>() / frames as f32;
        f.extend([mean, var.sqrt(), flux]);
    }
    f
}

pub struct Classifier {
    net: nn::Sequential,
    mean: Tensor,
    std: Tensor,
    _vs: nn::VarStore,
    /// Per-label accuracy on the held-out clips.
    pub held_out_accuracy: f64,
    /// Fraction of the families present in held-out clips that it hears (what the evaluation
    /// asks of generated clips).
    pub held_out_recall: f64,
}

fn labels(r: &ManifestRow) -> Vec<f32> {
    FAMILIES
        .iter()
        .map(|f| if r.families.contains(f) { 1.0 } else { 0.0 })
        .collect()
}

impl Classifier {
    /// Trains on up to `max_clips` clips of a dataset.
    pub fn train(dataset: &Path, max_clips: usize) -> Result<Self> {
        let cfg = crate::dataset::read_config(dataset)?;
        // Always the analyzers' features (16 kHz, 64 bands), so that packs on other mel settings
        // are judged by the same classifier: a dataset on other bands is re-analysed from audio.
        let analysis = MelConfig::default();
        let n_mels = analysis.n_mels;
        let front = if cfg.mel == analysis {
            None
        } else if cfg.mel.sample_rate == analysis.sample_rate {
            Some(super::analyzers::front_end(&analysis)?)
        } else {
            return Err(TrainError::Input(format!(
                "{}: the classifier needs 16 kHz audio, the dataset is at {} Hz",
                dataset.display(),
                cfg.mel.sample_rate
            )));
        };
        let mut rows = data::read_manifest(dataset)?;
        rows.shuffle(&mut rng_for(0, 40, 0));
        rows.truncate(max_clips);
        let (mut xtr, mut ytr, mut xte, mut yte) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for r in &rows {
            let (mel, frames) = match &front {
                None => (data::read_mel(dataset, r.id, n_mels, r.frames)?, r.frames),
                Some(f) => super::analyzers::log_mel(f, &data::read_audio(dataset, r.id)?)?,
            };
            let (x, y) = (features(&mel, n_mels, frames), labels(r));
            if r.id % 10 == 0 {
                xte.extend(x);
                yte.extend(y);
            } else {
                xtr.extend(x);
                ytr.extend(y);
            }
        }
        let d = 3 * n_mels as i64;
        let k = FAMILIES.len() as i64;
        if xtr.is_empty() || xte.is_empty() {
            return Err(TrainError::Input(
                "the classifier needs clips to train and to test on".into(),
            ));
        }
        let xtr = Tensor::from_slice(&xtr).view([-1, d]);
        let ytr = Tensor::from_slice(&ytr).view([-1, k]);
        let mean = xtr.mean_dim(0, true, Kind::Float);
        let std = xtr.std_dim(0, true, true) + 1e-4;
        let xtr = (&xtr - &mean) / &std;
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let p = vs.root();
        let net = nn::seq()
            .add(nn::linear(&p / "l1", d, 128, Default::default()))
            .add_fn(|x| x.relu())
            .add(nn::linear(&p / "l2", 128, k, Default::default()));
        let mut opt = nn::Adam::default().wd(1e-4).build(&vs, 3e-3)?;
        for _ in 0..400 {
            let loss = net
                .forward(&xtr)
                .binary_cross_entropy_with_logits::<Tensor>(&ytr, None, None, tch::Reduction::Mean);
            opt.backward_step(&loss);
        }
        let mut c = Self {
            net,
            mean,
            std,
            _vs: vs,
            held_out_accuracy: 0.0,
            held_out_recall: 0.0,
        };
        let xte = Tensor::from_slice(&xte).view([-1, d]);
        let yte = Tensor::from_slice(&yte).view([-1, k]);
        let pred = c.probs(&xte).ge(0.5).to_kind(Kind::Float);
        c.held_out_recall = (&pred * &yte).sum(Kind::Float).double_value(&[])
            / yte.sum(Kind::Float).double_value(&[]).max(1.0);
        c.held_out_accuracy = pred
            .eq_tensor(&yte)
            .to_kind(Kind::Float)
            .mean(Kind::Float)
            .double_value(&[]);
        Ok(c)
    }

    fn probs(&self, x: &Tensor) -> Tensor {
        let _g = tch::no_grad_guard();
        self.net.forward(&((x - &self.mean) / &self.std)).sigmoid()
    }

    /// Probability of each family in [`FAMILIES`] for one log-mel.
    pub fn predict(&self, mel: &[f32], n_mels: usize, frames: usize) -> Vec<f64> {
        let x = Tensor::from_slice(&features(mel, n_mels, frames)).view([1, -1]);
        let p = self.probs(&x).view([-1]);
        (0..FAMILIES.len() as i64)
            .map(|i| p.double_value(&[i]))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_families_in_prompts() {
        let f = families_in("chill lo-fi beat with electric piano, piano and drums");
        assert_eq!(f, vec![Family::ElectricPiano, Family::Piano, Family::Drums]);
    }
}
