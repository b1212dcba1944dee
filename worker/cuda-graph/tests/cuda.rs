//! On a CUDA device: a captured graph replays what it captured on new inputs, a side stream is
//! current inside its guard only, and the SDPA order takes cuDNN first. Each test says it is
//! skipped, and passes, on a machine without a CUDA device (the CPU machines); the GPU script
//! (`scripts/bench/gpu_all.sh`) runs this binary where one is present.

use tch::{Device, Kind, Tensor};
use tutti_cuda_graph::{device_synchronize, Graph, MemPool, Stream, StreamGuard};

fn cuda() -> Option<Device> {
    if tch::Cuda::device_count() > 0 {
        Some(Device::Cuda(0))
    } else {
        eprintln!("skipped: no CUDA device");
        None
    }
}

#[test]
fn a_graph_replays_its_kernels_on_refilled_inputs() {
    let Some(dev) = cuda() else { return };
    let _g = tch::no_grad_guard();
    let x = Tensor::zeros([4, 256], (Kind::Float, dev));
    let w = Tensor::randn([256, 256], (Kind::Float, dev));
    let side = Stream::from_pool(0).unwrap();
    let default = Stream::current(0).unwrap();
    // Warm up on the capture stream (cuBLAS makes its handle and workspace per stream).
    side.wait_for(&default).unwrap();
    {
        let _s = StreamGuard::new(&side).unwrap();
        for _ in 0..2 {
            let _ = (x.matmul(&w) * 2.0 + 1.0).relu();
        }
    }
    device_synchronize(0).unwrap();
    let pool = MemPool::new().unwrap();
    let mut graph = Graph::new().unwrap();
    let out = graph
        .capture(&pool, &side, || (x.matmul(&w) * 2.0 + 1.0).relu())
        .unwrap();
    assert_eq!(
        Stream::current(0).unwrap(),
        default,
        "the guard restored the stream"
    );
    for seed in 0..3 {
        let input = Tensor::randn([4, 256], (Kind::Float, dev)) * (seed + 1) as f64;
        let mut xm = x.shallow_clone();
        xm.copy_(&input);
        graph.replay().unwrap();
        let want = (input.matmul(&w) * 2.0 + 1.0).relu();
        let diff = (&out - &want).abs().max().double_value(&[]);
        assert!(diff < 1e-3, "replay {seed} differs from eager by {diff}");
    }
    assert_eq!(graph.pool().unwrap(), pool);
}

#[test]
fn a_panic_while_capturing_is_an_error_and_the_stream_recovers() {
    let Some(dev) = cuda() else { return };
    let side = Stream::from_pool(0).unwrap();
    let pool = MemPool::new().unwrap();
    let mut graph = Graph::new().unwrap();
    let r = graph.capture(&pool, &side, || panic!("boom"));
    assert!(
        matches!(r, Err(tutti_cuda_graph::Error::Capture(ref m)) if m == "boom"),
        "{r:?}"
    );
    assert!(graph.replay().is_err());
    // The side stream is usable again.
    let _s = StreamGuard::new(&side).unwrap();
    let y = Tensor::ones([8], (Kind::Float, dev)).sum(Kind::Float);
    assert_eq!(y.double_value(&[]), 8.0);
}

#[test]
fn cudnn_attention_first_still_computes_attention() {
    let Some(dev) = cuda() else { return };
    let _g = tch::no_grad_guard();
    let q = Tensor::randn([2, 8, 257, 64], (Kind::BFloat16, dev));
    let want =
        Tensor::scaled_dot_product_attention(&q, &q, &q, None::<Tensor>, 0.0, false, None, false);
    tutti_cuda_graph::set_sdp_backend_first(tutti_cuda_graph::SdpBackend::Cudnn).unwrap();
    let got =
        Tensor::scaled_dot_product_attention(&q, &q, &q, None::<Tensor>, 0.0, false, None, false);
    let diff = (got.to_kind(Kind::Float) - want.to_kind(Kind::Float))
        .abs()
        .max()
        .double_value(&[]);
    assert!(
        diff < 2e-2,
        "cuDNN attention differs from the default by {diff}"
    );
}
