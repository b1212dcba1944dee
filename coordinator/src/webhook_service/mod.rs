//! What runs webhooks over the store: the `Webhooks` gRPC service (`api`) and the sending
//! loop (`sender`). The vocabulary, signing and address checks they use are `crate::webhooks`,
//! which the store and the lifecycle use too (so it depends on neither).

pub mod api;
pub mod sender;
