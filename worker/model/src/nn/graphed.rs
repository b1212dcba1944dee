//! A forward replayed from CUDA graphs, one graph per batch bucket: the host launches one graph
//! instead of the ~900 kernels of a DiT step, so a step costs what the GPU takes, not what the
//! host takes to launch it.
//!
//! A forward of `n` rows runs in the smallest bucket (1, 2, 4, 8, 16, 32 rows by default) that
//! holds them: its inputs are copied into the bucket's static input buffers (rows past `n` keep
//! whatever the last forward left there: every row of the networks graphed here is computed
//! independently of the others, so padding rows never reach a real row), the graph is replayed
//! and the first `n` rows of its output are copied out before anything else can replay. A
//! bucket is captured the first time it is needed: its inputs are allocated, the forward is run
//! twice on the capture stream (a side stream: cuBLAS and cuDNN make their handles, workspaces
//! and autotune choices there), then captured into the pool every bucket shares. More rows than
//! the largest bucket, or inputs of another per-row shape than the bucket was captured for, run
//! eagerly (the caller's forward).
//!
//! On CUDA, padding changes the row counts of the GEMMs, so a graphed forward agrees with the
//! eager one within the precision's tolerance, not bit for bit (CUDA GEMMs are not batch-
//! invariant anyway). The CPU never graphs.

use std::collections::HashMap;
use std::sync::Mutex;

use tch::{Device, Kind, Tensor};
use tutti_cuda_graph::{device_synchronize, Graph, MemPool, Stream, StreamGuard};

/// The default batch buckets, in rows.
pub const DEFAULT_BUCKETS: [i64; 6] = [1, 2, 4, 8, 16, 32];

/// The environment variable that turns graphs off (`0`, `off`, `false`, `no`).
pub const ENV_SWITCH: &str = "TUTTI_CUDA_GRAPHS";

/// Whether graphs are on for `device`: never on the CPU; on CUDA unless [`ENV_SWITCH`] says off.
pub fn enabled_for(device: Device) -> bool {
    device.is_cuda() && switch_on(std::env::var(ENV_SWITCH).ok().as_deref())
}

fn switch_on(value: Option<&str>) -> bool {
    !matches!(
        value.map(|v| v.trim().to_ascii_lowercase()).as_deref(),
        Some("0" | "off" | "false" | "no")
    )
}

/// Graphs for a model's forward on `device` when `on` and `device` is CUDA, else `None`.
pub fn for_device(device: Device, on: bool) -> Option<Mutex<GraphedForward>> {
    match device {
        Device::Cuda(i) if on => Some(Mutex::new(GraphedForward::new(i, &DEFAULT_BUCKETS))),
        _ => None,
    }
}

/// The smallest bucket that holds `rows`, if any.
pub fn bucket_for(rows: i64, buckets: &[i64]) -> Option<i64> {
    buckets.iter().copied().filter(|&b| b >= rows).min()
}

/// Copies `input` `[n, ..]` into the first `n` rows of `buffer` `[bucket, ..]`.
pub fn load_rows(buffer: &Tensor, input: &Tensor) {
    let n = input.size()[0];
    let mut rows = buffer.narrow(0, 0, n);
    rows.copy_(input);
}

/// The first `n` rows of a graph's `output`, copied out (the next replay of any graph of the pool
/// may overwrite the output's memory).
pub fn unload_rows(output: &Tensor, n: i64) -> Tensor {
    output.narrow(0, 0, n).copy()
}

/// Per-row shapes and kinds of a forward's inputs: what a captured bucket is valid for.
type Signature = Vec<(Vec<i64>, Kind)>;

fn signature(inputs: &[&Tensor]) -> Signature {
    inputs
        .iter()
        .map(|t| (t.size()[1..].to_vec(), t.kind()))
        .collect()
}

struct Bucket {
    graph: Graph,
    inputs: Vec<Tensor>,
    output: Tensor,
    /// Device tensors the graph reads besides its inputs (weights' owners keep theirs; these
    /// are tables a cache could drop), held so that their memory outlives the graph.
    _resident: Vec<Tensor>,
}

/// What the graphs have done, for reports and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct GraphStats {
    pub captures: usize,
    pub replays: usize,
    /// Forwards that ran eagerly: more rows than the largest bucket, or graphs off after a
    /// failure.
    pub eager: usize,
    /// Why graphs were turned off, if a capture or replay failed.
    pub failure: Option<String>,
}

/// The graphs of one forward on one CUDA device.
pub struct GraphedForward {
    device: usize,
    buckets: Vec<i64>,
    pool: Option<MemPool>,
    stream: Option<Stream>,
    captured: HashMap<(i64, Signature), Bucket>,
    stats: GraphStats,
}

impl std::fmt::Debug for GraphedForward {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphedForward")
            .field("device", &self.device)
            .field("buckets", &self.buckets)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl GraphedForward {
    /// Graphs for CUDA device `device` over `buckets` (row counts); nothing is allocated until
    /// the first forward.
    pub fn new(device: usize, buckets: &[i64]) -> Self {
        let mut buckets: Vec<i64> = buckets.iter().copied().filter(|&b| b > 0).collect();
        buckets.sort_unstable();
        buckets.dedup();
        Self {
            device,
            buckets,
            pool: None,
            stream: None,
            captured: HashMap::new(),
            stats: GraphStats::default(),
        }
    }

    pub fn stats(&self) -> &GraphStats {
        &self.stats
    }

    /// `forward(inputs)` from a graph: `inputs` share their first dimension (the rows) and
    /// live on this device; `forward` must launch the same kernels for the same shapes, read
    /// only its inputs, `resident` (held by the graph from its capture on) and device memory
    /// that outlives the graphs (the weights), and not synchronise with the host. `None`: this forward is not graphed (too many rows, or graphs turned off by an
    /// earlier failure); the caller runs it eagerly. A failure to capture or replay turns the
    /// graphs off for good and is kept in [`GraphStats::failure`].
    pub fn run(
        &mut self,
        inputs: &[&Tensor],
        resident: &[&Tensor],
        forward: &dyn Fn(&[Tensor]) -> Tensor,
    ) -> Option<Tensor> {
        let n = inputs.first()?.size()[0];
        let bucket = match bucket_for(n, &self.buckets) {
            Some(b) if self.stats.failure.is_none() => b,
            _ => {
                self.stats.eager += 1;
                return None;
            }
        };
        match self.replay(bucket, inputs, resident, forward) {
            Ok(out) => Some(out),
            Err(e) => {
                self.stats.failure = Some(e.to_string());
                self.stats.eager += 1;
                self.captured.clear();
                None
            }
        }
    }

    fn replay(
        &mut self,
        bucket: i64,
        inputs: &[&Tensor],
        resident: &[&Tensor],
        forward: &dyn Fn(&[Tensor]) -> Tensor,
    ) -> tutti_cuda_graph::Result<Tensor> {
        let n = inputs[0].size()[0];
        let key = (bucket, signature(inputs));
        if !self.captured.contains_key(&key) {
            let b = self.capture(bucket, inputs, resident, forward)?;
            self.captured.insert(key.clone(), b);
            self.stats.captures += 1;
        }
        let b = self
            .captured
            .get_mut(&key)
            .expect("the bucket was just captured");
        for (buf, input) in b.inputs.iter().zip(inputs) {
            load_rows(buf, input);
        }
        b.graph.replay()?;
        self.stats.replays += 1;
        Ok(unload_rows(&b.output, n))
    }

    fn capture(
        &mut self,
        bucket: i64,
        inputs: &[&Tensor],
        resident: &[&Tensor],
        forward: &dyn Fn(&[Tensor]) -> Tensor,
    ) -> tutti_cuda_graph::Result<Bucket> {
        let pool = match self.pool {
            Some(p) => p,
            None => *self.pool.insert(MemPool::new()?),
        };
        let stream = match self.stream {
            Some(s) => s,
            None => *self.stream.insert(Stream::from_pool(self.device)?),
        };
        // Static inputs, outside the graphs' pool: zeros, then the first rows of this forward.
        let statics: Vec<Tensor> = inputs
            .iter()
            .map(|t| {
                let mut size = t.size();
                size[0] = bucket;
                let buf = Tensor::zeros(&size, (t.kind(), t.device()));
                load_rows(&buf, t);
                buf
            })
            .collect();
        let current = Stream::current(self.device)?;
        stream.wait_for(&current)?;
        {
            let _on_side = StreamGuard::new(&stream)?;
            for _ in 0..2 {
                let _ = forward(&statics);
            }
        }
        device_synchronize(self.device)?;
        let mut graph = Graph::new()?;
        let output = graph.capture(&pool, &stream, || forward(&statics))?;
        device_synchronize(self.device)?;
        Ok(Bucket {
            graph,
            inputs: statics,
            output,
            _resident: resident.iter().map(|t| t.shallow_clone()).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_smallest_bucket_that_holds_the_rows() {
        let b = DEFAULT_BUCKETS;
        assert_eq!(bucket_for(1, &b), Some(1));
        assert_eq!(bucket_for(3, &b), Some(4));
        assert_eq!(bucket_for(8, &b), Some(8));
        assert_eq!(bucket_for(17, &b), Some(32));
        assert_eq!(bucket_for(33, &b), None);
        assert_eq!(bucket_for(2, &[8, 4]), Some(4));
    }

    #[test]
    fn graphs_are_off_on_the_cpu_and_by_the_switch() {
        assert!(!enabled_for(Device::Cpu));
        assert!(switch_on(None));
        assert!(switch_on(Some("1")));
        assert!(switch_on(Some("on")));
        for off in ["0", "off", "FALSE", " no "] {
            assert!(!switch_on(Some(off)), "{off}");
        }
    }

    /// What a bucket does around its graph, on the CPU: rows padded into a static buffer that
    /// already holds other rows, the forward over the whole bucket, the real rows copied out.
    #[test]
    fn padded_rows_do_not_reach_the_real_ones() {
        let _g = tch::no_grad_guard();
        let w = Tensor::randn([6, 5], (Kind::Float, Device::Cpu));
        let forward = |x: &Tensor| x.matmul(&w).tanh() * 3.0;
        let buf = Tensor::randn([8, 4, 6], (Kind::Float, Device::Cpu)) * 1e3;
        for n in [1, 3, 8] {
            let x = Tensor::randn([n, 4, 6], (Kind::Float, Device::Cpu));
            load_rows(&buf, &x);
            let out = forward(&buf);
            let got = unload_rows(&out, n);
            assert_eq!(got.size(), [n, 4, 5]);
            for r in 0..n {
                let want = forward(&x.narrow(0, r, 1));
                let diff = (got.narrow(0, r, 1) - want).abs().max().double_value(&[]);
                assert!(diff < 1e-5, "row {r} of {n}: {diff}");
            }
            // The copy out is the rows' own memory: the next forward cannot change it.
            let before = got.copy();
            load_rows(&buf, &Tensor::zeros([n, 4, 6], (Kind::Float, Device::Cpu)));
            let _ = forward(&buf);
            assert!(got.equal(&before));
        }
    }

    #[test]
    fn without_cuda_a_forward_is_left_to_the_caller() {
        if tch::Cuda::is_available() {
            eprintln!("skipped: a CUDA device is present (tests/cuda_graphs.rs covers it)");
            return;
        }
        let mut g = GraphedForward::new(0, &DEFAULT_BUCKETS);
        let x = Tensor::ones([2, 3], (Kind::Float, Device::Cpu));
        let forward = |t: &[Tensor]| &t[0] * 2.0;
        assert!(g.run(&[&x], &[], &forward).is_none());
        let s = g.stats();
        assert_eq!((s.captures, s.replays, s.eager), (0, 0, 1));
        assert!(
            s.failure.as_deref().is_some_and(|f| f.contains("CUDA")),
            "{s:?}"
        );
        // Off for good: the next forward does not try again.
        assert!(g.run(&[&x], &[], &forward).is_none());
        assert_eq!(g.stats().eager, 2);
        // More rows than the largest bucket are never graphed.
        let mut g = GraphedForward::new(0, &[1, 2]);
        assert!(g
            .run(
                &[&Tensor::ones([3, 3], (Kind::Float, Device::Cpu))],
                &[],
                &forward
            )
            .is_none());
        assert_eq!(g.stats().failure, None);
    }
}
