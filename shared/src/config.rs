//! Connection settings shared by the binaries: one clap `Args` group per server, each field
//! settable by flag or `TUTTI_*` environment variable. Secrets are redacted in `Debug`.

use crate::blob::S3Settings;

#[derive(Clone, clap::Args)]
pub struct DatabaseArgs {
    /// Postgres URL of the job store.
    #[arg(
        long,
        env = "TUTTI_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/tutti"
    )]
    pub database_url: String,
}

impl std::fmt::Debug for DatabaseArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseArgs")
            .field("database_url", &redact_url(&self.database_url))
            .finish()
    }
}

#[derive(Clone, clap::Args)]
pub struct AmqpArgs {
    /// RabbitMQ URL.
    #[arg(
        long,
        env = "TUTTI_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub amqp_url: String,
    /// Prefix of every exchange and queue name, so several farms can share one broker.
    #[arg(long, env = "TUTTI_QUEUE_PREFIX", default_value = "tutti")]
    pub queue_prefix: String,
}

impl AmqpArgs {
    pub fn topology(&self) -> crate::queue::Topology {
        crate::queue::Topology::new(self.queue_prefix.clone())
    }
}

impl std::fmt::Debug for AmqpArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpArgs")
            .field("amqp_url", &redact_url(&self.amqp_url))
            .field("queue_prefix", &self.queue_prefix)
            .finish()
    }
}

#[derive(Clone, clap::Args)]
pub struct S3Args {
    /// S3 endpoint URL (leave unset for AWS).
    #[arg(long, env = "TUTTI_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    #[arg(long, env = "TUTTI_S3_REGION", default_value = "us-east-1")]
    pub s3_region: String,
    #[arg(long, env = "TUTTI_S3_BUCKET", default_value = "tutti")]
    pub s3_bucket: String,
    #[arg(long, env = "AWS_ACCESS_KEY_ID", default_value = "")]
    pub s3_access_key_id: String,
    #[arg(
        long,
        env = "AWS_SECRET_ACCESS_KEY",
        default_value = "",
        hide_env_values = true
    )]
    pub s3_secret_access_key: String,
    /// Virtual-hosted addressing (AWS); path-style is the default for S3-compatible servers.
    #[arg(long, env = "TUTTI_S3_VIRTUAL_HOSTED")]
    pub s3_virtual_hosted: bool,
}

impl std::fmt::Debug for S3Args {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&self.settings(), f)
    }
}

impl S3Args {
    pub fn settings(&self) -> S3Settings {
        S3Settings {
            endpoint: self.s3_endpoint.clone(),
            region: self.s3_region.clone(),
            bucket: self.s3_bucket.clone(),
            access_key_id: self.s3_access_key_id.clone(),
            secret_access_key: self.s3_secret_access_key.clone(),
            path_style: !self.s3_virtual_hosted,
        }
    }
}

/// `scheme://user:secret@host/...?password=secret` -> `scheme://user:***@host/...?password=***`.
pub fn redact_url(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let base = match base.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((auth, host)) => match auth.split_once(':') {
                Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
                None => base.to_string(),
            },
            None => base.to_string(),
        },
        None => base.to_string(),
    };
    let Some(query) = query else { return base };
    let query: Vec<String> = query
        .split('&')
        .map(|kv| match kv.split_once('=') {
            Some((k, _))
                if k.eq_ignore_ascii_case("password")
                    || k.to_ascii_lowercase().contains("secret") =>
            {
                format!("{k}=***")
            }
            _ => kv.to_string(),
        })
        .collect();
    format!("{base}?{}", query.join("&"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn redacts_passwords() {
        assert_eq!(
            super::redact_url("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(super::redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(
            super::redact_url("postgres://u:p@ss@h/db?sslmode=require&password=x"),
            "postgres://u:***@h/db?sslmode=require&password=***"
        );
    }
}
