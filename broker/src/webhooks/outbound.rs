//! Outbound webhook delivery: one signed POST per attempt, shared by every tenant.
//!
//! The outbox and the retry schedule live in the tenant object (`tenant::object::webhooks`);
//! this module only sends. Each attempt is signed as Standard Webhooks `v1`
//! (`webhook-id`, `webhook-timestamp`, `webhook-signature` = HMAC-SHA256 of
//! `id.timestamp.body`), sent with a timeout, never follows redirects, and holds one of the
//! process-wide delivery slots, shared fairly among tenants ([`super::slots`]). Unless the
//! operator allows private targets, URLs whose host is (or resolves to) a loopback, private or
//! link-local address are refused: the host is resolved and judged before each attempt, and
//! again at connect time (a DNS answer cannot re-point a checked host). Deliveries go straight
//! to their target, whatever `HTTP_PROXY` and its siblings say, or through the operator's
//! `--outbound-proxy` (see `providers::net::route`).

use std::sync::Arc;
use std::time::Duration;

use super::slots::Slots;

/// One delivery attempt's timeout.
const SEND_TIMEOUT: Duration = Duration::from_secs(15);
/// How long setting a webhook waits for DNS to judge its target's host. A lookup that takes
/// longer is not held against the target: every attempt judges it again.
const CONFIGURE_LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);
/// What a refusal of a private target adds: the operator's way to allow it.
const ALLOW_PRIVATE: &str = "(`berth serve --allow-private-webhooks`)";
/// The HTTP side of webhook delivery, shared by every tenant.
pub struct Sender {
    client: reqwest::Client,
    allow_private: bool,
    /// Delivery slots, shared fairly among tenants.
    slots: Arc<Slots>,
}

impl Sender {
    /// A sender with at most `concurrency` deliveries in flight across all tenants, each
    /// competing tenant getting a fair share of them (see [`super::slots`]), sent through
    /// `proxy` (from `providers::net::parse_proxy`) or straight to the target. Unless
    /// `allow_private`, endpoints on loopback, private or link-local addresses are refused,
    /// also when a host name resolves there.
    pub fn new(allow_private: bool, proxy: Option<&url::Url>, concurrency: usize) -> Sender {
        let builder = reqwest::Client::builder()
            .user_agent(concat!("berth-webhooks/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10))
            .timeout(SEND_TIMEOUT);
        let client = providers::net::route(builder, allow_private, proxy)
            .build()
            .expect("BUG: a rustls client with static settings always builds");
        Sender {
            client,
            allow_private,
            slots: Slots::new(concurrency),
        }
    }

    /// Whether `url` may receive deliveries (scheme, host, private addresses written as IPs;
    /// host names are checked at each attempt, where DNS is allowed). Needs no I/O, so the
    /// tenant object may call it.
    pub fn check_url(&self, url: &str) -> Result<(), String> {
        let parsed = url::Url::parse(url).map_err(|err| format!("`url` is not a URL: {err}"))?;
        providers::net::check_static(&parsed, self.allow_private).map_err(|why| {
            if matches!(parsed.host(), Some(url::Host::Ipv4(_) | url::Host::Ipv6(_))) {
                format!("{why} {ALLOW_PRIVATE}")
            } else {
                why
            }
        })
    }

    /// Whether `url` may be set as a webhook's target, judged the same however its host is
    /// written: an address (`127.0.0.1`, `[::1]`), `localhost` (and `*.localhost`, loopback
    /// by definition, RFC 6761), or a name that resolves to a private address now. Refusals
    /// of private targets name the flag that allows them.
    ///
    /// This is I/O (DNS), for the API handler before it calls the tenant object, never for
    /// the object itself. A name that does not resolve, or not within
    /// [`CONFIGURE_LOOKUP_TIMEOUT`], is accepted: DNS may not know it yet, and each attempt
    /// judges the target again (and the resolver drops private addresses at connect time).
    ///
    /// # Errors
    ///
    /// A message for people saying why the target is refused.
    pub async fn check_target_to_configure(&self, url: &str) -> Result<(), String> {
        self.check_url(url)?;
        if self.allow_private {
            return Ok(());
        }
        let parsed = url::Url::parse(url).map_err(|err| format!("`url` is not a URL: {err}"))?;
        let Some(url::Host::Domain(domain)) = parsed.host() else {
            return Ok(()); // An address was judged by `check_url`.
        };
        let name = domain.trim_end_matches('.').to_ascii_lowercase();
        if name == "localhost" || name.ends_with(".localhost") {
            return Err(format!(
                "host `{domain}` is loopback; private network targets are refused unless the \
                 operator allows them {ALLOW_PRIVATE}"
            ));
        }
        match tokio::time::timeout(
            CONFIGURE_LOOKUP_TIMEOUT,
            providers::net::check(&parsed, false),
        )
        .await
        {
            Ok(Err(providers::net::Refusal::Refused(why))) => Err(format!("{why} {ALLOW_PRIVATE}")),
            Ok(Ok(()) | Err(providers::net::Refusal::Unresolved(_))) | Err(_) => Ok(()),
        }
    }

    /// Whether `url` may receive this attempt: [`Sender::check_url`], and every address its
    /// host resolves to now. Through the operator's proxy this is the only check berth can
    /// make (the client resolves only the proxy's name); without one, the client's resolver
    /// also drops private addresses at connect time, and this check gives the clearer
    /// message.
    async fn check_target(&self, url: &str) -> Result<(), String> {
        let parsed = url::Url::parse(url).map_err(|err| format!("`url` is not a URL: {err}"))?;
        providers::net::ensure_public(&parsed, self.allow_private).await
    }
}

/// The outcome of one delivery attempt.
pub enum Attempt {
    /// The endpoint answered with this status (and maybe a `Retry-After`).
    Answered {
        status: u16,
        retry_after: Option<Duration>,
    },
    /// No answer: connection refused, timeout, TLS, a refused address.
    Failed(String),
}

/// One signed POST for `tenant`, once a delivery slot is its turn.
pub async fn send(
    sender: &Sender,
    tenant: &str,
    url: &str,
    secret: &providers::signing::Secret,
    msg_id: &str,
    timestamp_s: i64,
    body: String,
) -> Attempt {
    let _slot = sender.slots.acquire(tenant).await;
    if let Err(why) = sender.check_target(url).await {
        return Attempt::Failed(why);
    }
    let signature = secret.sign(msg_id, timestamp_s, body.as_bytes());
    let response = sender
        .client
        .post(url)
        .header("content-type", "application/json")
        .header("webhook-id", msg_id)
        .header("webhook-timestamp", timestamp_s.to_string())
        .header("webhook-signature", signature)
        .body(body)
        .send()
        .await;
    match response {
        Ok(response) => {
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            Attempt::Answered {
                status: response.status().as_u16(),
                retry_after,
            }
        }
        Err(err) => {
            // The error chain says why (refused, DNS, TLS, timeout); keep it short.
            let mut why = if err.is_timeout() {
                "timed out".to_owned()
            } else {
                "no answer".to_owned()
            };
            let mut source = std::error::Error::source(&err);
            while let Some(cause) = source {
                why = format!("{why}: {cause}");
                source = cause.source();
            }
            Attempt::Failed(why.chars().take(300).collect())
        }
    }
}
