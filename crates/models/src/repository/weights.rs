//! Loading `model.safetensors` with errors a person can act on.
//!
//! candle's loaders report the first missing tensor without the file. Instead, the network is
//! first built against a recording backend that hands out zero-cost broadcast zeros and notes every
//! `(name, shape)` the module tree asks for; that list is then checked against the file's header
//! (missing tensors, wrong shapes, unsupported dtypes, and — for networks whose config must match
//! the weights exactly — tensors nobody asked for) before any weight is converted.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::{Init, VarBuilder, var_builder::SimpleBackend};
use safetensors::{Dtype as StDtype, SafeTensors};

use crate::ModelError;

/// Every tensor a module tree asks for: `(full name, shape)`, in request order.
pub type TensorManifest = Vec<(String, Vec<usize>)>;

#[derive(Default)]
struct Recorder {
    requested: Arc<Mutex<TensorManifest>>,
}

impl SimpleBackend for Recorder {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        if let Ok(mut requested) = self.requested.lock() {
            requested.push((name.to_string(), s.dims().to_vec()));
        }
        // A broadcast scalar: the right shape, no allocation.
        Tensor::zeros((), dtype, dev)?.broadcast_as(s)
    }

    fn get_unchecked(
        &self,
        name: &str,
        _dtype: DType,
        _dev: &Device,
    ) -> candle_core::Result<Tensor> {
        candle_core::bail!("tensor `{name}` was requested without a shape")
    }

    fn contains_tensor(&self, _name: &str) -> bool {
        true
    }
}

/// Runs `build` against a recording backend and returns the tensors it asked for.
pub fn expected_tensors<T>(
    build: impl FnOnce(VarBuilder<'_>) -> Result<T, ModelError>,
) -> Result<TensorManifest, ModelError> {
    let requested = Arc::new(Mutex::new(TensorManifest::new()));
    let backend: Box<dyn SimpleBackend> = Box::new(Recorder {
        requested: requested.clone(),
    });
    build(VarBuilder::from_backend(backend, DType::F32, Device::Cpu))?;
    let requested = requested.lock().map(|r| r.clone()).unwrap_or_default();
    Ok(requested)
}

/// The names and shapes stored in a safetensors buffer, checked for loadable dtypes.
pub fn stored_tensors(
    file: &Path,
    bytes: &[u8],
) -> Result<HashMap<String, Vec<usize>>, ModelError> {
    let tensors = SafeTensors::deserialize(bytes).map_err(|e| ModelError::Safetensors {
        file: file.to_path_buf(),
        reason: e.to_string(),
    })?;
    let mut stored = HashMap::new();
    for (name, view) in tensors.tensors() {
        if !matches!(view.dtype(), StDtype::F32 | StDtype::F16 | StDtype::BF16) {
            return Err(ModelError::UnsupportedDtype {
                file: file.to_path_buf(),
                tensor: name,
                dtype: format!("{:?}", view.dtype()),
            });
        }
        stored.insert(name, view.shape().to_vec());
    }
    Ok(stored)
}

/// Checks `expected` against `stored`; with `allow_extra` false, unused tensors are errors too.
pub fn check_tensors(
    file: &Path,
    expected: &TensorManifest,
    stored: &HashMap<String, Vec<usize>>,
    allow_extra: bool,
) -> Result<(), ModelError> {
    for (name, shape) in expected {
        match stored.get(name) {
            None => {
                return Err(ModelError::MissingTensor {
                    file: file.to_path_buf(),
                    tensor: name.clone(),
                    expected: shape.clone(),
                });
            }
            Some(found) if found != shape => {
                return Err(ModelError::ShapeMismatch {
                    file: file.to_path_buf(),
                    tensor: name.clone(),
                    expected: shape.clone(),
                    found: found.clone(),
                });
            }
            Some(_) => {}
        }
    }
    if !allow_extra {
        let wanted: std::collections::HashSet<&str> =
            expected.iter().map(|(n, _)| n.as_str()).collect();
        let mut extra: Vec<(&String, &Vec<usize>)> = stored
            .iter()
            .filter(|(n, _)| !wanted.contains(n.as_str()))
            .collect();
        extra.sort();
        if let Some((name, shape)) = extra.first() {
            return Err(ModelError::UnexpectedTensor {
                file: file.to_path_buf(),
                tensor: (*name).clone(),
                shape: (*shape).clone(),
            });
        }
    }
    Ok(())
}

/// Reads a weights file whole.
pub fn read_weights(file: &Path) -> Result<Vec<u8>, ModelError> {
    std::fs::read(file).map_err(|source| ModelError::Io {
        path: file.to_path_buf(),
        source,
    })
}

/// A `VarBuilder` over checked weights, converting every tensor to `dtype` on `device`.
pub fn var_builder(
    file: &Path,
    bytes: Vec<u8>,
    dtype: DType,
    device: &Device,
) -> Result<VarBuilder<'static>, ModelError> {
    VarBuilder::from_buffered_safetensors(bytes, dtype, device).map_err(|e| {
        ModelError::Safetensors {
            file: file.to_path_buf(),
            reason: e.to_string(),
        }
    })
}
