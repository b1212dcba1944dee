//! Building blocks shared by the families' networks: attention, norms, rotary embeddings, the DiT.

pub mod attention;
pub mod dit;
pub mod graphed;
pub mod norm;
pub mod rope;
