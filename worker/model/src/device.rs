//! Device selection and the compute precision used on each device.

use tch::{Device, Kind};

use super::{ModelError, Result};

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
        Ok(Device::Cuda(n))
    };
    match pref.as_str() {
        "auto" | "" => Ok(if tch::Cuda::is_available() {
            Device::Cuda(0)
        } else {
            Device::Cpu
        }),
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
    }
}
