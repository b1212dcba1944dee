//! The Vocos forward with gradients, over the variables that the runtime's `Vocos::new`
//! registers (the runtime runs it under `no_grad` behind a mutex); trained weights load into the
//! runtime unchanged. A test checks both forwards agree.

use std::collections::HashMap;

use tch::{Kind, Tensor};

use super::{Result, TrainError};
use tutti_model::vocoder::VocosConfig;

fn var<'a>(v: &'a HashMap<String, Tensor>, k: &str) -> Result<&'a Tensor> {
    v.get(k)
        .ok_or_else(|| TrainError::Input(format!("vocos variable {k} is missing")))
}

fn ln(x: &Tensor, v: &HashMap<String, Tensor>, p: &str, dim: i64, eps: f64) -> Result<Tensor> {
    Ok(x.layer_norm(
        [dim],
        Some(var(v, &format!("{p}.weight"))?),
        Some(var(v, &format!("{p}.bias"))?),
        eps,
        false,
    ))
}

/// `log_mel [B, n_mels, F]` -> waveform `[B, F * hop]` (the "same" iSTFT).
pub fn forward(
    v: &HashMap<String, Tensor>,
    cfg: &VocosConfig,
    n_fft: i64,
    hop: i64,
    log_mel: &Tensor,
) -> Result<Tensor> {
    let dim = cfg.dim as i64;
    let eps = cfg.layer_norm_eps;
    let cl = |x: &Tensor, p: &str| -> Result<Tensor> {
        Ok(ln(&x.transpose(1, 2), v, p, dim, eps)?.transpose(1, 2))
    };
    let x = log_mel.conv1d(
        var(v, "backbone.embed.weight")?,
        Some(var(v, "backbone.embed.bias")?),
        [1],
        [3],
        [1],
        1,
    );
    let mut x = cl(&x, "backbone.norm")?;
    for i in 0..cfg.num_layers {
        let p = format!("backbone.convnext.{i}");
        let y = x.conv1d(
            var(v, &format!("{p}.dwconv.weight"))?,
            Some(var(v, &format!("{p}.dwconv.bias"))?),
            [1],
            [3],
            [1],
            dim,
        );
        let y = ln(&y.transpose(1, 2), v, &format!("{p}.norm"), dim, eps)?;
        let y = y
            .linear(
                var(v, &format!("{p}.pwconv1.weight"))?,
                Some(var(v, &format!("{p}.pwconv1.bias"))?),
            )
            .gelu("none");
        let y = y.linear(
            var(v, &format!("{p}.pwconv2.weight"))?,
            Some(var(v, &format!("{p}.pwconv2.bias"))?),
        );
        x = &x + (y * var(v, &format!("{p}.gamma"))?).transpose(1, 2);
    }
    let x = ln(&x.transpose(1, 2), v, "backbone.final_layer_norm", dim, eps)?;
    let spec = x
        .linear(var(v, "head.out.weight")?, Some(var(v, "head.out.bias")?))
        .transpose(1, 2);
    let parts = spec.chunk(2, 1);
    let mag = parts[0].exp().clamp_max(1e2);
    let s = Tensor::polar(&mag, &parts[1]);
    istft_same(&s, var(v, "head.istft.window")?, n_fft, hop)
}

/// Vocos' "same" iSTFT (see the runtime's vocos.rs): `frames * hop` samples.
pub fn istft_same(s: &Tensor, window: &Tensor, n: i64, hop: i64) -> Result<Tensor> {
    let frames = s.size()[2];
    let pad = (n - hop) / 2;
    let frames_td = s.f_fft_irfft(n, 1, "backward")? * window.view([1, -1, 1]);
    let eye = Tensor::eye(n, (frames_td.kind(), frames_td.device())).view([n, 1, n]);
    let y = frames_td
        .f_conv_transpose1d(&eye, None::<Tensor>, [hop], [0], [0], 1, [1])?
        .squeeze_dim(1);
    let env = window
        .square()
        .view([1, -1, 1])
        .expand([1, n, frames], false)
        .f_conv_transpose1d(&eye, None::<Tensor>, [hop], [0], [0], 1, [1])?
        .view([-1]);
    let len = y.size()[1];
    let y = y.narrow(1, pad, len - 2 * pad);
    let env = env.narrow(0, pad, len - 2 * pad).clamp_min(1e-11);
    Ok(y / env.to_kind(Kind::Float))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{nn, Device};
    use tutti_model::mel::MelConfig;
    use tutti_model::vocoder::{Vocoder, Vocos};

    #[test]
    fn matches_the_runtime() {
        let mel = MelConfig {
            n_fft: 256,
            hop_length: 64,
            win_length: 256,
            n_mels: 16,
            ..Default::default()
        };
        let cfg = VocosConfig {
            dim: 16,
            intermediate_dim: 32,
            num_layers: 2,
            ..Default::default()
        };
        let vs = nn::VarStore::new(Device::Cpu);
        let voc = Vocos::new(&vs.root(), &cfg, &mel).unwrap();
        let x = Tensor::randn([2, 16, 12], (Kind::Float, Device::Cpu));
        let a = voc.vocode(&x).unwrap();
        let b = forward(&vs.variables(), &cfg, 256, 64, &x)
            .unwrap()
            .detach();
        assert_eq!(a.size(), b.size());
        assert!(a.allclose(&b, 1e-5, 1e-5, false));
    }
}
