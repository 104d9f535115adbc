//! Providers on real money through the binary: `berth lease list --state releasing` says why
//! each releasing lease waits, `berth lease show` lists the create attempts and what is
//! stuck, `berth pool set --alternative` sets fallbacks, and `berth provider set` refuses to
//! re-point a live account without `--force`.

#[path = "support/cli.rs"]
mod cli_support;
mod support;

use std::time::Duration;

use cli_support::{Berth, Run};

/// Runs `berth --tenant acme ARGS` as the operator.
fn acme(berth: &Berth, args: &[&str]) -> Run {
    berth.admin(&[&["--tenant", "acme"], args].concat())
}

/// Runs `args` until its stdout contains `text` (at most 200 tries, 50 ms apart).
fn until_stdout(berth: &Berth, args: &[&str], text: &str) -> Run {
    for _ in 0..200 {
        let run = acme(berth, args);
        if run.stdout.contains(text) {
            return run;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("`{}` never printed {text:?}", args.join(" "));
}

/// A stuck destroy shows in `lease list --state releasing` and `lease show`; a pool's
/// alternatives show in `pool list` and its attempts in `lease show`; re-pointing the live
/// account is refused with a hint, and `--force` does it.
#[test]
fn stuck_leases_say_why_and_live_accounts_hold_still() {
    let berth = Berth::start_with(&["--enable-fake"]);
    berth.admin(&["tenant", "create", "acme"]).ok();
    berth.track("acme");
    let refusing = r#"{"cloud": "c1", "destroy_failure_rate": 1.0, "failure": "permanent"}"#;
    acme(
        &berth,
        &[
            "provider", "set", "cloud", "--kind", "fake", "--config", refusing,
        ],
    )
    .ok();
    acme(
        &berth,
        &[
            "pool",
            "set",
            "small",
            "--provider",
            "cloud",
            "--machine-type",
            "s",
            "--price",
            "0.12",
            "--region",
            "fsn1",
            "--alternative",
            "m@nbg1=0.24",
        ],
    )
    .ok();
    let pools = acme(&berth, &["pool", "list"]).ok();
    assert!(pools.stdout.contains("s → m@nbg1"), "{pools:#?}");

    let lease = acme(
        &berth,
        &[
            "lease", "request", "--pool", "small", "--wait", "1m", "-o", "json",
        ],
    )
    .ok();
    let id = lease.json()["id"].as_str().expect("id").to_owned();
    until_stdout(&berth, &["lease", "show", &id], "ready");
    acme(&berth, &["lease", "release", &id]).ok();
    let listed = until_stdout(
        &berth,
        &["lease", "list", "--state", "releasing"],
        "stuck since",
    );
    assert!(listed.stdout.contains(&id), "{listed:#?}");
    assert!(
        listed.stdout.contains("injected destroy failure"),
        "{listed:#?}"
    );
    let shown = acme(&berth, &["lease", "show", &id]).ok();
    assert!(shown.stdout.contains("stuck"), "{shown:#?}");
    assert!(shown.stdout.contains("s@fsn1 at"), "{shown:#?}");
    assert!(shown.stdout.contains("made the runner"), "{shown:#?}");

    // The operator repairs the account (same cloud): the destroy is retried at once.
    acme(
        &berth,
        &[
            "provider",
            "set",
            "cloud",
            "--kind",
            "fake",
            "--config",
            r#"{"cloud": "c1"}"#,
        ],
    )
    .ok();
    until_stdout(&berth, &["lease", "show", &id], "released");

    // A live lease holds its account still.
    let lease = acme(
        &berth,
        &[
            "lease", "request", "--pool", "small", "--wait", "1m", "-o", "json",
        ],
    )
    .ok();
    let id = lease.json()["id"].as_str().expect("id").to_owned();
    until_stdout(&berth, &["lease", "show", &id], "ready");
    let elsewhere = r#"{"cloud": "c2"}"#;
    acme(
        &berth,
        &[
            "provider", "set", "cloud", "--kind", "fake", "--config", elsewhere,
        ],
    )
    .code(1)
    .one_line_error(&["account_in_use"])
    .hint(&["--force"]);
    acme(
        &berth,
        &[
            "provider", "set", "cloud", "--kind", "fake", "--config", elsewhere, "--force",
        ],
    )
    .ok();
    acme(&berth, &["lease", "release", &id, "--wait", "30s"]).ok();
    until_stdout(&berth, &["lease", "show", &id], "released");
}
