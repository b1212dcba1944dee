//! Strict reading of a safetensors file into modules that are not `nn::VarStore`s (weights that
//! are fused at load, such as weight-normalised convolutions, or aliased keys, such as T5's
//! `shared.weight`): every key a module asks for must be in the file with the shape it expects,
//! and every key of the file must be asked for. Errors name the file and the key.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use tch::{Device, Kind, Tensor};

use crate::{weights, ModelError, Result};

/// The tensors of one file, handed out once each, converted to a device and kind.
#[derive(Debug)]
pub struct TensorSource {
    source: String,
    tensors: BTreeMap<String, Tensor>,
    taken: BTreeSet<String>,
    device: Device,
    kind: Kind,
}

impl TensorSource {
    /// Tensors named `source` in errors; handed out on `device` as `kind` (floating tensors only).
    pub fn new(
        source: impl Into<String>,
        tensors: BTreeMap<String, Tensor>,
        device: Device,
        kind: Kind,
    ) -> Self {
        Self {
            source: source.into(),
            tensors,
            taken: BTreeSet::new(),
            device,
            kind,
        }
    }

    /// Reads a safetensors file.
    pub fn read(path: &Path, device: Device, kind: Kind) -> Result<Self> {
        let file = weights::read_safetensors(path)?;
        Ok(Self::new(
            path.display().to_string(),
            file.tensors,
            device,
            kind,
        ))
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn device(&self) -> Device {
        self.device
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Whether the file has `key` (taken or not).
    pub fn contains(&self, key: &str) -> bool {
        self.tensors.contains_key(key)
    }

    /// Renames `from` to `to` (an alias in the file's naming); an error if both are present and
    /// differ, in which case neither is a safe choice.
    pub fn alias(&mut self, from: &str, to: &str) -> Result<()> {
        let Some(t) = self.tensors.remove(from) else {
            return Ok(());
        };
        match self.tensors.get(to) {
            Some(existing) if existing.size() != t.size() || !existing.equal(&t) => {
                Err(self.error(from, format!("differs from its alias {to}")))
            }
            Some(_) => Ok(()),
            None => {
                self.tensors.insert(to.to_string(), t);
                Ok(())
            }
        }
    }

    /// The tensor `key` with exactly `shape`, on the source's device and kind.
    pub fn take(&mut self, key: &str, shape: &[i64]) -> Result<Tensor> {
        let t = self.take_any(key)?;
        if t.size() != shape {
            return Err(self.error(
                key,
                format!("wrong shape: expected {shape:?}, found {:?}", t.size()),
            ));
        }
        Ok(t)
    }

    /// The tensor `key` whatever its shape (the caller checks it).
    pub fn take_any(&mut self, key: &str) -> Result<Tensor> {
        let t = self
            .tensors
            .get(key)
            .ok_or_else(|| self.error(key, "missing".into()))?;
        if self.taken.contains(key) {
            return Err(self.error(key, "asked for twice".into()));
        }
        let t = t.to_device(self.device).to_kind(self.kind);
        self.taken.insert(key.to_string());
        Ok(t)
    }

    /// Errors on the first key that no module asked for.
    pub fn finish(self) -> Result<()> {
        match self.tensors.keys().find(|k| !self.taken.contains(*k)) {
            Some(k) => Err(self.error(k, "unexpected (the model has no such weight)".into())),
            None => Ok(()),
        }
    }

    fn error(&self, key: &str, message: String) -> ModelError {
        ModelError::Weights {
            key: key.to_string(),
            message: format!("{message} in {}", self.source),
        }
    }
}

/// Reads a JSON config file into `T`, with errors naming the file.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path, what: &str) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::Pack {
        path: path.display().to_string(),
        message: format!("cannot read {what}: {e}"),
    })?;
    serde_json::from_str(&text).map_err(|e| ModelError::Pack {
        path: path.display().to_string(),
        message: format!("invalid {what}: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> TensorSource {
        let mut m = BTreeMap::new();
        m.insert(
            "a".to_string(),
            Tensor::ones([2, 3], (Kind::Float, Device::Cpu)),
        );
        m.insert(
            "b".to_string(),
            Tensor::zeros([4], (Kind::Float, Device::Cpu)),
        );
        TensorSource::new("f.safetensors", m, Device::Cpu, Kind::Float)
    }

    #[test]
    fn missing_wrong_shape_and_unexpected_keys_are_errors() {
        let mut s = source();
        let e = s.take("c", &[1]).unwrap_err().to_string();
        assert!(
            e.contains("tensor c") && e.contains("missing in f.safetensors"),
            "{e}"
        );
        let e = s.take("a", &[3, 2]).unwrap_err().to_string();
        assert!(e.contains("wrong shape"), "{e}");
        let mut s = source();
        assert_eq!(s.take("a", &[2, 3]).unwrap().size(), [2, 3]);
        let e = s.finish().unwrap_err().to_string();
        assert!(e.contains("tensor b") && e.contains("unexpected"), "{e}");
    }

    #[test]
    fn alias_renames_and_rejects_conflicts() {
        let mut s = source();
        s.alias("a", "z").unwrap();
        assert!(s.contains("z") && !s.contains("a"));
        let mut s = source();
        assert!(s.alias("a", "b").is_err());
    }
}
