//! The tensors (names and shapes) each Stable Audio component has for a given config, and a check
//! of a safetensors file against them that reads only the file's header: a published folder of
//! gigabytes is validated without reading its weights. The names are those the loaders take
//! (`dit.rs`, `t5.rs`, `projection.rs`, `oobleck.rs`); the tests hold both to the files diffusers
//! and transformers write.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use crate::decoders::oobleck::OobleckConfig;
use crate::families::stable_audio::projection::{ProjectionConfig, NUMBER_INTERNAL_DIM};
use crate::nn::dit::DitConfig;
use crate::text::t5::T5Config;
use crate::{ModelError, Result};

/// Tensor name → shape.
pub type Shapes = BTreeMap<String, Vec<i64>>;

fn put(s: &mut Shapes, key: impl Into<String>, shape: &[i64]) {
    s.insert(key.into(), shape.to_vec());
}

/// `StableAudioDiTModel`.
pub fn dit(cfg: &DitConfig) -> Shapes {
    let mut s = Shapes::new();
    let (d, hd) = (cfg.inner_dim(), cfg.attention_head_dim);
    let (h, kv, cross) = (
        cfg.num_attention_heads,
        cfg.num_key_value_attention_heads,
        cfg.cross_attention_dim,
    );
    put(&mut s, "time_proj.weight", &[cfg.time_proj_dim / 2]);
    for (name, i, o, bias) in [
        ("timestep_proj", cfg.time_proj_dim, d, true),
        ("global_proj", cfg.global_states_input_dim, d, false),
        (
            "cross_attention_proj",
            cfg.cross_attention_input_dim,
            cross,
            false,
        ),
    ] {
        put(&mut s, format!("{name}.0.weight"), &[o, i]);
        put(&mut s, format!("{name}.2.weight"), &[o, o]);
        if bias {
            put(&mut s, format!("{name}.0.bias"), &[o]);
            put(&mut s, format!("{name}.2.bias"), &[o]);
        }
    }
    let c = cfg.in_channels;
    put(&mut s, "preprocess_conv.weight", &[c, c, 1]);
    put(&mut s, "proj_in.weight", &[d, c]);
    put(&mut s, "proj_out.weight", &[cfg.out_channels, d]);
    let co = cfg.out_channels;
    put(&mut s, "postprocess_conv.weight", &[co, co, 1]);
    for b in 0..cfg.num_layers {
        let p = format!("transformer_blocks.{b}");
        for n in ["norm1", "norm2", "norm3"] {
            put(&mut s, format!("{p}.{n}.weight"), &[d]);
            put(&mut s, format!("{p}.{n}.bias"), &[d]);
        }
        for (a, kv_in, kv_heads) in [("attn1", d, h), ("attn2", cross, kv)] {
            put(&mut s, format!("{p}.{a}.to_q.weight"), &[h * hd, d]);
            put(
                &mut s,
                format!("{p}.{a}.to_k.weight"),
                &[kv_heads * hd, kv_in],
            );
            put(
                &mut s,
                format!("{p}.{a}.to_v.weight"),
                &[kv_heads * hd, kv_in],
            );
            put(&mut s, format!("{p}.{a}.to_out.0.weight"), &[d, h * hd]);
        }
        let inner = 4 * d;
        put(&mut s, format!("{p}.ff.net.0.proj.weight"), &[2 * inner, d]);
        put(&mut s, format!("{p}.ff.net.0.proj.bias"), &[2 * inner]);
        put(&mut s, format!("{p}.ff.net.2.weight"), &[d, inner]);
        put(&mut s, format!("{p}.ff.net.2.bias"), &[d]);
    }
    s
}

/// `T5EncoderModel` (`shared.weight`; `encoder.embed_tokens.weight` is accepted as its alias by
/// [`check`]).
pub fn t5(cfg: &T5Config) -> Result<Shapes> {
    let ff = cfg.feed_forward()?;
    let mut s = Shapes::new();
    let (d, inner, dff) = (cfg.d_model, cfg.num_heads * cfg.d_kv, cfg.d_ff);
    put(&mut s, "shared.weight", &[cfg.vocab_size, d]);
    put(
        &mut s,
        "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
        &[cfg.relative_attention_num_buckets, cfg.num_heads],
    );
    for i in 0..cfg.num_layers {
        let p = format!("encoder.block.{i}.layer");
        for w in ["q", "k", "v"] {
            put(
                &mut s,
                format!("{p}.0.SelfAttention.{w}.weight"),
                &[inner, d],
            );
        }
        put(&mut s, format!("{p}.0.SelfAttention.o.weight"), &[d, inner]);
        put(&mut s, format!("{p}.0.layer_norm.weight"), &[d]);
        put(&mut s, format!("{p}.1.layer_norm.weight"), &[d]);
        let f = format!("{p}.1.DenseReluDense");
        if ff.gated {
            put(&mut s, format!("{f}.wi_0.weight"), &[dff, d]);
            put(&mut s, format!("{f}.wi_1.weight"), &[dff, d]);
        } else {
            put(&mut s, format!("{f}.wi.weight"), &[dff, d]);
        }
        put(&mut s, format!("{f}.wo.weight"), &[d, dff]);
    }
    put(&mut s, "encoder.final_layer_norm.weight", &[d]);
    Ok(s)
}

/// `StableAudioProjectionModel` (without the start conditioner for `seconds_total`-only models).
pub fn projection(cfg: &ProjectionConfig, with_start: bool) -> Shapes {
    let mut s = Shapes::new();
    let (i, o) = (cfg.text_encoder_dim, cfg.conditioning_dim);
    if i != o {
        put(&mut s, "text_projection.weight", &[o, i]);
        put(&mut s, "text_projection.bias", &[o]);
    }
    let conds: &[&str] = if with_start {
        &["start_number_conditioner", "end_number_conditioner"]
    } else {
        &["end_number_conditioner"]
    };
    for c in conds {
        let p = format!("{c}.time_positional_embedding");
        put(&mut s, format!("{p}.0.weights"), &[NUMBER_INTERNAL_DIM / 2]);
        put(
            &mut s,
            format!("{p}.1.weight"),
            &[o, NUMBER_INTERNAL_DIM + 1],
        );
        put(&mut s, format!("{p}.1.bias"), &[o]);
    }
    s
}

fn wn_conv(s: &mut Shapes, p: &str, shape: [i64; 3], bias: Option<i64>) {
    put(s, format!("{p}.weight_v"), &shape);
    put(s, format!("{p}.weight_g"), &[shape[0], 1, 1]);
    if let Some(b) = bias {
        put(s, format!("{p}.bias"), &[b]);
    }
}

fn snake(s: &mut Shapes, p: &str, c: i64) {
    put(s, format!("{p}.alpha"), &[1, c, 1]);
    put(s, format!("{p}.beta"), &[1, c, 1]);
}

fn res_units(s: &mut Shapes, p: &str, c: i64) {
    for u in 1..=3 {
        let r = format!("{p}.res_unit{u}");
        snake(s, &format!("{r}.snake1"), c);
        wn_conv(s, &format!("{r}.conv1"), [c, c, 7], Some(c));
        snake(s, &format!("{r}.snake2"), c);
        wn_conv(s, &format!("{r}.conv2"), [c, c, 1], Some(c));
    }
}

/// `AutoencoderOobleck` (encoder and decoder).
pub fn oobleck(cfg: &OobleckConfig) -> Shapes {
    let mut s = Shapes::new();
    let mults: Vec<i64> = std::iter::once(1)
        .chain(cfg.channel_multiples.iter().copied())
        .collect();
    let n = cfg.downsampling_ratios.len();
    let (h, ch) = (cfg.encoder_hidden_size, cfg.decoder_channels);
    wn_conv(&mut s, "encoder.conv1", [h, cfg.audio_channels, 7], Some(h));
    for (i, &st) in cfg.downsampling_ratios.iter().enumerate() {
        let (cin, cout) = (h * mults[i], h * mults[i + 1]);
        let p = format!("encoder.block.{i}");
        res_units(&mut s, &p, cin);
        snake(&mut s, &format!("{p}.snake1"), cin);
        wn_conv(
            &mut s,
            &format!("{p}.conv1"),
            [cout, cin, 2 * st],
            Some(cout),
        );
    }
    snake(&mut s, "encoder.snake1", h * mults[n]);
    wn_conv(&mut s, "encoder.conv2", [h, h * mults[n], 3], Some(h));
    let top = ch * mults[n];
    wn_conv(
        &mut s,
        "decoder.conv1",
        [top, cfg.decoder_input_channels, 7],
        Some(top),
    );
    for (i, &st) in cfg.downsampling_ratios.iter().rev().enumerate() {
        let (cin, cout) = (ch * mults[n - i], ch * mults[n - i - 1]);
        let p = format!("decoder.block.{i}");
        snake(&mut s, &format!("{p}.snake1"), cin);
        wn_conv(
            &mut s,
            &format!("{p}.conv_t1"),
            [cin, cout, 2 * st],
            Some(cout),
        );
        res_units(&mut s, &p, cout);
    }
    snake(&mut s, "decoder.snake1", ch);
    wn_conv(&mut s, "decoder.conv2", [cfg.audio_channels, ch, 7], None);
    s
}

#[derive(serde::Deserialize)]
struct HeaderEntry {
    dtype: String,
    shape: Vec<i64>,
    data_offsets: [u64; 2],
}

/// The tensor names and shapes of a safetensors file, from its header alone; an error if the
/// file is shorter than its header says (a truncated download) or holds a non-float tensor.
pub fn read_header(path: &Path) -> Result<Shapes> {
    let err = |m: String| ModelError::Pack {
        path: path.display().to_string(),
        message: m,
    };
    let mut f = std::fs::File::open(path).map_err(|e| err(format!("cannot open: {e}")))?;
    let file_len = f
        .metadata()
        .map_err(|e| err(format!("cannot stat: {e}")))?
        .len();
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .map_err(|e| err(format!("not a safetensors file: {e}")))?;
    let n = u64::from_le_bytes(len);
    if n > 100_000_000 || 8 + n > file_len {
        return Err(err(format!("not a safetensors file (header length {n})")));
    }
    let mut buf = vec![0u8; n as usize];
    f.read_exact(&mut buf)
        .map_err(|e| err(format!("cannot read the header: {e}")))?;
    let raw: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(&buf).map_err(|e| err(format!("invalid header: {e}")))?;
    let mut shapes = Shapes::new();
    let mut end = 0u64;
    for (k, v) in raw {
        if k == "__metadata__" {
            continue;
        }
        let e: HeaderEntry = serde_json::from_value(v)
            .map_err(|e| err(format!("tensor {k}: invalid header entry: {e}")))?;
        if !matches!(e.dtype.as_str(), "F32" | "F16" | "BF16" | "F64") {
            return Err(err(format!("tensor {k}: dtype {} is not a float", e.dtype)));
        }
        end = end.max(e.data_offsets[1]);
        shapes.insert(k, e.shape);
    }
    if 8 + n + end > file_len {
        return Err(err(format!(
            "truncated: the header describes {} bytes of data, the file has {}",
            end,
            file_len - 8 - n
        )));
    }
    Ok(shapes)
}

/// Compares a file's tensors with what a component expects: a missing, unexpected or
/// wrong-shaped tensor is an error naming `source` and the key. `aliases` are (alias, name)
/// pairs the file may carry besides the name (same shape).
pub fn check(
    expected: &Shapes,
    found: &Shapes,
    source: &str,
    aliases: &[(&str, &str)],
) -> Result<()> {
    let err = |key: &str, message: String| ModelError::Weights {
        key: key.to_string(),
        message: format!("{message} in {source}"),
    };
    for (key, shape) in found {
        let name = aliases
            .iter()
            .find(|(a, _)| a == key)
            .map_or(key.as_str(), |(_, n)| n);
        match expected.get(name) {
            None => return Err(err(key, "unexpected (the model has no such weight)".into())),
            Some(want) if want != shape => {
                return Err(err(
                    key,
                    format!("wrong shape: expected {want:?}, found {shape:?}"),
                ))
            }
            Some(_) => {}
        }
    }
    for key in expected.keys() {
        let aliased = aliases
            .iter()
            .any(|(a, n)| n == key && found.contains_key(*a));
        if !found.contains_key(key) && !aliased {
            return Err(err(key, "missing".into()));
        }
    }
    Ok(())
}
