//! Text encoders and their tokenizers: BERT (MiniLM, the mel family's) and T5 (Stable Audio's), Qwen3
//! (ACE-Step's).

pub mod bert;
pub mod qwen3;
pub mod qwen3_tokenizer;
pub mod t5;
