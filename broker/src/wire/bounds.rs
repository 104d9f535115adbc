//! The bounds berth holds requests to, each declared once as a [`Rule`] and named here, so
//! a request type's rules (`requests.rs`, the API's queries) and the tenant object's checks
//! read the same numbers and patterns.

use super::rules::{Format, Pattern, Rule, Text};

/// Longest TTL a tenant may allow (the largest `max_ttl_s` of limits and quotas): 30 days.
pub const MAX_TTL_LIMIT_S: i64 = 30 * 86_400;
/// Largest spend cap, in micros (10^18: a trillion currency units).
pub const MAX_SPEND_CAP: i64 = 1_000_000_000_000_000_000;
/// Longest wait of a lease request in the queue: a day.
pub const MAX_WAIT_S: i64 = 86_400;
/// Highest price of a pool, in micros per hour (a million currency units).
pub const MAX_PRICE: i64 = 1_000_000_000_000;
/// Largest count a quota allows (tokens, webhooks, pools, provider accounts).
pub const MAX_COUNT: i64 = 10_000;
/// Largest page of a list.
pub const MAX_PAGE: i64 = 1000;
/// Longest long poll, in seconds.
pub const MAX_LONG_POLL_S: i64 = 300;
/// Most bytes of runner output in one answer.
pub const MAX_LOG_BYTES: i64 = 1024 * 1024;

/// A tenant, pool, provider account or webhook name: 1–63 characters of lowercase letters,
/// digits and `-`, starting with a letter or digit.
pub static NAME: Rule = Rule::Text(Text {
    min: 1,
    max: Some(63),
    pattern: Some(Pattern::new("^[a-z0-9][a-z0-9-]*$")),
    says: "of lowercase letters, digits and `-`, starting with a letter or digit",
    format: None,
});

/// Whether `name` is a valid tenant, pool, provider account or webhook name ([`NAME`]).
pub fn valid_name(name: &str) -> bool {
    NAME.check_str("name", name).is_ok()
}

/// A lease's TTL (the tenant's `max_ttl_s` bounds it further).
pub static TTL: Rule = Rule::Int {
    min: 1,
    max: MAX_TTL_LIMIT_S,
};
/// An idle timeout.
pub static IDLE_TIMEOUT: Rule = Rule::Int {
    min: 1,
    max: MAX_TTL_LIMIT_S,
};
/// How long a lease request may wait in the queue.
pub static WAIT: Rule = Rule::Int {
    min: 0,
    max: MAX_WAIT_S,
};
/// How much a heartbeat extends a TTL (the tenant's `max_ttl_s` bounds the result).
pub static EXTEND_TTL: Rule = Rule::Int {
    min: 1,
    max: i64::MAX,
};

/// Labels of a lease: at most 32; keys of letters, digits, `-`, `_`, `.` and `/`; values
/// without control characters.
pub static LEASE_LABELS: Rule = Rule::Map {
    max: 32,
    key: &LABEL_KEY,
    value: &LABEL_VALUE,
};
static LABEL_KEY: Text = Text {
    min: 1,
    max: Some(63),
    pattern: Some(Pattern::new("^[A-Za-z0-9._/-]*$")),
    says: "of letters, digits, `-`, `_`, `.` and `/`",
    format: None,
};
static LABEL_VALUE: Text = Text {
    min: 0,
    max: Some(255),
    pattern: Some(Pattern::new(NO_CONTROL)),
    says: "without control characters",
    format: None,
};

/// No control character (Unicode category Cc, what `char::is_control` finds).
const NO_CONTROL: &str = r"^[^\u0000-\u001F\u007F-\u009F]*$";

/// `max_active_leases` of limits and quotas.
pub static MAX_ACTIVE_LEASES: Rule = Rule::Int {
    min: 0,
    max: 1_000_000_000,
};
/// `max_queued` of limits and quotas.
pub static MAX_QUEUED: Rule = Rule::Int {
    min: 0,
    max: 1_000_000,
};
/// A spend cap, in micros.
pub static SPEND_CAP: Rule = Rule::Int {
    min: 0,
    max: MAX_SPEND_CAP,
};
/// A count of a quota.
pub static COUNT: Rule = Rule::Int {
    min: 0,
    max: MAX_COUNT,
};

/// The scopes a token may be given (`admin` is the operator's own token, never made here).
pub static TOKEN_SCOPES: Rule = Rule::List {
    min: 1,
    max: None,
    item: &TOKEN_SCOPE,
};
static TOKEN_SCOPE: Rule = Rule::OneOf(&["tenant:admin", "leases:write", "leases:read"]);
/// A note on a token.
pub static TOKEN_NAME: Rule = Rule::Text(Text {
    min: 1,
    max: Some(100),
    pattern: Some(Pattern::new(NO_CONTROL)),
    says: "without control characters",
    format: None,
});

/// The kinds of provider accounts.
pub static PROVIDER_KIND: Rule = Rule::OneOf(&["fake", "process", "hetzner", "http"]);

/// A pool's machine type.
pub static MACHINE_TYPE: Rule = Rule::Text(Text::length(1, 200));
/// A pool's image or region.
pub static POOL_SETTING: Rule = Rule::Text(Text::length(1, 200));
/// A pool's price, in micros per hour.
pub static PRICE: Rule = Rule::Int {
    min: 0,
    max: MAX_PRICE,
};
/// A count of warm runners (a pool's `min_ready`/`max_ready`, the quota's `max_warm`).
pub static WARM_COUNT: Rule = Rule::Int { min: 0, max: 1_000 };
/// How long a warm runner waits to be taken before it is recycled: a minute to a day.
pub static WARM_TTL: Rule = Rule::Int {
    min: 60,
    max: 86_400,
};
/// A pool's own cap of active leases.
pub static POOL_MAX_ACTIVE: Rule = Rule::Int {
    min: 0,
    max: 1_000_000_000,
};
/// The argv a `process` runner runs: at most 256 arguments of at most 4096 characters,
/// without NUL.
pub static COMMAND: Rule = Rule::List {
    min: 0,
    max: Some(256),
    item: &COMMAND_ARG,
};
static COMMAND_ARG: Rule = Rule::Text(Text {
    min: 0,
    max: Some(4096),
    pattern: Some(Pattern::new(r"^[^\u0000]*$")),
    says: "without NUL",
    format: None,
});
/// A pool's labels (GitHub `runs-on`): at most 32 of 1–100 characters.
pub static POOL_LABELS: Rule = Rule::List {
    min: 0,
    max: Some(32),
    item: &POOL_LABEL,
};
static POOL_LABEL: Rule = Rule::Text(Text::length(1, 100));

/// A webhook's target: an `http` or `https` URL of at most 2048 characters.
pub static WEBHOOK_URL: Rule = Rule::Text(Text {
    min: 1,
    max: Some(2048),
    pattern: Some(Pattern::new(r"^[Hh][Tt][Tt][Pp][Ss]?://[^\u0000-\u0020]+$")),
    says: "of an `http` or `https` URL",
    format: Some(Format::Uri),
});
/// A webhook signing secret: `whsec_` (optional) and the key in standard base64 (padding
/// optional; the unused bits of the last character zero, as decoders require), not empty.
pub static WEBHOOK_SECRET: Rule = Rule::Text(Text {
    min: 1,
    max: None,
    pattern: Some(Pattern::new(concat!(
        "^(whsec_)?(",
        "([A-Za-z0-9+/]{4})+([A-Za-z0-9+/][AQgw]={0,2}|[A-Za-z0-9+/]{2}[AEIMQUYcgkosw048]=?)?",
        "|[A-Za-z0-9+/][AQgw]={0,2}",
        "|[A-Za-z0-9+/]{2}[AEIMQUYcgkosw048]=?",
        ")$"
    ))),
    says: "`whsec_` followed by base64",
    format: None,
});
/// The event types a webhook endpoint subscribes to.
pub static WEBHOOK_EVENTS: Rule = Rule::List {
    min: 0,
    max: None,
    item: &EVENT_TYPE,
};
static EVENT_TYPE: Rule = Rule::OneOf(&super::EVENT_TYPES);

/// The GitHub webhook secret.
pub static GITHUB_SECRET: Rule = Rule::Text(Text::length(1, 256));
/// How long a GitHub job's lease request may wait in the queue.
pub static GITHUB_WAIT: Rule = Rule::Int {
    min: 0,
    max: 86_400,
};
/// Where GitHub runners are registered: `org` or `owner/repo` (the tenant object parses it).
pub static GITHUB_SCOPE: Rule = Rule::Text(Text {
    min: 1,
    max: Some(201),
    pattern: Some(Pattern::new(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)?$")),
    says: "`org` or `owner/repo`",
    format: None,
});
/// GitHub's API base URL (`https://api.github.com`, or `https://<host>/api/v3`).
pub static GITHUB_API_URL: Rule = Rule::Text(Text {
    min: 1,
    max: Some(2048),
    pattern: Some(Pattern::new(r"^[Hh][Tt][Tt][Pp][Ss]?://[^\u0000-\u0020]+$")),
    says: "of an `http` or `https` URL",
    format: Some(Format::Uri),
});
/// A GitHub runner group id (`1` is an organisation's default group).
pub static GITHUB_RUNNER_GROUP: Rule = Rule::Int {
    min: 1,
    max: i64::MAX,
};
/// A GitHub App id or installation id.
pub static GITHUB_APP_ID: Rule = Rule::Int {
    min: 1,
    max: i64::MAX,
};
/// A GitHub token (fine-grained personal access token or similar).
pub static GITHUB_TOKEN: Rule = Rule::Text(Text {
    min: 1,
    max: Some(1024),
    pattern: Some(Pattern::new(r"^[!-~]+$")),
    says: "of printable ASCII without spaces",
    format: None,
});
/// A GitHub App's private key, PEM.
pub static GITHUB_PRIVATE_KEY: Rule = Rule::Text(Text::length(1, 16_384));
/// `X-GitHub-Delivery`.
pub static GITHUB_DELIVERY: Rule = Rule::Text(Text::length(1, 100));

/// `Idempotency-Key`: 1–255 visible ASCII characters.
pub static IDEMPOTENCY_KEY: Rule = Rule::Text(Text {
    min: 1,
    max: Some(255),
    pattern: Some(Pattern::new("^[!-~]*$")),
    says: "of visible ASCII",
    format: None,
});

/// A page size.
pub static PAGE_LIMIT: Rule = Rule::Int {
    min: 1,
    max: MAX_PAGE,
};
/// The states the lease list filters by: one state, `active` or `ended`.
pub static LEASE_FILTER: Rule = Rule::OneOf(&[
    "warm",
    "queued",
    "provisioning",
    "ready",
    "releasing",
    "released",
    "expired",
    "failed",
    "canceled",
    "active",
    "ended",
]);
/// The lease list's label filter: `key:value`.
pub static LABEL_FILTER: Rule = Rule::Text(Text {
    min: 1,
    max: None,
    pattern: Some(Pattern::new("^[^:]*:")),
    says: "of the form `key:value`",
    format: None,
});
/// A lease-list cursor (a lease id).
pub static LEASE_CURSOR: Rule = Rule::Text(Text::length(0, 64));
/// A sequence number (ledger `after`, deliveries `cursor`); empty means none.
pub static SEQUENCE: Rule = Rule::Text(Text {
    min: 0,
    max: Some(18),
    pattern: Some(Pattern::new("^[0-9]*$")),
    says: "of digits",
    format: None,
});
/// `wait` of a lease read: `ready` or `ended`.
pub static WAIT_FOR: Rule = Rule::OneOf(&["ready", "ended"]);
/// `timeout_s` of a long poll.
pub static LONG_POLL: Rule = Rule::Int {
    min: 0,
    max: MAX_LONG_POLL_S,
};
/// A usage period.
pub static PERIOD: Rule = Rule::OneOf(&["day", "month"]);
/// A runner output stream.
pub static LOG_STREAM: Rule = Rule::OneOf(&["stdout", "stderr"]);
/// Where to start reading runner output.
pub static LOG_OFFSET: Rule = Rule::Int {
    min: 0,
    max: i64::MAX,
};
/// How many bytes of runner output to read.
pub static LOG_LIMIT: Rule = Rule::Int {
    min: 1,
    max: MAX_LOG_BYTES,
};
/// `at` of a usage report: RFC 3339 or a date.
pub static TIME: Rule = Rule::Text(Text {
    min: 1,
    max: Some(64),
    pattern: None,
    says: "in RFC 3339 (2026-11-27T12:00:00Z) or a date (2026-11-27)",
    format: Some(Format::DateTimeOrDate),
});
/// A webhook delivery status filter.
pub static DELIVERY_STATUS: Rule = Rule::OneOf(&["pending", "delivered", "dead"]);
