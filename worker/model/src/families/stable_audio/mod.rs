//! The Stable Audio family (Stable Audio Open 1.0 and Small): T5 text, seconds conditioning,
//! a DiT over the Oobleck VAE's latent, stereo audio.

pub mod layout;
pub mod model;
pub mod pack;
pub mod projection;
pub mod run;
pub mod sat;
pub mod serve;
pub mod tiny;
