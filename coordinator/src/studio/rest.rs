//! The public REST API: versioned routes `/v1/...` on the coordinator's HTTP port, each the
//! gateway's call of one gRPC method (same auth as gRPC with `Authorization: Bearer`, same
//! validation, errors as `{code, message, field}`, WatchJob as server-sent events). This
//! table is the one definition of the routes: the router is built from it, and so is the
//! OpenAPI document (`openapi`), with the message schemas taken from the proto descriptors.
//! The router (`routes::v1`) maps each route's `Op` to its handler.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verb {
    Get,
    Post,
    Put,
    Delete,
}

impl Verb {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::Post => "post",
            Verb::Put => "put",
            Verb::Delete => "delete",
        }
    }
}

/// What a route answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answer {
    /// One message (JSON).
    Message(&'static str),
    /// Server-sent events, each one message (JSON) in `data`.
    Events(&'static str),
}

/// One route of the public API.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Route {
    pub verb: Verb,
    /// axum's path syntax (`{id}`), which is also OpenAPI's.
    pub path: &'static str,
    /// The gRPC method it calls (`tutti.v1.Generation/GetJob`).
    pub rpc: &'static str,
    pub summary: &'static str,
    /// The request message read from the JSON body, if any (path and query fill the rest).
    pub body: Option<&'static str>,
    /// Query parameters: name, JSON type, meaning.
    pub query: &'static [(&'static str, &'static str, &'static str)],
    pub answer: Answer,
    pub op: Op,
}

/// Which handler serves a route (`routes::v1`).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Op {
    Submit,
    ListJobs,
    GetJob,
    WatchJob,
    CancelJob,
    RetryJob,
    RenderPrompt,
    ListModels,
    GetModel,
    ListBatches,
    GetBatch,
    CancelBatch,
    RetryBatch,
    GetEndpoint,
    SetEndpoint,
    RotateSecret,
    Deliveries,
    Redeliver,
    Workers,
    Queues,
    DeleteJob,
    DeleteBatch,
    Usage,
    ReplayDeadLetters,
}

const PAGE: (&str, &str, &str) = (
    "page_size",
    "integer",
    "rows per page (default 50, at most 500)",
);
const TOKEN: (&str, &str, &str) = (
    "page_token",
    "string",
    "next_page_token of the previous page",
);

macro_rules! route {
    ($verb:ident $path:literal, $rpc:literal, $summary:literal, $body:expr, [$($q:expr),*], $answer:expr, $op:ident) => {
        Route {
            verb: Verb::$verb,
            path: $path,
            rpc: $rpc,
            summary: $summary,
            body: $body,
            query: &[$($q),*],
            answer: $answer,
            op: Op::$op,
        }
    };
}

use Answer::{Events, Message};

pub(crate) const ROUTES: &[Route] = &[
    route!(Post "/v1/jobs", "tutti.v1.Generation/SubmitGeneration", "Submit a generation request; returns its job (queued)", Some("tutti.v1.SubmitGenerationRequest"), [], Message("tutti.v1.Job"), Submit),
    route!(Get "/v1/jobs", "tutti.v1.Generation/ListJobs", "The caller's jobs, newest first", None, [PAGE, TOKEN, ("state", "string", "a job state (queued, running, succeeded, failed, cancelled)"), ("label", "string", "key=value"), ("text", "string", "words of the prompt")], Message("tutti.v1.ListJobsResponse"), ListJobs),
    route!(Get "/v1/jobs/{id}", "tutti.v1.Generation/GetJob", "A job (a queued one with its queue position and estimates)", None, [], Message("tutti.v1.Job"), GetJob),
    route!(Get "/v1/jobs/{id}/events", "tutti.v1.Generation/WatchJob", "A job's progress as server-sent events: a snapshot, then one event per change", None, [], Events("tutti.v1.JobEvent"), WatchJob),
    route!(Post "/v1/jobs/{id}/cancel", "tutti.v1.Generation/CancelJob", "Cancel a job", None, [], Message("tutti.v1.Job"), CancelJob),
    route!(Delete "/v1/jobs/{id}", "tutti.v1.Generation/DeleteJob", "Delete a job: its outputs and inputs leave the blob store, its prompt and lyrics the database (cancelled first if it has not ended); its usage record stays", None, [], Message("tutti.v1.Job"), DeleteJob),
    route!(Post "/v1/jobs/{id}/retry", "tutti.v1.Generation/RetryJob", "Run a failed or cancelled job again from its last checkpoint", None, [], Message("tutti.v1.Job"), RetryJob),
    route!(Post "/v1/prompt/render", "tutti.v1.Generation/RenderPrompt", "The text and controls the model would see for a prompt", Some("tutti.v1.RenderPromptRequest"), [], Message("tutti.v1.RenderPromptResponse"), RenderPrompt),
    route!(Get "/v1/models", "tutti.v1.Generation/ListModels", "The models the farm serves", None, [], Message("tutti.v1.ListModelsResponse"), ListModels),
    route!(Get "/v1/models/{name}", "tutti.v1.Generation/GetModel", "One model", None, [("version", "string", "a version (default: the newest)")], Message("tutti.v1.Model"), GetModel),
    route!(Get "/v1/batches", "tutti.v1.Batches/ListBatches", "The caller's batches", None, [PAGE, TOKEN], Message("tutti.v1.ListBatchesResponse"), ListBatches),
    route!(Get "/v1/batches/{id}", "tutti.v1.Batches/GetBatch", "A batch and its counts", None, [], Message("tutti.v1.Batch"), GetBatch),
    route!(Delete "/v1/batches/{id}", "tutti.v1.Batches/DeleteBatch", "Delete every item's job of a batch", None, [], Message("tutti.v1.DeleteBatchResponse"), DeleteBatch),
    route!(Post "/v1/batches/{id}/cancel", "tutti.v1.Batches/CancelBatch", "Cancel a batch's unfinished items", None, [], Message("tutti.v1.Batch"), CancelBatch),
    route!(Post "/v1/batches/{id}/retry", "tutti.v1.Batches/RetryBatchItems", "Retry a batch's failed items", None, [("include_cancelled", "boolean", "retry cancelled items too")], Message("tutti.v1.RetryBatchItemsResponse"), RetryBatch),
    route!(Get "/v1/usage", "tutti.v1.Generation/GetUsage", "Usage totals for a period (jobs, audio and device seconds), by model, key, day or batch", None, [("from", "string", "a UTC date (2026-12-01) or an RFC 3339 time (default: 30 days ago)"), ("to", "string", "the period's end, excluded (default: now)"), ("by", "string", "model, key, day or batch (default: the total)"), ("tenant", "string", "a tenant (admin keys)")], Message("tutti.v1.GetUsageResponse"), Usage),
    route!(Get "/v1/webhooks", "tutti.v1.Webhooks/GetWebhookEndpoint", "The tenant's webhook endpoint and signing secrets", None, [], Message("tutti.v1.WebhookEndpoint"), GetEndpoint),
    route!(Put "/v1/webhooks", "tutti.v1.Webhooks/SetWebhookEndpoint", "Set (or with no url remove) the tenant's webhook endpoint", Some("tutti.v1.SetWebhookEndpointRequest"), [], Message("tutti.v1.WebhookEndpoint"), SetEndpoint),
    route!(Post "/v1/webhooks/rotate", "tutti.v1.Webhooks/RotateWebhookSecret", "A new signing secret; the old ones stay valid for the overlap", Some("tutti.v1.RotateWebhookSecretRequest"), [], Message("tutti.v1.WebhookEndpoint"), RotateSecret),
    route!(Get "/v1/webhooks/deliveries", "tutti.v1.Webhooks/ListWebhookDeliveries", "Webhook deliveries, newest first", None, [PAGE, TOKEN, ("state", "string", "pending, delivered or failed")], Message("tutti.v1.ListWebhookDeliveriesResponse"), Deliveries),
    route!(Post "/v1/webhooks/deliveries/{id}/redeliver", "tutti.v1.Webhooks/RedeliverWebhook", "Send a delivery again (same id and body)", None, [], Message("tutti.v1.WebhookDelivery"), Redeliver),
    route!(Get "/v1/operator/workers", "tutti.v1.Operator/ListWorkers", "The fleet (admin keys)", None, [], Message("tutti.v1.ListWorkersResponse"), Workers),
    route!(Post "/v1/operator/dead-letters/replay", "tutti.v1.Operator/ReplayDeadLetters", "Put dead-lettered task messages back on their queues (admin keys)", Some("tutti.v1.ReplayDeadLettersRequest"), [], Message("tutti.v1.ReplayDeadLettersResponse"), ReplayDeadLetters),
    route!(Get "/v1/operator/queues", "tutti.v1.Operator/GetQueues", "Backlog, tenants' shares, failures (admin keys)", None, [("share_window_seconds", "integer", "the shares' window (default 300)")], Message("tutti.v1.GetQueuesResponse"), Queues),
];
