//! The model runtime: prompt -> tokens -> text embeddings -> guided diffusion -> mel -> vocoder -> audio.
//!
//! Everything here is written natively with `tch` (libtorch) and runs unchanged on CPU and CUDA.
//! The farm only talks to [`Pipeline`] and [`DenoiseState`]; the rest is the pipeline's parts.

pub mod attention;
pub mod conditioners;
pub mod decoder;
pub mod device;
pub mod dit;
pub mod frame_cond;
pub mod layout;
pub mod mel;
pub mod oobleck;
pub mod pack;
pub mod pipeline;
pub mod projection;
pub mod rope;
pub mod sampler;
pub mod sat;
pub mod served;
pub mod stable_audio;
pub mod stable_audio_pack;
pub mod stable_audio_run;
pub mod stable_audio_serve;
pub mod state;
pub mod t5;
pub mod tensors;
pub mod text_encoder;
pub mod tiny;
pub mod tiny_sao;
pub mod vocoder;
pub mod weights;

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
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;
