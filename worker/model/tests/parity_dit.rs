//! Parity of the native StableAudioDiTModel with diffusers' on a tiny random config
//! (fixtures written by `scripts/fixtures/dit.py`).

use std::path::PathBuf;

use tch::{nn, Device, Kind, Tensor};
use tutti_model::dit::{DitConfig, DitInput, StableAudioDit};
use tutti_model::rope::Rotary;
use tutti_model::weights;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn dit_matches_diffusers() -> anyhow::Result<()> {
    let file = weights::read_safetensors(&fixture("dit_weights.safetensors"))?;
    let cfg: DitConfig = serde_json::from_str(&file.metadata["config"])?;
    let vs = nn::VarStore::new(Device::Cpu);
    let model = StableAudioDit::new(vs.root(), &cfg);
    weights::load_strict(&vs, &file.tensors, "dit_weights.safetensors", &|_| false)?;
    let io = weights::read_safetensors(&fixture("dit_io.safetensors"))?.tensors;
    let hidden = &io["hidden_states"];
    let frames = hidden.size()[2];

    let rotary = Rotary::new(cfg.rotary_dim(), frames + 1, Device::Cpu);
    let rope_diff = max_abs_diff(&rotary.cos, &io["rotary_cos"])
        .max(max_abs_diff(&rotary.sin, &io["rotary_sin"]));
    println!("rotary tables: max abs diff {rope_diff:e}");
    assert!(rope_diff < 1e-5);

    let _guard = tch::no_grad_guard();
    let mask = io["encoder_attention_mask"].to_kind(Kind::Bool);
    let mut input = DitInput {
        hidden_states: hidden,
        timestep: &io["timestep"],
        encoder_hidden_states: &io["encoder_hidden_states"],
        global_hidden_states: &io["global_hidden_states"],
        rotary: &rotary,
        attention_mask: None,
        encoder_attention_mask: None,
    };
    let out = model.forward(&input);
    let d = max_abs_diff(&out, &io["out"]);
    println!(
        "unmasked: max abs diff {d:e} (max |out| {})",
        io["out"].abs().max().double_value(&[])
    );
    assert!(d < 1e-4, "unmasked output differs by {d}");

    input.encoder_attention_mask = Some(&mask);
    let out = model.forward(&input);
    let d = max_abs_diff(&out, &io["out_masked"]);
    println!("text-masked: max abs diff {d:e}");
    assert!(d < 1e-4, "masked output differs by {d}");

    // Padding the latents at the end with a self-attention mask leaves real frames unchanged.
    let padded = Tensor::cat(
        &[
            hidden,
            &Tensor::randn([3, cfg.in_channels, 5], (Kind::Float, Device::Cpu)),
        ],
        2,
    );
    let frame_mask = Tensor::cat(
        &[
            Tensor::ones([3, frames], (Kind::Bool, Device::Cpu)),
            Tensor::zeros([3, 5], (Kind::Bool, Device::Cpu)),
        ],
        1,
    );
    let rotary_long = Rotary::new(cfg.rotary_dim(), frames + 6, Device::Cpu);
    input.hidden_states = &padded;
    input.rotary = &rotary_long;
    input.attention_mask = Some(&frame_mask);
    let out_padded = model.forward(&input).narrow(2, 0, frames);
    let d = max_abs_diff(&out_padded, &io["out_masked"]);
    println!("latent-padded: max abs diff {d:e}");
    assert!(d < 1e-4, "padded output differs by {d}");
    Ok(())
}
