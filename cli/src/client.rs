//! The HTTP client of the client commands: reqwest (rustls) with a timeout, bearer token, the
//! shared wire types of [`broker::wire`], and every failure turned into one [`Failure`] line.

use std::time::Duration;

use anyhow::Context as _;
use broker::wire::Problem;
use reqwest::{Method, StatusCode, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::failure::Failure;

/// How long an ordinary request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Added to a long poll's own timeout for the HTTP request's.
const LONG_POLL_SLACK: Duration = Duration::from_secs(15);
/// A stream that sends nothing for this long (not even a keep-alive, which berth sends every
/// 15 s) is taken as dropped.
const STREAM_READ_TIMEOUT: Duration = Duration::from_secs(45);

/// A client of one berth server.
#[derive(Clone, Debug)]
pub struct Api {
    http: reqwest::Client,
    /// For streams: no overall timeout, only one between reads.
    streaming: reqwest::Client,
    base: Url,
    token: Option<String>,
}

/// A successful answer: its status (201 granted vs 202 queued matters) and its body.
#[derive(Debug)]
pub struct Answer<T> {
    pub status: StatusCode,
    pub body: T,
}

/// No body to send.
pub const NO_BODY: Option<&()> = None;

impl Api {
    /// A client of the server at `url` (`http://host:port`, optionally with a path prefix).
    ///
    /// # Errors
    ///
    /// `url` is not an http(s) URL (a usage error).
    pub fn new(url: &str, token: Option<String>) -> anyhow::Result<Api> {
        let base = Url::parse(url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.has_host())
            .ok_or_else(|| {
                Failure::Usage(format!(
                    "`{url}` is not a berth URL like http://127.0.0.1:8080"
                ))
            })?;
        let builder = || {
            reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(10))
                .user_agent(concat!("berth-cli/", env!("CARGO_PKG_VERSION")))
        };
        let http = builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .context("building the HTTP client")?;
        let streaming = builder()
            .read_timeout(STREAM_READ_TIMEOUT)
            .build()
            .context("building the HTTP client")?;
        Ok(Api {
            http,
            streaming,
            base,
            token,
        })
    }

    /// The server's base URL, as given.
    pub fn base(&self) -> &str {
        self.base.as_str().trim_end_matches('/')
    }

    /// The URL of `segments` under the base; each segment is percent-encoded.
    pub fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    /// `GET` with query parameters.
    ///
    /// # Errors
    ///
    /// See [`Api::send`].
    pub async fn get<T: DeserializeOwned>(
        &self,
        segments: &[&str],
        query: &[(&str, String)],
    ) -> anyhow::Result<T> {
        Ok(self
            .send(Method::GET, segments, query, NO_BODY, None, &[])
            .await?
            .body)
    }

    /// `method` with a JSON body.
    ///
    /// # Errors
    ///
    /// See [`Api::send`].
    pub async fn write<T: DeserializeOwned, B: Serialize + ?Sized>(
        &self,
        method: Method,
        segments: &[&str],
        body: &B,
    ) -> anyhow::Result<Answer<T>> {
        self.send(method, segments, &[], Some(body), None, &[])
            .await
    }

    /// A long poll: `GET` that the server may hold for `wait` (the request's own timeout is a
    /// little longer).
    ///
    /// # Errors
    ///
    /// See [`Api::send`].
    pub async fn long_poll<T: DeserializeOwned>(
        &self,
        segments: &[&str],
        query: &[(&str, String)],
        wait: Duration,
    ) -> anyhow::Result<T> {
        Ok(self
            .send(
                Method::GET,
                segments,
                query,
                NO_BODY,
                Some(wait + LONG_POLL_SLACK),
                &[],
            )
            .await?
            .body)
    }

    /// Sends one request (with extra `headers`) and decodes the answer.
    ///
    /// # Errors
    ///
    /// - [`Failure::Unreachable`]: no connection, or no answer in time;
    /// - [`Failure::Api`]: the server answered a problem (its `detail` and `code`);
    /// - [`Failure::Http`]: an error status without a problem body;
    /// - an ordinary error when a success body does not decode (a version mismatch).
    pub async fn send<T: DeserializeOwned, B: Serialize + ?Sized>(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, String)],
        body: Option<&B>,
        timeout: Option<Duration>,
        headers: &[(&'static str, String)],
    ) -> anyhow::Result<Answer<T>> {
        let mut url = self.url(segments);
        if !query.is_empty() {
            url.query_pairs_mut()
                .extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
        }
        let mut request = self.http.request(method, url.clone());
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        if let Some(timeout) = timeout {
            request = request.timeout(timeout);
        }
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let response = request.send().await.map_err(|err| self.unreachable(&err))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|err| self.unreachable(&err))?;
        if !status.is_success() {
            return Err(error_answer(url.as_str(), status, &bytes).into());
        }
        // 204 and friends: decode `null` so `()` works.
        let text: &[u8] = if bytes.is_empty() { b"null" } else { &bytes };
        let body = serde_json::from_slice(text).with_context(|| {
            format!(
                "unexpected answer from {} (is it a berth of the same version?)",
                self.base()
            )
        })?;
        Ok(Answer { status, body })
    }

    /// Opens a streaming `GET` (Server-Sent Events): the answer's head is checked, its body is
    /// left to read with [`reqwest::Response::chunk`]. Only the connection and the time between
    /// two reads are bounded, not the whole stream.
    ///
    /// # Errors
    ///
    /// As [`Api::send`], for the answer's head.
    pub async fn stream(
        &self,
        segments: &[&str],
        headers: &[(&'static str, String)],
    ) -> anyhow::Result<reqwest::Response> {
        let url = self.url(segments);
        let mut request = self.streaming.get(url.clone());
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let response = request.send().await.map_err(|err| self.unreachable(&err))?;
        let status = response.status();
        if !status.is_success() {
            let bytes = response
                .bytes()
                .await
                .map_err(|err| self.unreachable(&err))?;
            return Err(error_answer(url.as_str(), status, &bytes).into());
        }
        Ok(response)
    }

    /// The failure for a stream that broke while being read.
    pub fn broken(&self, err: &reqwest::Error) -> Failure {
        self.unreachable(err)
    }

    fn unreachable(&self, err: &reqwest::Error) -> Failure {
        let reason = if err.is_timeout() {
            "no answer in time".to_owned()
        } else {
            root_cause(err)
        };
        Failure::Unreachable {
            url: self.base().to_owned(),
            reason,
        }
    }
}

/// A failure worth retrying while waiting or following a stream: no connection, or a 5xx.
pub fn is_transient(err: &anyhow::Error) -> bool {
    match err.downcast_ref::<Failure>() {
        Some(Failure::Unreachable { .. }) => true,
        Some(Failure::Api(problem)) => problem.status >= 500,
        Some(Failure::Http { status, .. }) => *status >= 500,
        _ => false,
    }
}

/// The failure for an error status: the problem if the body is one, else the status.
fn error_answer(url: &str, status: StatusCode, bytes: &[u8]) -> Failure {
    match serde_json::from_slice::<Problem>(bytes) {
        Ok(problem) => Failure::Api(problem),
        Err(_) => {
            let text = String::from_utf8_lossy(bytes);
            let snippet: String = text
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
                .chars()
                .take(120)
                .collect();
            Failure::Http {
                url: url.to_owned(),
                status: status.as_u16(),
                snippet: (!snippet.is_empty()).then_some(snippet),
            }
        }
    }
}

/// The innermost cause of an error: "Connection refused (os error 111)" rather than
/// "error sending request".
fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = err;
    while let Some(source) = cause.source() {
        cause = source;
    }
    let text = cause.to_string();
    // Make the first letter lowercase, so it reads as the end of our sentence.
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => text,
    }
}
