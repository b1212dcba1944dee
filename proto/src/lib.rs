//! tutti's gRPC API, generated from `proto/tutti/v1/*.proto` at build time.

#![allow(unreachable_pub, clippy::all)]

mod convert;

pub mod v1 {
    tonic::include_proto!("tutti.v1");
}

/// Encoded file descriptor set, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("tutti_descriptor");
