//! How well a pack's vocoder inverts true log-mels: rendered clips -> log-mel -> vocoder ->
//! log-mel again, compared with the original (mean absolute log-mel difference), next to
//! Griffin-Lim's figure on the same clips.

use std::path::Path;

use tch::{Device, Tensor};

use super::analyzers;
use crate::{data, Result};
use tutti_model::pack::LoadedPack;
use tutti_model::vocoder::{GriffinLim, GriffinLimConfig, Vocoder};

/// (pack vocoder, Griffin-Lim) mean log-mel L1 over the first `n` clips of a dataset.
pub fn vocoder_check(pack: &Path, dataset: &Path, n: usize) -> Result<(f64, f64)> {
    let p = LoadedPack::load(pack, Device::Cpu, tch::Kind::Float)?;
    let mel_cfg = p.config.mel.clone();
    let front = analyzers::front_end(&mel_cfg)?;
    let gl = GriffinLim::new(&GriffinLimConfig::default(), &mel_cfg, Device::Cpu)?;
    let rows = data::read_manifest(dataset)?;
    let (mut a, mut b, mut k) = (0.0, 0.0, 0);
    for r in rows.iter().rev().take(n) {
        let wave = data::read_audio(dataset, r.id)?;
        let (mel, frames) = analyzers::log_mel(&front, &wave)?;
        let t = Tensor::from_slice(&mel).view([1, mel_cfg.n_mels as i64, frames as i64]);
        for (voc, acc) in [
            (&*p.vocoder as &dyn Vocoder, &mut a),
            (&gl as &dyn Vocoder, &mut b),
        ] {
            let y = voc.vocode(&t)?.squeeze_dim(0).contiguous();
            let mut v = vec![0f32; y.numel()];
            y.f_copy_data(&mut v, y.numel())?;
            v.resize(wave.len(), 0.0);
            let (m2, _) = analyzers::log_mel(&front, &v)?;
            *acc += analyzers::mel_distance(&mel, &m2);
        }
        k += 1;
    }
    Ok((a / k.max(1) as f64, b / k.max(1) as f64))
}
