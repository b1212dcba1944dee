//! Device selection and the compute precision used on each device.

use tch::{Device, Kind};

use crate::{ModelError, Result};

/// Parses a device preference: `auto` (CUDA 0 when available, else CPU), `cpu`, `cuda` or
/// `cuda:N`.
pub fn select(pref: &str) -> Result<Device> {
    let pref = pref.trim().to_ascii_lowercase();
    let cuda = |n: usize| -> Result<Device> {
        let count = tch::Cuda::device_count().max(0) as usize;
        if n >= count {
            return Err(ModelError::Input(format!(
                "device cuda:{n} requested but {count} cuda device(s) are available"
            )));
        }
        // cuDNN then times its convolution algorithms once per shape and keeps the fastest; the
        // shapes repeat (fixed decode windows, the model's latent window), so this pays at once.
        tch::Cuda::cudnn_set_benchmark(true);
        Ok(Device::Cuda(n))
    };
    match pref.as_str() {
        "auto" | "" => {
            if tch::Cuda::is_available() {
                cuda(0)
            } else {
                Ok(Device::Cpu)
            }
        }
        "cpu" => Ok(Device::Cpu),
        "cuda" | "gpu" => cuda(0),
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => cuda(n),
            _ => Err(ModelError::Input(format!(
                "unknown device {other:?} (expected auto, cpu, cuda or cuda:N)"
            ))),
        },
    }
}

/// Puts cuDNN first in the order scaled-dot-product attention tries its backends (process-wide;
/// libtorch 2.11 tries flash, memory-efficient, math, then cuDNN). On Hopper, cuDNN attention
/// is reported 1.7-2.3x faster on long sequences (SAO 1.0's 1,025 tokens); where it refuses the
/// inputs the next backend runs, so this changes speed, not results beyond rounding. Opt-in
/// until measured here (`tutti bench stable-audio --cudnn-attention`).
pub fn put_cudnn_attention_first() -> Result<()> {
    tutti_cuda_graph::set_sdp_backend_first(tutti_cuda_graph::SdpBackend::Cudnn)?;
    Ok(())
}

/// The precision a worker runs a pack's networks in (`--precision`): `auto` is
/// [`compute_kind`]'s choice for the device; `f16` is for GPUs without fast bf16 (T4, V100).
/// Text encoders stay f32 whatever is asked (T5 overflows in f16), and so do latents, sampler
/// arithmetic and guidance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    Auto,
    F32,
    Bf16,
    F16,
}

impl Precision {
    /// The tensor kind on `device`.
    pub fn kind(self, device: Device) -> Kind {
        match self {
            Self::Auto => compute_kind(device),
            Self::F32 => Kind::Float,
            Self::Bf16 => Kind::BFloat16,
            Self::F16 => Kind::Half,
        }
    }
}

/// The tensor kinds a Stable Audio pack runs in: its DiT and projection, and its Oobleck VAE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kinds {
    pub dit: Kind,
    pub vae: Kind,
}

impl From<Kind> for Kinds {
    /// One kind for every network.
    fn from(k: Kind) -> Self {
        Self { dit: k, vae: k }
    }
}

impl Precision {
    /// The kinds of a Stable Audio pack's networks on `device`. `auto` on CUDA runs the DiT in
    /// bf16 and the VAE in f16, the precision diffusers documents for this pipeline: the
    /// decoder's stacked upsampling convolutions lose 2-3x more to bf16's 8-bit mantissa than
    /// to f16's 11 (relative L2 of a decode, random weights: 0.24 against 0.10 tiny, 0.15 bf16
    /// at real size). f16's range is the risk: random weights overflow it at real size, trained
    /// ones decode to audio in [-1, 1]; `--precision bf16` or `f32` avoids it.
    pub fn kinds(self, device: Device) -> Kinds {
        match self {
            Self::Auto if device.is_cuda() => Kinds {
                dit: Kind::BFloat16,
                vae: Kind::Half,
            },
            other => other.kind(device).into(),
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "f32" | "fp32" | "float32" => Ok(Self::F32),
            "bf16" | "bfloat16" => Ok(Self::Bf16),
            "f16" | "fp16" | "float16" | "half" => Ok(Self::F16),
            other => Err(ModelError::Input(format!(
                "unknown precision {other:?} (expected auto, f32, bf16 or f16)"
            ))),
        }
    }
}

/// The precision the denoiser runs in: fp32 on CPU (exact, and what the parity tests check),
/// bf16 on CUDA (the range of fp32, half the memory traffic; fp16 overflows in attention logits).
/// Latents, sampler arithmetic and guidance stay fp32 on every device.
pub fn compute_kind(device: Device) -> Kind {
    match device {
        Device::Cpu => Kind::Float,
        _ => Kind::BFloat16,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_preferences() {
        assert_eq!(select("cpu").unwrap(), Device::Cpu);
        assert!(select("auto").is_ok());
        assert!(select("tpu").is_err());
        assert!(select("cuda:99").is_err());
        assert_eq!(compute_kind(Device::Cpu), Kind::Float);
        assert_eq!(
            "auto".parse::<Precision>().unwrap().kind(Device::Cpu),
            Kind::Float
        );
        assert_eq!(
            "auto".parse::<Precision>().unwrap().kind(Device::Cuda(0)),
            Kind::BFloat16
        );
        assert_eq!(
            "FP16".parse::<Precision>().unwrap().kind(Device::Cuda(0)),
            Kind::Half
        );
        assert_eq!("bf16".parse::<Precision>().unwrap(), Precision::Bf16);
        let auto = Precision::Auto;
        assert_eq!(auto.kinds(Device::Cpu), Kind::Float.into());
        assert_eq!(
            (
                auto.kinds(Device::Cuda(0)).dit,
                auto.kinds(Device::Cuda(0)).vae
            ),
            (Kind::BFloat16, Kind::Half)
        );
        assert_eq!(
            Precision::Bf16.kinds(Device::Cuda(0)),
            Kind::BFloat16.into()
        );
        assert!("int8"
            .parse::<Precision>()
            .unwrap_err()
            .to_string()
            .contains("int8"));
    }
}
