//! What a waiting command shows on stderr.
//!
//! On a terminal: a spinner with the lease's state, its queue position and the time waited,
//! redrawn in place and erased when the wait ends. Elsewhere (CI logs, pipes): nothing
//! decorative, one plain line each time the state or queue position changes, and the
//! unchanged state again with the time waited at least every 30 s, so a CI log never looks
//! stuck (a wait polls at most [`PLAIN_POLL`] apart there; a status older than
//! [`PLAIN_REPEAT`] is repeated at the next poll).

use std::io::{IsTerminal as _, Write as _};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use broker::wire::Lease;

const FRAMES: [&str; 10] = ["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"];
const TICK: Duration = Duration::from_millis(100);

/// The longest a wait without a terminal goes between two polls, hence between two calls of
/// [`Progress::update`].
pub const PLAIN_POLL: Duration = Duration::from_secs(10);
/// A plain line unchanged for this long is printed again at the next update: with
/// [`PLAIN_POLL`], lines are at most 30 s apart.
const PLAIN_REPEAT: Duration = Duration::from_secs(20);

/// Shows the progress of a wait on one lease.
pub struct Progress {
    mode: Mode,
    /// The last status shown, to print plain lines only on a change.
    last: String,
    /// When the wait started (for the time waited).
    started: Instant,
    /// When the last plain line was printed.
    last_line_at: Instant,
}

enum Mode {
    /// A spinner thread redraws `message` until `stop` is set.
    Spinner {
        message: Arc<Mutex<String>>,
        stop: Arc<AtomicBool>,
        thread: Option<JoinHandle<()>>,
    },
    /// Plain lines on change.
    Plain,
}

impl Progress {
    /// A spinner if stderr is a terminal, plain lines otherwise.
    pub fn start() -> Progress {
        let mode = if std::io::stderr().is_terminal() {
            let message = Arc::new(Mutex::new(String::new()));
            let stop = Arc::new(AtomicBool::new(false));
            let thread = {
                let (message, stop) = (message.clone(), stop.clone());
                std::thread::spawn(move || spin(&message, &stop))
            };
            Mode::Spinner {
                message,
                stop,
                thread: Some(thread),
            }
        } else {
            Mode::Plain
        };
        let now = Instant::now();
        Progress {
            mode,
            last: String::new(),
            started: now,
            last_line_at: now,
        }
    }

    /// Whether a spinner is drawn (then polls are short, so the position stays current).
    pub fn is_live(&self) -> bool {
        matches!(self.mode, Mode::Spinner { .. })
    }

    /// Shows the lease's current state.
    pub fn update(&mut self, lease: &Lease) {
        let status = status(lease);
        match &self.mode {
            Mode::Spinner { message, .. } => {
                if status != self.last {
                    *message.lock().unwrap_or_else(PoisonError::into_inner) = status.clone();
                    self.last = status;
                }
            }
            Mode::Plain => {
                if let Some(line) = self.plain_line(status, Instant::now()) {
                    eprintln!("{line}");
                }
            }
        }
    }

    /// The plain line to print for `status` at `now`: the status when it changed, the status
    /// with the time waited when it was last printed [`PLAIN_REPEAT`] ago, else nothing.
    fn plain_line(&mut self, status: String, now: Instant) -> Option<String> {
        let line = if status != self.last {
            status.clone()
        } else if now.saturating_duration_since(self.last_line_at) >= PLAIN_REPEAT {
            let waited = now.saturating_duration_since(self.started).as_secs();
            format!(
                "{status} · {}",
                crate::output::duration(i64::try_from(waited).unwrap_or(i64::MAX))
            )
        } else {
            return None;
        };
        self.last = status;
        self.last_line_at = now;
        Some(line)
    }

    /// Erases the spinner (plain mode has nothing to erase).
    pub fn finish(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Mode::Spinner { stop, thread, .. } = &mut self.mode {
            stop.store(true, Ordering::Relaxed);
            if let Some(thread) = thread.take() {
                let _ = thread.join();
            }
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `lease_… is queued (position 2 in the queue)`, `lease_… is provisioning`.
fn status(lease: &Lease) -> String {
    let mut text = format!("{} is {}", lease.id, lease.state.as_str());
    if let Some(position) = lease.queue_position {
        text.push_str(&format!(" (position {position} in the queue)"));
    }
    text
}

/// The spinner thread: redraw every tick, erase the line when stopped.
fn spin(message: &Mutex<String>, stop: &AtomicBool) {
    let started = Instant::now();
    let mut stderr = std::io::stderr();
    for frame in FRAMES.iter().cycle() {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let text = message
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let waited =
            crate::output::duration(i64::try_from(started.elapsed().as_secs()).unwrap_or(i64::MAX));
        let _ = write!(stderr, "\r\x1b[2K{frame} {text} · {waited}");
        let _ = stderr.flush();
        std::thread::sleep(TICK);
    }
    let _ = write!(stderr, "\r\x1b[2K");
    let _ = stderr.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without a terminal, a changed status is printed at once and an unchanged one again
    /// (with the time waited) once it is PLAIN_REPEAT old, so lines are never more than
    /// PLAIN_REPEAT + PLAIN_POLL ≤ 30 s apart.
    #[test]
    fn plain_lines_repeat_while_nothing_changes() {
        assert!(PLAIN_REPEAT + PLAIN_POLL <= Duration::from_secs(30));
        let start = Instant::now();
        let mut progress = Progress {
            mode: Mode::Plain,
            last: String::new(),
            started: start,
            last_line_at: start,
        };
        let at = |seconds| start + Duration::from_secs(seconds);
        let queued = || "lease_1 is queued (position 1 in the queue)".to_owned();
        assert_eq!(progress.plain_line(queued(), at(0)), Some(queued()));
        assert_eq!(progress.plain_line(queued(), at(10)), None);
        assert_eq!(
            progress.plain_line(queued(), at(20)),
            Some(format!("{} · 20s", queued()))
        );
        assert_eq!(progress.plain_line(queued(), at(30)), None);
        assert_eq!(
            progress.plain_line("lease_1 is provisioning".to_owned(), at(31)),
            Some("lease_1 is provisioning".to_owned())
        );
    }
}
