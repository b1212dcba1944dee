//! Starting a run on more mel bands from a pack trained on fewer (e.g. 64 -> 128): the DiT's
//! transformer works on its own width and never sees a band, so only the layers that touch the
//! bands change, and they change so that the widened model computes the pack's function on
//! band-averaged input, its output copied to the finer bands. With `U` `[to, from]` (each fine
//! band takes the coarse band it lies in: mel bands are evenly spaced in mel, so fine bands
//! `2k, 2k+1` lie in coarse band `k`) and `D` `[from, to]` (the mean of the fine bands in a coarse
//! one, so `D U = I`):
//!
//! - `proj_in.weight` `W [inner, from]` -> `W D`
//! - `preprocess_conv.weight`, `postprocess_conv.weight` `C [from, from, 1]` -> `U C D`
//!   (both convs sit in a residual `x + C x`, which `U`/`D` carry through)
//! - `proj_out.weight` `W [from, inner]` -> `U W`
//!
//! This keeps the hours a pack has been trained for when the representation gains bands.

use tch::{Kind, Tensor};

use super::{Result, TrainError};

/// `(U [to, from], D [from, to])` for `to >= from` bands.
pub fn band_maps(from: usize, to: usize) -> Result<(Tensor, Tensor)> {
    if from == 0 || to < from {
        return Err(TrainError::Input(format!(
            "a pack of {from} mel bands can start a run of {to} bands only when {to} >= {from}"
        )));
    }
    let mut u = vec![0f32; to * from];
    let mut count = vec![0f32; from];
    for j in 0..to {
        let k = j * from / to;
        u[j * from + k] = 1.0;
        count[k] += 1.0;
    }
    let u = Tensor::from_slice(&u).view([to as i64, from as i64]);
    let d = u.transpose(0, 1) / Tensor::from_slice(&count).view([from as i64, 1]);
    Ok((u, d.contiguous()))
}

/// The widened weight `name` (a pack tensor of `from` bands) for a run of `to` bands; `None` for a
/// weight that does not touch the bands.
pub fn widen(name: &str, w: &Tensor, from: usize, to: usize) -> Result<Option<Tensor>> {
    let (u, d) = band_maps(from, to)?;
    let w = w.to_kind(Kind::Float);
    Ok(match name {
        "proj_in.weight" => Some(w.matmul(&d)),
        "proj_out.weight" => Some(u.matmul(&w)),
        "preprocess_conv.weight" | "postprocess_conv.weight" => {
            Some(u.matmul(&w.squeeze_dim(2)).matmul(&d).unsqueeze(2))
        }
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_widened_layers_compute_the_packs_function_on_band_means() {
        tch::manual_seed(3);
        let (from, to, inner) = (4usize, 8usize, 5i64);
        let (u, d) = band_maps(from, to).unwrap();
        assert!(d.matmul(&u).allclose(
            &Tensor::eye(from as i64, (Kind::Float, tch::Device::Cpu)),
            1e-6,
            1e-6,
            false
        ));
        let w_in = Tensor::randn([inner, from as i64], (Kind::Float, tch::Device::Cpu));
        let conv = Tensor::randn(
            [from as i64, from as i64, 1],
            (Kind::Float, tch::Device::Cpu),
        );
        let w_out = Tensor::randn([from as i64, inner], (Kind::Float, tch::Device::Cpu));
        let x = Tensor::randn([to as i64, 3], (Kind::Float, tch::Device::Cpu));
        // The pack on band means: h = W_in (y + C y), y = D x; out = U (W_out h + P (W_out h)).
        let y = d.matmul(&x);
        let c = conv.squeeze_dim(2);
        let h = w_in.matmul(&(&y + c.matmul(&y)));
        let o = w_out.matmul(&h);
        let want = u.matmul(&(&o + c.matmul(&o)));
        // The widened model on the fine bands.
        let w_in2 = widen("proj_in.weight", &w_in, from, to).unwrap().unwrap();
        let c2 = widen("preprocess_conv.weight", &conv, from, to)
            .unwrap()
            .unwrap()
            .squeeze_dim(2);
        let w_out2 = widen("proj_out.weight", &w_out, from, to).unwrap().unwrap();
        let h2 = w_in2.matmul(&(&x + c2.matmul(&x)));
        let o2 = w_out2.matmul(&h2);
        let got = &o2 + c2.matmul(&o2);
        assert!(got.allclose(&want, 1e-4, 1e-4, false));
        assert!(
            widen("transformer_blocks.0.attn1.to_q.weight", &w_in, from, to)
                .unwrap()
                .is_none()
        );
        assert!(band_maps(8, 4).is_err());
    }
}
