//! The numeric conditioners' forward with gradients. The runtime's `Conditioners::embed` runs
//! under `no_grad` (inference); training recomputes the same function from the same variables
//! (`Conditioners::new` registers them), so the trained weights load into the runtime unchanged.
//! A test checks that both agree.

use std::collections::HashMap;

use tch::{Device, Kind, Tensor};
use tutti_shared::prompt::{Controls, Mode};

use tutti_model::conditioners::{ConditionerConfig, NumberRange};

fn var<'a>(vars: &'a HashMap<String, Tensor>, name: &str) -> &'a Tensor {
    vars.get(name)
        .unwrap_or_else(|| panic!("conditioner variable {name} is registered by Conditioners::new"))
}

fn mix(emb: Tensor, known: &[bool], unknown: &Tensor) -> Tensor {
    let k: Vec<f32> = known.iter().map(|&k| if k { 1.0 } else { 0.0 }).collect();
    let k = Tensor::from_slice(&k).to_device(emb.device()).unsqueeze(1);
    &emb * &k + unknown.unsqueeze(0) * (1.0 - &k)
}

fn number(
    vars: &HashMap<String, Tensor>,
    prefix: &str,
    r: NumberRange,
    values: &[Option<f32>],
) -> Tensor {
    let fourier = var(vars, &format!("{prefix}.fourier"));
    let dev = fourier.device();
    let normed: Vec<f32> = values
        .iter()
        .map(|v| (v.unwrap_or(r.min).clamp(r.min, r.max) - r.min) / (r.max - r.min))
        .collect();
    let x = Tensor::from_slice(&normed).to_device(dev).unsqueeze(1);
    let freqs = &x * fourier.unsqueeze(0) * (2.0 * std::f64::consts::PI);
    let feats = Tensor::cat(&[&x, &freqs.sin(), &freqs.cos()], 1);
    let w = var(vars, &format!("{prefix}.proj.weight"));
    let b = var(vars, &format!("{prefix}.proj.bias"));
    let emb = feats.linear(w, Some(b));
    let known: Vec<bool> = values.iter().map(Option::is_some).collect();
    mix(emb, &known, var(vars, &format!("{prefix}.unknown")))
}

fn table(vars: &HashMap<String, Tensor>, prefix: &str, values: &[Option<i64>]) -> Tensor {
    let t = var(vars, &format!("{prefix}.table"));
    let rows = t.size()[0];
    let idx: Vec<i64> = values
        .iter()
        .map(|v| v.unwrap_or(0).rem_euclid(rows))
        .collect();
    let emb = t.index_select(0, &Tensor::from_slice(&idx).to_device(t.device()));
    let known: Vec<bool> = values.iter().map(Option::is_some).collect();
    mix(emb, &known, var(vars, &format!("{prefix}.unknown")))
}

/// `[B, cfg.output_dim()]` on `device`, differentiable in the variables.
pub fn embed(
    vars: &HashMap<String, Tensor>,
    cfg: &ConditionerConfig,
    controls: &[Controls],
    device: Device,
) -> Tensor {
    let mut parts = Vec::new();
    if let Some(r) = cfg.duration {
        let v: Vec<Option<f32>> = controls.iter().map(|c| Some(c.duration_s)).collect();
        parts.push(number(vars, "duration", r, &v));
    }
    if let Some(r) = cfg.tempo {
        let v: Vec<Option<f32>> = controls.iter().map(|c| c.bpm).collect();
        parts.push(number(vars, "tempo", r, &v));
    }
    if cfg.key {
        let v: Vec<Option<i64>> = controls.iter().map(|c| c.key.map(i64::from)).collect();
        parts.push(table(vars, "key", &v));
    }
    if cfg.mode {
        let v: Vec<Option<i64>> = controls
            .iter()
            .map(|c| c.mode.map(|m| if m == Mode::Minor { 1 } else { 0 }))
            .collect();
        parts.push(table(vars, "mode", &v));
    }
    if parts.is_empty() {
        return Tensor::zeros([controls.len() as i64, 0], (Kind::Float, device));
    }
    Tensor::cat(&parts, 1).to_device(device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn;
    use tutti_model::conditioners::Conditioners;

    #[test]
    fn matches_the_runtime() {
        let cfg = ConditionerConfig::builtin(8, 6, 30.0);
        let vs = nn::VarStore::new(Device::Cpu);
        let c = Conditioners::new(vs.root(), &cfg);
        let controls = [
            Controls {
                duration_s: 3.0,
                bpm: Some(90.0),
                key: Some(4),
                mode: Some(Mode::Minor),
            },
            Controls {
                duration_s: 10.0,
                bpm: None,
                key: None,
                mode: Some(Mode::Major),
            },
        ];
        let a = c.embed(&controls, Device::Cpu);
        let b = embed(&vs.variables(), &cfg, &controls, Device::Cpu).detach();
        assert!(a.allclose(&b, 1e-6, 1e-6, false));
    }
}
