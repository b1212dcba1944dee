//! The C ABI of `csrc/shim.cpp` and a safe function for each entry point. Every C call returns
//! NULL or an error string that this module turns into [`Error::Cuda`] and frees.

#![allow(unsafe_code)]

use std::ffi::{c_char, c_int, c_void, CStr};
use std::ptr::NonNull;

use crate::{Error, Result, StreamData};

#[repr(C)]
#[derive(Clone, Copy)]
struct TcgStream {
    id: i64,
    device_index: i8,
    device_type: i8,
}

impl From<StreamData> for TcgStream {
    fn from(s: StreamData) -> Self {
        Self {
            id: s.id,
            device_index: s.device_index,
            device_type: s.device_type,
        }
    }
}

impl From<TcgStream> for StreamData {
    fn from(s: TcgStream) -> Self {
        Self {
            id: s.id,
            device_index: s.device_index,
            device_type: s.device_type,
        }
    }
}

extern "C" {
    fn tcg_free_error(e: *mut c_char);
    fn tcg_device_count(out: *mut i64) -> *mut c_char;
    fn tcg_graph_pool_handle(a: *mut u64, b: *mut u64) -> *mut c_char;
    fn tcg_graph_new(out: *mut *mut c_void) -> *mut c_char;
    fn tcg_graph_free(g: *mut c_void);
    fn tcg_graph_capture_begin(g: *mut c_void, a: u64, b: u64) -> *mut c_char;
    fn tcg_graph_capture_end(g: *mut c_void) -> *mut c_char;
    fn tcg_graph_replay(g: *mut c_void) -> *mut c_char;
    fn tcg_graph_pool(g: *mut c_void, a: *mut u64, b: *mut u64) -> *mut c_char;
    fn tcg_stream_from_pool(device: i8, high_priority: c_int, out: *mut TcgStream) -> *mut c_char;
    fn tcg_current_stream(device: i8, out: *mut TcgStream) -> *mut c_char;
    fn tcg_set_current_stream(s: TcgStream) -> *mut c_char;
    fn tcg_stream_synchronize(s: TcgStream) -> *mut c_char;
    fn tcg_stream_wait(waiter: TcgStream, waitee: TcgStream) -> *mut c_char;
    fn tcg_device_synchronize(device: i8) -> *mut c_char;
    fn tcg_sdp_priority_order(out: *mut i64, n: usize) -> *mut c_char;
    fn tcg_set_sdp_priority_order(order: *const i64, n: usize) -> *mut c_char;
    fn tcg_num_sdp_backends() -> usize;
}

/// Turns a shim return value into a result, freeing the message.
fn check(call: &'static str, err: *mut c_char) -> Result<()> {
    if err.is_null() {
        return Ok(());
    }
    // SAFETY: a non-null return is a NUL-terminated string malloc'd by the shim, ours to free.
    let message = unsafe { CStr::from_ptr(err) }
        .to_string_lossy()
        .into_owned();
    // SAFETY: freed once, by the allocator that made it.
    unsafe { tcg_free_error(err) };
    Err(Error::Cuda { call, message })
}

/// An owned `at::cuda::CUDAGraph*`.
pub(crate) struct RawGraph(NonNull<c_void>);

// SAFETY: a CUDAGraph is a plain heap object that libtorch does not tie to the creating thread;
// the safe API never shares it between threads without `&mut` (it is not `Sync`).
unsafe impl Send for RawGraph {}

impl Drop for RawGraph {
    fn drop(&mut self) {
        // SAFETY: made by tcg_graph_new and freed once, here.
        unsafe { tcg_graph_free(self.0.as_ptr()) }
    }
}

pub(crate) fn device_count() -> Result<i64> {
    let mut n = 0;
    // SAFETY: `n` outlives the call.
    check("device_count", unsafe { tcg_device_count(&mut n) })?;
    Ok(n)
}

pub(crate) fn graph_pool_handle() -> Result<(u64, u64)> {
    let (mut a, mut b) = (0, 0);
    // SAFETY: the outputs outlive the call.
    check("graph_pool_handle", unsafe {
        tcg_graph_pool_handle(&mut a, &mut b)
    })?;
    Ok((a, b))
}

pub(crate) fn graph_new() -> Result<RawGraph> {
    let mut p = std::ptr::null_mut();
    // SAFETY: the output outlives the call.
    check("CUDAGraph::CUDAGraph", unsafe { tcg_graph_new(&mut p) })?;
    NonNull::new(p).map(RawGraph).ok_or(Error::Cuda {
        call: "CUDAGraph::CUDAGraph",
        message: "returned null".into(),
    })
}

pub(crate) fn capture_begin(g: &mut RawGraph, pool: (u64, u64)) -> Result<()> {
    // SAFETY: `g` is a live graph, exclusively borrowed.
    check("CUDAGraph::capture_begin", unsafe {
        tcg_graph_capture_begin(g.0.as_ptr(), pool.0, pool.1)
    })
}

pub(crate) fn capture_end(g: &mut RawGraph) -> Result<()> {
    // SAFETY: as above.
    check("CUDAGraph::capture_end", unsafe {
        tcg_graph_capture_end(g.0.as_ptr())
    })
}

pub(crate) fn replay(g: &mut RawGraph) -> Result<()> {
    // SAFETY: as above.
    check("CUDAGraph::replay", unsafe {
        tcg_graph_replay(g.0.as_ptr())
    })
}

pub(crate) fn graph_pool(g: &RawGraph) -> Result<(u64, u64)> {
    let (mut a, mut b) = (0, 0);
    // SAFETY: `g` is live; pool() only reads it.
    check("CUDAGraph::pool", unsafe {
        tcg_graph_pool(g.0.as_ptr(), &mut a, &mut b)
    })?;
    Ok((a, b))
}

pub(crate) fn stream_from_pool(device: i8, high_priority: bool) -> Result<StreamData> {
    let mut s = TcgStream {
        id: 0,
        device_index: 0,
        device_type: 0,
    };
    // SAFETY: the output outlives the call.
    check("getStreamFromPool", unsafe {
        tcg_stream_from_pool(device, c_int::from(high_priority), &mut s)
    })?;
    Ok(s.into())
}

pub(crate) fn current_stream(device: i8) -> Result<StreamData> {
    let mut s = TcgStream {
        id: 0,
        device_index: 0,
        device_type: 0,
    };
    // SAFETY: the output outlives the call.
    check("getCurrentCUDAStream", unsafe {
        tcg_current_stream(device, &mut s)
    })?;
    Ok(s.into())
}

pub(crate) fn set_current_stream(s: StreamData) -> Result<()> {
    // SAFETY: plain data in.
    check("setCurrentCUDAStream", unsafe {
        tcg_set_current_stream(s.into())
    })
}

pub(crate) fn stream_synchronize(s: StreamData) -> Result<()> {
    // SAFETY: plain data in.
    check("CUDAStream::synchronize", unsafe {
        tcg_stream_synchronize(s.into())
    })
}

pub(crate) fn stream_wait(waiter: StreamData, waitee: StreamData) -> Result<()> {
    // SAFETY: plain data in.
    check("CUDAEvent::block", unsafe {
        tcg_stream_wait(waiter.into(), waitee.into())
    })
}

pub(crate) fn device_synchronize(device: i8) -> Result<()> {
    // SAFETY: plain data in.
    check("device_synchronize", unsafe {
        tcg_device_synchronize(device)
    })
}

pub(crate) fn sdp_priority_order() -> Result<Vec<i64>> {
    // SAFETY: no arguments.
    let n = unsafe { tcg_num_sdp_backends() };
    let mut out = vec![0i64; n];
    // SAFETY: `out` holds `n` elements and outlives the call.
    check("Context::sDPPriorityOrder", unsafe {
        tcg_sdp_priority_order(out.as_mut_ptr(), n)
    })?;
    Ok(out)
}

pub(crate) fn set_sdp_priority_order(order: &[i64]) -> Result<()> {
    // SAFETY: `order` is valid for its length during the call, which copies it.
    check("Context::setSDPPriorityOrder", unsafe {
        tcg_set_sdp_priority_order(order.as_ptr(), order.len())
    })
}
