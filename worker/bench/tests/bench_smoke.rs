//! The model benchmark runs end to end on the tiny pack and reports well-formed figures (no timing
//! assertions: CI machines vary).

use tutti_bench::model::{self, BenchOptions, PackSource};

#[test]
fn bench_model_on_the_tiny_pack() -> anyhow::Result<()> {
    let opts = BenchOptions {
        pack: PackSource::Tiny,
        device: "cpu".into(),
        duration_s: 1.0,
        steps: Some(2),
        batch_steps: 2,
        batch_sizes: vec![1, 3],
        repeats: 1,
        threads: Some(1),
    };
    let report = model::run(&opts)?;
    let r = &report.rtf;
    assert_eq!(r.steps, 2);
    for s in [r.prepare_s, r.denoise_s, r.render_s, r.total_s, r.rtf] {
        assert!(s.is_finite() && s > 0.0, "{r:?}");
    }
    assert!((r.rtf - r.total_s / 1.0).abs() < 1e-9);
    assert_eq!(
        report.batches.iter().map(|b| b.batch).collect::<Vec<_>>(),
        [1, 3]
    );
    for b in &report.batches {
        assert_eq!(b.steps, 2);
        for x in [b.batched_jobs_per_s, b.sequential_jobs_per_s, b.ratio] {
            assert!(x.is_finite() && x > 0.0, "{b:?}");
        }
    }
    assert!(report.pack.denoiser_params > 0 && report.pack.text_encoder_params > 0);
    let md = report.to_markdown();
    assert!(md.contains("Real-time factor"), "{md}");
    assert!(md.contains("| 3 |"), "{md}");
    assert!(model::run(&BenchOptions { repeats: 0, ..opts }).is_err());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_serve_on_the_tiny_pack() -> anyhow::Result<()> {
    use tutti_bench::serve::{self, ServeOptions};
    let opts = ServeOptions {
        pack: PackSource::Tiny,
        device: "cpu".into(),
        jobs: 6,
        durations_s: vec![1.0, 2.0],
        steps: vec![4, 8],
        chunk_steps: 3,
        arrival_ms: 5,
        max_batch: Some(4),
        seed: 1,
        threads: Some(1),
    };
    let report = serve::run(&opts).await?;
    assert_eq!(report.trace.len(), 6);
    for r in [&report.batched, &report.sequential] {
        for x in [r.makespan_s, r.jobs_per_hour, r.mean_latency_s, r.occupancy] {
            assert!(x.is_finite() && x > 0.0, "{r:?}");
        }
    }
    assert_eq!(
        (report.batched.max_batch, report.sequential.max_batch),
        (4, 1)
    );
    // One chunk at a time never shares a forward.
    assert_eq!(report.sequential.occupancy, 1.0);
    assert!(report.ratio().is_finite());
    let md = report.to_markdown();
    assert!(
        md.contains("jobs/hour") && md.contains("one chunk at a time"),
        "{md}"
    );
    Ok(())
}
