//! What a tenant is allowed: its API keys (how they are made, shown and compared) and its
//! limits. Plain data and rules, read by the store (which keeps them) and by the auth layer
//! (which applies them), so neither of those needs the other.

pub mod blobs;
pub mod budgets;
pub mod key;
pub mod limits;

pub use budgets::Budgets;
pub use key::ApiKey;
pub use limits::{Limits, SubmitRate};

/// Whose jobs a read or a cancel may touch: one tenant's, or every tenant's (admin keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope<'a> {
    Tenant(&'a str),
    All,
}

impl<'a> Scope<'a> {
    /// The tenant to filter by; `None` for all.
    pub fn tenant(self) -> Option<&'a str> {
        match self {
            Scope::Tenant(t) => Some(t),
            Scope::All => None,
        }
    }
}

impl<'a> From<&'a str> for Scope<'a> {
    fn from(tenant: &'a str) -> Self {
        Scope::Tenant(tenant)
    }
}
