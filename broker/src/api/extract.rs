//! Extractors whose rejections are problem+json like every other error: a JSON body, a raw
//! body, query parameters and path parameters.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;

use super::error::ApiError;
use crate::server::BodyError;
use crate::wire::decode::object;
use crate::wire::rules::Validate;

/// A raw request body. Over the route's size limit → 413 `payload_too_large`; not all there
/// within `--body-timeout` → 408 `body_timeout`; cut off → 400 `bad_request`. The two first
/// close the connection, whose unread rest cannot be told from a next request.
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        Bytes::from_request(req, state)
            .await
            .map(RawBody)
            .map_err(body_rejection)
    }
}

/// The problem answering a body that could not be read.
fn body_rejection(rejection: BytesRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "the request body is too large",
        );
    }
    // The transport's error sits a few sources deep, under axum's own wrappers.
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&rejection);
    while let Some(error) = source {
        if let Some(timed_out @ BodyError::TimedOut(_)) = error.downcast_ref::<BodyError>() {
            return ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!("{timed_out}; send the whole body at once and retry"),
            );
        }
        source = error.source();
    }
    ApiError::bad_request("the request body could not be read")
}

/// A JSON request body. Wrong content type → 415; malformed JSON → 400 `bad_request`;
/// well-formed JSON of the wrong shape (not an object, unknown field, wrong type) or against
/// the body's rules (`wire::rules`, the same ones `/openapi.json` publishes) → 422
/// `invalid_request`. The body size is bounded by the router's limit (413) and its arrival by
/// `--body-timeout` (408), as for [`RawBody`].
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Validate> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(';')
                    .next()
                    .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
            });
        if !json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as `Content-Type: application/json`",
            ));
        }
        let RawBody(bytes) = RawBody::from_request(req, state).await?;
        let body: T = parse_json(&bytes)?;
        body.validate().map_err(ApiError::invalid)?;
        Ok(Body(body))
    }
}

/// A JSON body that may be left out: an empty body is `T::default()`.
pub struct OptionalBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Default + Validate> FromRequest<S> for OptionalBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let empty = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.to_str().ok() == Some("0"))
            || (req.headers().get(header::CONTENT_TYPE).is_none()
                && req.headers().get(header::TRANSFER_ENCODING).is_none()
                && req.headers().get(header::CONTENT_LENGTH).is_none());
        if empty {
            return Ok(OptionalBody(T::default()));
        }
        Body::from_request(req, state)
            .await
            .map(|Body(value)| OptionalBody(value))
    }
}

/// Parses a JSON object body with the error classes of [`Body`]: anything but an object (an
/// array in its place, which serde's derived structs would read field by field) is a 422.
///
/// The syntax is checked over the whole body first: typed parsing stops at the first problem
/// it meets, so `{"unknown": [1, 2` would otherwise be a 422 (unknown field) although it is not
/// JSON at all.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice::<serde::de::IgnoredAny>(bytes).map_err(|err| {
        ApiError::bad_request(format!("the request body is not valid JSON: {err}"))
    })?;
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    object::deserialize(&mut deserializer)
        .and_then(|value| deserializer.end().map(|()| value))
        .map_err(|err| {
            use serde_json::error::Category;
            match err.classify() {
                Category::Data => ApiError::invalid(format!("invalid request body: {err}")),
                Category::Syntax | Category::Eof | Category::Io => {
                    ApiError::bad_request(format!("the request body is not valid JSON: {err}"))
                }
            }
        })
}

/// Query parameters; unknown or malformed ones, or ones against the query's rules
/// (`wire::rules`, the same ones `/openapi.json` publishes) → 400 `bad_request`.
pub struct Params<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Validate> FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or_default();
        let params: T = serde_urlencoded::from_str(query)
            .map_err(|err| ApiError::bad_request(format!("invalid query parameters: {err}")))?;
        params.validate().map_err(ApiError::bad_request)?;
        Ok(Params(params))
    }
}

/// Path parameters → 400 `bad_request` when they do not decode.
pub struct PathParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for PathParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(value)| PathParams(value))
            .map_err(|rejection| {
                ApiError::bad_request(format!("invalid path: {}", rejection.body_text()))
            })
    }
}
