//! A runner's output, as a provider can show it: [`Provider::logs`](crate::Provider::logs)
//! reads one stream from an offset, at most a bounded number of bytes.
//!
//! A runner runs a CI job, and the job writes its log: every byte is the job's, so a provider
//! reads it as data (never as a path or a command), from a file or an endpoint it owns, and
//! the broker shows it only to callers who may read the lease. Providers that keep no output
//! (the `fake` cloud, `hetzner` and `http`, whose machines keep their own) answer
//! [`Logs::Unsupported`].

/// Which output of the runner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    /// `stdout` or `stderr`.
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Bytes of one stream, read from `offset`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// Where `bytes` start in the stream (the requested offset, or the stream's size when the
    /// request asked past it).
    pub offset: u64,
    /// The stream's size when it was read.
    pub size: u64,
    /// At most the requested number of bytes.
    pub bytes: Vec<u8>,
}

/// What a provider can show of a runner's output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Logs {
    /// The bytes asked for.
    Chunk(Chunk),
    /// This provider keeps no output of its runners.
    Unsupported,
    /// The runner has no output to show: it is gone (destroyed with its output), or its log
    /// is not one the provider wrote (the runner replaced it) and is refused. For people.
    Unavailable(String),
}
