//! The gateway's two translations: an HTTP request into the `tonic::Request` the gRPC server
//! would pass to the service, and a `tonic::Status` into an HTTP status with a JSON body
//! `{code, message, field}`.

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::Studio;

/// A failed call, as the page sees it.
#[derive(Debug)]
pub(crate) struct ApiError(pub tonic::Status);

impl From<tonic::Status> for ApiError {
    fn from(s: tonic::Status) -> Self {
        ApiError(s)
    }
}

impl From<crate::error::Error> for ApiError {
    fn from(e: crate::error::Error) -> Self {
        ApiError(e.into())
    }
}

/// The HTTP status of a gRPC code.
pub(crate) fn http_status(code: tonic::Code) -> StatusCode {
    use tonic::Code;
    match code {
        Code::Ok => StatusCode::OK,
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::FailedPrecondition => StatusCode::PRECONDITION_FAILED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// `SCREAMING_CASE` name of a gRPC code, as in the gRPC spec.
fn code_name(code: tonic::Code) -> String {
    format!("{code:?}")
        .chars()
        .enumerate()
        .fold(String::new(), |mut s, (i, c)| {
            if c.is_uppercase() && i > 0 {
                s.push('_');
            }
            s.push(c.to_ascii_uppercase());
            s
        })
}

/// The body of a failed call: the field comes from INVALID_ARGUMENT's `field: rule` message
/// (the coordinator's one format for rule violations).
pub(crate) fn error_body(status: &tonic::Status) -> serde_json::Value {
    let (field, message) = match (status.code(), status.message().split_once(": ")) {
        (tonic::Code::InvalidArgument, Some((field, rule)))
            if !field.is_empty() && !field.contains(' ') =>
        {
            (Some(field), rule)
        }
        _ => (None, status.message()),
    };
    serde_json::json!({
        "code": code_name(status.code()),
        "message": message,
        "field": field,
    })
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response =
            (http_status(self.0.code()), axum::Json(error_body(&self.0))).into_response();
        // A refusal a retry can pass says when (whole seconds, rounded up, as HTTP wants).
        if let Some(delay) = crate::error::retry_delay(&self.0) {
            let secs = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        response
    }
}

/// A JSON response of any API message.
pub(crate) fn json<T: Serialize>(value: &T) -> Result<Response, ApiError> {
    let body = serde_json::to_vec(value)
        .map_err(|e| tonic::Status::internal(format!("encoding the response: {e}")))?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// An API message from a JSON body (proto3 JSON mapping); an empty body is the default message.
pub(crate) fn parse<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        ApiError(tonic::Status::invalid_argument(format!(
            "body: not a valid JSON message ({e})"
        )))
    })
}

impl Studio {
    /// The request the gRPC server would hand the service for a call with these headers: the
    /// `authorization` header as metadata, and the caller the auth layer resolves from it.
    pub(crate) async fn request<T>(
        &self,
        headers: &HeaderMap,
        message: T,
    ) -> Result<tonic::Request<T>, ApiError> {
        let caller = self.auth.caller(headers).await?;
        let mut request = tonic::Request::new(message);
        for name in [header::AUTHORIZATION.as_str(), "traceparent", "tracestate"] {
            if let Some(v) = headers.get(name).and_then(|v| v.to_str().ok()) {
                if let Ok(v) = v.parse() {
                    request.metadata_mut().insert(name, v);
                }
            }
        }
        request.extensions_mut().insert(caller);
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_errors_name_the_field() {
        let s: tonic::Status =
            crate::error::Error::invalid("structured.tempo_bpm", "must be between 40 and 240 BPM")
                .into();
        let body = error_body(&s);
        assert_eq!(body["code"], "INVALID_ARGUMENT");
        assert_eq!(body["field"], "structured.tempo_bpm");
        assert_eq!(body["message"], "must be between 40 and 240 BPM");
        assert_eq!(http_status(s.code()), StatusCode::BAD_REQUEST);
        let s = tonic::Status::not_found("job 1: not found");
        let body = error_body(&s);
        assert_eq!(body["code"], "NOT_FOUND");
        assert!(body["field"].is_null());
        assert_eq!(
            code_name(tonic::Code::PermissionDenied),
            "PERMISSION_DENIED"
        );
    }

    #[test]
    fn refusals_a_retry_passes_carry_retry_after() {
        let e = crate::error::Error::exhausted_for(
            "submits_per_second",
            "over the rate",
            std::time::Duration::from_millis(1500),
        );
        let response = ApiError::from(e).into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
        let permanent = crate::error::Error::exhausted("max_steps", "over the limit");
        let response = ApiError::from(permanent).into_response();
        assert!(response.headers().get(header::RETRY_AFTER).is_none());
    }
}
