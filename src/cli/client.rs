//! gRPC client commands: generate, job, watch, cancel, list.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use tonic::transport::Channel;
use tutti_proto::v1 as pb;
use tutti_proto::v1::generation_client::GenerationClient;

#[derive(Debug, clap::Args)]
pub(crate) struct ServerArgs {
    /// Address of a tutti coordinator.
    #[arg(long, env = "TUTTI_SERVER", default_value = "http://127.0.0.1:50051")]
    pub server: String,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum PriorityArg {
    Interactive,
    Standard,
    Batch,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum FormatArg {
    Wav,
    Flac,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum SamplerArg {
    FlowEuler,
    Ddim,
    DpmSolverPp2m,
    CosineDpmSolverPp2m,
}

#[derive(Debug, clap::Args)]
pub(crate) struct GenerateArgs {
    /// What to generate, e.g. "melancholic lo-fi piano, 75 BPM, late night study session".
    pub prompt: Option<String>,
    #[command(flatten)]
    pub server: ServerArgs,
    /// Write the first output here (with --wait).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    #[arg(long)]
    pub negative: Option<String>,
    /// Seconds of audio.
    #[arg(long)]
    pub duration: Option<f32>,
    #[arg(long)]
    pub seed: Option<u64>,
    #[arg(long)]
    pub steps: Option<u32>,
    #[arg(long)]
    pub guidance: Option<f32>,
    #[arg(long, value_enum)]
    pub sampler: Option<SamplerArg>,
    #[arg(long, value_enum, default_value = "wav")]
    pub format: FormatArg,
    #[arg(long, default_value_t = 1)]
    pub variations: u32,
    #[arg(long, value_enum, default_value = "interactive")]
    pub priority: PriorityArg,
    #[arg(long)]
    pub model: Option<String>,
    #[arg(long)]
    pub model_version: Option<String>,
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// key=value, repeatable.
    #[arg(long = "label", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    // Structured prompt fields (used when given; the free prompt then goes into `extra`).
    #[arg(long)]
    pub genre: Option<String>,
    #[arg(long)]
    pub subgenre: Option<String>,
    #[arg(long)]
    pub mood: Option<String>,
    #[arg(long)]
    pub bpm: Option<f32>,
    #[arg(long)]
    pub key: Option<String>,
    #[arg(long = "instrument")]
    pub instruments: Vec<String>,
    #[arg(long = "structure")]
    pub structure: Vec<String>,
    /// Wait for the job to finish (default), or print its id and return.
    #[arg(long, overrides_with = "no_wait")]
    pub wait: bool,
    #[arg(long)]
    pub no_wait: bool,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?} is not key=value"))
}

#[derive(Debug, clap::Args)]
pub(crate) struct JobArgs {
    pub id: String,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ListArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    #[arg(long, default_value_t = 20)]
    pub limit: u32,
    /// key=value, repeatable.
    #[arg(long = "label", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
}

async fn connect(server: &ServerArgs) -> anyhow::Result<GenerationClient<Channel>> {
    GenerationClient::connect(server.server.clone())
        .await
        .with_context(|| format!("connecting to the tutti server at {}", server.server))
}

fn status_err(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", s.code(), s.message())
}

impl GenerateArgs {
    pub(crate) fn request(&self) -> anyhow::Result<pb::SubmitGenerationRequest> {
        let structured = self.genre.is_some()
            || self.subgenre.is_some()
            || self.mood.is_some()
            || self.bpm.is_some()
            || self.key.is_some()
            || !self.instruments.is_empty()
            || !self.structure.is_empty();
        let prompt_kind = if structured {
            pb::submit_generation_request::PromptKind::Structured(pb::StructuredPrompt {
                genre: self.genre.clone().unwrap_or_default(),
                subgenre: self.subgenre.clone().unwrap_or_default(),
                mood: self.mood.clone().unwrap_or_default(),
                tempo_bpm: self.bpm,
                key: self.key.clone().unwrap_or_default(),
                instruments: self.instruments.clone(),
                structure: self.structure.clone(),
                extra: self.prompt.clone().unwrap_or_default(),
            })
        } else {
            match &self.prompt {
                Some(p) => pb::submit_generation_request::PromptKind::Prompt(p.clone()),
                None => bail!("give a prompt, or structured fields such as --genre and --mood"),
            }
        };
        Ok(pb::SubmitGenerationRequest {
            prompt_kind: Some(prompt_kind),
            negative_prompt: self.negative.clone().unwrap_or_default(),
            duration_seconds: self.duration,
            steps: self.steps,
            guidance_scale: self.guidance,
            sampler: match self.sampler {
                None => pb::Sampler::Unspecified,
                Some(SamplerArg::FlowEuler) => pb::Sampler::FlowEuler,
                Some(SamplerArg::Ddim) => pb::Sampler::Ddim,
                Some(SamplerArg::DpmSolverPp2m) => pb::Sampler::DpmSolverPp2m,
                Some(SamplerArg::CosineDpmSolverPp2m) => pb::Sampler::CosineDpmSolverPp2m,
            } as i32,
            seed: self.seed,
            model: self.model.as_ref().map(|name| pb::ModelRef {
                name: name.clone(),
                version: self.model_version.clone().unwrap_or_default(),
            }),
            format: match self.format {
                FormatArg::Wav => pb::AudioFormat::Wav,
                FormatArg::Flac => pb::AudioFormat::Flac,
            } as i32,
            variations: self.variations,
            priority: match self.priority {
                PriorityArg::Interactive => pb::Priority::Interactive,
                PriorityArg::Standard => pb::Priority::Standard,
                PriorityArg::Batch => pb::Priority::Batch,
            } as i32,
            idempotency_key: self.idempotency_key.clone().unwrap_or_default(),
            labels: self.labels.iter().cloned().collect::<HashMap<_, _>>(),
        })
    }
}

pub(crate) async fn generate(args: GenerateArgs) -> anyhow::Result<()> {
    let req = args.request()?;
    let mut client = connect(&args.server).await?;
    let job = client
        .submit_generation(req)
        .await
        .map_err(status_err)?
        .into_inner();
    let seed = job
        .request
        .as_ref()
        .and_then(|r| r.seed)
        .unwrap_or_default();
    if args.no_wait {
        println!("{}", job.id);
        return Ok(());
    }
    eprintln!("job {} accepted (seed {seed})", job.id);
    let job = follow(&mut client, &job.id).await?;
    if job.state != pb::JobState::Succeeded as i32 {
        let err = job.error.map(|e| format!("{}: {}", e.code, e.message));
        bail!(
            "job {} ended {:?}{}",
            job.id,
            pb::JobState::try_from(job.state).unwrap_or(pb::JobState::Unspecified),
            err.map(|e| format!(" ({e})")).unwrap_or_default()
        );
    }
    print_job(&job);
    if let (Some(path), Some(first)) = (&args.output, job.outputs.first()) {
        download(&first.url, path).await?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

async fn download(url: &str, path: &std::path::Path) -> anyhow::Result<()> {
    let bytes = if let Some(local) = url.strip_prefix("file://") {
        tokio::fs::read(local)
            .await
            .with_context(|| format!("reading {local}"))?
    } else {
        let resp = reqwest::get(url)
            .await
            .with_context(|| format!("downloading {url}"))?
            .error_for_status()?;
        resp.bytes().await?.to_vec()
    };
    tokio::fs::write(path, bytes)
        .await
        .with_context(|| format!("writing {}", path.display()))
}

/// Streams a job's events with a progress bar until it ends; returns the final job.
async fn follow(client: &mut GenerationClient<Channel>, id: &str) -> anyhow::Result<pb::Job> {
    let mut stream = client
        .watch_job(pb::WatchJobRequest { id: id.to_string() })
        .await
        .map_err(status_err)?
        .into_inner();
    let bar = ProgressBar::new(1);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg:>10} [{bar:30}] step {pos}/{len} eta {eta}")
            .map_err(|e| anyhow::anyhow!("progress style: {e}"))?
            .progress_chars("=> "),
    );
    let mut last = None;
    while let Some(ev) = stream.message().await.map_err(status_err)? {
        if let Some(job) = ev.job {
            bar.set_length(u64::from(job.steps_total.max(1)));
            bar.set_position(u64::from(job.steps_done));
            let stage = pb::Stage::try_from(job.stage).unwrap_or(pb::Stage::Unspecified);
            bar.set_message(
                stage
                    .as_str_name()
                    .trim_start_matches("STAGE_")
                    .to_lowercase(),
            );
            last = Some(job);
        }
    }
    bar.finish_and_clear();
    last.context("the server closed the stream without a job")
}

fn print_job(job: &pb::Job) {
    let state = pb::JobState::try_from(job.state).unwrap_or(pb::JobState::Unspecified);
    println!("job      {}", job.id);
    println!(
        "state    {}",
        state
            .as_str_name()
            .trim_start_matches("JOB_STATE_")
            .to_lowercase()
    );
    println!("prompt   {}", job.prompt_text);
    println!("model    {}", job.model_version);
    if let Some(seed) = job.request.as_ref().and_then(|r| r.seed) {
        println!("seed     {seed}");
    }
    println!("steps    {}/{}", job.steps_done, job.steps_total);
    for t in &job.timings {
        let stage = pb::Stage::try_from(t.stage).unwrap_or(pb::Stage::Unspecified);
        println!(
            "timing   {:<8} {} ms",
            stage
                .as_str_name()
                .trim_start_matches("STAGE_")
                .to_lowercase(),
            t.millis
        );
    }
    if let Some(e) = &job.error {
        println!("error    {}: {}", e.code, e.message);
    }
    for o in &job.outputs {
        println!(
            "output   #{} {} ({:.2} s, {} Hz, sha256 {})",
            o.index, o.uri, o.duration_seconds, o.sample_rate, o.sha256
        );
        println!("url      {}", o.url);
    }
}

pub(crate) async fn show_job(args: JobArgs) -> anyhow::Result<()> {
    let mut client = connect(&args.server).await?;
    let job = client
        .get_job(pb::GetJobRequest { id: args.id })
        .await
        .map_err(status_err)?
        .into_inner();
    print_job(&job);
    Ok(())
}

pub(crate) async fn watch(args: JobArgs) -> anyhow::Result<()> {
    let mut client = connect(&args.server).await?;
    let job = follow(&mut client, &args.id).await?;
    print_job(&job);
    Ok(())
}

pub(crate) async fn cancel(args: JobArgs) -> anyhow::Result<()> {
    let mut client = connect(&args.server).await?;
    let job = client
        .cancel_job(pb::CancelJobRequest { id: args.id })
        .await
        .map_err(status_err)?
        .into_inner();
    print_job(&job);
    Ok(())
}

pub(crate) async fn list(args: ListArgs) -> anyhow::Result<()> {
    let mut client = connect(&args.server).await?;
    let resp = client
        .list_jobs(pb::ListJobsRequest {
            page_size: args.limit,
            labels: args.labels.into_iter().collect(),
            ..Default::default()
        })
        .await
        .map_err(status_err)?
        .into_inner();
    for j in resp.jobs {
        let state = pb::JobState::try_from(j.state).unwrap_or(pb::JobState::Unspecified);
        println!(
            "{}  {:<10} {:>4}/{:<4} {}",
            j.id,
            state
                .as_str_name()
                .trim_start_matches("JOB_STATE_")
                .to_lowercase(),
            j.steps_done,
            j.steps_total,
            j.prompt_text
        );
    }
    Ok(())
}
