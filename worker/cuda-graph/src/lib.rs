//! CUDA graphs, CUDA streams and the SDPA backend order for tch users, through a small C++ shim
//! (`csrc/shim.cpp`) over the libtorch that tch links: tch 0.24 has no graph API (tch-rs PR
//! #632 is unmerged), while the PyTorch wheel ships `ATen/cuda/CUDAGraph.h` and exports
//! `at::cuda::CUDAGraph` and the stream pool.
//!
//! The work captured into a [`Graph`] is ordinary tch code run inside [`Graph::capture`]: every
//! kernel it launches on the capture stream is recorded, every tensor it allocates comes from
//! the graph's memory pool and keeps its address across replays. So the usual rules apply:
//! inputs live in tensors allocated before the capture and are refilled (`copy_`) before each
//! [`Graph::replay`]; outputs are the tensors the captured code returned, overwritten by the
//! next replay of any graph sharing the pool; the captured code must not synchronise with the
//! host or copy from host memory; warm it up on the capture stream first (cuBLAS and cuDNN make
//! their handles, workspaces and autotune choices lazily).
//!
//! Every call returns a [`Result`]; C++ exceptions are caught in the shim and come back as
//! [`Error::Cuda`]. Where the crate was built against a libtorch without CUDA, every call answers
//! [`Error::Unavailable`]; on a machine without a CUDA device, [`Error::Cuda`] says so.

use std::marker::PhantomData;
use std::panic::{catch_unwind, AssertUnwindSafe};

#[cfg(tutti_cuda_shim)]
mod ffi;
#[cfg(tutti_cuda_shim)]
use ffi as sys;
#[cfg(not(tutti_cuda_shim))]
mod fallback;
#[cfg(not(tutti_cuda_shim))]
use fallback as sys;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The crate was built without the shim (a CPU-only libtorch); the reason the build found.
    #[error("cuda graphs are unavailable in this build: {0}")]
    Unavailable(String),
    /// libtorch or CUDA refused a call (no device, a capture error, ...).
    #[error("{call}: {message}")]
    Cuda { call: &'static str, message: String },
    /// The captured code panicked (tch panics on libtorch errors); the capture was ended and
    /// the graph is not usable.
    #[error("the captured code failed: {0}")]
    Capture(String),
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// Whether this build has the C++ shim (its libtorch has CUDA and its headers).
pub fn built_with_shim() -> bool {
    cfg!(tutti_cuda_shim)
}

/// CUDA devices visible to libtorch (0 on a machine without a driver or a device).
pub fn device_count() -> Result<i64> {
    sys::device_count()
}

fn device_index(device: usize) -> Result<i8> {
    i8::try_from(device).map_err(|_| Error::Invalid(format!("no CUDA device {device}")))
}

/// A CUDA stream in c10's packed form (id, device index, device type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StreamData {
    pub(crate) id: i64,
    pub(crate) device_index: i8,
    pub(crate) device_type: i8,
}

/// A CUDA stream of libtorch's pool (or its default stream), by value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stream(StreamData);

impl Stream {
    /// A stream from libtorch's pool on `device` (the pool hands its streams out round-robin;
    /// work queued on it is ordered only against itself).
    pub fn from_pool(device: usize) -> Result<Self> {
        sys::stream_from_pool(device_index(device)?, false).map(Self)
    }

    /// The current stream of this thread on `device` (the default stream unless a
    /// [`StreamGuard`] set another).
    pub fn current(device: usize) -> Result<Self> {
        sys::current_stream(device_index(device)?).map(Self)
    }

    /// Waits on the host until the stream's queued work is done.
    pub fn synchronize(&self) -> Result<()> {
        sys::stream_synchronize(self.0)
    }

    /// Makes work queued on `self` from now on wait for the work queued on `other` so far
    /// (an event recorded on `other`, waited for on `self`; the host does not wait).
    pub fn wait_for(&self, other: &Stream) -> Result<()> {
        sys::stream_wait(self.0, other.0)
    }

    pub fn device(&self) -> usize {
        self.0.device_index.max(0) as usize
    }
}

/// Makes a stream this thread's current stream on its device until dropped, then restores the
/// previous one (c10's current stream is per thread, so the guard stays on its thread).
#[derive(Debug)]
pub struct StreamGuard {
    previous: Stream,
    _same_thread: PhantomData<*const ()>,
}

impl StreamGuard {
    pub fn new(stream: &Stream) -> Result<Self> {
        let previous = Stream::current(stream.device())?;
        sys::set_current_stream(stream.0)?;
        Ok(Self {
            previous,
            _same_thread: PhantomData,
        })
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        // Setting a stream that was current a moment ago cannot fail short of a corrupt
        // context, and a drop has no one to report to.
        let _ = sys::set_current_stream(self.previous.0);
    }
}

/// Waits on the host until every stream of `device` is idle.
pub fn device_synchronize(device: usize) -> Result<()> {
    sys::device_synchronize(device_index(device)?)
}

/// A memory pool that graphs captured into it share: their intermediate buffers are reused
/// from one graph to the next (capture the largest first), so replays of the graphs of one pool
/// must not overlap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemPool((u64, u64));

impl MemPool {
    pub fn new() -> Result<Self> {
        sys::graph_pool_handle().map(Self)
    }
}

/// One `at::cuda::CUDAGraph`.
pub struct Graph {
    raw: sys::RawGraph,
    captured: bool,
}

impl std::fmt::Debug for Graph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Graph")
            .field("captured", &self.captured)
            .finish_non_exhaustive()
    }
}

impl Graph {
    /// An empty graph; fails without a CUDA device.
    pub fn new() -> Result<Self> {
        Ok(Self {
            raw: sys::graph_new()?,
            captured: false,
        })
    }

    /// Captures what `work` launches, on `stream` (made current for the capture; it must not be
    /// the default stream), into `pool`, in thread-local capture mode (other threads may use
    /// CUDA meanwhile). Returns what `work` returned: tensors it allocated keep their memory,
    /// which each replay rewrites. A panic in `work` ends the capture and comes back as
    /// [`Error::Capture`].
    pub fn capture<R>(
        &mut self,
        pool: &MemPool,
        stream: &Stream,
        work: impl FnOnce() -> R,
    ) -> Result<R> {
        if self.captured {
            return Err(Error::Invalid("the graph is already captured".into()));
        }
        let _on_stream = StreamGuard::new(stream)?;
        sys::capture_begin(&mut self.raw, pool.0)?;
        let out = catch_unwind(AssertUnwindSafe(work));
        // The capture must end whatever happened, or the stream stays in capture mode.
        let ended = sys::capture_end(&mut self.raw);
        let out = out.map_err(|p| Error::Capture(panic_message(p.as_ref())))?;
        ended?;
        self.captured = true;
        Ok(out)
    }

    /// Launches the captured work on the current stream.
    pub fn replay(&mut self) -> Result<()> {
        if !self.captured {
            return Err(Error::Invalid("replay of a graph never captured".into()));
        }
        sys::replay(&mut self.raw)
    }

    /// The pool the graph's memory came from.
    pub fn pool(&self) -> Result<MemPool> {
        sys::graph_pool(&self.raw).map(MemPool)
    }
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "a panic without a message".into())
}

/// libtorch's scaled-dot-product-attention backends (`at::SDPBackend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SdpBackend {
    Math,
    Flash,
    Efficient,
    Cudnn,
    Overrideable,
}

impl SdpBackend {
    fn code(self) -> i64 {
        match self {
            Self::Math => 0,
            Self::Flash => 1,
            Self::Efficient => 2,
            Self::Cudnn => 3,
            Self::Overrideable => 4,
        }
    }

    fn from_code(c: i64) -> Result<Self> {
        Ok(match c {
            0 => Self::Math,
            1 => Self::Flash,
            2 => Self::Efficient,
            3 => Self::Cudnn,
            4 => Self::Overrideable,
            other => return Err(Error::Invalid(format!("unknown SDPA backend {other}"))),
        })
    }
}

/// The order in which SDPA tries its backends (the first that accepts the inputs runs).
pub fn sdp_priority_order() -> Result<Vec<SdpBackend>> {
    sys::sdp_priority_order()?
        .into_iter()
        .map(SdpBackend::from_code)
        .collect()
}

/// Moves `first` to the front of the SDPA order, the others keeping theirs (libtorch 2.11's
/// default is flash, efficient, math, cudnn: cuDNN attention is 1.7-2.3x faster on Hopper for
/// long sequences, transformers#48163). A process-wide setting.
pub fn set_sdp_backend_first(first: SdpBackend) -> Result<()> {
    let mut order = sdp_priority_order()?;
    order.retain(|b| *b != first);
    order.insert(0, first);
    let codes: Vec<i64> = order.into_iter().map(SdpBackend::code).collect();
    sys::set_sdp_priority_order(&codes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs where the build has the shim and the machine has no CUDA device (CI, the CPU
    /// machines): every CUDA call is an error, never a crash.
    #[test]
    fn without_a_device_every_call_is_an_error() {
        if device_count().unwrap_or(0) > 0 {
            eprintln!("skipped: a CUDA device is present (tests/cuda.rs covers it)");
            return;
        }
        let e = Graph::new().expect_err("no graph without a device");
        assert!(e.to_string().contains("CUDA"), "{e}");
        assert!(MemPool::new().is_err());
        assert!(Stream::from_pool(0).is_err());
        assert!(Stream::current(0).is_err());
        assert!(device_synchronize(0).is_err());
    }

    #[test]
    fn the_shim_is_built_where_the_wheel_has_cuda() {
        // The project's venv installs the CUDA build of torch: the shim must be there, so that
        // a binary built here runs graphs on a GPU machine.
        assert!(
            built_with_shim(),
            "{}",
            option_env!("TUTTI_CUDA_SHIM_MISSING").unwrap_or("")
        );
        assert_eq!(device_count().map(|n| n >= 0).ok(), Some(true));
    }

    #[test]
    fn cudnn_attention_goes_first_and_the_rest_keep_their_order() {
        let before = sdp_priority_order().unwrap();
        assert_eq!(before.len(), 5, "{before:?}");
        set_sdp_backend_first(SdpBackend::Cudnn).unwrap();
        let after = sdp_priority_order().unwrap();
        assert_eq!(after[0], SdpBackend::Cudnn);
        let rest: Vec<_> = before
            .iter()
            .copied()
            .filter(|b| *b != SdpBackend::Cudnn)
            .collect();
        assert_eq!(after[1..], rest[..]);
        // Process-wide: put the whole order back for the other tests of this binary.
        for b in before.iter().rev() {
            set_sdp_backend_first(*b).unwrap();
        }
        assert_eq!(sdp_priority_order().unwrap(), before);
    }

    #[test]
    fn out_of_range_devices_are_refused() {
        assert!(matches!(Stream::from_pool(300), Err(Error::Invalid(_))));
    }
}
