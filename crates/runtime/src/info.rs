//! What every service reports about itself in its `Info` answer.

use vidcascade_proto::v1;

/// This build: the workspace version and, when the build set `VIDCASCADE_GIT_SHA`, the commit.
pub fn build_info() -> v1::BuildInfo {
    v1::BuildInfo {
        version: env!("CARGO_PKG_VERSION").into(),
        git_sha: option_env!("VIDCASCADE_GIT_SHA").unwrap_or("").into(),
    }
}

/// The model a service runs: f32 weights on the CPU (0 parameters when not counted).
pub fn model_info(name: &str, parameter_count: u64) -> v1::ModelInfo {
    model_info_on(name, parameter_count, v1::DType::F32, "cpu")
}

/// The model a service runs, with its weights' dtype and the device (`cpu`, `cuda:0`).
pub fn model_info_on(
    name: &str,
    parameter_count: u64,
    dtype: v1::DType,
    device: &str,
) -> v1::ModelInfo {
    v1::ModelInfo {
        name: name.to_string(),
        revision: String::new(),
        parameter_count,
        dtype: dtype as i32,
        device: device.into(),
    }
}
