//! gRPC client commands: generate, job, watch, cancel, list.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use tonic::service::interceptor::InterceptedService;
use tutti_proto::v1 as pb;
use tutti_proto::v1::generation_client::GenerationClient;
use tutti_shared::job::{AudioFormat, Priority, SamplerKind};

use super::channel::{channel_to, status_err, Bearer, Credentials, FarmChannel, ServerArgs};

pub(crate) type Client = GenerationClient<InterceptedService<FarmChannel, Bearer>>;

#[derive(Debug, clap::Args)]
pub(crate) struct GenerateArgs {
    /// What to generate, e.g. "melancholic lo-fi piano, 75 BPM, late night study session".
    pub prompt: Option<String>,
    /// Address of a running tutti farm (`tutti dev` or a coordinator); without it the whole
    /// farm runs embedded in this process, no servers needed.
    #[arg(long, env = "TUTTI_SERVER")]
    pub server: Option<String>,
    #[command(flatten)]
    pub credentials: Credentials,
    #[command(flatten)]
    pub embedded: super::embedded::EmbeddedArgs,
    /// Write the first output here (with --wait; embedded default: `<job id>.<format>`).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// What to steer away from, e.g. "vocals, distortion".
    #[arg(long)]
    pub negative: Option<String>,
    /// Seconds of audio.
    #[arg(long)]
    pub duration: Option<f32>,
    /// Random seed: the same seed and parameters give the same audio (default: random).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Denoising steps (default: the model's); more is slower and usually cleaner.
    #[arg(long)]
    pub steps: Option<u32>,
    /// Classifier-free guidance scale: how closely to follow the prompt (default: the model's).
    #[arg(long)]
    pub guidance: Option<f32>,
    /// Sampler (default: the model's).
    #[arg(long, value_enum)]
    pub sampler: Option<SamplerKind>,
    /// Audio file format: wav, flac (lossless), mp3 or opus (Ogg Opus, 48 kHz).
    #[arg(long, value_enum, default_value = "wav")]
    pub format: AudioFormat,
    /// Bitrate of mp3 or opus in kbps (mp3: 32-320 in MP3's steps, default 128 mono, 192
    /// stereo; opus: 6-510, default 64 a channel).
    #[arg(long = "bitrate", value_name = "KBPS")]
    pub bitrate_kbps: Option<u32>,
    /// Integrated loudness target in LUFS (EBU R128), -40 to -8; true peaks stay under -1 dBTP.
    #[arg(long = "loudness", value_name = "LUFS", allow_negative_numbers = true)]
    pub loudness_lufs: Option<f32>,
    /// Lyrics to sing (song models such as ACE-Step), with section tags such as [verse] and
    /// [chorus]; newlines as typed.
    #[arg(long, conflicts_with = "lyrics_file")]
    pub lyrics: Option<String>,
    /// Read the lyrics from a UTF-8 text file.
    #[arg(long, value_name = "PATH")]
    pub lyrics_file: Option<PathBuf>,
    /// The vocals' language, an ISO 639-1 code such as en, es, ja (song models; default en).
    #[arg(long)]
    pub language: Option<String>,
    /// Beats per bar: 2, 3, 4 or 6 (song models).
    #[arg(long)]
    pub time_signature: Option<u32>,
    /// Repaint (song models): regenerate from this second of the --init-audio song, the rest
    /// kept as context.
    #[arg(long, value_name = "SECONDS", requires = "init_audio")]
    pub repaint_start: Option<f32>,
    /// Repaint up to this second (default: the end of the song).
    #[arg(long, value_name = "SECONDS", requires = "repaint_start")]
    pub repaint_end: Option<f32>,
    /// Takes rendered from one prompt (seeds seed, seed+1, ...).
    #[arg(long, default_value_t = 1)]
    pub variations: u32,
    /// Scheduling class on a shared farm.
    #[arg(long, value_enum, default_value = "interactive")]
    pub priority: Priority,
    /// Model pack name (default: the farm's default model).
    #[arg(long)]
    pub model: Option<String>,
    /// Model pack version (default: the newest).
    #[arg(long)]
    pub model_version: Option<String>,
    /// Submitting twice with one key returns the first job.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Audio-to-audio: a WAV at the model's rate to start from (waveform-VAE models).
    #[arg(long)]
    pub init_audio: Option<std::path::PathBuf>,
    /// How much of --init-audio is redrawn, in (0, 1] (default 0.7).
    #[arg(long, requires = "init_audio")]
    pub init_strength: Option<f32>,
    /// key=value, repeatable.
    #[arg(long = "label", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    // Structured prompt fields (used when given; the free prompt then goes into `extra`).
    /// e.g. "lo-fi hip hop".
    #[arg(long)]
    pub genre: Option<String>,
    #[arg(long)]
    pub subgenre: Option<String>,
    /// e.g. "melancholic".
    #[arg(long)]
    pub mood: Option<String>,
    /// Tempo in beats per minute.
    #[arg(long)]
    pub bpm: Option<f32>,
    /// e.g. "A minor", "F# major".
    #[arg(long)]
    pub key: Option<String>,
    /// An instrument, repeatable: --instrument piano --instrument "upright bass".
    #[arg(long = "instrument")]
    pub instruments: Vec<String>,
    /// A section, repeatable, in order: --structure intro --structure verse.
    #[arg(long = "structure")]
    pub structure: Vec<String>,
    /// Cancel the job if it has not finished this long after it is accepted (e.g. 10m); it
    /// stops at its next chunk boundary.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub cancel_after: Option<std::time::Duration>,
    /// The same as a time: cancel the job if it has not finished by then (RFC 3339, e.g.
    /// 2026-12-06T18:00:00Z; without a zone, UTC). At most 7 days ahead.
    #[arg(long, value_parser = humantime::parse_rfc3339_weak, conflicts_with = "cancel_after")]
    pub deadline: Option<std::time::SystemTime>,
    /// Call this URL back as the job moves (signed; see `tutti webhook show`).
    #[arg(long)]
    pub webhook: Option<String>,
    /// An event --webhook receives, repeatable (default: succeeded, failed, cancelled).
    #[arg(long = "webhook-event", requires = "webhook", value_parser = parse_webhook_event)]
    pub webhook_events: Vec<pb::WebhookEvent>,
    /// Wait for the job to finish (default), or print its id and return.
    #[arg(long, overrides_with = "no_wait")]
    pub wait: bool,
    /// Print the job id and return (needs --server).
    #[arg(long)]
    pub no_wait: bool,
}

/// An event by its wire name without the prefix (`succeeded`, `output_ready`).
pub(crate) fn parse_webhook_event(s: &str) -> Result<pb::WebhookEvent, String> {
    pb::WebhookEvent::from_str_name(&format!("WEBHOOK_EVENT_{}", s.to_uppercase()))
        .filter(|e| *e != pb::WebhookEvent::Unspecified)
        .ok_or_else(|| format!("{s:?} is not a webhook event"))
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

async fn connect(server: &ServerArgs) -> anyhow::Result<Client> {
    connect_to(&server.server, &server.credentials).await
}

/// The embedded farm's own API: retried briefly while its server starts.
pub(crate) async fn connect_local(url: &str) -> anyhow::Result<Client> {
    let mut last = None;
    for _ in 0..50 {
        match connect_to(url, &Credentials::default()).await {
            Ok(c) => return Ok(c),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("embedded server did not start")))
}

pub(crate) async fn connect_to(server: &str, credentials: &Credentials) -> anyhow::Result<Client> {
    let (channel, bearer) = channel_to(server, credentials).await?;
    Ok(GenerationClient::with_interceptor(channel, bearer))
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
            sampler: self
                .sampler
                .map_or(pb::Sampler::Unspecified, pb::Sampler::from) as i32,
            seed: self.seed,
            model: self.model.as_ref().map(|name| pb::ModelRef {
                name: name.clone(),
                version: self.model_version.clone().unwrap_or_default(),
            }),
            format: pb::AudioFormat::from(self.format) as i32,
            bitrate_kbps: self.bitrate_kbps,
            loudness_lufs: self.loudness_lufs,
            variations: self.variations,
            priority: pb::Priority::from(self.priority) as i32,
            idempotency_key: self.idempotency_key.clone().unwrap_or_default(),
            labels: self.labels.iter().cloned().collect::<HashMap<_, _>>(),
            init_audio: match &self.init_audio {
                Some(path) => std::fs::read(path)
                    .with_context(|| format!("reading --init-audio {}", path.display()))?,
                None => Vec::new(),
            },
            init_strength: self.init_strength,
            lyrics: match (&self.lyrics, &self.lyrics_file) {
                (Some(l), _) => l.clone(),
                (None, Some(path)) => std::fs::read_to_string(path)
                    .with_context(|| format!("reading --lyrics-file {}", path.display()))?,
                (None, None) => String::new(),
            },
            vocal_language: self.language.clone().unwrap_or_default(),
            time_signature: self.time_signature,
            repaint_start_seconds: self.repaint_start,
            repaint_end_seconds: self.repaint_end,
            cancel_after: self.cancel_after.map(|d| tutti_proto::wkt::Duration {
                seconds: d.as_secs() as i64,
                nanos: d.subsec_nanos() as i32,
            }),
            deadline: self
                .deadline
                .map(|t| {
                    let d = t
                        .duration_since(std::time::UNIX_EPOCH)
                        .context("--deadline is before 1970")?;
                    anyhow::Ok(tutti_proto::wkt::Timestamp {
                        seconds: d.as_secs() as i64,
                        nanos: d.subsec_nanos() as i32,
                    })
                })
                .transpose()?,
            webhook: self.webhook.as_ref().map(|url| pb::Webhook {
                url: url.clone(),
                events: self.webhook_events.iter().map(|e| *e as i32).collect(),
            }),
        })
    }
}

/// Submits, follows with a progress bar, downloads. `embedded` prints a newcomer's summary
/// (the farm's own folder goes away with the process).
pub(crate) async fn run_job(
    client: &mut Client,
    req: pb::SubmitGenerationRequest,
    args: &GenerateArgs,
    embedded: bool,
) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
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
    // The trace id finds the job's spans (submit, dispatch, every task, the upload) in the
    // tracing backend, and its log lines in every process.
    let trace = tutti_shared::telemetry::current_trace_id().unwrap_or_default();
    tracing::info!(job_id = %job.id, trace_id = %trace, "job submitted");
    if args.no_wait && !embedded {
        eprintln!("trace {trace}");
        println!("{}", job.id);
        return Ok(());
    }
    eprintln!("job {} accepted (seed {seed}, trace {trace})", job.id);
    let job = follow(client, &job.id).await?;
    if job.state != pb::JobState::Succeeded as i32 {
        let err = job.error.map(|e| format!("{}: {}", e.code, e.message));
        bail!(
            "job {} ended {:?}{}",
            job.id,
            pb::JobState::try_from(job.state).unwrap_or(pb::JobState::Unspecified),
            err.map(|e| format!(" ({e})")).unwrap_or_default()
        );
    }
    let output = match (&args.output, embedded) {
        (Some(p), _) => Some(p.clone()),
        (None, true) => job
            .outputs
            .first()
            .map(|o| PathBuf::from(format!("{}.{}", job.id, extension(o.format)))),
        (None, false) => None,
    };
    if !embedded {
        print_job(&job);
    }
    if let (Some(path), Some(first)) = (&output, job.outputs.first()) {
        download(&first.url, path).await?;
        if embedded {
            print_summary(&job, path, started.elapsed());
        } else {
            println!("wrote {}", path.display());
        }
    }
    Ok(())
}

fn print_summary(job: &pb::Job, path: &std::path::Path, wall: std::time::Duration) {
    let first = &job.outputs[0];
    let shown = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    println!("wrote    {}", shown.display());
    println!(
        "audio    {:.2} s at {} Hz, {} ({} bytes)",
        first.duration_seconds,
        first.sample_rate,
        channels_word(first.channels),
        first.size_bytes
    );
    println!("loudness {}", loudness_words(first));
    if let Some(seed) = job.request.as_ref().and_then(|r| r.seed) {
        println!("seed     {seed} (pass --seed {seed} for the same audio again)");
    }
    println!("model    {}", job.model_version);
    let stages: Vec<String> = job
        .timings
        .iter()
        .map(|t| {
            let stage = pb::Stage::try_from(t.stage).unwrap_or(pb::Stage::Unspecified);
            format!(
                "{} {:.2} s",
                stage
                    .as_str_name()
                    .trim_start_matches("STAGE_")
                    .to_lowercase(),
                t.millis as f64 / 1000.0
            )
        })
        .collect();
    println!(
        "timings  {} · total {:.2} s (wall, with model loading)",
        stages.join(" · "),
        wall.as_secs_f64()
    );
    for extra in job.outputs.iter().skip(1) {
        println!(
            "variation #{} was rendered too (sha256 {})",
            extra.index, extra.sha256
        );
    }
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
async fn follow(client: &mut Client, id: &str) -> anyhow::Result<pb::Job> {
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
    // The spinner shows life between events (model loading, a long vocode).
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
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

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
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
    if let Some(p) = job.queue_position {
        let eta = |t: &Option<tutti_proto::wkt::Timestamp>| {
            t.as_ref().map(|t| {
                let secs = t.seconds - now_secs();
                format!("in ~{}s", secs.max(0))
            })
        };
        match (eta(&job.estimated_start), eta(&job.estimated_end)) {
            (Some(start), Some(end)) => {
                println!("queue    {p} ahead · starts {start} · ends {end}")
            }
            _ => println!("queue    {p} ahead"),
        }
    }
    if let Some(d) = job.request.as_ref().and_then(|r| r.deadline.as_ref()) {
        println!("deadline in {}s", (d.seconds - now_secs()).max(0));
    }
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
            "output   #{} {} ({:.2} s, {} Hz, {}, {}, sha256 {})",
            o.index,
            o.uri,
            o.duration_seconds,
            o.sample_rate,
            channels_word(o.channels),
            loudness_words(o),
            o.sha256
        );
        if o.deleted {
            println!("url      (deleted)");
        } else {
            println!("url      {}", o.url);
        }
    }
    if let Some(t) = &job.deleted_at {
        println!(
            "deleted  {} (outputs and inputs removed, prompt blanked)",
            show_time(t)
        );
    }
}

fn show_time(t: &tutti_proto::wkt::Timestamp) -> String {
    chrono::DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32).map_or_else(
        || "-".into(),
        |t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
    )
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

pub(crate) async fn delete(args: JobArgs) -> anyhow::Result<()> {
    let mut client = connect(&args.server).await?;
    let job = client
        .delete_job(pb::DeleteJobRequest { id: args.id })
        .await
        .map_err(status_err)?
        .into_inner();
    print_job(&job);
    Ok(())
}

pub(crate) async fn retry(args: JobArgs) -> anyhow::Result<()> {
    let mut client = connect(&args.server).await?;
    let job = client
        .retry_job(pb::RetryJobRequest { id: args.id })
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

/// An output's file extension (its format's name; wav for a format this CLI doesn't know).
fn extension(format: i32) -> &'static str {
    pb::AudioFormat::try_from(format)
        .map(|f| AudioFormat::from(f).as_str())
        .unwrap_or("wav")
}

/// An output's measured loudness and true peak, as the CLI prints them.
fn loudness_words(o: &pb::Output) -> String {
    match (o.loudness_lufs, o.true_peak_dbtp) {
        (Some(l), Some(tp)) => format!("{l:.1} LUFS, true peak {tp:.1} dBTP"),
        (Some(l), None) => format!("{l:.1} LUFS"),
        _ => "silent".into(),
    }
}

/// How an output's channel count reads in the CLI (0: a coordinator from before the field).
fn channels_word(n: u32) -> String {
    match n {
        0 | 1 => "mono".into(),
        2 => "stereo".into(),
        n => format!("{n} channels"),
    }
}
