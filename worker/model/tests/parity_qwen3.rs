//! Parity of the native Qwen3 text encoder with transformers 5.24's `Qwen3Model` on a tiny random
//! config (GQA ratio 2, query/key norms, rope theta 1000): `scripts/fixtures/qwen3_tiny.py` writes
//! the model and its outputs into a temporary folder, run with the venv's python (torch 2.11) and
//! the reference scripts/setup installs into `$TUTTI_HOME/pyref`. Skipped with a message when that
//! reference is not installed (as the MiniLM parity test skips without its weights).

mod common;

use tch::{Device, Kind, Tensor};
use tutti_model::text::qwen3::Qwen3Encoder;
use tutti_model::text::qwen3_tokenizer::Qwen3Tokenizer;
use tutti_model::weights::source::TensorSource;
use tutti_model::weights::{self, TensorFile};

/// Runs the reference script into a fresh temporary folder; `None` (with the reason printed)
/// when the reference is not installed.
fn reference() -> anyhow::Result<Option<(tempfile::TempDir, TensorFile)>> {
    let Some(out) = common::run_fixture("qwen3_tiny.py", "transformers")? else {
        return Ok(None);
    };
    let io = weights::read_safetensors(&out.path().join("io.safetensors"))?;
    Ok(Some((out, io)))
}

fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shapes differ");
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

#[test]
fn qwen3_matches_transformers() -> anyhow::Result<()> {
    let Some((dir, io)) = reference()? else {
        return Ok(());
    };
    let t = |k: &str| &io.tensors[k];
    let enc = Qwen3Encoder::load(dir.path(), Device::Cpu, Kind::Float)?;
    assert_eq!(enc.config().num_key_value_heads, 2);
    assert_eq!(enc.config().rope_theta, 1000.0);

    // Batch 1 without a mask, as ACE-Step runs the encoder: every position.
    let single = enc.forward(t("single_ids"), None)?;
    let d_single = max_abs(&single, t("single"));
    println!("single, no mask: max abs diff {d_single:.3e}");
    assert!(d_single < 1e-4, "single: {d_single}");
    // The comparison can fail: the reference is not flat, and the config's theta matters.
    let scale = t("single").abs().max().double_value(&[]);
    assert!(scale > 0.5, "reference max |h| {scale}");
    let mut cfg = enc.config().clone();
    cfg.rope_theta = 10_000.0;
    let mut src = TensorSource::read(
        &dir.path().join("model.safetensors"),
        Device::Cpu,
        Kind::Float,
    )?;
    let other = Qwen3Encoder::from_source(&cfg, &mut src)?;
    let d_theta = max_abs(&other.forward(t("single_ids"), None)?, t("single"));
    println!("with theta 1e4 instead of 1e3: max abs diff {d_theta:.3e} (max |h| {scale:.3})");
    assert!(d_theta > 1e-2, "theta changes nothing: {d_theta}");

    // A right-padded batch with a mask: the real positions only (a padded position here also
    // attends to itself, so that no attention row is empty; see `Qwen3Encoder::forward`).
    let mask = t("attention_mask");
    let batch = enc.forward(t("input_ids"), Some(mask))?;
    assert_eq!(batch.size(), t("hidden").size());
    let keep = mask.to_kind(Kind::Bool).unsqueeze(-1);
    let zero = Tensor::zeros([1], (Kind::Float, Device::Cpu));
    let d_batch = max_abs(
        &batch.where_self(&keep, &zero),
        &t("hidden").where_self(&keep, &zero),
    );
    println!("padded batch, real positions: max abs diff {d_batch:.3e}");
    assert!(d_batch < 1e-4, "batch: {d_batch}");
    // The padding does not reach the shorter sequence's real positions: it equals itself alone.
    let len = mask.get(1).sum(Kind::Int64).int64_value(&[]);
    let alone = enc.forward(&t("input_ids").narrow(0, 1, 1).narrow(1, 0, len), None)?;
    let d_alone = max_abs(&alone, &batch.narrow(0, 1, 1).narrow(1, 0, len));
    println!("short sequence alone vs in the batch: max abs diff {d_alone:.3e}");
    assert!(d_alone < 1e-5);

    // bf16 weights (how the published encoder ships and runs on CUDA) run the same path; the
    // norms and the rotation compute in f32, so only bf16's rounding separates the two.
    let bf = Qwen3Encoder::load(dir.path(), Device::Cpu, Kind::BFloat16)?;
    let out = bf.forward(t("single_ids"), None)?;
    assert_eq!(out.kind(), Kind::BFloat16);
    let d_bf16 = max_abs(&out, t("single"));
    println!("bf16 weights, no mask: max abs diff {d_bf16:.3e} (max |h| {scale:.3})");
    assert!(d_bf16 < 0.1 * scale, "bf16: {d_bf16}");

    // The lyric path: the embedding table only.
    let emb = enc.embed(t("single_ids"))?;
    assert_eq!(emb.size(), [1, 11, 64]);
    Ok(())
}

/// A `Qwen3ForCausalLM` checkpoint: every key under `model.`, plus an `lm_head.weight`.
#[test]
fn qwen3_loads_a_causal_lm_checkpoint() -> anyhow::Result<()> {
    let Some((dir, io)) = reference()? else {
        return Ok(());
    };
    let file = weights::read_safetensors(&dir.path().join("model.safetensors"))?;
    let lm = tempfile::tempdir()?;
    let mut named: Vec<(String, Tensor)> = file
        .tensors
        .iter()
        .map(|(k, v)| (format!("model.{k}"), v.shallow_clone()))
        .collect();
    named.push((
        "lm_head.weight".into(),
        Tensor::zeros([512, 64], (Kind::Float, Device::Cpu)),
    ));
    Tensor::write_safetensors(&named, lm.path().join("model.safetensors"))?;
    std::fs::copy(
        dir.path().join("config.json"),
        lm.path().join("config.json"),
    )?;
    let enc = Qwen3Encoder::load(lm.path(), Device::Cpu, Kind::Float)?;
    let d = max_abs(
        &enc.forward(&io.tensors["single_ids"], None)?,
        &io.tensors["single"],
    );
    assert!(d < 1e-4, "{d}");

    // A key the model lacks is an error naming it.
    named.push((
        "model.layers.9.mlp.up_proj.weight".into(),
        Tensor::zeros([1], (Kind::Float, Device::Cpu)),
    ));
    Tensor::write_safetensors(&named, lm.path().join("model.safetensors"))?;
    let e = Qwen3Encoder::load(lm.path(), Device::Cpu, Kind::Float)
        .unwrap_err()
        .to_string();
    assert!(e.contains("model.layers.9.mlp.up_proj.weight"), "{e}");
    Ok(())
}

/// The tokenizer appends the end token whether `tokenizer.json` has Qwen3-Embedding's
/// post-processor (`tokenizer.json` here) or not (`tokenizer_plain.json`), matching the Python
/// `tokenizers` package with the post-processor, a literal `<|endoftext|>` in the text included.
#[test]
fn qwen3_tokenizer_appends_the_end_token() -> anyhow::Result<()> {
    let Some((dir, io)) = reference()? else {
        return Ok(());
    };
    let texts: Vec<String> = serde_json::from_str(&io.metadata["texts"])?;
    for file in ["tokenizer.json", "tokenizer_plain.json"] {
        let tok = Qwen3Tokenizer::load(&dir.path().join(file), 256)?;
        for (i, text) in texts.iter().enumerate() {
            let ids = tok.encode(text)?;
            let want: Vec<i64> = Vec::try_from(&io.tensors[&format!("tok_ids_{i}")])?;
            assert_eq!(ids, want, "{file}: {text:?}");
            assert_eq!(*ids.last().unwrap_or(&-1), i64::from(tok.end_id()));
        }
        // Truncation keeps room for the end token.
        let short = Qwen3Tokenizer::load(&dir.path().join(file), 4)?.encode(&texts[0])?;
        assert_eq!(short.len(), 4);
        assert_eq!(short[3], i64::from(tok.end_id()));
    }
    Ok(())
}
