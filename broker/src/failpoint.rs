//! Failpoints: named places where a test can make the real binary crash, to reach windows
//! that are otherwise too narrow to hit (for example between a provider's create and the
//! commit that records it).
//!
//! Set `BERTH_FAILPOINTS` to a comma-separated list of names; reaching a listed failpoint
//! aborts the process on the spot (like `kill -9`: no destructor, no flush, no commit). The
//! variable is read once; when it is unset, a failpoint costs one atomic load.

use std::sync::OnceLock;

fn armed() -> &'static [String] {
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
pub fn hit(name: &str) {
    if armed().iter().any(|armed| armed == name) {
        eprintln!("failpoint {name} reached: aborting");
        std::process::abort();
    }
}
