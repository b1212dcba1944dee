//! Backfill batches: the `tutti.v1.Batches` service, manifest reading, and the loop that writes
//! each batch's results manifest once every item has ended.
//!
//! Identity is derived, never drawn: a batch's id from (tenant, name), an item's job id from
//! (batch, item id). Submitting the same batch again therefore finds every item it already
//! holds, and an item's outputs land at the same keys (`outputs/<tenant>/<job>/...`) however
//! often it is submitted.

mod api;
pub mod manifest;
mod results;
mod views;

use sha2::{Digest, Sha256};
use uuid::Uuid;

pub use api::{BatchesApi, BatchesService, BATCH_LABEL};
pub use results::{finish_batches, results_key};

/// A name-based UUID (version 8, SHA-256 of the length-prefixed parts), the SHA-256 variant of
/// UUIDv5 that RFC 9562 suggests.
fn derive(parts: &[&[u8]]) -> Uuid {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    let digest = h.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

/// The batch a tenant's name stands for.
pub fn batch_id(tenant: &str, name: &str) -> Uuid {
    derive(&[b"tutti.batch", tenant.as_bytes(), name.as_bytes()])
}

/// The job of one item of a batch.
pub fn item_job_id(batch: Uuid, item_id: &str) -> Uuid {
    derive(&[b"tutti.batch-item", batch.as_bytes(), item_id.as_bytes()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_derived_and_distinct() {
        let a = batch_id("default", "s3://b/m.jsonl");
        assert_eq!(a, batch_id("default", "s3://b/m.jsonl"));
        assert_ne!(a, batch_id("other", "s3://b/m.jsonl"));
        assert_eq!(a.get_version_num(), 8);
        // Length prefixes keep ("ab", "c") apart from ("a", "bc").
        assert_ne!(batch_id("ab", "c"), batch_id("a", "bc"));
        assert_eq!(item_job_id(a, "x"), item_job_id(a, "x"));
        assert_ne!(item_job_id(a, "x"), item_job_id(a, "y"));
    }
}
