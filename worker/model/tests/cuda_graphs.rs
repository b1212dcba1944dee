//! On a CUDA device, the denoiser's CUDA graphs compute what the eager forward computes, within
//! the precision's tolerance (padding a batch to its bucket changes the GEMMs' row counts, so
//! not bit for bit), over whole requests of 1 and 3 prompts (buckets 2 and 8 with guidance) and
//! both layouts' tiny packs. Skipped, and passing, where no CUDA device is present: the CPU
//! never graphs, and its audio is pinned by `render_pins.rs` and the parity tests. The GPU script
//! (`scripts/bench/gpu_all.sh`) runs this binary.

use std::path::{Path, PathBuf};

use tch::{Device, Kind, Tensor};
use tutti_model::stable_audio::{import, ImportOptions, StableAudioModel};
use tutti_model::stable_audio_run::SaoRequest;
use tutti_model::tiny_sao;

/// The crate's fixtures: where it was built, or (a binary carried to a GPU machine, run from the
/// crate's folder there) `tests/fixtures` under the current directory.
fn fixture(name: &str) -> PathBuf {
    let built = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let dir = if built.is_dir() {
        built
    } else {
        PathBuf::from("tests/fixtures")
    };
    dir.join(name)
}

fn packs(tmp: &Path) -> Vec<PathBuf> {
    let small = tmp.join("small-src");
    tiny_sao::sat_folder(&fixture("sao-small-tiny"), &small, 32).unwrap();
    let t5 = tmp.join("t5");
    tiny_sao::t5_folder(&fixture("sao-tiny"), &t5).unwrap();
    let open = tmp.join("open-src");
    tiny_sao::diffusers_folder(&fixture("sao-tiny"), &open, 32).unwrap();
    let mut out = vec![];
    for (src, t5, name) in [(small, Some(t5), "small"), (open, None, "open")] {
        let dir = tmp.join("models").join(name);
        let opts = ImportOptions {
            name: None,
            version: None,
            t5,
        };
        import(&src, &dir, &opts).unwrap();
        out.push(dir);
    }
    out
}

fn rel(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (a.to_kind(Kind::Float), b.to_kind(Kind::Float));
    ((&a - &b).norm().double_value(&[]) / b.norm().double_value(&[]).max(1e-12)).max(0.0)
}

#[test]
fn graphed_steps_agree_with_eager_ones() {
    if tch::Cuda::device_count() == 0 {
        eprintln!("skipped: no CUDA device (the CPU never graphs)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    for dir in packs(tmp.path()) {
        for (kind, tol) in [(Kind::Float, 1e-3), (Kind::BFloat16, 3e-2)] {
            let mut m = StableAudioModel::load(&dir, Device::Cuda(0), kind, false).unwrap();
            let d = m.pack.defaults.clone();
            for prompts in [1usize, 3] {
                let req = SaoRequest {
                    prompts: (0..prompts).map(|i| format!("drums {i}")).collect(),
                    negative_prompts: None,
                    seeds: (0..prompts as u64).collect(),
                    seconds_start: 0.0,
                    seconds_total: 1.0,
                    steps: 4,
                    guidance_scale: d.guidance_scale.max(3.0),
                    sampler: d.sampler,
                };
                m.set_cuda_graphs(false);
                let eager = m.generate(&req).unwrap();
                assert!(m.graph_stats().is_none());
                m.set_cuda_graphs(true);
                let graphed = m.generate(&req).unwrap();
                let again = m.generate(&req).unwrap();
                let s = m.graph_stats().unwrap();
                assert_eq!(s.failure, None, "{}", dir.display());
                assert_eq!((s.captures, s.replays, s.eager), (1, 8, 0), "{s:?}");
                let r = rel(&graphed, &eager);
                assert!(
                    r < tol,
                    "{} {kind:?}, {prompts} prompts: graphed vs eager {r}",
                    dir.display()
                );
                // A replay computes what the first replays computed (up to GEMM reduction order).
                assert!(rel(&again, &graphed) < 1e-5, "replays differ");
                assert!(bool::try_from(graphed.isfinite().all()).unwrap());
            }
        }
    }
}

#[test]
fn graphs_can_be_switched_off() {
    if tch::Cuda::device_count() == 0 {
        eprintln!("skipped: no CUDA device");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = &packs(tmp.path())[0];
    let mut m = StableAudioModel::load(dir, Device::Cuda(0), Kind::Float, false).unwrap();
    // On by default on CUDA (unless TUTTI_CUDA_GRAPHS says off in this environment).
    let by_env = tutti_model::graphed::enabled_for(Device::Cuda(0));
    assert_eq!(m.graph_stats().is_some(), by_env);
    m.set_cuda_graphs(false);
    assert!(m.graph_stats().is_none());
}
