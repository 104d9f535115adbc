//! The failures that decide the exit code. Everything else is an ordinary `anyhow` error and
//! exits 1.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | ok |
//! | 1 | error (the server refused, cannot reach it, a lease failed, …) |
//! | 2 | usage (bad flag or argument, a missing setting) |
//! | 3 | cap reached (429 `concurrency_cap`, `spend_cap` or `queue_full`) |
//! | 4 | timed out (a wait ended before its condition held) |
//! | 130 | interrupted (SIGINT or SIGTERM while waiting) |

use broker::wire::Problem;

/// Exit code of a failure with no more specific class.
pub const ERROR: u8 = 1;
/// Exit code of a usage error (clap uses it too).
pub const USAGE: u8 = 2;
/// Exit code of a refusal because a cap is reached.
pub const CAP: u8 = 3;
/// Exit code of a wait that ran out.
pub const TIMED_OUT: u8 = 4;
/// Exit code after SIGINT or SIGTERM (128 + 2).
pub const INTERRUPTED: u8 = 130;

/// The problem codes that mean "a cap is reached" (exit 3).
pub const CAP_CODES: [&str; 3] = ["concurrency_cap", "spend_cap", "queue_full"];

/// A failure with a known exit code. Its `Display` is one line for people.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// The command line is wrong or a setting is missing.
    #[error("{0}")]
    Usage(String),
    /// The server answered with an RFC 9457 problem.
    #[error("{} ({})", .0.detail, .0.code)]
    Api(Problem),
    /// The server answered an error without a problem body (a proxy, another service).
    #[error("{url} answered HTTP {status}{}", snippet.as_deref().map(|s| format!(": {s}")).unwrap_or_default())]
    Http {
        url: String,
        status: u16,
        snippet: Option<String>,
    },
    /// No answer from the server at all.
    #[error("cannot reach berth at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    /// A wait ended before its condition held.
    #[error("{0}")]
    TimedOut(String),
    /// SIGINT or SIGTERM arrived while waiting.
    #[error("{0}")]
    Interrupted(String),
}

impl Failure {
    /// The process exit code for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::Usage(_) => USAGE,
            Failure::Api(problem) if problem.status == 429 && is_cap(&problem.code) => CAP,
            Failure::TimedOut(_) => TIMED_OUT,
            Failure::Interrupted(_) => INTERRUPTED,
            Failure::Api(_) | Failure::Http { .. } | Failure::Unreachable { .. } => ERROR,
        }
    }

    /// The problem's code, if the server answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Failure::Api(problem) => Some(&problem.code),
            _ => None,
        }
    }
}

/// A failure as the CLI prints it on stderr: one `error:` line, at most one `hint:` line
/// (what to type next), and the exit code.
#[derive(Debug)]
pub struct Shown {
    /// The error, one line.
    pub message: String,
    /// What to do about it, one line, if something helps.
    pub hint: Option<String>,
    /// The process exit code (see the module docs).
    pub exit_code: u8,
}

impl Shown {
    /// An error as it is, without a hint: its message is the chain of contexts and causes
    /// joined with `: `, where a cause whose text its context already shows is left out (an
    /// error type that both prints its source and returns it would otherwise repeat itself).
    pub fn from_error(err: &anyhow::Error) -> Shown {
        let mut message = String::new();
        for cause in err.chain() {
            let text = cause.to_string();
            if message.contains(&text) {
                continue;
            }
            if !message.is_empty() {
                message.push_str(": ");
            }
            message.push_str(&text);
        }
        Shown {
            message: message.replace('\n', " "),
            hint: None,
            exit_code: err
                .downcast_ref::<Failure>()
                .map_or(ERROR, Failure::exit_code),
        }
    }

    /// Prints the failure to stderr.
    pub fn print(&self) {
        eprintln!("error: {}", self.message);
        if let Some(hint) = &self.hint {
            eprintln!("hint: {}", hint.replace('\n', " "));
        }
    }
}

/// Whether a problem code means a cap is reached.
pub fn is_cap(code: &str) -> bool {
    CAP_CODES.contains(&code)
}

/// Shorthand for a usage error.
pub fn usage(message: impl Into<String>) -> anyhow::Error {
    Failure::Usage(message.into()).into()
}
