//! What a waiting command shows on stderr.
//!
//! On a terminal: a spinner with the lease's state, its queue position and the time waited,
//! redrawn in place and erased when the wait ends. Elsewhere (CI logs, pipes): nothing
//! decorative, one plain line each time the state or queue position changes.

use std::io::{IsTerminal as _, Write as _};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use broker::wire::Lease;

const FRAMES: [&str; 10] = ["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"];
const TICK: Duration = Duration::from_millis(100);

/// Shows the progress of a wait on one lease.
pub struct Progress {
    mode: Mode,
    /// The last status shown, to print plain lines only on a change.
    last: String,
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
        Progress {
            mode,
            last: String::new(),
        }
    }

    /// Whether a spinner is drawn (then polls are short, so the position stays current).
    pub fn is_live(&self) -> bool {
        matches!(self.mode, Mode::Spinner { .. })
    }

    /// Shows the lease's current state.
    pub fn update(&mut self, lease: &Lease) {
        let status = status(lease);
        if status == self.last {
            return;
        }
        match &self.mode {
            Mode::Spinner { message, .. } => {
                *message.lock().unwrap_or_else(PoisonError::into_inner) = status.clone();
            }
            Mode::Plain => eprintln!("{status}"),
        }
        self.last = status;
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
