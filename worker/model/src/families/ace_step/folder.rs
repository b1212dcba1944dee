//! Reading one component of a diffusers folder: its `config.json` and its weights, in one file
//! (`diffusion_pytorch_model.safetensors`, or transformers' `model.safetensors`) or in shards
//! named by `diffusion_pytorch_model.safetensors.index.json` (the XL transformer).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Deserialize;
use tch::{Device, Kind};

use crate::weights::source::{read_json, TensorSource};
use crate::weights::{self};
use crate::{ModelError, Result};

const SINGLE: [&str; 2] = ["diffusion_pytorch_model.safetensors", "model.safetensors"];
const INDEX: &str = "diffusion_pytorch_model.safetensors.index.json";

#[derive(Debug, Deserialize)]
struct Index {
    weight_map: BTreeMap<String, String>,
}

/// The text of `dir/config.json`.
pub(crate) fn config_text(dir: &Path) -> Result<String> {
    let path = dir.join("config.json");
    std::fs::read_to_string(&path).map_err(|e| ModelError::Pack {
        path: path.display().to_string(),
        message: format!("cannot read: {e}"),
    })
}

/// The component's weights on `device` as `kind`.
pub(crate) fn weights(dir: &Path, device: Device, kind: Kind) -> Result<TensorSource> {
    if let Some(file) = SINGLE.iter().map(|f| dir.join(f)).find(|p| p.is_file()) {
        return TensorSource::read(&file, device, kind);
    }
    let index_path = dir.join(INDEX);
    if !index_path.is_file() {
        return Err(ModelError::Pack {
            path: dir.display().to_string(),
            message: format!("no weights ({}, {} or {INDEX})", SINGLE[0], SINGLE[1]),
        });
    }
    let index: Index = read_json(&index_path, "weight index")?;
    let shards: BTreeSet<&String> = index.weight_map.values().collect();
    let mut tensors = BTreeMap::new();
    for shard in shards {
        // A shard is a file name beside the index, never a path elsewhere.
        if shard.contains('/') || shard.contains('\\') || shard.starts_with('.') {
            return Err(ModelError::Pack {
                path: index_path.display().to_string(),
                message: format!("shard {shard:?} is not a file name"),
            });
        }
        tensors.extend(weights::read_safetensors(&dir.join(shard))?.tensors);
    }
    for key in index.weight_map.keys() {
        if !tensors.contains_key(key) {
            return Err(ModelError::Weights {
                key: key.clone(),
                message: format!("named by {} but in no shard", index_path.display()),
            });
        }
    }
    Ok(TensorSource::new(
        dir.display().to_string(),
        tensors,
        device,
        kind,
    ))
}

/// That the component has its weights (one file, or an index whose shards are all there),
/// without reading them.
pub(crate) fn check_weights(dir: &Path) -> Result<()> {
    if SINGLE.iter().any(|f| dir.join(f).is_file()) {
        return Ok(());
    }
    let index_path = dir.join(INDEX);
    if !index_path.is_file() {
        return Err(ModelError::Pack {
            path: dir.display().to_string(),
            message: format!("no weights ({}, {} or {INDEX})", SINGLE[0], SINGLE[1]),
        });
    }
    let index: Index = read_json(&index_path, "weight index")?;
    for shard in index.weight_map.values().collect::<BTreeSet<_>>() {
        if !dir.join(shard).is_file() {
            return Err(ModelError::Pack {
                path: index_path.display().to_string(),
                message: format!("shard {shard} is missing"),
            });
        }
    }
    Ok(())
}
