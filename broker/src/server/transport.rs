//! The HTTP transport of `berth serve`: accepting connections, bounding how many are open, and
//! timing out the parts of an exchange that a client controls, so idle or slow clients
//! (slowloris) cannot use up the file descriptors the tenant databases need.
//!
//! # What is timed, and by whom
//!
//! A connection is always in one of three phases ([`Phase`]):
//!
//! - **head**: waiting for a request's complete headers, from the connection's accept or from
//!   the first byte of a later request; at most `--header-timeout`;
//! - **busy**: answering a request, from its complete headers until hyper has taken the last
//!   frame of its response body. Nothing times this phase as a whole: long polls (up to
//!   300 s) and event streams live in it, and a handler never waits on the client. The
//!   request body is the one part of it the client controls, so it is timed by itself: all of
//!   it must arrive within `--body-timeout` of its first read ([`TimedBody`]), else reading it
//!   fails with [`BodyError::TimedOut`], which the API answers with 408 `body_timeout` and
//!   `Connection: close`;
//! - **idle**: a kept-alive connection after an answer, until the first byte of the next
//!   request; at most `--keepalive-timeout`. This also bounds a client that stops reading its
//!   answer, since the answer is handed over before it is written out.
//!
//! A connection that overstays its phase is closed without an answer, as hyper does on its own
//! header timeout.
//!
//! hyper 1.x has one timer of its own for an HTTP/1 server, `header_read_timeout`. It starts
//! when hyper begins reading a request head — at the connection's start and, on a kept-alive
//! connection, as soon as the previous response is written — and stops when the head is
//! complete. So it covers the idle wait between requests, but with the same duration as the
//! header read, and nothing else: not a request body, not a response the client does not
//! read. An idle timeout longer than the header timeout (60 s against 10 s) cannot be built on
//! it, so it is switched off and the [`watchdog`] times both phases from what it sees: bytes
//! read from the socket ([`Watched`]), requests starting and their response bodies being
//! dropped ([`Answering`]).
//!
//! # Bounded connections
//!
//! Each connection holds a permit of a semaphore of `--max-connections` from its accept to its
//! close. With none free the accept loop waits: new clients queue in the kernel's listen
//! backlog (which refuses them once full) until a connection closes, and the timeouts above
//! close idle and slow ones.
//!
//! # Shutdown
//!
//! When `stopping` is cancelled the accept loop stops and drops the listener; each connection
//! finishes the request it is answering (long polls and event streams answer at once, on the
//! same token) and then closes instead of waiting for another; [`serve`] returns when every
//! connection has closed. The timeouts still apply meanwhile, so a silent client cannot hold
//! a shutdown up.
//!
//! Only HTTP/1.1 (and 1.0) is served, as before: no client of berth speaks cleartext HTTP/2,
//! and hyper-util's automatic protocol detection reads a connection's first bytes with no
//! timer at all.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

use crate::api::HttpMetrics;

/// At most one warning per this interval that the connection limit is reached: under an
/// attack the limit may be reached at every accept.
const LIMIT_WARNING_INTERVAL: Duration = Duration::from_secs(60);

/// The limits of the HTTP transport, from `Config`.
#[derive(Clone, Copy, Debug)]
pub(super) struct Limits {
    /// Longest wait for a request's complete headers (`--header-timeout`).
    pub header_timeout: Duration,
    /// Longest read of one request body, from its first read (`--body-timeout`).
    pub body_timeout: Duration,
    /// Longest wait for the next request on a kept-alive connection (`--keepalive-timeout`).
    pub keepalive_timeout: Duration,
    /// Most connections open at once (`--max-connections`).
    pub max_connections: NonZeroUsize,
}

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// It did not arrive within this long (`--body-timeout`) of its first read.
    #[error("the request body did not arrive within {}", humantime::format_duration(*.0))]
    TimedOut(Duration),
    /// The connection failed, or the client sent a malformed body.
    #[error("reading the request body: {0}")]
    Read(#[source] hyper::Error),
}

/// Serves `app` on `listener` until `stopping` is cancelled, then stops accepting and returns
/// once every connection has closed (see the module docs for what bounds each one).
pub(super) async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    metrics: Arc<HttpMetrics>,
    stopping: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(
        limits.max_connections.get().min(Semaphore::MAX_PERMITS),
    ));
    let mut http = http1::Builder::new();
    // The watchdog times header reads and idle waits (see the module docs); hyper's own
    // timer would close kept-alive connections after the header timeout.
    http.header_read_timeout(None);
    let connections = TaskTracker::new();
    let mut warned: Option<Instant> = None;
    loop {
        // A slot first, then the accept: with no slot free, new clients wait in the backlog.
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                if warned.is_none_or(|at| at.elapsed() >= LIMIT_WARNING_INTERVAL) {
                    tracing::warn!(
                        max_connections = limits.max_connections.get(),
                        "connection limit reached: new connections wait until one closes"
                    );
                    warned = Some(Instant::now());
                }
                tokio::select! {
                    biased;
                    () = stopping.cancelled() => break,
                    slot = slots.clone().acquire_owned() => {
                        slot.expect("BUG: the connection semaphore is never closed")
                    }
                }
            }
        };
        let (stream, peer) = tokio::select! {
            biased;
            () = stopping.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    accept_failed(err).await;
                    continue;
                }
            },
        };
        connections.spawn(connection(
            Connection {
                peer,
                app: app.clone(),
                http: http.clone(),
                limits,
                metrics: metrics.clone(),
                stopping: stopping.clone(),
                _slot: slot,
            },
            stream,
        ));
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// An accept that failed. A connection the client gave up on before it was accepted is not
/// the server's problem; anything else (out of file descriptors, most likely) is logged and
/// retried after a second, when some may have been closed.
async fn accept_failed(err: io::Error) {
    if matches!(
        err.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
    ) {
        return;
    }
    tracing::error!(error = %err, "cannot accept connections; retrying in a second");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// What one connection's task owns. Dropped (slot freed, gauge lowered) when it closes.
struct Connection {
    peer: SocketAddr,
    app: Router,
    http: http1::Builder,
    limits: Limits,
    metrics: Arc<HttpMetrics>,
    stopping: CancellationToken,
    /// This connection's place under `--max-connections`.
    _slot: OwnedSemaphorePermit,
}

/// Serves one connection until it closes, the client overstays a phase, or a shutdown lets it
/// finish its current request.
async fn connection(this: Connection, stream: TcpStream) {
    let _open = OpenGauge::new(this.metrics.clone());
    let phase = Arc::new(watch::Sender::new(Phase::Head {
        since: Instant::now(),
    }));
    let mut watched = phase.subscribe();
    let handler = Handler {
        app: this.app,
        phase: phase.clone(),
        body_timeout: this.limits.body_timeout,
    };
    let conn = this
        .http
        .serve_connection(TokioIo::new(Watched { stream, phase }), handler);
    let mut conn = std::pin::pin!(conn);
    let mut shutting_down = false;
    loop {
        tokio::select! {
            served = conn.as_mut() => {
                if let Err(err) = served {
                    tracing::debug!(peer = %this.peer, error = %err, "connection failed");
                }
                break;
            }
            () = this.stopping.cancelled(), if !shutting_down => {
                shutting_down = true;
                conn.as_mut().graceful_shutdown();
            }
            overstayed = watchdog(&mut watched, &this.limits) => {
                tracing::debug!(peer = %this.peer, ?overstayed, "closing a connection that overstayed");
                match overstayed {
                    Overstayed::Header => this.metrics.header_timed_out(),
                    Overstayed::KeepAlive => this.metrics.keepalive_timed_out(),
                }
                break;
            }
        }
    }
}

/// Counts an open connection in the metrics while it lives.
struct OpenGauge(Arc<HttpMetrics>);

impl OpenGauge {
    fn new(metrics: Arc<HttpMetrics>) -> Self {
        metrics.connection_opened();
        OpenGauge(metrics)
    }
}

impl Drop for OpenGauge {
    fn drop(&mut self) {
        self.0.connection_closed();
    }
}

/// Where a connection is in its exchange (see the module docs). Written by the socket
/// ([`Watched`]) and the requests ([`Answering`]), read by the [`watchdog`].
#[derive(Clone, Copy, Debug)]
enum Phase {
    /// Waiting for a request's complete headers since `since`.
    Head { since: Instant },
    /// Answering `requests` requests (HTTP/1 answers one at a time; counted all the same).
    Busy { requests: usize },
    /// Kept alive since `since` after an answer, with no byte of a next request yet.
    Idle { since: Instant },
}

/// Which phase a connection overstayed.
#[derive(Clone, Copy, Debug)]
enum Overstayed {
    Header,
    KeepAlive,
}

/// Resolves when the connection has overstayed its current phase; never while it is busy.
///
/// Cancel-safe: it keeps no state between polls but what it reads from `phase`.
async fn watchdog(phase: &mut watch::Receiver<Phase>, limits: &Limits) -> Overstayed {
    loop {
        let deadline = match *phase.borrow_and_update() {
            Phase::Head { since } => since
                .checked_add(limits.header_timeout)
                .map(|at| (at, Overstayed::Header)),
            Phase::Idle { since } => since
                .checked_add(limits.keepalive_timeout)
                .map(|at| (at, Overstayed::KeepAlive)),
            Phase::Busy { .. } => None,
        };
        let changed = match deadline {
            Some((at, overstayed)) => tokio::select! {
                changed = phase.changed() => changed,
                () = tokio::time::sleep_until(at) => return overstayed,
            },
            None => phase.changed().await,
        };
        if changed.is_err() {
            // The connection is gone (its socket and handler dropped the sender): nothing to
            // time any more, and the caller is about to drop this future.
            return std::future::pending().await;
        }
    }
}

/// The connection's socket: notes when the first byte of a next request arrives on an idle
/// connection, which starts its header timeout.
struct Watched {
    stream: TcpStream,
    phase: Arc<watch::Sender<Phase>>,
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.phase.send_if_modified(|phase| match phase {
                Phase::Idle { .. } => {
                    *phase = Phase::Head {
                        since: Instant::now(),
                    };
                    true
                }
                Phase::Head { .. } | Phase::Busy { .. } => false,
            });
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// hyper's service for one connection: the router, with the request body timed and the
/// connection marked busy until the response body is dropped.
#[derive(Clone)]
struct Handler {
    app: Router,
    phase: Arc<watch::Sender<Phase>>,
    body_timeout: Duration,
}

impl hyper::service::Service<hyper::Request<Incoming>> for Handler {
    type Response = hyper::Response<ResponseBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, request: hyper::Request<Incoming>) -> Self::Future {
        let answering = Answering::begin(self.phase.clone());
        let timeout = self.body_timeout;
        let request = request.map(|body| {
            axum::body::Body::new(TimedBody {
                body,
                timeout,
                deadline: None,
                sleep: None,
            })
        });
        let app = self.app.clone();
        Box::pin(async move {
            let response = match app.oneshot(request).await {
                Ok(response) => response,
                Err(never) => match never {},
            };
            Ok(response.map(|body| ResponseBody {
                body,
                _answering: answering,
            }))
        })
    }
}

/// A request being answered: the connection is busy from [`Answering::begin`] until this is
/// dropped — with the response body once hyper took its last frame, or with the request's
/// future if the connection closes first.
struct Answering(Arc<watch::Sender<Phase>>);

impl Answering {
    fn begin(phase: Arc<watch::Sender<Phase>>) -> Self {
        phase.send_modify(|phase| {
            *phase = match *phase {
                Phase::Busy { requests } => Phase::Busy {
                    requests: requests + 1,
                },
                Phase::Head { .. } | Phase::Idle { .. } => Phase::Busy { requests: 1 },
            }
        });
        Answering(phase)
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        self.0.send_modify(|phase| {
            *phase = match *phase {
                Phase::Busy { requests } if requests > 1 => Phase::Busy {
                    requests: requests - 1,
                },
                _ => Phase::Idle {
                    since: Instant::now(),
                },
            }
        });
    }
}

/// A response body that keeps its connection busy until hyper drops it.
struct ResponseBody {
    body: axum::body::Body,
    _answering: Answering,
}

impl HttpBody for ResponseBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A request body that must arrive within `timeout` of its first read. The clock starts at
/// the first read, not at the request's headers, so a handler that reads late is not blamed on
/// the client (berth's extractors read it before the handler runs).
struct TimedBody {
    body: Incoming,
    timeout: Duration,
    /// When the body must be complete; set at the first read.
    deadline: Option<Instant>,
    /// The timer, made only when a read has to wait (most bodies arrive with their headers).
    sleep: Option<Pin<Box<Sleep>>>,
}

impl HttpBody for TimedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let deadline = *this
            .deadline
            .get_or_insert_with(|| Instant::now() + this.timeout);
        if let Poll::Ready(frame) = Pin::new(&mut this.body).poll_frame(cx) {
            return Poll::Ready(frame.map(|frame| frame.map_err(BodyError::Read)));
        }
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        ready!(sleep.as_mut().poll(cx));
        Poll::Ready(Some(Err(BodyError::TimedOut(this.timeout))))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
