//! The model catalogue's routes: `GET /api/models` (Generation.ListModels) and
//! `GET /api/models/{name}?version=` (Generation.GetModel), called in process like the rest.

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use tutti_proto::v1 as pb;
use tutti_proto::v1::generation_server::Generation;

use super::gateway::{json, ApiError};
use super::Studio;

type Reply = Result<axum::response::Response, ApiError>;

/// A submission's body: room for the init clip of an audio-to-audio request (the longest
/// window of a stereo 44.1 kHz model as 32-bit float WAV, base64 in the JSON).
pub(super) const MAX_JOB_BODY: usize = 32 << 20;

pub(super) async fn list(State(s): State<Studio>, headers: HeaderMap) -> Reply {
    let req = s.request(&headers, pb::ListModelsRequest {}).await?;
    json(s.generation.list_models(req).await?.get_ref())
}

#[derive(serde::Deserialize, Default)]
pub(super) struct VersionQuery {
    version: Option<String>,
}

pub(super) async fn get(
    State(s): State<Studio>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<VersionQuery>,
) -> Reply {
    let message = pb::GetModelRequest {
        name,
        version: q.version.unwrap_or_default(),
    };
    let req = s.request(&headers, message).await?;
    json(s.generation.get_model(req).await?.get_ref())
}
