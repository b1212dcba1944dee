//! The one owner of "may this caller name this object?": every blob-store URI a request may
//! carry (a batch's manifest today; reference audio as it comes) resolves here to a key.
//!
//! A tenant may name objects under its own prefixes only: `uploads/<tenant>/` (what the
//! studio stores for it) and `manifests/<tenant>/` (where it puts manifests with its own S3
//! access). An admin may also name what the operator configures (`--admin-blob-prefixes`).
//! Anything else answers NOT_FOUND exactly as an absent object does, so a caller learns
//! nothing about objects that are not its own; a malformed URI is INVALID_ARGUMENT.

use tutti_shared::blob::check_key;

use crate::error::{Error, Result};

/// Tenants' own key prefixes, `<root>/<tenant>/`.
pub const TENANT_ROOTS: [&str; 2] = ["uploads", "manifests"];

/// Resolves request URIs to keys the caller may read.
#[derive(Debug, Clone)]
pub struct BlobAccess {
    /// The URI of the store's root (`s3://bucket/` or `file:///path/`).
    root: String,
    /// Extra key prefixes admins may name.
    admin_prefixes: Vec<String>,
}

impl BlobAccess {
    pub fn new(root: String, admin_prefixes: Vec<String>) -> Self {
        Self {
            root,
            admin_prefixes,
        }
    }

    /// Where `tenant`'s uploads go: `uploads/<tenant>/`.
    pub fn upload_prefix(tenant: &str) -> String {
        format!("{}/{tenant}/", TENANT_ROOTS[0])
    }

    /// The key `uri` names, if the caller (`tenant`, with an admin key or not) may read it.
    /// `what` names the object in a NOT_FOUND ("manifest") and `field` the request field in an
    /// INVALID_ARGUMENT.
    pub fn resolve(
        &self,
        (tenant, admin): (&str, bool),
        field: &str,
        what: &str,
        uri: &str,
    ) -> Result<String> {
        let key = uri.strip_prefix(&self.root).ok_or_else(|| {
            Error::invalid(
                field,
                format!("must be an object of the farm's store ({}...)", self.root),
            )
        })?;
        check_key(key).map_err(|_| {
            Error::invalid(
                field,
                "must name an object by a relative key of plain segments (no '.', '..' or empty segments)",
            )
        })?;
        let own = TENANT_ROOTS
            .iter()
            .any(|root| key.starts_with(&format!("{root}/{tenant}/")));
        let granted = admin && self.admin_prefixes.iter().any(|p| key.starts_with(p));
        if own || granted {
            Ok(key.to_string())
        } else {
            Err(not_found(what))
        }
    }
}

/// What an absent object and another tenant's object both answer.
pub fn not_found(what: &str) -> Error {
    Error::NotFound(format!("{what} not found"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenants_name_only_their_own_prefixes_and_foreign_keys_read_as_absent() {
        let access = BlobAccess::new("s3://farm/".into(), vec!["catalog/".into()]);
        let a = ("a", false);
        let ok = |c: &(&str, bool), uri: &str| access.resolve(*c, "f", "manifest", uri);
        assert_eq!(
            ok(&a, "s3://farm/uploads/a/x.jsonl").ok().as_deref(),
            Some("uploads/a/x.jsonl")
        );
        assert_eq!(
            ok(&a, "s3://farm/manifests/a/d/x.csv").ok().as_deref(),
            Some("manifests/a/d/x.csv")
        );
        for foreign in [
            "s3://farm/uploads/b/x.jsonl",
            "s3://farm/uploads/ab/x.jsonl",
            "s3://farm/batches/a/1/results.jsonl",
            "s3://farm/outputs/a/j/0.wav",
            "s3://farm/catalog/x.jsonl",
        ] {
            let e = ok(&a, foreign).unwrap_err();
            assert!(
                matches!(e, Error::NotFound(ref m) if m == "manifest not found"),
                "{foreign}: {e}"
            );
        }
        for malformed in [
            "s3://farm/../x",
            "s3://farm/uploads/a/../b/x",
            "s3://farm//x",
            "s3://other/uploads/a/x",
            "https://x",
        ] {
            let e = ok(&a, malformed).unwrap_err();
            assert_eq!(
                e.grpc_code(),
                tonic::Code::InvalidArgument,
                "{malformed}: {e}"
            );
        }
        // Admins add what the operator granted, not every tenant's prefixes.
        let admin = ("ops", true);
        assert!(ok(&admin, "s3://farm/catalog/x.jsonl").is_ok());
        assert!(ok(&admin, "s3://farm/uploads/a/x.jsonl").is_err());
    }
}
