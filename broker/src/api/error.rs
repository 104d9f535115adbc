//! The API's one error type: every failure answers `application/problem+json` (RFC 9457)
//! with a stable `code`.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::objects::CallError;
use crate::tenant::Rejection;
use crate::wire::Problem;

/// An error answer. Handlers return `Result<T, ApiError>`.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    /// Stable machine-readable code (`concurrency_cap`, `not_found`, …).
    pub code: &'static str,
    /// What happened and, where it helps, what to do next. Never contains secrets.
    pub detail: String,
    /// Seconds after which a retry may succeed (`Retry-After`).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            detail: detail.into(),
            retry_after: None,
        }
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", detail)
    }

    pub fn invalid(detail: impl Into<String>) -> Self {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", detail)
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", detail)
    }

    pub fn conflict(detail: impl Into<String>) -> Self {
        ApiError::new(StatusCode::CONFLICT, "conflict", detail)
    }

    /// A failure the client cannot fix. The cause is logged (in the request's span, so the
    /// line carries its request id); the client gets a generic message naming that id.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        let detail = match super::access::current() {
            Some(id) => format!("internal error; it was logged with request id {id}"),
            None => "internal error; it was logged".to_owned(),
        };
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", detail)
    }

    /// Sets `Retry-After`: every 429 and 503 carries one.
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// The body of the answer.
    pub fn problem(&self) -> Problem {
        Problem {
            kind: format!("https://berth.dev/problems/{}", self.code),
            title: self.status.canonical_reason().unwrap_or("Error").to_owned(),
            status: self.status.as_u16(),
            detail: self.detail.clone(),
            code: self.code.to_owned(),
            request_id: super::access::current().map(|id| id.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.problem())).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if matches!(
            self.status,
            StatusCode::PAYLOAD_TOO_LARGE | StatusCode::REQUEST_TIMEOUT
        ) {
            // The rest of the body was never read, so this connection cannot carry another
            // request; say so, or a client would reuse it and lose its next request.
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

impl From<Rejection> for ApiError {
    fn from(rejection: Rejection) -> Self {
        let detail = rejection.to_string();
        match rejection {
            Rejection::NoTenant => ApiError::not_found("tenant not found"),
            Rejection::NotFound(_) => ApiError::not_found(detail),
            Rejection::Invalid(_) => ApiError::invalid(detail),
            Rejection::LeaseEnded(_) => ApiError::new(StatusCode::CONFLICT, "lease_ended", detail),
            Rejection::NoLogs(_) => ApiError::new(StatusCode::CONFLICT, "no_logs", detail),
            Rejection::NoJitConfig(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "no_jitconfig", detail)
            }
            Rejection::AccountInUse(_) => {
                ApiError::new(StatusCode::CONFLICT, "account_in_use", detail)
            }
            Rejection::IdempotencyMismatch => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_mismatch",
                detail,
            ),
            Rejection::ConcurrencyCap(_) => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "concurrency_cap", detail)
                    .retry_after(5)
            }
            // Budget frees when a running lease ends (its charge replaces its reservation) or
            // a new period starts; neither time is known here, so ask for a polite minute.
            Rejection::SpendCap(_) => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "spend_cap", detail).retry_after(60)
            }
            Rejection::QueueFull(_) => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "queue_full", detail).retry_after(5)
            }
            Rejection::QuotaExceeded(_) => {
                ApiError::new(StatusCode::FORBIDDEN, "quota_exceeded", detail)
            }
            Rejection::OperatorOnly(_) => {
                ApiError::new(StatusCode::FORBIDDEN, "operator_only", detail)
            }
            Rejection::BadRunnerToken => ApiError::unauthorized("invalid runner token"),
        }
    }
}

impl From<CallError> for ApiError {
    fn from(err: CallError) -> Self {
        match err {
            CallError::Overloaded => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                "this tenant has too many requests in flight; retry shortly (nothing was done)",
            )
            .retry_after(1),
            CallError::ShuttingDown => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "berth is shutting down; retry against the restarted server (nothing was done)",
            )
            .retry_after(1),
            CallError::Storage(cause) => {
                tracing::error!(error = %cause, "storage failure");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "storage_unavailable",
                    "storage is failing (disk full or read-only?); nothing was stored, retry later",
                )
                .retry_after(5)
            }
            CallError::Failed(cause) => ApiError::internal(cause),
            // Forwarding to the owner happens before this (`api::forward`); what is left is
            // an object that moved just now.
            CallError::Moved(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "moved",
                "this tenant is moving between berth nodes; retry shortly (nothing was done)",
            )
            .retry_after(1),
        }
    }
}
