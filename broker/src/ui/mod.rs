//! The web dashboard: `GET /ui` on the API's own listener.
//!
//! A few static files under `broker/ui/` — `index.html`, the ES modules `app.js` (sign-in,
//! router), `dom.js` (safe DOM building, the API client, the event stream), `charts.js`
//! (inline SVG), `leases.js` (tenant and lease pages), `pages.js` (overview, ledger,
//! webhooks), `app.css` and `icon.svg` — compiled into the binary with `include_str!`, so berth needs no other service, no CDN and
//! no build step. The page is a client of the public JSON API and its event stream: it signs
//! in with a token kept in `sessionStorage` and sent as `Authorization: Bearer` (never in a
//! URL, never in a cookie, so no other site can make the browser use it: CSRF has nothing to
//! ride on), and reads the event stream with `fetch()` (which can send that header, unlike
//! `EventSource`). Everything the API scopes, the page sees scoped: a tenant token sees its
//! tenant, the admin token every tenant.
//!
//! Every answer carries a strict Content-Security-Policy (no inline script or style, no
//! other origin), `nosniff`, `no-referrer`, and no framing. Assets are revalidated on each
//! load (`no-cache` with an `ETag`), so an upgraded berth serves its new page at once.

use std::sync::LazyLock;

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};

/// The policy of every `/ui` answer: only this origin's script, style, images and API; no
/// inline script or style (so text that came from a tenant can never run), no framing, no
/// `<base>`, forms only to this origin.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// One embedded file.
struct Asset {
    body: &'static str,
    content_type: &'static str,
    etag: LazyLock<String>,
}

macro_rules! asset {
    ($file:literal, $type:literal) => {
        Asset {
            body: include_str!(concat!("../../ui/", $file)),
            content_type: $type,
            etag: LazyLock::new(|| etag(include_str!(concat!("../../ui/", $file)))),
        }
    };
}

static INDEX: Asset = asset!("index.html", "text/html; charset=utf-8");
static SCRIPT: Asset = asset!("app.js", "text/javascript; charset=utf-8");
static DOM: Asset = asset!("dom.js", "text/javascript; charset=utf-8");
static CHARTS: Asset = asset!("charts.js", "text/javascript; charset=utf-8");
static LEASES: Asset = asset!("leases.js", "text/javascript; charset=utf-8");
static PAGES: Asset = asset!("pages.js", "text/javascript; charset=utf-8");
static STYLE: Asset = asset!("app.css", "text/css; charset=utf-8");
static ICON: Asset = asset!("icon.svg", "image/svg+xml");

/// A strong validator of a file's bytes.
fn etag(body: &str) -> String {
    let digest = Sha256::digest(body.as_bytes());
    format!("\"{}\"", hex::encode(&digest[..12]))
}

/// The dashboard's routes. Hash routing (`/ui#/t/acme`) keeps the set of paths closed, so
/// the request metrics get one series per file.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/ui", get(|h: HeaderMap| async move { serve(&INDEX, &h) }))
        .route("/ui/", get(|h: HeaderMap| async move { serve(&INDEX, &h) }))
        .route(
            "/ui/app.js",
            get(|h: HeaderMap| async move { serve(&SCRIPT, &h) }),
        )
        .route(
            "/ui/dom.js",
            get(|h: HeaderMap| async move { serve(&DOM, &h) }),
        )
        .route(
            "/ui/charts.js",
            get(|h: HeaderMap| async move { serve(&CHARTS, &h) }),
        )
        .route(
            "/ui/leases.js",
            get(|h: HeaderMap| async move { serve(&LEASES, &h) }),
        )
        .route(
            "/ui/pages.js",
            get(|h: HeaderMap| async move { serve(&PAGES, &h) }),
        )
        .route(
            "/ui/app.css",
            get(|h: HeaderMap| async move { serve(&STYLE, &h) }),
        )
        .route(
            "/ui/icon.svg",
            get(|h: HeaderMap| async move { serve(&ICON, &h) }),
        )
}

/// An asset with the security and cache headers, or 304 when the client holds it already.
fn serve(asset: &'static Asset, request: &HeaderMap) -> Response {
    let etag = asset.etag.as_str();
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|tag| tag.trim() == etag || tag.trim() == "*")
        });
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(asset.content_type),
            )],
            asset.body,
        )
            .into_response()
    };
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(etag) {
        headers.insert(header::ETAG, value);
    }
    for (name, value) in [
        (header::CACHE_CONTROL, "no-cache"),
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    headers.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(
        "permissions-policy",
        HeaderValue::from_static("camera=(), microphone=(), geolocation=()"),
    );
    response
}
