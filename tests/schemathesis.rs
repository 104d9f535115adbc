//! The OpenAPI-driven run: `scripts/schemathesis.sh` installs schemathesis from PyPI into its
//! own venv (under `target/`), starts this build's `berth` on a scratch directory, and sends
//! generated valid and invalid requests to every route of `/openapi.json`. It fails on any
//! 5xx, any error answer that is not problem+json with a `code`, or a panic in the server
//! log. Fixed seed; `ST_MAX_EXAMPLES` (default 50 per operation) makes it longer.

use std::process::Command;

#[test]
fn openapi_driven_requests_never_break_the_contract() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/schemathesis.sh");
    let output = Command::new("bash")
        .arg(script)
        .arg(env!("CARGO_BIN_EXE_berth"))
        .output()
        .expect("bash runs scripts/schemathesis.sh");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    // The summary, for the record (`cargo test -- --nocapture` shows it).
    let summary: Vec<&str> = stdout
        .lines()
        .map(str::trim)
        .filter(|line| line.contains(" generated, ") || line.starts_with("Selected:"))
        .collect();
    eprintln!("schemathesis: {}", summary.join("; "));
    assert!(
        output.status.success(),
        "schemathesis found contract violations ({}):\n{stdout}\n{stderr}",
        output.status
    );
    assert!(
        stdout.contains(" passed"),
        "schemathesis ran no test cases:\n{stdout}\n{stderr}"
    );
}
