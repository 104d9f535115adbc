//! The settings of `berth serve`: one clap struct, every field a flag with an environment twin.

use std::net::SocketAddr;
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

    /// A tenant object with no request for this long closes its database and leaves memory.
    /// Default `30s`. Since 0.1.
    #[arg(long, env = "BERTH_OBJECT_IDLE", default_value = "30s", value_parser = parse_duration)]
    pub object_idle: Duration,

    /// At most this many object databases are open at once; the least recently used idle
    /// ones hibernate to make room. Default 10000. Since 0.1.
    #[arg(long, env = "BERTH_MAX_LIVE_OBJECTS", default_value_t = 10_000)]
    pub max_live_objects: usize,

    /// Requests one object queues before answering 503. Default 4096. Since 0.1.
    #[arg(long, env = "BERTH_INBOX_CAPACITY", default_value_t = 4_096)]
    pub inbox_capacity: usize,

    /// Most requests one object commits in one transaction (group commit); `1` turns group
    /// commit off. Default 512. Since 0.1.
    #[arg(long, env = "BERTH_MAX_BATCH", default_value_t = 512)]
    pub max_batch: usize,

    /// SQLite durability: `full` (fsync at every commit; an acknowledged write survives power
    /// loss), or `normal`/`off` for benchmarks only. Default `full`. Since 0.1.
    #[arg(long, env = "BERTH_DURABILITY", default_value = "full", hide = true)]
    pub durability: Durability,

    /// How long a graceful shutdown waits for objects to finish before exiting anyway.
    /// Default `10s`. Since 0.1.
    #[arg(long, env = "BERTH_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
}

impl Config {
    /// The defaults, for `data_dir`, listening on an ephemeral loopback port (tests).
    pub fn for_tests(data_dir: impl Into<PathBuf>) -> Self {
        Config {
            data_dir: data_dir.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            log_format: "text".into(),
            object_idle: Duration::from_secs(30),
            max_live_objects: 10_000,
            inbox_capacity: 4_096,
            max_batch: 512,
            durability: Durability::Full,
            shutdown_grace: Duration::from_secs(10),
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
}
