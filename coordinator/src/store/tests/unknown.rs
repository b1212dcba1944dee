//! The janitor's sweep of checkpoints of unknown jobs against both stores: what a job the
//! store knows wrote stays; a forged job's checkpoints, and keys that name no job, go.

use bytes::Bytes;
use tutti_shared::blob::{BlobStore, LocalStore};
use tutti_shared::job::checkpoint_key;

use super::{new_job, T};
use crate::janitor::sweep_unknown;
use crate::store::JobStore;

async fn checkpoints_of_unknown_jobs_are_swept_and_known_ones_kept(s: &dyn JobStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let blobs = LocalStore::new(dir.path());
    let (known, _) = s.insert_job(T, &new_job(8, 4, None)).await.expect("insert");
    let forged = uuid::Uuid::new_v4();
    let keys = [
        checkpoint_key(known.job.id, 0),
        checkpoint_key(known.job.id, 1),
        checkpoint_key(forged, 0),
        "checkpoints/not-a-job/0".to_string(),
        format!("outputs/{T}/{forged}/0.wav"),
    ];
    for key in &keys {
        blobs
            .put(key, Bytes::from_static(b"x"), "application/octet-stream")
            .await
            .expect("put");
    }
    assert_eq!(sweep_unknown(s, &blobs).await.expect("sweep"), 2);
    for (key, kept) in keys.iter().zip([true, true, false, false, true]) {
        assert_eq!(blobs.get(key).await.expect("get").is_some(), kept, "{key}");
    }
    assert_eq!(sweep_unknown(s, &blobs).await.expect("sweep again"), 0);
}

job_store_suite!(checkpoints_of_unknown_jobs_are_swept_and_known_ones_kept);
