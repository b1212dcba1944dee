//! Parity of the mel front end with librosa 0.11 (fixtures from `scripts/fixtures/mel.py`).

use std::collections::HashMap;
use tch::{Device, Kind, Tensor};
use tutti_model::mel::{MelConfig, MelFrontEnd, PadMode};

fn fixtures() -> HashMap<String, Tensor> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/mel.safetensors"
    );
    Tensor::read_safetensors(path)
        .unwrap()
        .into_iter()
        .collect()
}

fn configs() -> [(&'static str, MelConfig); 2] {
    [
        ("default", MelConfig::default()),
        (
            "alt",
            MelConfig {
                sample_rate: 22050,
                n_fft: 512,
                hop_length: 128,
                win_length: 400,
                n_mels: 40,
                fmin: 50.0,
                fmax: None,
                power: 2.0,
                pad_mode: PadMode::Constant,
                ..MelConfig::default()
            },
        ),
    ]
}

fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

#[test]
fn log_mel_and_filterbank_match_librosa() {
    let _g = tch::no_grad_guard();
    let fx = fixtures();
    for (name, cfg) in configs() {
        let fe = MelFrontEnd::new(&cfg, Device::Cpu).unwrap();
        let mut fb = fe.filterbank().shallow_clone();
        if name == "default" {
            // The fixture keeps every 8th frequency column.
            let idx = Tensor::arange_start_step(0, fb.size()[1], 8, (Kind::Int64, Device::Cpu));
            fb = fb.index_select(1, &idx);
        }
        let ref_fb = &fx[&format!("{name}.filterbank")];
        assert_eq!(fb.size(), ref_fb.size());
        let d_fb = max_abs(&fb, ref_fb);

        let wave = &fx[&format!("{name}.wave")];
        let got = fe.log_mel(wave).unwrap();
        let want = &fx[&format!("{name}.log_mel")];
        assert_eq!(got.size(), want.size(), "{name}: shape");
        assert_eq!(
            got.size()[2] as usize,
            fe.frames_for(wave.size()[1] as usize)
        );
        let d = max_abs(&got, want);
        println!("{name}: filterbank max abs diff {d_fb:.3e}, log-mel max abs diff {d:.3e}");
        assert!(d_fb < 1e-7, "{name}: filterbank differs by {d_fb}");
        assert!(d < 1e-4, "{name}: log-mel differs by {d}");
        // In f64 the same code agrees to librosa's own round-off.
        let d64 = max_abs(&fe.log_mel(&wave.to_kind(Kind::Double)).unwrap(), want);
        println!("{name}: log-mel (f64 input) max abs diff {d64:.3e}");
        assert!(d64 < 1e-5, "{name}: f64 log-mel differs by {d64}");
    }
}

#[test]
fn mel_to_linear_is_a_right_inverse_on_the_mel_space() {
    let _g = tch::no_grad_guard();
    let fx = fixtures();
    let fe = MelFrontEnd::new(&MelConfig::default(), Device::Cpu).unwrap();
    let mel = fe.mel(&fx["default.wave"]).unwrap();
    let lin = fe.mel_to_linear(&mel).unwrap();
    assert_eq!(lin.size()[1], 513);
    assert!(lin.min().double_value(&[]) >= 0.0);
    // Back through the filterbank: close to the input mel.
    let back = fe.filterbank().matmul(&lin);
    let rel = (&back - &mel).norm().double_value(&[]) / mel.norm().double_value(&[]);
    println!("mel -> linear -> mel relative error {rel:.3e}");
    assert!(rel < 0.05, "relative error {rel}");
}

#[test]
fn stft_istft_round_trip() {
    let _g = tch::no_grad_guard();
    let fx = fixtures();
    for (name, cfg) in configs() {
        let fe = MelFrontEnd::new(&cfg, Device::Cpu).unwrap();
        let wave = &fx[&format!("{name}.wave")];
        let n = wave.size()[1] as usize;
        let back = fe.istft(&fe.stft(wave).unwrap(), n).unwrap();
        let d = max_abs(&back, wave);
        assert!(d < 1e-5, "{name}: istft(stft(x)) differs by {d}");
    }
}
