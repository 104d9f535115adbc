//! A client generated from the spec works: `scripts/client_tour.sh` starts this build's
//! `berth serve` on a free 127.0.0.1 port, generates a Python client from the `/openapi.json`
//! it serves with `openapi-python-client` (from PyPI, into a venv under `target/`), and runs
//! the README's tour with it (`scripts/client_tour.py`): tenant and token as the operator, a
//! provider account and a pool, leases up to the cap, the long poll until ready, a heartbeat
//! that extends the TTL, runner output, releases, usage and ledger.

use std::process::Command;

#[test]
fn a_client_generated_from_the_spec_runs_the_readme_tour() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/client_tour.sh");
    let output = Command::new("bash")
        .arg(script)
        .arg(env!("CARGO_BIN_EXE_berth"))
        .output()
        .expect("bash runs scripts/client_tour.sh");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    // The tour's steps, for the record (`cargo test -- --nocapture` shows them).
    eprintln!("{stdout}");
    assert!(
        output.status.success(),
        "the generated client's tour failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    assert!(
        stdout.contains("tour: done"),
        "the tour did not reach its end:\n{stdout}\n{stderr}"
    );
}
