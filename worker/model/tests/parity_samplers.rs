//! Parity of the samplers with diffusers 0.42 (fixtures from `scripts/fixtures/samplers.py`), and
//! bit-identical resumption from a deep-cloned state.

use std::collections::HashMap;
use tch::{Kind, Tensor};
use tutti_model::sampler::{
    build, BetaSchedule, Prediction, Sampler, SamplerKind, SamplerState, ScheduleConfig,
    SigmaSchedule, TimestepSpacing,
};

fn fixtures() -> HashMap<String, Tensor> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/samplers.safetensors"
    );
    Tensor::read_safetensors(path)
        .unwrap()
        .into_iter()
        .collect()
}

fn case(name: &str) -> (SamplerKind, ScheduleConfig) {
    let d = ScheduleConfig::default();
    let sd = ScheduleConfig {
        beta_schedule: BetaSchedule::ScaledLinear,
        beta_start: 0.00085,
        beta_end: 0.012,
        ..d.clone()
    };
    match name {
        "flow_shift1" => (SamplerKind::FlowEuler, d),
        "flow_shift3" => (SamplerKind::FlowEuler, ScheduleConfig { shift: 3.0, ..d }),
        "ddim_eps" => (
            SamplerKind::Ddim,
            ScheduleConfig {
                prediction: Prediction::Epsilon,
                set_alpha_to_one: false,
                steps_offset: 1,
                ..sd
            },
        ),
        "ddim_v" => (
            SamplerKind::Ddim,
            ScheduleConfig {
                prediction: Prediction::V,
                timestep_spacing: Some(TimestepSpacing::Trailing),
                ..d
            },
        ),
        "dpm_eps" => (
            SamplerKind::DpmSolverPp2m,
            ScheduleConfig {
                prediction: Prediction::Epsilon,
                ..d
            },
        ),
        "dpm_v" => (
            SamplerKind::DpmSolverPp2m,
            ScheduleConfig {
                prediction: Prediction::V,
                timestep_spacing: Some(TimestepSpacing::Trailing),
                ..sd
            },
        ),
        "cosine_exponential" | "cosine_karras" => (
            SamplerKind::CosineDpmSolverPp2m,
            ScheduleConfig {
                prediction: Prediction::V,
                sigma_schedule: if name.ends_with("karras") {
                    SigmaSchedule::Karras
                } else {
                    SigmaSchedule::Exponential
                },
                ..d
            },
        ),
        _ => unreachable!(),
    }
}

const CASES: [&str; 8] = [
    "flow_shift1",
    "flow_shift3",
    "ddim_eps",
    "ddim_v",
    "dpm_eps",
    "dpm_v",
    "cosine_exponential",
    "cosine_karras",
];

fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

#[test]
fn trajectories_match_diffusers() {
    let _g = tch::no_grad_guard();
    let fx = fixtures();
    let n = 10;
    for name in CASES {
        let (kind, cfg) = case(name);
        let s = build(kind, &cfg, n).unwrap();
        let get = |k: &str| &fx[&format!("{name}.{k}")];
        let ts = get("timesteps");
        for i in 0..n {
            let t = ts.double_value(&[i as i64]);
            let tol = 1e-6 * t.abs().max(1.0);
            assert!(
                (s.model_timestep(i) - t).abs() <= tol,
                "{name}: timestep {i}: {} vs {t}",
                s.model_timestep(i)
            );
        }
        let (samples, mo) = (get("samples"), get("model_out"));
        let mut x = get("init").shallow_clone();
        let mut state = SamplerState::default();
        let (mut worst_abs, mut worst_rel) = (0f64, 0f64);
        for i in 0..n {
            if let Some(scaled) = fx.get(&format!("{name}.scaled")) {
                let d = max_abs(&s.scale_model_input(&x, i), &scaled.get(i as i64));
                assert!(d < 1e-6, "{name}: scale_model_input {i}: {d}");
            }
            x = s.step(i, &x, &mo.get(i as i64), &mut state);
            let r = samples.get(i as i64 + 1);
            let d = max_abs(&x, &r);
            let scale = r.abs().max().double_value(&[]).max(1.0);
            worst_abs = worst_abs.max(d);
            worst_rel = worst_rel.max(d / scale);
        }
        println!("{name}: max abs diff {worst_abs:.3e}, relative to max |x| {worst_rel:.3e}");
        // Tolerance scales with the sample: random "model outputs" drive the x0 estimates of
        // epsilon/cosine schedules to |x| ~ 1e2..1e3 where one f32 ulp is ~1e-5..1e-4, and the
        // schedule math here is f64 where diffusers rounds every coefficient to f32.
        assert!(worst_rel < 1e-6, "{name}: relative diff {worst_rel}");
    }
}

#[test]
fn cosine_init_sigma_and_scaling() {
    let _g = tch::no_grad_guard();
    let fx = fixtures();
    let (kind, cfg) = case("cosine_exponential");
    let s = build(kind, &cfg, 10).unwrap();
    assert!((s.init_noise_sigma() - (500f64 * 500.0 + 1.0).sqrt()).abs() < 1e-9);
    let x = &fx["cosine_exponential.init"];
    let d = max_abs(
        &s.scale_model_input(x, 0),
        &fx["cosine_exponential.scaled0"],
    );
    assert!(
        d < 1e-6,
        "scale_model_input vs CosineDPMSolverMultistepScheduler: {d}"
    );
}

fn run(
    s: &dyn Sampler,
    range: std::ops::Range<usize>,
    x: &Tensor,
    mo: &Tensor,
    st: &mut SamplerState,
) -> Tensor {
    let mut x = x.shallow_clone();
    for i in range {
        x = s.step(i, &x, &mo.get(i as i64), st);
    }
    x
}

#[test]
fn resume_from_cloned_state_is_bit_identical() {
    let _g = tch::no_grad_guard();
    let fx = fixtures();
    for name in CASES {
        let (kind, cfg) = case(name);
        let s = build(kind, &cfg, 10).unwrap();
        let (x0, mo) = (
            &fx[&format!("{name}.init")],
            &fx[&format!("{name}.model_out")],
        );
        let full = run(&*s, 0..10, x0, mo, &mut SamplerState::default());
        for k in [1, 4, 9] {
            let mut st = SamplerState::default();
            let mid = run(&*s, 0..k, x0, mo, &mut st);
            // A checkpoint: deep copies, and a freshly built sampler ("another machine").
            let (mid, mut st2) = (mid.copy(), st.deep_clone());
            drop(st);
            let s2 = build(kind, &cfg, 10).unwrap();
            let resumed = run(&*s2, k..10, &mid, mo, &mut st2);
            assert!(resumed.equal(&full), "{name}: resume at {k} differs");
        }
    }
}

#[test]
fn per_sample_steps_equal_batched_steps() {
    let _g = tch::no_grad_guard();
    let fx = fixtures();
    for name in ["dpm_v", "cosine_exponential", "flow_shift3", "ddim_v"] {
        let (kind, cfg) = case(name);
        let s = build(kind, &cfg, 10).unwrap();
        let (x0, mo) = (
            &fx[&format!("{name}.init")],
            &fx[&format!("{name}.model_out")],
        );
        let batched = run(&*s, 0..10, x0, mo, &mut SamplerState::default());
        for b in 0..x0.size()[0] {
            let xb = x0.narrow(0, b, 1);
            let mob = mo.narrow(1, b, 1);
            let one = run(&*s, 0..10, &xb, &mob, &mut SamplerState::default());
            let d = max_abs(&one, &batched.narrow(0, b, 1));
            assert!(d < 1e-6, "{name}: sample {b} alone differs by {d}");
        }
    }
}
