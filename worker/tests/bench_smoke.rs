//! The model benchmark runs end to end on the tiny pack and reports well-formed figures (no timing
//! assertions: CI machines vary).

use tutti_worker::bench::{self, BenchOptions, PackSource};

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
    let report = bench::run(&opts)?;
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
    assert!(bench::run(&BenchOptions { repeats: 0, ..opts }).is_err());
    Ok(())
}
