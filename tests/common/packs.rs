//! More model packs for a test farm's models folder (`FarmOptions::packs`), next to the tiny
//! mel pack every farm has: tiny random Stable Audio packs of both published layouts, imported
//! as `tutti model import` does (built from the committed parity fixtures, as in
//! `tests/stable_audio.rs`).

use std::path::{Path, PathBuf};

use tutti_model::stable_audio::{import, ImportOptions};
use tutti_model::tiny_sao;
use tutti_model::PackConfig;

/// Latent frames of the tiny Stable Audio packs' window (hop 2048 at 44.1 kHz: 1.48 s).
pub const SAO_FRAMES: i64 = 32;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("worker/model/tests/fixtures")
        .join(name)
}

/// `stable-audio-open-1.0` and `stable-audio-open-small` under `models`.
pub fn stable_audio(models: &Path) {
    let root = models.parent().expect("the farm's folder");
    let (open, small, t5) = (
        root.join("src/open"),
        root.join("src/small"),
        root.join("src/t5-base"),
    );
    tiny_sao::diffusers_folder(&fixture("sao-tiny"), &open, SAO_FRAMES).expect("open folder");
    tiny_sao::sat_folder(&fixture("sao-small-tiny"), &small, SAO_FRAMES).expect("small folder");
    tiny_sao::t5_folder(&fixture("sao-tiny"), &t5).expect("t5 folder");
    let opts = |t5: Option<PathBuf>| ImportOptions {
        name: None,
        version: None,
        t5,
    };
    import(&open, &models.join("stable-audio-open-1.0"), &opts(None)).expect("import 1.0");
    import(
        &small,
        &models.join("stable-audio-open-small"),
        &opts(Some(t5)),
    )
    .expect("import small");
}

/// The Stable Audio packs, and the tiny pack serving keys as tutti-mini does: "minor" alone in
/// listed tonics, other minor tonics a semitone away played back in the asked key.
pub fn stable_audio_and_tiny_key_serving(models: &Path) {
    stable_audio(models);
    let tiny = models.join("tiny");
    let mut cfg = PackConfig::read(&tiny).expect("the tiny pack's model.toml");
    cfg.defaults.mode_tonics.minor = [0, 4, 7].map(tutti_model::pack::Tonic).to_vec(); // C, E, G
    cfg.defaults.varispeed_semitones = 1;
    std::fs::write(tiny.join("model.toml"), cfg.to_toml().expect("as TOML")).expect("write");
}
