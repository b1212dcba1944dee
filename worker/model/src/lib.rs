//! The model runtime: prompt -> conditioning -> guided diffusion -> latent -> audio.
//!
//! Everything here is written natively with `tch` (libtorch) and runs unchanged on CPU and CUDA.
//! The farm talks to [`served::ServedModel`] and [`DenoiseState`]; the rest is the model's parts:
//!
//! ```text
//! nn/         building blocks: attention, RMS norm, rotary embeddings, the DiT
//! text/       text encoders: BERT (MiniLM), T5 and Qwen3, with their tokenizers
//! samplers/   diffusion samplers and the seeded noise
//! decoders/   latent -> audio: the mel decoder and vocoders, the Oobleck VAE
//! weights/    safetensors I/O and tensor sources
//! families/   one folder per model family (mel, stable_audio, ace_step), each composing the parts above
//! ```

pub mod decoders;
pub mod device;
pub mod families;
pub mod nn;
pub mod samplers;
pub mod served;
pub mod state;
pub mod step;
pub mod text;
pub mod varispeed;
pub mod weights;

// The flat module names the crate had before its folders, kept so that the other crates and
// the tests read as they did.
pub use decoders::{mel, mel_decoder as decoder, oobleck, vocoder};
pub use families::mel::{conditioners, frame_cond, pack, pipeline, tiny};
pub use families::stable_audio::{
    layout, model as stable_audio, pack as stable_audio_pack, projection, run as stable_audio_run,
    sat, serve as stable_audio_serve, tiny as tiny_sao,
};
pub use nn::{attention, dit, graphed, rope};
pub use samplers as sampler;
pub use text::{bert as text_encoder, t5};
pub use weights::source as tensors;

pub use families::Family;
pub use pack::PackConfig;
pub use pipeline::{DenoiseState, GenerationParams, Pipeline};

use thiserror::Error;

/// Errors of the model runtime. Messages are lowercase and name the file, key or value at fault.
#[derive(Debug, Error)]
pub enum ModelError {
    #[error("model pack {path}: {message}")]
    Pack { path: String, message: String },
    #[error("tensor {key}: {message}")]
    Weights { key: String, message: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    #[error("invalid input: {0}")]
    Input(String),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("audio: {0}")]
    Audio(#[from] tutti_shared::audio::AudioError),
    #[error("cuda: {0}")]
    Cuda(#[from] tutti_cuda_graph::Error),
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;
