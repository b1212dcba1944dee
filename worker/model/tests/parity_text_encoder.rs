//! Parity of the native BERT text encoder with sentence-transformers' all-MiniLM-L6-v2 on ten music
//! prompts (reference written by `scripts/fixtures/text_encoder.py`). Needs the MiniLM weights in
//! `$TUTTI_HOME/minilm` (default `~/.cache/tutti/minilm`); skipped with a message without them.

use std::path::PathBuf;

use tch::{Device, Tensor};
use tutti_model::text_encoder::TextEncoder;
use tutti_model::weights;

fn minilm_dir() -> PathBuf {
    let home = std::env::var_os("TUTTI_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/tutti")
        });
    home.join("minilm")
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn minilm_matches_sentence_transformers() -> anyhow::Result<()> {
    let dir = minilm_dir();
    if !dir.join("model.safetensors").exists() {
        println!(
            "SKIPPED: MiniLM weights not found in {} (run scripts/setup)",
            dir.display()
        );
        return Ok(());
    }
    let fixture = weights::read_safetensors(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/text_encoder.safetensors"),
    )?;
    let prompts: Vec<String> = serde_json::from_str(&fixture.metadata["prompts"])?;
    let prompts: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let enc = TextEncoder::load(&dir, Device::Cpu)?;

    let (ids, mask) = enc.tokenize(&prompts)?;
    assert_eq!(
        ids, fixture.tensors["input_ids"],
        "token ids differ from the Python tokenizer"
    );
    assert_eq!(
        mask, fixture.tensors["attention_mask"],
        "attention masks differ"
    );

    let out = enc.encode(&prompts)?;
    let d_tokens = max_abs_diff(&out.token_states, &fixture.tensors["token_states"]);
    let d_pooled = max_abs_diff(&out.pooled, &fixture.tensors["embedding"]);
    println!(
        "token states: max abs diff {d_tokens:e}; pooled embedding: max abs diff {d_pooled:e}"
    );
    assert!(d_tokens < 1e-4, "token states differ by {d_tokens}");
    assert!(d_pooled < 1e-4, "pooled embeddings differ by {d_pooled}");

    // One prompt alone gives the same embedding as within the padded batch.
    let single = enc.encode(&prompts[1..2])?;
    let d_single = max_abs_diff(&single.pooled, &out.pooled.narrow(0, 1, 1));
    println!("alone vs batched: max abs diff {d_single:e}");
    assert!(d_single < 1e-5);
    Ok(())
}
