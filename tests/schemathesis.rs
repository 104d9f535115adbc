//! The outside conformance check: `scripts/schemathesis.sh` installs schemathesis from PyPI
//! into its own venv (under `target/`), starts this build's `berth` on a scratch directory,
//! sends generated valid and invalid requests to every route of `/openapi.json`, and follows
//! the spec's links in the stateful phase. Every schemathesis check runs but `use_after_free`
//! (a lease's DELETE is a release), plus berth's own (`scripts/schemathesis_hooks.py`): the
//! spec must be exact (schema-valid requests accepted, schema-invalid ones refused), every
//! answer as documented, every error problem+json with a `code`, no panic in the server log.
//! 0 failures. Fixed seed (20261205), bounded in count (`ST_MAX_EXAMPLES`, default 25 per
//! operation) and time (`ST_TIMEOUT`, default 1200 s).

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
        .filter(|line| {
            line.contains(" generated, ")
                || line.starts_with("Selected:")
                || line.starts_with("Scenarios:")
                || line.starts_with("API Links:")
        })
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
