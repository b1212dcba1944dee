//! The mel family (tutti-mini and the packs `tutti train` makes): MiniLM text, numeric and
//! per-frame conditioners, a DiT over a mel-shaped latent, a decoder to log-mel and a vocoder.

pub mod conditioners;
pub mod frame_cond;
pub mod pack;
pub mod pipeline;
pub mod tiny;
