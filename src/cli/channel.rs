//! How a client command reaches a farm: the server address, credentials (API key, TLS), and a
//! channel with a deadline on each answer, for any of the farm's services.

use std::path::PathBuf;

use anyhow::Context;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

#[derive(Debug, clap::Args)]
pub(crate) struct ServerArgs {
    /// Address of a tutti coordinator.
    #[arg(long, env = "TUTTI_SERVER", default_value = "http://127.0.0.1:50051")]
    pub server: String,
    #[command(flatten)]
    pub credentials: Credentials,
}

/// How a client proves itself to a farm (an API key, TLS settings) and how long it waits for an
/// answer.
#[derive(Clone, Default, clap::Args)]
pub(crate) struct Credentials {
    /// API key (`tt_...`) for a farm that runs with TUTTI_AUTH=required.
    #[arg(long, env = "TUTTI_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// CA certificate (PEM) that signed the server's certificate; turns TLS on.
    #[arg(long, env = "TUTTI_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM), for a server that requires mutual TLS.
    #[arg(long, env = "TUTTI_TLS_CLIENT_CERT", requires = "tls_client_key")]
    pub tls_client_cert: Option<PathBuf>,
    /// Client private key (PEM).
    #[arg(long, env = "TUTTI_TLS_CLIENT_KEY", requires = "tls_client_cert")]
    pub tls_client_key: Option<PathBuf>,
    /// How long a call waits for the farm to answer (a stream: to start), e.g. "30s".
    #[arg(long, env = "TUTTI_ANSWER_TIMEOUT", value_parser = humantime::parse_duration)]
    pub answer_timeout: Option<std::time::Duration>,
}

/// The wait for an answer when `--answer-timeout` is not given.
const ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("tls_ca", &self.tls_ca)
            .field("tls_client_cert", &self.tls_client_cert)
            .field("tls_client_key", &self.tls_client_key)
            .field("answer_timeout", &self.answer_timeout)
            .finish()
    }
}

impl Credentials {
    fn tls(&self) -> anyhow::Result<Option<ClientTlsConfig>> {
        if self.tls_ca.is_none() && self.tls_client_cert.is_none() {
            return Ok(None);
        }
        let read =
            |p: &PathBuf| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
        let mut cfg = ClientTlsConfig::new();
        if let Some(ca) = &self.tls_ca {
            cfg = cfg.ca_certificate(Certificate::from_pem(read(ca)?));
        }
        if let (Some(cert), Some(key)) = (&self.tls_client_cert, &self.tls_client_key) {
            cfg = cfg.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        Ok(Some(cfg))
    }

    fn bearer(&self) -> anyhow::Result<Bearer> {
        let Some(key) = &self.api_key else {
            return Ok(Bearer(None));
        };
        // The error must not echo the key.
        let value = format!("Bearer {}", key.trim())
            .parse()
            .map_err(|_| anyhow::anyhow!("the API key holds characters a header cannot carry"))?;
        Ok(Bearer(Some(value)))
    }
}

/// Adds `authorization: Bearer <key>` (when a key is set) and the trace context to every call.
#[derive(Clone)]
pub(crate) struct Bearer(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        // The caller's trace context (W3C `traceparent`, `tracestate`), so that the farm's
        // spans for this call join the command's trace.
        for (k, v) in tutti_shared::telemetry::current_context_headers() {
            let key = tonic::metadata::MetadataKey::from_bytes(k.as_bytes());
            if let (Ok(key), Ok(value)) = (key, v.parse()) {
                req.metadata_mut().insert(key, value);
            }
        }
        Ok(req)
    }
}

/// The channel under every client command: tonic's channel with a deadline on each call's
/// answer. A deadline at all because an answer can fail to come: a farm that requires client
/// certificates rejects a client without one after the TLS 1.3 handshake has completed, and the
/// call queued on that connection can wait forever (rustls/tokio-rustls#38). It wraps the whole
/// channel, queueing included, which a deadline inside tonic's channel would not cover.
pub(crate) type FarmChannel = tower::timeout::Timeout<Channel>;

/// A channel to a farm and the interceptor that carries the key, for any of its services.
pub(crate) async fn channel_to(
    server: &str,
    credentials: &Credentials,
) -> anyhow::Result<(FarmChannel, Bearer)> {
    let deadline = credentials.answer_timeout.unwrap_or(ANSWER_TIMEOUT);
    let (channel, bearer) = open(server, credentials).await?;
    Ok((FarmChannel::new(channel, deadline), bearer))
}

/// A channel for a client-streaming upload: its answer comes only once the whole stream is sent,
/// at the pace of what is uploaded, so no deadline applies.
pub(crate) async fn upload_channel_to(
    server: &str,
    credentials: &Credentials,
) -> anyhow::Result<(FarmChannel, Bearer)> {
    let (channel, bearer) = open(server, credentials).await?;
    // tokio's timer takes a duration this long as "never".
    Ok((FarmChannel::new(channel, std::time::Duration::MAX), bearer))
}

async fn open(server: &str, credentials: &Credentials) -> anyhow::Result<(Channel, Bearer)> {
    let tls = credentials.tls()?;
    let bearer = credentials.bearer()?;
    // tonic speaks TLS to https:// addresses only.
    let url = match (server.split_once("://"), tls.is_some()) {
        (Some(("http", rest)), true) => format!("https://{rest}"),
        (Some(_), _) => server.to_string(),
        (None, true) => format!("https://{server}"),
        (None, false) => format!("http://{server}"),
    };
    let mut endpoint = Channel::from_shared(url.clone())
        .with_context(|| {
            format!("{server:?} is not a server address (e.g. http://127.0.0.1:50051)")
        })?
        .connect_timeout(std::time::Duration::from_secs(5));
    if let Some(tls) = tls {
        endpoint = endpoint
            .tls_config(tls)
            .context("configuring TLS for the client")?;
    }
    let channel = endpoint.connect().await.map_err(|e| {
        // The innermost cause says why (connection refused, no such host, timed out).
        let mut cause: &dyn std::error::Error = &e;
        while let Some(next) = cause.source() {
            cause = next;
        }
        anyhow::anyhow!(
            "cannot reach the tutti server at {url}: {cause}; start one with `tutti dev`, \
             or leave out --server to run embedded"
        )
    })?;
    Ok((channel, bearer))
}

pub(crate) fn status_err(s: tonic::Status) -> anyhow::Error {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(&s);
    while let Some(c) = cause {
        if c.is::<tower::timeout::error::Elapsed>() {
            return anyhow::anyhow!(
                "the farm did not answer within --answer-timeout (default {}s); a farm that \
                 requires client certificates (mutual TLS) drops calls that come without one: \
                 pass --tls-client-cert and --tls-client-key",
                ANSWER_TIMEOUT.as_secs()
            );
        }
        cause = c.source();
    }
    anyhow::anyhow!("{:?}: {}", s.code(), s.message())
}
