//! The coordinator's configuration: flags and `TUTTI_*` environment variables.

use std::net::SocketAddr;
use std::path::PathBuf;

use tutti_shared::config::{AmqpArgs, DatabaseArgs, S3Args};

use crate::settings::FarmArgs;
pub use crate::settings::TlsFiles;

#[derive(Debug, Clone, clap::Args)]
pub struct CoordinatorConfig {
    /// Address of the gRPC server.
    #[arg(long, env = "TUTTI_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub amqp: AmqpArgs,
    #[command(flatten)]
    pub s3: S3Args,
    /// Folder of model packs (each with a model.toml); the same packs the workers load.
    #[arg(long, env = "TUTTI_MODELS_DIR", default_value = "models")]
    pub models_dir: PathBuf,
    #[command(flatten)]
    pub farm: FarmArgs,
    /// Address of the HTTP server for `/metrics`, `/healthz` and `/readyz` (off when unset).
    #[arg(long, env = "TUTTI_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Address of tutti studio, the web page and its HTTP/JSON gateway (off when unset).
    #[arg(long, env = "TUTTI_STUDIO_LISTEN")]
    pub studio_listen: Option<SocketAddr>,
    /// Run the database migrations, then exit (for a Kubernetes migration Job).
    #[arg(long)]
    pub migrate_only: bool,
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// TLS for the gRPC server: a certificate chain and key (PEM), and optionally a CA whose
/// client certificates are required (mutual TLS). Paths only; the files are read at start.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    /// Server certificate chain (PEM); with --tls-key, the server speaks only TLS.
    #[arg(long, env = "TUTTI_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Server private key (PEM).
    #[arg(long, env = "TUTTI_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// CA (PEM) that signs client certificates; when set, clients must present one.
    #[arg(long, env = "TUTTI_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
}

impl TlsArgs {
    /// The files to serve TLS with, when TLS is on.
    pub fn files(&self) -> Option<TlsFiles> {
        Some(TlsFiles {
            cert: self.tls_cert.clone()?,
            key: self.tls_key.clone()?,
            client_ca: self.tls_client_ca.clone(),
        })
    }
}

impl CoordinatorConfig {
    pub fn validate(&self) -> Result<(), String> {
        self.farm.validate()?;
        if self.tls.tls_cert.is_some() != self.tls.tls_key.is_some() {
            return Err("tls_cert and tls_key go together".into());
        }
        Ok(())
    }
}
