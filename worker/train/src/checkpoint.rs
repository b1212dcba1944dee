//! Training checkpoints: one safetensors file holding groups of named f32 tensors (`param.`,
//! `adam_m.`, `adam_v.`, `ema.`) and a JSON `state` in its metadata (step, losses, settings).
//! Written to a temporary file and renamed, so an interrupted save never leaves a torn file.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::{de::DeserializeOwned, Serialize};
use tch::Tensor;

use super::{file_err, Result, TrainError};
use tutti_model::weights;

/// Saves `groups` (prefix, tensors) and `state`.
pub fn save<S: Serialize>(
    path: &Path,
    groups: &[(&str, &BTreeMap<String, Tensor>)],
    state: &S,
) -> Result<()> {
    let mut named = Vec::new();
    for (prefix, tensors) in groups {
        for (k, t) in tensors.iter() {
            named.push((format!("{prefix}.{k}"), t.detach()));
        }
    }
    let json = serde_json::to_string(state).map_err(|e| file_err(path, e))?;
    let meta = HashMap::from([("state".to_string(), json)]);
    let bytes = weights::to_safetensors_bytes(&named, Some(meta))?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(|e| file_err(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| file_err(path, e))?;
    Ok(())
}

/// A loaded checkpoint.
pub struct Loaded {
    pub tensors: BTreeMap<String, Tensor>,
    pub state_json: String,
}

pub fn load(path: &Path) -> Result<Loaded> {
    let file = weights::read_safetensors(path)?;
    let state_json = file
        .metadata
        .get("state")
        .cloned()
        .ok_or_else(|| file_err(path, "no training state in the metadata"))?;
    Ok(Loaded {
        tensors: file.tensors,
        state_json,
    })
}

impl Loaded {
    pub fn state<S: DeserializeOwned>(&self) -> Result<S> {
        serde_json::from_str(&self.state_json)
            .map_err(|e| TrainError::Input(format!("checkpoint state: {e}")))
    }

    /// Copies group `prefix` into `into` (same names and shapes, strictly).
    pub fn restore(&self, prefix: &str, into: &mut BTreeMap<String, Tensor>) -> Result<()> {
        let _g = tch::no_grad_guard();
        for (k, t) in into.iter_mut() {
            let key = format!("{prefix}.{k}");
            let src = self
                .tensors
                .get(&key)
                .ok_or_else(|| TrainError::Input(format!("checkpoint lacks {key}")))?;
            if src.size() != t.size() {
                return Err(TrainError::Input(format!(
                    "checkpoint {key}: shape {:?}, expected {:?}",
                    src.size(),
                    t.size()
                )));
            }
            t.f_copy_(&src.to_kind(t.kind()).to_device(t.device()))?;
        }
        Ok(())
    }

    /// The tensors of group `prefix`, without the prefix.
    pub fn group(&self, prefix: &str) -> BTreeMap<String, Tensor> {
        let p = format!("{prefix}.");
        self.tensors
            .iter()
            .filter_map(|(k, t)| {
                k.strip_prefix(&p)
                    .map(|s| (s.to_string(), t.shallow_clone()))
            })
            .collect()
    }
}
