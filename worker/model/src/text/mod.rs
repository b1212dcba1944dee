//! Text encoders and their tokenizers: BERT (MiniLM, the mel family's) and T5 (Stable Audio's).

pub mod bert;
pub mod t5;
