//! Building blocks shared by the families' networks: attention, rotary embeddings, the DiT.

pub mod attention;
pub mod dit;
pub mod rope;
