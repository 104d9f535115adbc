//! The settings of `berth serve`: one clap struct, every field a flag with an environment twin.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use crate::objects::Durability;

/// How `berth serve` runs. Each field is a flag (`--data-dir`) and an environment variable
/// (`BERTH_DATA_DIR`); the flag wins.
#[derive(Clone, Debug, clap::Args)]
pub struct Config {
    /// Where berth keeps its SQLite files, its admin token and its master key.
    /// Default `./berth-data`. Since 0.1.
    #[arg(long, env = "BERTH_DATA_DIR", default_value = "./berth-data")]
    pub data_dir: PathBuf,

    /// Address the HTTP API listens on. Default `127.0.0.1:8080`. Since 0.1.
    #[arg(long, env = "BERTH_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Log format: `text` for people, `json` for log pipelines. Default `text`. Since 0.1.
    #[arg(long, env = "BERTH_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,

    /// Label the lease metrics (`berth_leases`, `berth_lease_time_to_ready_seconds`) with
    /// tenant and pool names: a series per tenant and pool, which suits a few tenants and
    /// not a hundred thousand. Default off. Since 0.2.
    #[arg(long, env = "BERTH_METRICS_PER_TENANT")]
    pub metrics_per_tenant: bool,

    /// A tenant object with no request for this long closes its database and leaves memory.
    /// Default `30s`. Since 0.1.
    #[arg(long, env = "BERTH_OBJECT_IDLE", default_value = "30s", value_parser = parse_duration)]
    pub object_idle: Duration,

    /// At most this many object databases are open at once; the least recently used idle
    /// ones hibernate to make room. Default 10000, or fewer where the open-file limit holds
    /// fewer (two files each, beside one per `--max-connections` and 256 more). Since 0.1.
    #[arg(long, env = "BERTH_MAX_LIVE_OBJECTS")]
    pub max_live_objects: Option<usize>,

    /// At most this many hibernated objects keep their database open for a faster next wake
    /// (they count against `--max-live-objects`; each costs ~0.2 MiB of memory and 2 open
    /// files); `0` turns it off. Default 256. Since 0.3.
    #[arg(long, env = "BERTH_WARM_OBJECTS", default_value_t = 256)]
    pub warm_objects: usize,

    /// A hibernated object's open database is closed after this long. Default `60s`.
    /// Since 0.3.
    #[arg(long, env = "BERTH_WARM_IDLE", default_value = "60s", value_parser = parse_duration)]
    pub warm_idle: Duration,

    /// Requests one object queues before answering 503. Default 4096. Since 0.1.
    #[arg(long, env = "BERTH_INBOX_CAPACITY", default_value_t = 4_096)]
    pub inbox_capacity: usize,

    /// Most requests one object commits in one transaction (group commit); `1` turns group
    /// commit off. Default 512. Since 0.1.
    #[arg(long, env = "BERTH_MAX_BATCH", default_value_t = 512)]
    pub max_batch: usize,

    /// SQLite durability: `full` (fsync at every commit; an acknowledged write survives power
    /// loss), `log` (no fsync per commit; every commit is also appended to one shared commit
    /// journal in `<data-dir>/journal/`, and replies and other effects wait for its
    /// `fdatasync`, which covers every object's commits at once: the same promise, and a
    /// start replays what a power loss took from the object files), `group` (the same with
    /// one shared `syncfs` of the data directory's filesystem instead of a journal; give the
    /// data directory a filesystem of its own, since `syncfs` flushes all of it), or
    /// `normal`/`off` for benchmarks only. Default `full`. Since 0.1 (`group` since 0.3,
    /// `log` since 0.4).
    #[arg(long, env = "BERTH_DURABILITY", default_value = "full", hide = true)]
    pub durability: Durability,

    /// On SIGTERM, how long berth goes on serving with `/readyz` answering 503 before it stops
    /// accepting connections, so that a load balancer takes it out of rotation first.
    /// Default `0s`. Since 0.1.
    #[arg(long, env = "BERTH_DRAIN_DELAY", default_value = "0s", value_parser = parse_duration)]
    pub drain_delay: Duration,

    /// How long a graceful shutdown waits for objects to finish before exiting anyway.
    /// Default `10s`. Since 0.1.
    #[arg(long, env = "BERTH_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// A connection must deliver a request's complete headers within this long, counted from
    /// its accept or, on a kept-alive connection, from the first byte of the request; else it
    /// is closed without an answer. Default `10s`. Since 0.2.
    #[arg(long, env = "BERTH_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_timeout)]
    pub header_timeout: Duration,

    /// A request body must arrive within this long of when berth starts reading it; a slower
    /// one is answered 408 `body_timeout` and its connection closed. Bodies are at most
    /// 64 KiB (1 MiB from GitHub). Long polls and event streams have no body and are not
    /// limited. Default `30s`. Since 0.2.
    #[arg(long, env = "BERTH_BODY_TIMEOUT", default_value = "30s", value_parser = parse_timeout)]
    pub body_timeout: Duration,

    /// A kept-alive connection on which no byte of a next request arrives this long after the
    /// previous answer is closed. Default `60s`. Since 0.2.
    #[arg(long, env = "BERTH_KEEPALIVE_TIMEOUT", default_value = "60s", value_parser = parse_timeout)]
    pub keepalive_timeout: Duration,

    /// Most HTTP connections open at once. Beyond it berth accepts no more (new clients wait
    /// in the kernel's listen backlog) until one closes; the timeouts above close idle and slow
    /// ones. Keep it well below the open-file limit, which the tenant databases share.
    /// Default 1024. Since 0.2.
    #[arg(long, env = "BERTH_MAX_CONNECTIONS", default_value = "1024")]
    pub max_connections: NonZeroUsize,

    /// The URL runners use to call berth back (`BERTH_CALLBACK_URL`). Default
    /// `http://<listen address>`. Since 0.1.
    #[arg(long, env = "BERTH_PUBLIC_URL")]
    pub public_url: Option<String>,

    /// How often each tenant compares its leases with its providers' runners and destroys
    /// runners no live lease owns (also done when a tenant object opens). Default `5m`.
    /// Since 0.1.
    #[arg(long, env = "BERTH_RECONCILE_INTERVAL", default_value = "5m", value_parser = parse_duration)]
    pub reconcile_interval: Duration,

    /// What reconciliation does with a runner of a lease this tenant knows ended (an orphan)
    /// once it has been seen on two rounds `--orphan-grace` apart: `destroy` it, or only
    /// `report` it (logged, announced as `runner.orphan_destroyed` with `report_only: true`,
    /// counted in `/metrics`; nothing is destroyed). Default `destroy`. Since 0.3.
    #[arg(long, env = "BERTH_RECONCILE_MODE", default_value = "destroy", value_parser = ["destroy", "report"])]
    pub reconcile_mode: String,

    /// An orphan runner is destroyed only when a reconciliation sees it again at least this
    /// long after it first saw it. Default `10m`. Since 0.3.
    #[arg(long, env = "BERTH_ORPHAN_GRACE", default_value = "10m", value_parser = parse_duration)]
    pub orphan_grace: Duration,

    /// Most orphan runners one reconciliation round destroys per provider account; the rest
    /// wait for the next round. Default 10. Since 0.3.
    #[arg(long, env = "BERTH_RECONCILE_MAX_DESTROYS", default_value_t = 10)]
    pub reconcile_max_destroys: usize,

    /// Longest a provider create or destroy call may take before it counts as failed (and is
    /// retried). Default `2m`. Since 0.1.
    #[arg(long, env = "BERTH_PROVIDER_TIMEOUT", default_value = "2m", value_parser = parse_duration)]
    pub provider_timeout: Duration,

    /// Delay before the first retry of a failed provider call; it doubles per attempt, up to
    /// 5 minutes. Default `2s`. Since 0.1.
    #[arg(long, env = "BERTH_PROVIDER_RETRY_BASE", default_value = "2s", value_parser = parse_duration)]
    pub provider_retry_base: Duration,

    /// A runner that does not report ready this long after its lease was granted fails the
    /// lease (`provider_error`). Default `10m`. Since 0.1.
    #[arg(long, env = "BERTH_READY_TIMEOUT", default_value = "10m", value_parser = parse_duration)]
    pub ready_timeout: Duration,

    /// Allow webhook targets on loopback, private and link-local addresses. Default off.
    /// Since 0.1.
    #[arg(long, env = "BERTH_ALLOW_PRIVATE_WEBHOOKS")]
    pub allow_private_webhooks: bool,

    /// Allow `http` and `hetzner` provider endpoints on loopback, private and link-local
    /// addresses. Default off. Since 0.1.
    #[arg(long, env = "BERTH_ALLOW_PRIVATE_PROVIDERS")]
    pub allow_private_providers: bool,

    /// Where host runners live: the `process` provider's default root, and the only place a
    /// `process` account's `root` or a `fake` account's `state_dir` may lie. Never inside the
    /// data directory (nor the data directory inside it), so a runner cannot reach berth's
    /// files. Default `<data-dir>/../berth-runners`. Since 0.2.
    #[arg(long, env = "BERTH_RUNNERS_DIR")]
    pub runners_dir: Option<PathBuf>,

    /// Allow `fake` provider accounts: an in-memory cloud for tests and benchmarks, never for
    /// production. Default off. Since 0.2.
    #[arg(long, env = "BERTH_ENABLE_FAKE")]
    pub enable_fake: bool,

    /// When berth runs as root, the user (a name or a uid) every `process` runner runs as,
    /// without supplementary groups: runners then cannot read berth's files, but they share
    /// this user with each other (prefer `--runner-uids`). Default: runners run as berth.
    /// Since 0.2.
    #[arg(long, env = "BERTH_RUNNER_USER", conflicts_with = "runner_uids")]
    pub runner_user: Option<String>,

    /// When berth runs as root, a range of uids reserved for berth (`200000-265535`): each
    /// `process` runner runs as a uid (and gid) of its own from it, so runners can read
    /// neither berth's files nor each other's environment and files. No other user or file
    /// may use these uids. Default: none. Since 0.2.
    #[arg(long, env = "BERTH_RUNNER_UIDS", conflicts_with = "runner_user")]
    pub runner_uids: Option<String>,
    /// Send all outbound HTTP (webhook deliveries, `http` and `hetzner` providers) through
    /// this proxy, `http://host:port` or `https://host:port` (credentials as
    /// `user:password@`). Targets are still resolved by berth and refused on private
    /// addresses (unless allowed); the proxy itself may be on one. Without it berth ignores
    /// `HTTP_PROXY`, `HTTPS_PROXY` and `ALL_PROXY`, which would hide targets from that check.
    /// Default none. Since 0.2.
    #[arg(long, env = "BERTH_OUTBOUND_PROXY", value_parser = providers::net::parse_proxy, hide_env_values = true)]
    pub outbound_proxy: Option<url::Url>,

    /// Webhook deliveries in flight at once, across all tenants; competing tenants share them
    /// fairly. Hidden: tests make it small. Default 64. Since 0.2.
    #[arg(long, env = "BERTH_WEBHOOK_CONCURRENCY", default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..), hide = true)]
    pub webhook_concurrency: u16,

    /// Cluster mode (`postgres://user:password@host/db`): this node joins the berth cluster
    /// whose state is in that PostgreSQL database; every node given the same URL serves every
    /// tenant, each tenant owned by one node at a time. Give every node the same master key
    /// and admin token. Default none: one node on its SQLite files. Since 0.2.
    #[arg(long = "cluster", env = "BERTH_CLUSTER_URL", hide_env_values = true)]
    pub cluster_url: Option<String>,

    /// Cluster mode: this node's name, shown by `berth cluster status`. Default the host
    /// name. Since 0.2.
    #[arg(long, env = "BERTH_NODE_ID")]
    pub node_id: Option<String>,

    /// Cluster mode: the URL other nodes forward requests to (this node's API as they reach
    /// it). Default `--public-url`, else `http://<listen address>`. Since 0.2.
    #[arg(long, env = "BERTH_ADVERTISE_URL")]
    pub advertise_url: Option<String>,

    /// Cluster mode: how long a node's membership lasts without renewal; after it, other nodes
    /// take its tenants over. Renewed five times as often. Default `5s`. Since 0.2.
    #[arg(long, env = "BERTH_CLUSTER_MEMBERSHIP", default_value = "5s", value_parser = parse_timeout)]
    pub cluster_membership: Duration,

    /// Where `berth backup` (and `--backup-every`) writes backups on this machine: every
    /// backup is a new directory inside it. Default `berth-backups` beside the data
    /// directory. Since 0.2.
    #[arg(long, env = "BERTH_BACKUP_DIR")]
    pub backup_dir: Option<PathBuf>,

    /// Write a backup into `--backup-dir` this often (`1h`), keeping the newest
    /// `--backup-keep`. Default: no scheduled backups. Since 0.2.
    #[arg(long, env = "BERTH_BACKUP_EVERY", value_parser = parse_timeout)]
    pub backup_every: Option<Duration>,

    /// How many scheduled backups to keep (older `scheduled-*` ones are deleted). Default 24.
    /// Since 0.2.
    #[arg(long, env = "BERTH_BACKUP_KEEP", default_value_t = 24)]
    pub backup_keep: usize,

    /// The operator's admin token. Default: read from `<data-dir>/admin-token`, created
    /// (mode 0600) on first start. Since 0.1.
    #[arg(long, env = "BERTH_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// The master key sealing provider credentials: 32 bytes as 64 hex digits or base64.
    /// Default: read from `<data-dir>/master.key`, created (mode 0600) on first start.
    /// Since 0.1.
    #[arg(long, env = "BERTH_MASTER_KEY", hide_env_values = true)]
    pub master_key: Option<String>,
}

impl Config {
    /// The runners directory: `--runners-dir`, or `berth-runners` beside the data directory;
    /// absolute.
    pub fn runners_dir(&self) -> PathBuf {
        let data_dir =
            std::path::absolute(&self.data_dir).unwrap_or_else(|_| self.data_dir.clone());
        let dir = match &self.runners_dir {
            Some(dir) => dir.clone(),
            None => data_dir.parent().map_or_else(
                || PathBuf::from("/berth-runners"),
                |parent| parent.join("berth-runners"),
            ),
        };
        std::path::absolute(&dir).unwrap_or(dir)
    }

    /// The backup directory: `--backup-dir`, or `berth-backups` beside the data directory;
    /// absolute.
    pub fn backup_dir(&self) -> PathBuf {
        let data_dir =
            std::path::absolute(&self.data_dir).unwrap_or_else(|_| self.data_dir.clone());
        let dir = match &self.backup_dir {
            Some(dir) => dir.clone(),
            None => data_dir.parent().map_or_else(
                || PathBuf::from("/berth-backups"),
                |parent| parent.join("berth-backups"),
            ),
        };
        std::path::absolute(&dir).unwrap_or(dir)
    }

    /// The defaults for tests: `data_dir`, an ephemeral loopback port, private addresses
    /// allowed (test peers listen on 127.0.0.1), `fake` accounts allowed, runners in
    /// `<data_dir>-runners` (beside it, and the test's own).
    pub fn for_tests(data_dir: impl Into<PathBuf>) -> Self {
        let data_dir: PathBuf = data_dir.into();
        let mut runners_dir = data_dir.clone().into_os_string();
        runners_dir.push("-runners");
        Config {
            runners_dir: Some(runners_dir.into()),
            enable_fake: true,
            runner_user: None,
            runner_uids: None,
            data_dir,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            log_format: "text".into(),
            metrics_per_tenant: false,
            object_idle: Duration::from_secs(30),
            max_live_objects: None,
            warm_objects: 256,
            warm_idle: Duration::from_secs(60),
            inbox_capacity: 4_096,
            max_batch: 512,
            durability: Durability::Full,
            drain_delay: Duration::ZERO,
            shutdown_grace: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(60),
            max_connections: NonZeroUsize::new(1024).expect("BUG: 1024 is not zero"),
            public_url: None,
            reconcile_interval: Duration::from_secs(300),
            reconcile_mode: "destroy".into(),
            orphan_grace: Duration::from_secs(600),
            reconcile_max_destroys: 10,
            provider_timeout: Duration::from_secs(120),
            provider_retry_base: Duration::from_secs(2),
            ready_timeout: Duration::from_secs(600),
            allow_private_webhooks: true,
            allow_private_providers: true,
            outbound_proxy: None,
            webhook_concurrency: 64,
            admin_token: None,
            master_key: None,
            cluster_url: None,
            node_id: None,
            advertise_url: None,
            cluster_membership: Duration::from_secs(5),
            backup_dir: None,
            backup_every: None,
            backup_keep: 24,
        }
    }
}

/// Parses a duration like `90s`, `10m`, `2h`, `1d` or `1h30m`; a bare number is seconds.
///
/// # Errors
///
/// A message for people when the text is not a duration.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    humantime::parse_duration(text)
        .map_err(|err| format!("`{text}` is not a duration like 90s, 10m or 2h ({err})"))
}

/// The longest timeout berth takes: longer ones protect nothing.
const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// Parses a timeout: a duration as [`parse_duration`] reads it, above zero and at most a day.
///
/// # Errors
///
/// A message for people when the text is not a duration, or zero (which would close every
/// connection at once), or over a day.
pub fn parse_timeout(text: &str) -> Result<Duration, String> {
    let duration = parse_duration(text)?;
    if duration.is_zero() {
        return Err(format!("`{text}` is zero: a timeout must be above zero"));
    }
    if duration > MAX_TIMEOUT {
        return Err(format!("`{text}` is over a day: a timeout is at most 24h"));
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Durations read the way people write them.
    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-5s").is_err());
    }

    /// Timeouts are above zero and at most a day.
    #[test]
    fn parses_timeouts() {
        assert_eq!(parse_timeout("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_timeout("24h"), Ok(Duration::from_secs(86_400)));
        assert!(parse_timeout("0s").is_err());
        assert!(parse_timeout("0").is_err());
        assert!(parse_timeout("25h").is_err());
        assert!(parse_timeout("soon").is_err());
    }
}
