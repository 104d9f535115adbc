//! `GET /v1/tenants/{t}/events`: the tenant's lease and budget events as Server-Sent Events.
//!
//! Each message has `id:` = the event's per-tenant sequence number, `event:` = its type, and
//! `data:` = the same JSON body as a webhook delivery. A stream starts **from now**: it sends
//! the events that happen after it was opened, opening with a message that carries only
//! `id: <the newest event's number>` (no data, so no event: it only sets the client's last
//! event id, so a reconnection resumes from there). A client that (re)connects with
//! `Last-Event-ID: n` (or `?after=n`) gets exactly the events after `n`: stored ones first,
//! then live ones, without gaps or repeats; `after=0` replays every stored event. The stream subscribes to the tenant object's
//! broadcast, which survives the object's hibernation; it never keeps the object awake.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::routing::get;
use futures::{Stream, StreamExt as _};
use serde::Deserialize;
use tokio::sync::broadcast;

use super::Principal;
use super::error::ApiError;
use super::extract::{Params, PathParams};
use crate::tenant::{self, Event};
use crate::wire::Scope;

/// Stored events read per request while catching up.
const PAGE: usize = 500;

pub(super) fn router() -> Router<super::State> {
    Router::new().route("/v1/tenants/{tenant}/events", get(events))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EventsQuery {
    /// Start after this sequence number (like `Last-Event-ID`; `0`: every stored event).
    /// Without either, the stream starts from now.
    after: Option<i64>,
}

crate::wire::rules!(EventsQuery {});

/// Server-Sent Events of the tenant's lease and budget events from now on (the first message
/// sets `id:` to the newest event's number), or after `Last-Event-ID` / `after` (`0`: every
/// stored event).
#[utoipa::path(get, path = "/v1/tenants/{tenant}/events", tag = "events",
    params(("tenant" = String, Path), ("Last-Event-ID" = Option<i64>, Header, description = "resume after this event"),
        ("after" = Option<i64>, Query, description = "resume after this event (when the header cannot be set); 0 replays every stored event; without it and the header, the stream starts from now")),
    responses((status = 200, description = "text/event-stream", content_type = "text/event-stream")),
    security(("bearer" = [])))]
pub(super) async fn events(
    State(state): State<super::State>,
    principal: Principal,
    PathParams(tenant): PathParams<String>,
    headers: HeaderMap,
    Params(query): Params<EventsQuery>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    principal.require(&state, &tenant, Scope::LeasesRead)?;
    let asked = match headers.get("last-event-id") {
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<i64>().ok())
                .ok_or_else(|| {
                    ApiError::bad_request("`Last-Event-ID` must be an event sequence number")
                })?,
        ),
        None => query.after,
    };
    // Subscribe before reading what is stored (or where "now" is), so nothing falls between.
    let live = state.tenants.subscribe(state.tenants.id_from_name(&tenant));
    let (after, start) = match asked {
        Some(after) => (after.max(0), None),
        None => {
            let newest = state.ask(&tenant, tenant::LatestEvent).await?;
            // Tells the client where "now" was, so that a reconnection resumes from there.
            (newest, Some(SseEvent::default().id(newest.to_string())))
        }
    };
    let stream = Feed {
        state,
        tenant,
        live,
        last: after,
        buffer: VecDeque::new(),
        catching_up: true,
    };
    let events = futures::stream::unfold(stream, |mut feed| async move {
        let event = feed.next().await?;
        Some((Ok(to_sse(event)), feed))
    });
    let stream = futures::stream::iter(start.map(Ok)).chain(events);
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

struct Feed {
    state: super::State,
    tenant: String,
    live: broadcast::Receiver<Event>,
    /// The last sequence number sent.
    last: i64,
    buffer: VecDeque<Event>,
    /// Read stored events before (or again after) waiting for live ones.
    catching_up: bool,
}

impl Feed {
    /// The next event to send; `None` ends the stream (shutdown, or the tenant is gone).
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.buffer.pop_front() {
                if event.seq > self.last {
                    self.last = event.seq;
                    return Some(event);
                }
                continue;
            }
            if self.catching_up {
                let request = tenant::Events {
                    after: self.last,
                    limit: PAGE,
                };
                let Ok(page) = self.state.ask(&self.tenant, request).await else {
                    return None;
                };
                self.catching_up = page.len() == PAGE;
                self.buffer.extend(page);
                continue;
            }
            tokio::select! {
                received = self.live.recv() => match received {
                    Ok(event) if event.seq <= self.last => {}
                    Ok(event) if event.seq == self.last + 1 => self.buffer.push_back(event),
                    // A gap (or a lagging receiver): the store has every event, read it again.
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => self.catching_up = true,
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
                () = self.state.stopping.cancelled() => return None,
                // Cluster mode: the tenant moved; the client resumes on its new owner.
                () = self.state.moved_away(&self.tenant) => return None,
            }
        }
    }
}

fn to_sse(event: Event) -> SseEvent {
    let data = serde_json::to_string(&event.body()).unwrap_or_else(|_| "{}".into());
    SseEvent::default()
        .id(event.seq.to_string())
        .event(event.kind.as_str())
        .data(data)
}
