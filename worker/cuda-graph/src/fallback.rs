//! The build without the C++ shim (libtorch without CUDA, or without its headers): the same
//! functions as `ffi`, each answering [`Error::Unavailable`] with the reason the build script
//! found.

use crate::{Error, Result, StreamData};

/// No graph can exist in this build.
pub(crate) enum RawGraph {}

fn unavailable<T>() -> Result<T> {
    Err(Error::Unavailable(
        option_env!("TUTTI_CUDA_SHIM_MISSING")
            .unwrap_or("built without the CUDA shim")
            .to_string(),
    ))
}

pub(crate) fn device_count() -> Result<i64> {
    unavailable()
}
pub(crate) fn graph_pool_handle() -> Result<(u64, u64)> {
    unavailable()
}
pub(crate) fn graph_new() -> Result<RawGraph> {
    unavailable()
}
pub(crate) fn capture_begin(g: &mut RawGraph, _pool: (u64, u64)) -> Result<()> {
    match *g {}
}
pub(crate) fn capture_end(g: &mut RawGraph) -> Result<()> {
    match *g {}
}
pub(crate) fn replay(g: &mut RawGraph) -> Result<()> {
    match *g {}
}
pub(crate) fn graph_pool(g: &RawGraph) -> Result<(u64, u64)> {
    match *g {}
}
pub(crate) fn stream_from_pool(_device: i8, _high_priority: bool) -> Result<StreamData> {
    unavailable()
}
pub(crate) fn current_stream(_device: i8) -> Result<StreamData> {
    unavailable()
}
pub(crate) fn set_current_stream(_s: StreamData) -> Result<()> {
    unavailable()
}
pub(crate) fn stream_synchronize(_s: StreamData) -> Result<()> {
    unavailable()
}
pub(crate) fn stream_wait(_waiter: StreamData, _waitee: StreamData) -> Result<()> {
    unavailable()
}
pub(crate) fn device_synchronize(_device: i8) -> Result<()> {
    unavailable()
}
pub(crate) fn sdp_priority_order() -> Result<Vec<i64>> {
    unavailable()
}
pub(crate) fn set_sdp_priority_order(_order: &[i64]) -> Result<()> {
    unavailable()
}
