//! The adversarial half of vocoder training, as Vocos trains (after HiFi-GAN and UnivNet): a
//! multi-period discriminator (the waveform folded by periods 2, 3, 5, 7, 11, 2-D convolutions
//! along time) and a multi-resolution discriminator (2-D convolutions over STFT magnitudes at
//! 512/1024/2048 points), hinge losses and an L1 feature-matching loss. Narrower than the
//! papers' (8-64 channels instead of 32-1024) so that a step fits two CPU cores.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tch::{nn, nn::Module, Device, Kind, Tensor};

/// Sizes and weights of the adversarial losses (saved in the vocoder checkpoint).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GanConfig {
    /// The adversarial losses switch on at this step (the reconstruction losses train alone
    /// before it, which keeps the early, noisy discriminator from steering the generator).
    pub from_step: u64,
    pub periods: Vec<i64>,
    pub resolutions: Vec<i64>,
    /// Widths of the period discriminator (`c, 2c, 4c, 4c`).
    pub channels: i64,
    /// Width of the resolution discriminator: its 2-D convolutions over whole spectrograms
    /// are most of a step's cost on a CPU, so it is the narrower one.
    #[serde(default = "mrd_channels")]
    pub mrd_channels: i64,
    /// Weight of the generator's adversarial + feature-matching terms against the
    /// reconstruction loss (2 x log-mel L1 + MR-STFT). Vocos' ratio is 1 : 45 to its mel L1;
    /// at our mel weight of 2 that is 0.044; a little more, since MR-STFT is in the sum too.
    pub weight: f64,
    /// Vocos weights the resolution discriminator's terms by 0.1 (`mrd_loss_coeff`).
    pub mrd_weight: f64,
    pub lr: f64,
}

fn mrd_channels() -> i64 {
    8
}

impl Default for GanConfig {
    fn default() -> Self {
        Self {
            from_step: 0,
            periods: vec![2, 3, 5, 7, 11],
            resolutions: vec![512, 1024, 2048],
            channels: 16,
            mrd_channels: mrd_channels(),
            weight: 0.1,
            mrd_weight: 0.1,
            lr: 2e-4,
        }
    }
}

/// A stack of 2-D convolutions with leaky ReLUs; the last layer gives the logits.
struct Stack {
    layers: Vec<nn::Conv2D>,
    post: nn::Conv2D,
}

impl Stack {
    /// Returns (logits, the feature maps of every layer).
    fn forward(&self, x: &Tensor) -> (Tensor, Vec<Tensor>) {
        let mut feats = Vec::with_capacity(self.layers.len() + 1);
        let mut x = x.shallow_clone();
        for l in &self.layers {
            let y = l.forward(&x);
            x = y.maximum(&(&y * 0.1));
            feats.push(x.shallow_clone());
        }
        let y = self.post.forward(&x);
        feats.push(y.shallow_clone());
        (y, feats)
    }
}

fn conv(p: nn::Path<'_>, i: i64, o: i64, k: [i64; 2], s: [i64; 2], pad: [i64; 2]) -> nn::Conv2D {
    nn::conv(
        p,
        i,
        o,
        k,
        nn::ConvConfigND {
            stride: s,
            padding: pad,
            ..Default::default()
        },
    )
}

/// Both discriminators and their variables.
pub struct Discriminators {
    pub cfg: GanConfig,
    periods: Vec<Stack>,
    resolutions: Vec<Stack>,
    vs: nn::VarStore,
}

impl Discriminators {
    pub fn new(cfg: &GanConfig, device: Device) -> Self {
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let c = cfg.channels;
        let periods = cfg
            .periods
            .iter()
            .map(|p| {
                let q = &root / "mpd" / *p;
                let chans = [1, c, 2 * c, 4 * c, 4 * c];
                let layers = (0..4)
                    .map(|i| {
                        let s = if i < 3 { 3 } else { 1 };
                        conv(&q / i, chans[i], chans[i + 1], [5, 1], [s, 1], [2, 0])
                    })
                    .collect();
                let post = conv(&q / "post", 4 * c, 1, [3, 1], [1, 1], [1, 0]);
                Stack { layers, post }
            })
            .collect();
        let resolutions = cfg
            .resolutions
            .iter()
            .map(|n| {
                let q = &root / "mrd" / *n;
                let w = cfg.mrd_channels;
                let mut layers = vec![conv(&q / 0, 1, w, [3, 9], [1, 2], [1, 4])];
                for i in 1..4 {
                    layers.push(conv(&q / i, w, w, [3, 9], [1, 2], [1, 4]));
                }
                layers.push(conv(&q / 4, w, w, [3, 3], [1, 1], [1, 1]));
                let post = conv(&q / "post", w, 1, [3, 3], [1, 1], [1, 1]);
                Stack { layers, post }
            })
            .collect();
        Self {
            cfg: cfg.clone(),
            periods,
            resolutions,
            vs,
        }
    }

    /// Trainable variables, by name (for the optimizer and the checkpoint).
    pub fn params(&self) -> BTreeMap<String, Tensor> {
        self.vs.variables().into_iter().collect()
    }

    /// Every sub-discriminator's (logits, features) for waveforms `[B, T]`; the first
    /// `periods.len()` are the period ones.
    pub fn forward(&self, wave: &Tensor) -> Vec<(Tensor, Vec<Tensor>)> {
        let (b, t) = (wave.size()[0], wave.size()[1]);
        let mut out = Vec::new();
        for (p, d) in self.cfg.periods.iter().zip(&self.periods) {
            let pad = (p - t % p) % p;
            let x = if pad > 0 {
                wave.unsqueeze(1).reflection_pad1d([0, pad]).squeeze_dim(1)
            } else {
                wave.shallow_clone()
            };
            out.push(d.forward(&x.view([b, 1, (t + pad) / p, *p])));
        }
        for (n, d) in self.cfg.resolutions.iter().zip(&self.resolutions) {
            let win = Tensor::hann_window_periodic(*n, true, (Kind::Float, wave.device()));
            let mag = wave
                .stft(*n, n / 4, *n, Some(&win), true, true, true, false)
                .abs()
                .transpose(1, 2)
                .unsqueeze(1);
            out.push(d.forward(&mag));
        }
        out
    }

    /// The discriminators' hinge loss on real and (detached) generated audio, each
    /// sub-discriminator's mean, the resolution ones weighted by `mrd_weight`.
    pub fn d_loss(&self, real: &Tensor, fake: &Tensor) -> Tensor {
        let (r, f) = (self.forward(real), self.forward(&fake.detach()));
        let np = self.cfg.periods.len();
        let mut loss = Tensor::zeros([], (Kind::Float, real.device()));
        for (i, ((lr, _), (lf, _))) in r.iter().zip(&f).enumerate() {
            let w = self.weight(i, np);
            let l = (-lr + 1.0).relu().mean(Kind::Float) + (lf + 1.0).relu().mean(Kind::Float);
            loss += l * w;
        }
        loss
    }

    /// The generator's adversarial hinge loss plus feature matching (L1 between the
    /// discriminators' feature maps of real and generated audio), weighted as `d_loss`.
    pub fn g_loss(&self, real: &Tensor, fake: &Tensor) -> Tensor {
        let r = tch::no_grad(|| self.forward(real));
        let f = self.forward(fake);
        let np = self.cfg.periods.len();
        let mut loss = Tensor::zeros([], (Kind::Float, real.device()));
        for (i, ((_, fr), (lf, ff))) in r.iter().zip(&f).enumerate() {
            let w = self.weight(i, np);
            let adv = (-lf + 1.0).relu().mean(Kind::Float);
            let mut fm = Tensor::zeros([], (Kind::Float, real.device()));
            for (a, b) in fr.iter().zip(ff) {
                fm += (a - b).abs().mean(Kind::Float);
            }
            loss += (adv + fm / fr.len() as f64) * w;
        }
        loss
    }

    fn weight(&self, i: usize, np: usize) -> f64 {
        let (np_f, nr_f) = (np.max(1) as f64, self.cfg.resolutions.len().max(1) as f64);
        if i < np {
            1.0 / np_f
        } else {
            self.cfg.mrd_weight / nr_f
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_discriminators_learn_to_tell_a_tone_from_noise() {
        tch::manual_seed(0);
        let cfg = GanConfig {
            periods: vec![2, 3],
            resolutions: vec![256],
            channels: 4,
            mrd_channels: 4,
            mrd_weight: 1.0,
            lr: 2e-3,
            ..Default::default()
        };
        let d = Discriminators::new(&cfg, Device::Cpu);
        let t = Tensor::arange(2048, (Kind::Float, Device::Cpu));
        let real = (t * (2.0 * std::f64::consts::PI * 440.0 / 16_000.0))
            .sin()
            .view([1, -1])
            * 0.5;
        let fake = Tensor::randn([1, 2048], (Kind::Float, Device::Cpu)) * 0.1;
        let mut opt = nn::OptimizerConfig::build(nn::Adam::default(), &d.vs, cfg.lr).unwrap();
        let first = d.d_loss(&real, &fake).double_value(&[]);
        for _ in 0..30 {
            let l = d.d_loss(&real, &fake);
            opt.backward_step(&l);
        }
        let last = d.d_loss(&real, &fake).double_value(&[]);
        assert!(last < first * 0.7, "discriminator loss {first} -> {last}");
        // The generator's loss is larger for the noise than for the real tone itself (feature
        // matching is zero and the logits say "real" for the tone).
        let g_fake = d.g_loss(&real, &fake).double_value(&[]);
        let g_real = d.g_loss(&real, &real).double_value(&[]);
        assert!(g_fake > g_real, "{g_fake} vs {g_real}");
        assert!(d.params().keys().any(|k| k.starts_with("mpd.2.")));
    }
}
