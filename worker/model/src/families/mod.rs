//! Model families, one folder each: a family composes the shared parts (`nn`, `text`,
//! `samplers`, `decoders`) into a pack that the farm can load, step and render.

pub mod mel;
pub mod stable_audio;

use std::path::Path;

use crate::Result;

/// A human-readable summary of the pack at `path`, by its family.
pub fn inspect(path: &Path) -> Result<String> {
    if stable_audio::model::is_stable_audio_pack(path) {
        stable_audio::model::inspect(path)
    } else {
        mel::pack::inspect(path)
    }
}
