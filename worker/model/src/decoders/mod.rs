//! What turns a finished latent into audio: the mel family's latent-to-mel decoder, its mel
//! front end and vocoders, and the Oobleck VAE of the waveform-latent families.

pub mod mel;
pub mod mel_decoder;
pub mod oobleck;
pub mod vocoder;
