//! Who is calling: API keys (`authorization: Bearer tt_<id>_<secret>`) resolved to a tenant
//! or an admin, the tenant's limits, and the layer that puts the caller into every request of
//! a gRPC service. With auth off (the default, for embedded mode and `tutti dev`) every caller
//! is the one local tenant `default`.

pub mod layer;

use crate::error::{Error, Result};
use crate::store::{JobStore, Scope};

pub use crate::tenancy::{budgets, key, limits, ApiKey, Budgets, Limits, SubmitRate};
pub use layer::{Authenticated, Authenticator};

/// The tenant of every caller while auth is off.
pub const DEFAULT_TENANT: &str = "default";

/// Whether gRPC callers must present an API key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum AuthMode {
    /// Every caller is the local tenant `default` (embedded mode, `tutti dev`, one team).
    #[default]
    Off,
    /// Every call to the job API needs `authorization: Bearer <key>`.
    Required,
}

/// The resolved caller, in the extensions of every request the auth layer lets through.
#[derive(Debug, Clone, PartialEq)]
pub struct Caller {
    /// Jobs submitted by this caller belong to this tenant.
    pub tenant: String,
    /// Admin keys read and cancel every tenant's jobs.
    pub admin: bool,
    /// `tt_<id>` of the key, for logs; `None` with auth off.
    pub key: Option<String>,
    pub limits: Limits,
}

impl Caller {
    /// Whose jobs this caller may see and cancel.
    pub fn scope(&self) -> Scope<'_> {
        if self.admin {
            Scope::All
        } else {
            Scope::Tenant(&self.tenant)
        }
    }

    /// The caller the auth layer put into a request.
    pub fn of<T>(request: &tonic::Request<T>) -> Result<Caller> {
        request
            .extensions()
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| {
                Error::Internal("no caller on the request: the auth layer is missing".into())
            })
    }
}

/// Tenant names become part of object keys (`outputs/<tenant>/...`), so they are kept to a
/// safe alphabet: 1 to 63 of `a-z 0-9 -`, starting with a letter or digit.
pub fn check_tenant_name(name: &str) -> Result<()> {
    let ok = (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "tenant",
            "must be 1 to 63 of a-z, 0-9 and -, not starting with -",
        ))
    }
}

/// Creates a key for a tenant; the returned key is the only time its secret exists outside
/// the caller's hands.
pub async fn issue_key(store: &dyn JobStore, tenant: &str, admin: bool) -> Result<ApiKey> {
    let key = ApiKey::generate();
    store.insert_key(tenant, &key, admin).await?;
    tracing::info!(key = %key.prefix(), tenant, admin, "API key created");
    Ok(key)
}

#[cfg(test)]
mod tests {
    #[test]
    fn tenant_names_are_safe_for_object_keys() {
        for good in ["a", "default", "team-7", "0x"] {
            assert!(super::check_tenant_name(good).is_ok(), "{good}");
        }
        for bad in ["", "-a", "A", "a/b", "..", "a_b", &"a".repeat(64)] {
            assert!(super::check_tenant_name(bad).is_err(), "{bad}");
        }
    }
}
