//! Where and in what precision a model runs: `--device cpu|cuda[:N]` and `--dtype
//! f32|f16|bf16`, parsed once and checked against what this binary was built with, so a
//! misconfigured replica fails at start with the flag's name instead of mid-request.

use std::fmt;
use std::str::FromStr;

use candle_core::{DType, Device, DeviceLocation};

use crate::EngineError;

/// A device as the flags name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    /// The CPU (the default; every build has it).
    #[default]
    Cpu,
    /// CUDA device `N` (`cuda` is `cuda:0`); needs a `--features cuda` build.
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || {
            let shown: String = s.chars().take(32).collect();
            format!("`{shown}` is not a device; use cpu, cuda or cuda:N")
        };
        match s {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(ordinal)) if ordinal < 64 => Ok(Self::Cuda(ordinal)),
                _ => Err(invalid()),
            },
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// The element type of a U-Net's weights and activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// IEEE binary32 (the default, and the only one on the CPU).
    #[default]
    F32,
    /// IEEE binary16: half the weight memory, tensor-core attention.
    F16,
    /// bfloat16: f32's range with 8 mantissa bits.
    Bf16,
}

impl FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "f32" => Ok(Self::F32),
            "f16" => Ok(Self::F16),
            "bf16" => Ok(Self::Bf16),
            _ => Err(format!(
                "`{}` is not a dtype; use f32, f16 or bf16",
                s.chars().take(16).collect::<String>()
            )),
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Bf16 => "bf16",
        })
    }
}

impl Precision {
    /// candle's dtype.
    pub fn dtype(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::F16 => DType::F16,
            Self::Bf16 => DType::BF16,
        }
    }
}

/// An opened device and the U-Nets' precision on it.
#[derive(Debug, Clone)]
pub struct Compute {
    /// The device models and tensors live on.
    pub device: Device,
    /// The U-Nets' weight dtype (text encoders stay f32: T5 overflows in f16).
    pub precision: Precision,
}

impl Default for Compute {
    fn default() -> Self {
        Self::cpu()
    }
}

impl Compute {
    /// The CPU in f32.
    pub fn cpu() -> Self {
        Self::f32_on(&Device::Cpu)
    }

    /// f32 on an already opened `device` (what callers that hold a `Device` run).
    pub fn f32_on(device: &Device) -> Self {
        Self {
            device: device.clone(),
            precision: Precision::F32,
        }
    }

    /// The device as the flags name it (`cpu`, `cuda:N`), for `Info` and logs.
    pub fn spec(&self) -> DeviceSpec {
        match self.device.location() {
            DeviceLocation::Cuda { gpu_id } => DeviceSpec::Cuda(gpu_id),
            _ => DeviceSpec::Cpu,
        }
    }

    /// Opens `spec` for `precision`. Half precision needs a GPU (the CPU ops are f32; the CPU
    /// would run f16 through slow generic paths), and a CUDA device needs a CUDA build.
    pub fn open(spec: DeviceSpec, precision: Precision) -> Result<Self, EngineError> {
        let invalid = |field: &str, reason: String| EngineError::InvalidRequest {
            field: field.into(),
            reason,
        };
        let device = match spec {
            DeviceSpec::Cpu if precision != Precision::F32 => {
                return Err(invalid(
                    "--dtype",
                    format!("{precision} runs on a GPU (--device cuda); the CPU runs f32"),
                ));
            }
            DeviceSpec::Cpu => Device::Cpu,
            DeviceSpec::Cuda(_) if !candle_core::utils::cuda_is_available() => {
                return Err(invalid(
                    "--device",
                    format!(
                        "{spec}: this binary was built without CUDA; build it with \
                         `cargo build --release --features cuda` (README, GPU)"
                    ),
                ));
            }
            DeviceSpec::Cuda(ordinal) => Device::new_cuda(ordinal).map_err(|e| {
                // candle appends a backtrace when RUST_BACKTRACE is set: the first line says it.
                let error = e.to_string();
                let first = error.lines().next().unwrap_or_default();
                invalid("--device", format!("{spec} could not be opened: {first}"))
            })?,
        };
        Ok(Self { device, precision })
    }

    /// The U-Nets' dtype.
    pub fn dtype(&self) -> DType {
        self.precision.dtype()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_and_dtypes_parse_and_print_back() {
        for (text, spec) in [
            ("cpu", DeviceSpec::Cpu),
            ("cuda", DeviceSpec::Cuda(0)),
            ("cuda:3", DeviceSpec::Cuda(3)),
        ] {
            assert_eq!(text.parse::<DeviceSpec>(), Ok(spec));
        }
        assert_eq!(DeviceSpec::Cuda(0).to_string(), "cuda:0");
        for bad in ["gpu", "cuda:", "cuda:x", "cuda:99", "CPU"] {
            let err = bad.parse::<DeviceSpec>().expect_err(bad);
            assert!(err.contains("cpu, cuda or cuda:N"), "{err}");
        }
        assert_eq!("bf16".parse::<Precision>(), Ok(Precision::Bf16));
        assert!("f64".parse::<Precision>().is_err());
        assert_eq!(Precision::F16.to_string(), "f16");
    }

    #[test]
    fn half_precision_on_the_cpu_is_refused_naming_the_flag() {
        let err = Compute::open(DeviceSpec::Cpu, Precision::F16).expect_err("f16 on cpu");
        assert!(
            err.to_string().starts_with("--dtype: f16 runs on a GPU"),
            "{err}"
        );
        let cpu = Compute::open(DeviceSpec::Cpu, Precision::F32).expect("f32 on the cpu");
        assert_eq!(cpu.spec(), DeviceSpec::Cpu);
    }

    #[test]
    fn a_cuda_device_without_a_gpu_is_refused_naming_the_flag() {
        match Compute::open(DeviceSpec::Cuda(0), Precision::F16) {
            // A CUDA build on a GPU machine opens it; everywhere else the flag is named.
            Ok(compute) => assert_eq!(compute.spec(), DeviceSpec::Cuda(0)),
            Err(err) => assert!(err.to_string().starts_with("--device: cuda:0"), "{err}"),
        }
    }
}
