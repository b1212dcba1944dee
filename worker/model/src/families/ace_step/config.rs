//! The `config.json` files of an ACE-Step 1.5 diffusers folder that the networks read:
//! `transformer/` (`AceStepTransformer1DModel`) and `condition_encoder/`
//! (`AceStepConditionEncoder`). Fields the networks do not use are ignored; values the port does
//! not implement (attention biases, unknown layer types) are refused at load rather than run
//! wrong.

use serde::Deserialize;

use crate::{ModelError, Result};

/// Which attention a layer runs: a band of `sliding_window` positions each side, or the whole
/// sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerKind {
    Sliding,
    Full,
}

/// diffusers' default when `layer_types` is null: sliding, full, sliding, ...
fn alternating(n: i64) -> Vec<LayerKind> {
    (0..n)
        .map(|i| {
            if i % 2 == 0 {
                LayerKind::Sliding
            } else {
                LayerKind::Full
            }
        })
        .collect()
}

fn layer_kinds(names: Option<&[String]>, n: i64, what: &str) -> Result<Vec<LayerKind>> {
    let Some(names) = names else {
        return Ok(alternating(n));
    };
    if names.len() as i64 != n {
        return Err(ModelError::Input(format!(
            "ace-step {what}: {} layer_types for {n} layers",
            names.len()
        )));
    }
    names
        .iter()
        .map(|t| match t.as_str() {
            "sliding_attention" => Ok(LayerKind::Sliding),
            "full_attention" => Ok(LayerKind::Full),
            other => Err(ModelError::Input(format!(
                "ace-step {what}: unknown layer type {other:?}"
            ))),
        })
        .collect()
}

/// The attention stack's shape, shared by the DiT and the condition encoder's two encoders.
#[derive(Debug, Clone, PartialEq)]
pub struct StackShape {
    pub hidden: i64,
    pub intermediate: i64,
    pub heads: i64,
    pub kv_heads: i64,
    pub head_dim: i64,
    pub rope_theta: f64,
    pub eps: f64,
    pub sliding_window: i64,
}

impl StackShape {
    fn validate(&self, what: &str) -> Result<()> {
        for (name, v) in [
            ("hidden_size", self.hidden),
            ("intermediate_size", self.intermediate),
            ("num_attention_heads", self.heads),
            ("num_key_value_heads", self.kv_heads),
            ("head_dim", self.head_dim),
            ("sliding_window", self.sliding_window),
        ] {
            if v <= 0 {
                return Err(ModelError::Input(format!(
                    "ace-step {what}: {name} must be positive, got {v}"
                )));
            }
        }
        if self.heads % self.kv_heads != 0 || self.head_dim % 2 != 0 {
            return Err(ModelError::Input(format!(
                "ace-step {what}: {} heads over {} key/value heads with head_dim {} \
                 (heads must be a multiple of key/value heads, head_dim even)",
                self.heads, self.kv_heads, self.head_dim
            )));
        }
        if !(self.rope_theta > 0.0 && self.eps > 0.0) {
            return Err(ModelError::Input(format!(
                "ace-step {what}: rope_theta and rms_norm_eps must be positive"
            )));
        }
        Ok(())
    }
}

/// The attention stack's fields, as both configs spell them.
#[derive(Debug, Deserialize)]
struct RawStack {
    hidden_size: i64,
    intermediate_size: i64,
    num_attention_heads: i64,
    num_key_value_heads: i64,
    head_dim: i64,
    rope_theta: f64,
    #[serde(default)]
    attention_bias: bool,
    rms_norm_eps: f64,
    sliding_window: i64,
}

impl RawStack {
    fn shape(&self, what: &str) -> Result<StackShape> {
        if self.attention_bias {
            return Err(ModelError::Input(format!(
                "ace-step {what}: attention_bias = true is not supported"
            )));
        }
        let stack = StackShape {
            hidden: self.hidden_size,
            intermediate: self.intermediate_size,
            heads: self.num_attention_heads,
            kv_heads: self.num_key_value_heads,
            head_dim: self.head_dim,
            rope_theta: self.rope_theta,
            eps: self.rms_norm_eps,
            sliding_window: self.sliding_window,
        };
        stack.validate(what)?;
        Ok(stack)
    }
}

#[derive(Debug, Deserialize)]
struct RawTransformer {
    #[serde(flatten)]
    stack: RawStack,
    num_hidden_layers: i64,
    in_channels: i64,
    audio_acoustic_hidden_dim: i64,
    patch_size: i64,
    layer_types: Option<Vec<String>>,
    encoder_hidden_size: Option<i64>,
    #[serde(default)]
    is_turbo: bool,
    model_version: Option<String>,
}

/// `transformer/config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct DitConfig {
    pub stack: StackShape,
    pub layers: Vec<LayerKind>,
    /// Channels into the patchify convolution: source latents, chunk mask and noisy latents.
    pub in_channels: i64,
    /// Latent channels (the VAE's).
    pub latent_channels: i64,
    pub patch: i64,
    /// The condition encoder's width (XL: narrower than `hidden`).
    pub encoder_hidden: i64,
    /// Guidance distilled into the weights: run without classifier-free guidance.
    pub is_turbo: bool,
}

impl DitConfig {
    pub fn parse(json: &str) -> Result<Self> {
        let r: RawTransformer = serde_json::from_str(json)
            .map_err(|e| ModelError::Input(format!("ace-step transformer config: {e}")))?;
        let stack = r.stack.shape("transformer config")?;
        let cfg = Self {
            layers: layer_kinds(
                r.layer_types.as_deref(),
                r.num_hidden_layers,
                "transformer config",
            )?,
            in_channels: r.in_channels,
            latent_channels: r.audio_acoustic_hidden_dim,
            patch: r.patch_size,
            encoder_hidden: r.encoder_hidden_size.unwrap_or(stack.hidden),
            is_turbo: r.is_turbo || r.model_version.as_deref() == Some("turbo"),
            stack,
        };
        if cfg.patch <= 0 || cfg.latent_channels <= 0 || cfg.in_channels != 3 * cfg.latent_channels
        {
            return Err(ModelError::Input(format!(
                "ace-step transformer config: in_channels {} must be 3 x audio_acoustic_hidden_dim \
                 {} (source, mask, latent) and patch_size {} positive",
                cfg.in_channels, cfg.latent_channels, cfg.patch
            )));
        }
        Ok(cfg)
    }
}

#[derive(Debug, Deserialize)]
struct RawCondition {
    #[serde(flatten)]
    stack: RawStack,
    text_hidden_dim: i64,
    timbre_hidden_dim: i64,
    num_lyric_encoder_hidden_layers: i64,
    num_timbre_encoder_hidden_layers: i64,
    layer_types: Option<Vec<String>>,
}

/// `condition_encoder/config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct ConditionConfig {
    pub stack: StackShape,
    /// The text encoder's width (Qwen3-Embedding-0.6B: 1024).
    pub text_hidden: i64,
    /// The reference latents' channels (the VAE's latent channels).
    pub timbre_hidden: i64,
    pub lyric_layers: Vec<LayerKind>,
    pub timbre_layers: Vec<LayerKind>,
}

impl ConditionConfig {
    pub fn parse(json: &str) -> Result<Self> {
        let r: RawCondition = serde_json::from_str(json)
            .map_err(|e| ModelError::Input(format!("ace-step condition encoder config: {e}")))?;
        let stack = r.stack.shape("condition encoder config")?;
        if r.text_hidden_dim <= 0 || r.timbre_hidden_dim <= 0 {
            return Err(ModelError::Input(
                "ace-step condition encoder config: text_hidden_dim and timbre_hidden_dim must be \
                 positive"
                    .into(),
            ));
        }
        Ok(Self {
            lyric_layers: layer_kinds(
                r.layer_types.as_deref(),
                r.num_lyric_encoder_hidden_layers,
                "condition encoder config",
            )?,
            // diffusers builds the timbre encoder without the config's layer_types.
            timbre_layers: alternating(r.num_timbre_encoder_hidden_layers),
            text_hidden: r.text_hidden_dim,
            timbre_hidden: r.timbre_hidden_dim,
            stack,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The 2B turbo's transformer config as the diffusers converter writes it.
    pub(crate) const TURBO_2B: &str = r#"{"_class_name":"AceStepTransformer1DModel",
        "hidden_size":2048,"intermediate_size":6144,"num_hidden_layers":24,
        "num_attention_heads":16,"num_key_value_heads":8,"head_dim":128,"in_channels":192,
        "audio_acoustic_hidden_dim":64,"patch_size":2,"rope_theta":1000000.0,
        "attention_bias":false,"attention_dropout":0.0,"rms_norm_eps":1e-06,"sliding_window":128,
        "layer_types":null,"encoder_hidden_size":2048,"is_turbo":true,"model_version":"turbo"}"#;

    #[test]
    fn real_configs_parse_and_wrong_ones_are_refused() {
        let c = DitConfig::parse(TURBO_2B).unwrap();
        assert_eq!(c.layers.len(), 24);
        assert_eq!(&c.layers[..2], &[LayerKind::Sliding, LayerKind::Full]);
        assert!(c.is_turbo);
        let xl = TURBO_2B
            .replace(r#""hidden_size":2048"#, r#""hidden_size":2560"#)
            .replace(r#""num_hidden_layers":24"#, r#""num_hidden_layers":32"#)
            .replace(r#""num_attention_heads":16"#, r#""num_attention_heads":32"#);
        let c = DitConfig::parse(&xl).unwrap();
        assert_eq!(
            (c.stack.hidden, c.encoder_hidden, c.layers.len()),
            (2560, 2048, 32)
        );
        let bias = TURBO_2B.replace(r#""attention_bias":false"#, r#""attention_bias":true"#);
        assert!(DitConfig::parse(&bias)
            .unwrap_err()
            .to_string()
            .contains("attention_bias"));
        let odd = TURBO_2B.replace(r#""in_channels":192"#, r#""in_channels":128"#);
        assert!(DitConfig::parse(&odd)
            .unwrap_err()
            .to_string()
            .contains("in_channels"));
        let cond = r#"{"hidden_size":2048,"intermediate_size":6144,"text_hidden_dim":1024,
            "timbre_hidden_dim":64,"num_lyric_encoder_hidden_layers":8,
            "num_timbre_encoder_hidden_layers":4,"num_attention_heads":16,"num_key_value_heads":8,
            "head_dim":128,"rope_theta":1000000.0,"attention_bias":false,"rms_norm_eps":1e-06,
            "sliding_window":128,"layer_types":null}"#;
        let c = ConditionConfig::parse(cond).unwrap();
        assert_eq!((c.lyric_layers.len(), c.timbre_layers.len()), (8, 4));
    }
}
