//! tutti's gRPC API, generated from `proto/tutti/v1/*.proto` at build time, with the proto3 JSON
//! mapping of every message (serde).

#![allow(unreachable_pub, clippy::all)]

mod convert;

pub mod v1 {
    tonic::include_proto!("tutti.v1");
    include!(concat!(env!("OUT_DIR"), "/tutti.v1.serde.rs"));
}

/// Encoded file descriptor set, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("tutti_descriptor");

/// The well-known types (`Timestamp`, ...) the generated messages use, with serde support.
pub use pbjson_types as wkt;
