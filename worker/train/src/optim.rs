//! AdamW, gradient clipping by global norm, and an exponential moving average of the weights,
//! written out so that every piece of optimizer state can be checkpointed and restored exactly.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// AdamW hyper-parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Linear warm-up steps of the learning rate.
    pub warmup: u64,
    /// A linear decay of the learning rate to zero at the end of the run; without it the rate
    /// stays constant after the warm-up (runs made before it read as without).
    #[serde(default)]
    pub anneal: Option<Anneal>,
}

/// The learning rate falls linearly from its full value at step `from` to zero at step `to`.
///
/// At a constant rate the weights wander between checkpoints of the same loss (what the model
/// renders in minor moved by several clips of 20 between them); annealing settles them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anneal {
    pub from: u64,
    pub to: u64,
}

impl Anneal {
    /// The last `steps` steps before `until`.
    pub fn last(steps: u64, until: u64) -> Self {
        Self {
            from: until.saturating_sub(steps),
            to: until,
        }
    }

    /// The factor on the learning rate at step `t`.
    fn factor(&self, t: u64) -> f64 {
        if t <= self.from {
            1.0
        } else if t >= self.to {
            0.0
        } else {
            (self.to - t) as f64 / (self.to - self.from) as f64
        }
    }
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            lr: 5e-4,
            beta1: 0.9,
            beta2: 0.99,
            eps: 1e-8,
            weight_decay: 0.01,
            warmup: 200,
            anneal: None,
        }
    }
}

/// Named trainable parameters (shallow clones of variables) and their Adam moments.
pub struct AdamW {
    pub cfg: AdamWConfig,
    pub params: BTreeMap<String, Tensor>,
    pub m: BTreeMap<String, Tensor>,
    pub v: BTreeMap<String, Tensor>,
    /// Steps taken (bias correction uses it).
    pub t: u64,
}

impl AdamW {
    pub fn new(cfg: AdamWConfig, params: BTreeMap<String, Tensor>) -> Self {
        let zeros = |p: &Tensor| p.zeros_like().to_kind(Kind::Float);
        let m = params.iter().map(|(k, p)| (k.clone(), zeros(p))).collect();
        let v = params.iter().map(|(k, p)| (k.clone(), zeros(p))).collect();
        Self {
            cfg,
            params,
            m,
            v,
            t: 0,
        }
    }

    pub fn zero_grad(&mut self) {
        for p in self.params.values_mut() {
            p.zero_grad();
        }
    }

    /// Clips gradients to a global L2 norm of `max`; returns the norm before clipping.
    pub fn clip_grad_norm(&mut self, max: f64) -> f64 {
        let _g = tch::no_grad_guard();
        let mut total = 0f64;
        for p in self.params.values() {
            let g = p.grad();
            if g.defined() {
                total += g.square().sum(Kind::Double).double_value(&[]);
            }
        }
        let norm = total.sqrt();
        if norm.is_finite() && norm > max {
            let scale = max / (norm + 1e-6);
            for p in self.params.values() {
                let mut g = p.grad();
                if g.defined() {
                    let _ = g.g_mul_scalar_(scale);
                }
            }
        }
        norm
    }

    /// The learning rate at the next step.
    pub fn lr(&self) -> f64 {
        let w = self.cfg.warmup.max(1) as f64;
        let anneal = self.cfg.anneal.map_or(1.0, |a| a.factor(self.t));
        self.cfg.lr * ((self.t + 1) as f64 / w).min(1.0) * anneal
    }

    /// One AdamW update (decoupled weight decay on tensors with two or more dimensions).
    pub fn step(&mut self) {
        let _g = tch::no_grad_guard();
        let lr = self.lr();
        self.t += 1;
        let c = &self.cfg;
        let bc1 = 1.0 - c.beta1.powi(self.t as i32);
        let bc2 = 1.0 - c.beta2.powi(self.t as i32);
        for (name, p) in self.params.iter_mut() {
            let g = p.grad();
            if !g.defined() {
                continue;
            }
            let g = g.to_kind(Kind::Float);
            let (Some(m), Some(v)) = (self.m.get_mut(name), self.v.get_mut(name)) else {
                continue;
            };
            let _ = m.g_mul_scalar_(c.beta1);
            let _ = m.g_add_(&(&g * (1.0 - c.beta1)));
            let _ = v.g_mul_scalar_(c.beta2);
            let _ = v.g_add_(&(g.square() * (1.0 - c.beta2)));
            if p.dim() >= 2 && c.weight_decay > 0.0 {
                let _ = p.g_mul_scalar_(1.0 - lr * c.weight_decay);
            }
            let denom = (&*v / bc2).sqrt() + c.eps;
            let update = (&*m / bc1) / denom * lr;
            let _ = p.g_sub_(&update.to_kind(p.kind()));
        }
    }
}

/// An exponential moving average of parameters: `decay = min(max_decay, (1 + t) / (10 + t))`.
pub struct Ema {
    pub max_decay: f64,
    pub shadow: BTreeMap<String, Tensor>,
}

impl Ema {
    pub fn new(max_decay: f64, params: &BTreeMap<String, Tensor>) -> Self {
        let _g = tch::no_grad_guard();
        Self {
            max_decay,
            shadow: params
                .iter()
                .map(|(k, p)| (k.clone(), p.detach().copy()))
                .collect(),
        }
    }

    pub fn update(&mut self, params: &BTreeMap<String, Tensor>, step: u64) {
        let _g = tch::no_grad_guard();
        let d = self
            .max_decay
            .min((1.0 + step as f64) / (10.0 + step as f64));
        for (k, p) in params {
            if let Some(s) = self.shadow.get_mut(k) {
                let _ = s.g_mul_scalar_(d);
                let _ = s.g_add_(&(p.detach() * (1.0 - d)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opt(anneal: Option<Anneal>) -> AdamW {
        let cfg = AdamWConfig {
            lr: 1.0,
            warmup: 10,
            anneal,
            ..Default::default()
        };
        AdamW::new(cfg, BTreeMap::new())
    }

    fn lr_at(o: &mut AdamW, t: u64) -> f64 {
        o.t = t;
        o.lr()
    }

    #[test]
    fn the_rate_warms_up_then_holds_without_an_anneal() {
        let mut o = opt(None);
        assert!((lr_at(&mut o, 0) - 0.1).abs() < 1e-12);
        assert_eq!(lr_at(&mut o, 9), 1.0);
        assert_eq!(lr_at(&mut o, 1_000_000), 1.0);
    }

    #[test]
    fn an_anneal_falls_linearly_to_zero_over_the_last_steps() {
        let mut o = opt(Some(Anneal::last(100, 1_000)));
        assert_eq!(lr_at(&mut o, 900), 1.0);
        assert!((lr_at(&mut o, 950) - 0.5).abs() < 1e-12);
        assert!((lr_at(&mut o, 990) - 0.1).abs() < 1e-12);
        assert_eq!(lr_at(&mut o, 1_000), 0.0);
        assert_eq!(lr_at(&mut o, 2_000), 0.0);
    }

    #[test]
    fn a_config_written_before_the_anneal_reads_as_without_one() {
        let old =
            r#"{"lr":0.0005,"beta1":0.9,"beta2":0.99,"eps":1e-8,"weight_decay":0.01,"warmup":200}"#;
        let cfg: AdamWConfig = serde_json::from_str(old).expect("an old config parses");
        assert_eq!(cfg.anneal, None);
        assert_eq!(cfg, AdamWConfig::default());
    }
}
