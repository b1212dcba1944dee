//! The gateway's batch routes (see `routes.rs` for the table). An uploaded manifest is stored in
//! the farm's blob store under the tenant, by its content, and submitted by its URI, so the
//! coordinator's one manifest reader and its rules see it as they see `tutti batch submit`'s.
//! The upload is checked first (SubmitBatch with `validate_only`): a manifest with a bad row
//! is refused whole, with the server's reason for each row, and nothing is submitted.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use tutti_proto::v1 as pb;
use tutti_proto::v1::batches_server::Batches;

use super::gateway::{http_status, json, ApiError};
use super::Studio;
use crate::batches::manifest::ManifestFormat;
use crate::error::Error;
use crate::tenancy::blobs::BlobAccess;

type Reply = Result<Response, ApiError>;

#[derive(serde::Deserialize, Default)]
pub(super) struct ListQuery {
    page_size: Option<u32>,
    page_token: Option<String>,
}

pub(super) async fn list(
    State(s): State<Studio>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Reply {
    let message = pb::ListBatchesRequest {
        page_size: q.page_size.unwrap_or(0),
        page_token: q.page_token.unwrap_or_default(),
    };
    let req = s.request(&headers, message).await?;
    let mut page = s.batches.list_batches(req).await?.into_inner();
    for b in &mut page.batches {
        s.blobs.rewrite_batch(b);
    }
    json(&page)
}

pub(super) async fn get(
    State(s): State<Studio>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Reply {
    let req = s.request(&headers, pb::GetBatchRequest { id }).await?;
    let mut batch = s.batches.get_batch(req).await?.into_inner();
    s.blobs.rewrite_batch(&mut batch);
    json(&batch)
}

pub(super) async fn cancel(
    State(s): State<Studio>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Reply {
    let req = s.request(&headers, pb::CancelBatchRequest { id }).await?;
    let mut batch = s.batches.cancel_batch(req).await?.into_inner();
    s.blobs.rewrite_batch(&mut batch);
    json(&batch)
}

pub(super) async fn delete(
    State(s): State<Studio>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Reply {
    let req = s.request(&headers, pb::DeleteBatchRequest { id }).await?;
    let mut answer = s.batches.delete_batch(req).await?.into_inner();
    if let Some(batch) = answer.batch.as_mut() {
        s.blobs.rewrite_batch(batch);
    }
    json(&answer)
}

#[derive(serde::Deserialize, Default)]
pub(super) struct RetryQuery {
    #[serde(default)]
    include_cancelled: bool,
}

pub(super) async fn retry(
    State(s): State<Studio>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<RetryQuery>,
) -> Reply {
    let req = pb::RetryBatchItemsRequest {
        id,
        include_cancelled: q.include_cancelled,
    };
    let req = s.request(&headers, req).await?;
    let mut res = s.batches.retry_batch_items(req).await?.into_inner();
    if let Some(batch) = res.batch.as_mut() {
        s.blobs.rewrite_batch(batch);
    }
    json(&res)
}

#[derive(serde::Deserialize, Default)]
pub(super) struct UploadQuery {
    /// The batch's name (default: the file's name).
    name: Option<String>,
    /// The uploaded file's name: `.csv` is CSV, anything else JSONL.
    file: Option<String>,
}

/// `POST /api/batches?name&file` with the manifest as the body. The upload is stored, checked
/// and submitted; on every refusal (a bad row, a bad file, a limit) what this call stored is
/// deleted again, so a tenant's uploads are only ever manifests of submitted batches.
pub(super) async fn upload(
    State(s): State<Studio>,
    headers: HeaderMap,
    Query(q): Query<UploadQuery>,
    body: Bytes,
) -> Reply {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(Error::invalid("manifest", "the file is empty").into());
    }
    let caller = s.auth.caller(&headers).await?;
    let file = q.file.unwrap_or_default();
    let (ext, content_type) = match ManifestFormat::from_name(&file) {
        ManifestFormat::Csv => ("csv", "text/csv"),
        ManifestFormat::Jsonl => ("jsonl", "application/x-ndjson"),
    };
    let digest = hex::encode(Sha256::digest(&body));
    let key = format!(
        "{}{digest}.{ext}",
        BlobAccess::upload_prefix(&caller.tenant)
    );
    let blobs = &s.batches.0.generation.blobs;
    // The same file uploaded before belongs to a batch already: a refusal now keeps it.
    let existed = blobs.open(&key).await.map_err(Error::from)?.is_some();
    let most = s.options.max_uploads;
    if !existed
        && blobs
            .list(&BlobAccess::upload_prefix(&caller.tenant), most)
            .await
            .map_err(Error::from)?
            .len()
            >= most
    {
        return Err(Error::exhausted(
            "max_uploads",
            format!("the tenant keeps {most} uploaded manifests already (one per submitted batch)"),
        )
        .into());
    }
    blobs
        .put(&key, body, content_type)
        .await
        .map_err(Error::from)?;
    let name = q.name.filter(|n| !n.trim().is_empty()).unwrap_or(file);
    let reply = submit_upload(&s, &headers, name.trim(), blobs.uri(&key)).await;
    if !existed && !matches!(&reply, Ok(Submitted::Batch(_))) {
        if let Err(e) = blobs.delete(std::slice::from_ref(&key)).await {
            tracing::warn!(key, error = %e, "removing a refused manifest");
        }
    }
    match reply? {
        Submitted::Batch(done) => json(&done),
        Submitted::Refused(response) => Ok(response),
    }
}

enum Submitted {
    Batch(pb::SubmitBatchResponse),
    /// Rows broke rules: the page lists them, nothing was submitted.
    Refused(Response),
}

/// Checks the stored manifest at `uri` (SubmitBatch with `validate_only`), then submits it.
async fn submit_upload(
    s: &Studio,
    headers: &HeaderMap,
    name: &str,
    uri: String,
) -> Result<Submitted, ApiError> {
    let header = |validate_only| {
        Ok::<_, tonic::Status>(pb::SubmitBatchRequest {
            kind: Some(pb::submit_batch_request::Kind::Header(pb::BatchHeader {
                name: name.to_string(),
                manifest_uri: uri.clone(),
                validate_only,
                // The studio's uploads call back through the tenant's endpoint.
                webhook: None,
            })),
        })
    };
    let check = s
        .batches
        .submit(
            s.request(headers, futures::stream::iter([header(true)]))
                .await?,
        )
        .await?;
    if check.rejected > 0 {
        let status = tonic::Status::invalid_argument("manifest: refused");
        let body = serde_json::json!({
            "code": "INVALID_ARGUMENT",
            "field": "manifest",
            "message": format!(
                "{} of {} rows break a rule: nothing was submitted",
                check.rejected,
                check.rejected + check.accepted
            ),
            "rejected_items": check.rejected_items,
        });
        return Ok(Submitted::Refused(
            (http_status(status.code()), axum::Json(body)).into_response(),
        ));
    }
    let mut done = s
        .batches
        .submit(
            s.request(headers, futures::stream::iter([header(false)]))
                .await?,
        )
        .await?;
    if let Some(b) = done.batch.as_mut() {
        s.blobs.rewrite_batch(b);
    }
    Ok(Submitted::Batch(done))
}
