//! `tutti models`: the model catalogue. Embedded (no `--server`): the local packs, read as a
//! farm's coordinator reads them; with `--server`: the farm's, through ListModels/GetModel, with
//! whether its live workers can run each one now.

use std::path::PathBuf;

use tutti_coordinator::catalogue;
use tutti_coordinator::validate::Validator;
use tutti_proto::v1 as pb;
use tutti_shared::job::SamplerKind;
use tutti_shared::models::ModelRegistry;

use super::channel::{status_err, Credentials};
use super::client;
use super::embedded;

#[derive(Debug, clap::Args)]
pub(crate) struct ModelsArgs {
    /// One model, `NAME` or `NAME@VERSION` (default: every model).
    pub model: Option<String>,
    /// Address of a farm (`tutti dev` or a coordinator): its models and whether its workers can
    /// run them now. Without it: the local packs.
    #[arg(long, env = "TUTTI_SERVER")]
    pub server: Option<String>,
    #[command(flatten)]
    pub credentials: Credentials,
    /// Folder of model packs, without --server (default: as `tutti generate`).
    #[arg(long, env = "TUTTI_MODELS_DIR")]
    pub models_dir: Option<PathBuf>,
    /// Model a request without one gets, without --server (default: the only pack, or
    /// `tutti-mini`).
    #[arg(long, env = "TUTTI_DEFAULT_MODEL")]
    pub default_model: Option<String>,
    /// Print the API's messages as JSON.
    #[arg(long)]
    pub json: bool,
}

fn model_ref(arg: Option<&str>) -> pb::GetModelRequest {
    let (name, version) = match arg {
        Some(s) => s.split_once('@').unwrap_or((s, "")),
        None => ("", ""),
    };
    pb::GetModelRequest {
        name: name.to_string(),
        version: version.to_string(),
    }
}

pub(crate) async fn run(args: ModelsArgs) -> anyhow::Result<()> {
    let list = match &args.server {
        Some(server) => {
            let mut c = client::connect_to(server, &args.credentials).await?;
            match &args.model {
                Some(m) => pb::ListModelsResponse {
                    models: vec![c
                        .get_model(model_ref(Some(m)))
                        .await
                        .map_err(status_err)?
                        .into_inner()],
                    default_model: String::new(),
                },
                None => c
                    .list_models(pb::ListModelsRequest {})
                    .await
                    .map_err(status_err)?
                    .into_inner(),
            }
        }
        None => {
            let dir = embedded::resolve_models_dir(args.models_dir.as_deref())?;
            let registry = ModelRegistry::scan(&dir)?;
            let v = Validator::new(registry, args.default_model.clone(), 0)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            match &args.model {
                Some(m) => pb::ListModelsResponse {
                    models: vec![catalogue::get(&v, &model_ref(Some(m)), None)
                        .map_err(|e| anyhow::anyhow!("{e}"))?],
                    default_model: String::new(),
                },
                None => catalogue::list(&v, None),
            }
        }
    };
    if args.json {
        match (&args.model, list.models.first()) {
            (Some(_), Some(one)) => println!("{}", serde_json::to_string_pretty(one)?),
            _ => println!("{}", serde_json::to_string_pretty(&list)?),
        }
        return Ok(());
    }
    if list.models.is_empty() {
        println!("no model packs");
    }
    for (i, m) in list.models.iter().enumerate() {
        if i > 0 {
            println!();
        }
        print!("{}", describe(m));
    }
    Ok(())
}

/// A sampler as `tutti generate --sampler` spells it.
fn sampler(s: pb::Sampler) -> String {
    Option::<SamplerKind>::from(s).map_or_else(|| "?".into(), |k| k.as_str().replace('_', "-"))
}

fn input(i: pb::ModelInput) -> String {
    i.as_str_name()
        .trim_start_matches("MODEL_INPUT_")
        .to_ascii_lowercase()
}

fn num(x: f32) -> String {
    format!("{x}")
}

/// One model as a block of lines.
pub(crate) fn describe(m: &pb::Model) -> String {
    let mut marks = Vec::new();
    if m.is_default {
        marks.push("default");
    }
    if !m.newest {
        marks.push("older version");
    }
    let marks = if marks.is_empty() {
        String::new()
    } else {
        format!(" ({})", marks.join(", "))
    };
    let audio = match m.channels {
        1 => "mono".to_string(),
        2 => "stereo".to_string(),
        n => format!("{n} channels"),
    };
    let mut out = format!(
        "{}@{}{marks}\n  {} family · {audio} {} Hz\n",
        m.name, m.version, m.family, m.sample_rate
    );
    if !m.description.is_empty() {
        out += &format!("  {}\n", m.description);
    }
    out += &format!(
        "  duration {}-{} s (default {}) · steps 1-{} (default {}) · guidance 0-{} (default {})\n",
        num(m.min_duration_seconds),
        num(m.max_duration_seconds),
        num(m.default_duration_seconds),
        m.max_steps,
        m.default_steps,
        num(m.max_guidance_scale),
        num(m.default_guidance_scale),
    );
    let default = m.default_sampler();
    let samplers: Vec<String> = m
        .samplers()
        .map(|s| {
            if s == default {
                format!("{} (default)", sampler(s))
            } else {
                sampler(s)
            }
        })
        .collect();
    out += &format!("  samplers: {}\n", samplers.join(", "));
    let inputs: Vec<String> = m.inputs().map(input).collect();
    out += &format!("  takes: prompt, {}\n", inputs.join(", "));
    if m.max_prompt_tokens > 0 {
        out += &format!(
            "  prompt: at most {} tokens, {} characters\n",
            m.max_prompt_tokens, m.max_prompt_chars
        );
    }
    if let Some(k) = &m.key_serving {
        out += &keys(k);
    }
    if m.versions.len() > 1 {
        out += &format!("  versions: {}\n", m.versions.join(", "));
    }
    out += &match &m.availability {
        None => "  workers: local pack (`tutti generate` runs it in this process)\n".to_string(),
        Some(a) if a.ready => format!(
            "  workers: ready ({} live worker{} with it)\n",
            a.workers,
            if a.workers == 1 { "" } else { "s" }
        ),
        Some(a) => format!("  workers: not ready: {}\n", a.reason),
    };
    out
}

/// How the pack serves asked keys, a line per mode it lists tonics for.
fn keys(k: &pb::KeyServing) -> String {
    let mut out = String::new();
    for (mode, tonics) in [("major", &k.major_tonics), ("minor", &k.minor_tonics)] {
        if tonics.is_empty() {
            continue;
        }
        out += &format!(
            "  keys: \"{mode}\" alone is served in {} (the seed picks)",
            tonics.join(", ")
        );
        if k.varispeed_semitones > 0 {
            out += &format!(
                "; other {mode} tonics are rendered up to {} semitone{} away and played back in the asked key",
                k.varispeed_semitones,
                if k.varispeed_semitones == 1 { "" } else { "s" }
            );
        }
        out.push('\n');
    }
    out
}
