//! `tutti generate`: one job on a farm (`--server`), or on a throwaway embedded farm in this
//! process.

use anyhow::{bail, Context};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tutti_shared::metrics::Health;

use super::client::{self, GenerateArgs};
use super::embedded;

pub(crate) async fn generate(args: GenerateArgs) -> anyhow::Result<()> {
    let req = args.request()?;
    match args.server.clone() {
        Some(server) => {
            let mut client = client::connect_to(&server, &args.credentials).await?;
            client::run_job(&mut client, req, &args, false).await
        }
        None => embedded(req, &args).await,
    }
}

/// `tutti generate` without `--server`: a throwaway embedded farm in a temp folder, one job.
async fn embedded(
    req: tutti_proto::v1::SubmitGenerationRequest,
    args: &GenerateArgs,
) -> anyhow::Result<()> {
    if args.embedded.workers == 0 {
        bail!("--workers must be at least 1 to generate embedded");
    }
    if args.no_wait {
        bail!("--no-wait needs --server: an embedded farm ends with the command");
    }
    let models_dir = embedded::resolve_models_dir(args.embedded.models_dir.as_deref())?;
    let dir = tempfile::Builder::new()
        .prefix("tutti-embedded-")
        .tempdir()
        .context("creating a temp folder for the embedded farm")?;
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding a local port for the embedded farm")?;
    let (stop, shutdown) = watch::channel(false);
    let settings = embedded::settings(models_dir, None);
    let farm = embedded::start(
        dir.path(),
        &args.embedded,
        settings,
        Health::default(),
        listener,
        None,
        shutdown,
    )
    .await?;
    let url = format!("http://{}", farm.addr);
    let result = async {
        let mut client = client::connect_local(&url).await?;
        client::run_job(&mut client, req, args, true).await
    }
    .await;
    let _ = stop.send(true);
    let _ = farm.server.await;
    result
}
