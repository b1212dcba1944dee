//! Strict safetensors loading: every variable of a module must be in the file with its exact shape,
//! and every tensor of the file must be a variable (tch's `VarStore::load` silently ignores extra
//! keys, which hides a wrong layout or a typo in a converter).

pub mod source;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use safetensors::{Dtype, SafeTensors};
use tch::{nn, Kind, Tensor};

use crate::{ModelError, Result};

/// Tensors of a safetensors file (on CPU, in the file's dtype) and its metadata.
pub struct TensorFile {
    pub tensors: BTreeMap<String, Tensor>,
    pub metadata: HashMap<String, String>,
}

fn kind_of(dtype: Dtype, key: &str) -> Result<Kind> {
    Ok(match dtype {
        Dtype::F32 => Kind::Float,
        Dtype::F64 => Kind::Double,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        Dtype::I16 => Kind::Int16,
        Dtype::I8 => Kind::Int8,
        Dtype::U8 => Kind::Uint8,
        Dtype::BOOL => Kind::Bool,
        other => {
            return Err(ModelError::Weights {
                key: key.to_string(),
                message: format!("unsupported dtype {other:?}"),
            })
        }
    })
}

/// Parses safetensors bytes. `what` names the source in error messages.
pub fn parse_safetensors(bytes: &[u8], what: &str) -> Result<TensorFile> {
    let (_, header) = SafeTensors::read_metadata(bytes)
        .map_err(|e| ModelError::Checkpoint(format!("{what}: {e}")))?;
    let metadata = header.metadata().clone().unwrap_or_default();
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| ModelError::Checkpoint(format!("{what}: {e}")))?;
    let mut tensors = BTreeMap::new();
    for (name, view) in st.tensors() {
        let kind = kind_of(view.dtype(), &name)?;
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        let t = Tensor::f_from_data_size(view.data(), &shape, kind)?;
        tensors.insert(name, t);
    }
    Ok(TensorFile { tensors, metadata })
}

/// Reads a safetensors file, with a clear error when it is missing or malformed.
pub fn read_safetensors(path: &Path) -> Result<TensorFile> {
    let bytes = std::fs::read(path).map_err(|e| ModelError::Pack {
        path: path.display().to_string(),
        message: format!("cannot read weights: {e}"),
    })?;
    parse_safetensors(&bytes, &path.display().to_string()).map_err(|e| match e {
        ModelError::Checkpoint(m) => ModelError::Pack {
            path: path.display().to_string(),
            message: m,
        },
        other => other,
    })
}

/// Serialises named tensors with metadata: on CPU, contiguous; f64 and int64 kept, bool as u8,
/// every other kind as f32.
pub fn to_safetensors_bytes(
    tensors: &[(String, Tensor)],
    metadata: Option<HashMap<String, String>>,
) -> Result<Vec<u8>> {
    let mut owned: Vec<(String, Vec<u8>, Vec<usize>, Dtype)> = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let (t, dtype) = match t.kind() {
            Kind::Int64 => (t.to_device(tch::Device::Cpu).contiguous(), Dtype::I64),
            Kind::Double => (t.to_device(tch::Device::Cpu).contiguous(), Dtype::F64),
            Kind::Bool => (
                t.to_device(tch::Device::Cpu)
                    .to_kind(Kind::Uint8)
                    .contiguous(),
                Dtype::U8,
            ),
            _ => (
                t.to_device(tch::Device::Cpu)
                    .to_kind(Kind::Float)
                    .contiguous(),
                Dtype::F32,
            ),
        };
        let numel = t.numel();
        let elt = t.kind().elt_size_in_bytes();
        let mut data = vec![0u8; numel * elt];
        t.f_copy_data_u8(&mut data, numel)?;
        let shape = t.size().iter().map(|&d| d as usize).collect();
        owned.push((name.clone(), data, shape, dtype));
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = owned
        .iter()
        .map(|(n, d, s, dt)| {
            safetensors::tensor::TensorView::new(*dt, s.clone(), d)
                .map(|v| (n.clone(), v))
                .map_err(|e| ModelError::Checkpoint(format!("tensor {n}: {e}")))
        })
        .collect::<Result<_>>()?;
    safetensors::serialize(views, metadata).map_err(|e| ModelError::Checkpoint(e.to_string()))
}

/// Copies `tensors` into the variables of `vs`, strictly: a missing key, an unknown key or a wrong
/// shape is an error naming the key and `source`. Keys for which `ignore` is true are skipped.
pub fn load_strict(
    vs: &nn::VarStore,
    tensors: &BTreeMap<String, Tensor>,
    source: &str,
    ignore: &dyn Fn(&str) -> bool,
) -> Result<()> {
    let vars = vs.variables();
    for key in tensors.keys() {
        if !ignore(key) && !vars.contains_key(key) {
            return Err(ModelError::Weights {
                key: key.clone(),
                message: format!("unknown key in {source} (the model has no such variable)"),
            });
        }
    }
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    let _guard = tch::no_grad_guard();
    for name in names {
        let var = &vars[name];
        let src = tensors.get(name).ok_or_else(|| ModelError::Weights {
            key: name.clone(),
            message: format!("missing from {source}"),
        })?;
        if src.size() != var.size() {
            return Err(ModelError::Weights {
                key: name.clone(),
                message: format!(
                    "wrong shape in {source}: expected {:?}, found {:?}",
                    var.size(),
                    src.size()
                ),
            });
        }
        let mut var = var.shallow_clone();
        var.f_copy_(&src.to_kind(var.kind()).to_device(var.device()))?;
    }
    Ok(())
}

/// Reads `path` and loads it strictly into `vs` (see [`load_strict`]).
pub fn load_file_strict(
    vs: &nn::VarStore,
    path: &Path,
    ignore: &dyn Fn(&str) -> bool,
) -> Result<()> {
    let file = read_safetensors(path)?;
    load_strict(vs, &file.tensors, &path.display().to_string(), ignore)
}

/// Writes the variables of `vs` (f32) to `path`.
pub fn save_var_store(vs: &nn::VarStore, path: &Path) -> Result<()> {
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    let bytes = to_safetensors_bytes(&vars, None)?;
    std::fs::write(path, bytes)?;
    Ok(())
}
