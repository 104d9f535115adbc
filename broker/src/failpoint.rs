//! Failpoints: named places where a test can make the real binary crash, to reach windows
//! that are otherwise too narrow to hit (for example between a provider's create and the
//! commit that records it).
//!
//! Set `BERTH_FAILPOINTS` to a comma-separated list of names; reaching a listed failpoint
//! aborts the process on the spot (like `kill -9`: no destructor, no flush, no commit). The
//! variable is read once; when it is unset, a failpoint costs one atomic load.
//!
//! # Only in test builds
//!
//! Failpoints exist only when the broker crate is built with its cargo feature `failpoints`.
//! Without it (every `cargo build`, `cargo run` and `cargo install` of berth), [`hit`] is an
//! inline no-op: `BERTH_FAILPOINTS` is never read, so no environment can abort a production
//! server, and the failpoints' names are not even in the binary. The root package enables the
//! feature in its `[dev-dependencies]`, so `cargo test` builds the `berth` binary that the
//! end-to-end suites run with it (cargo unifies a dev-dependency's features with the normal
//! dependency's whenever it builds the package's tests).

/// Whether failpoints are compiled in (the `failpoints` feature).
pub const ENABLED: bool = cfg!(feature = "failpoints");

#[cfg(feature = "failpoints")]
fn armed() -> &'static [String] {
    use std::sync::OnceLock;

    static ARMED: OnceLock<Vec<String>> = OnceLock::new();
    ARMED.get_or_init(|| {
        std::env::var("BERTH_FAILPOINTS")
            .map(|v| {
                v.split(',')
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    })
}

/// Aborts the process if the failpoint `name` is armed.
#[cfg(feature = "failpoints")]
pub fn hit(name: &str) {
    if armed().iter().any(|armed| armed == name) {
        eprintln!("failpoint {name} reached: aborting");
        std::process::abort();
    }
}

/// Does nothing: failpoints are not compiled in (see the module docs).
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn hit(_name: &str) {}

/// Blocks the calling thread while the failpoint `name` is armed and the file `path` exists
/// (tests hold a step, look at the outside world, then delete the file). Bounded: gives up
/// after ten minutes.
#[cfg(feature = "failpoints")]
pub fn hold_while(name: &str, path: &std::path::Path) {
    if !armed().iter().any(|armed| armed == name) {
        return;
    }
    for _ in 0..60_000 {
        if !path.exists() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Does nothing: failpoints are not compiled in (see the module docs).
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn hold_while(_name: &str, _path: &std::path::Path) {}

/// Panics (instead of aborting) if the failpoint `name` is armed: the panic unwinds into the
/// API's panic handler, which answers 500, so tests can see a 500 end to end.
#[cfg(feature = "failpoints")]
pub fn panic_if_armed(name: &str) {
    if armed().iter().any(|armed| armed == name) {
        panic!("failpoint {name} reached: panicking");
    }
}

/// Does nothing: failpoints are not compiled in (see the module docs).
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn panic_if_armed(_name: &str) {}
