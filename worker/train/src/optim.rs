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
        self.cfg.lr * ((self.t + 1) as f64 / w).min(1.0)
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
