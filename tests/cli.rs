//! The `berth` client commands as a person or a CI script runs them: the real binary against
//! a real `berth serve` on 127.0.0.1, real SQLite files and real runner processes.
//!
//! Each command's success path is checked through `-o json` (parsed) and its table output.
//! Failures (exit codes and their one line on stderr) are in `cli_errors.rs`; the first run
//! (login, `serve`'s first start, quickstart, help pages) in `cli_setup.rs`.

#[path = "support/cli.rs"]
mod cli_support;
mod support;

use cli_support::{Berth, run, run_with_stdin};

/// Tenant create, list, show and set with the admin token: amounts and durations go in as
/// people write them and come back as currency; a second create is one line and exit 1.
#[test]
fn tenant_commands() {
    let berth = Berth::start();
    let created = berth
        .admin(&[
            "tenant",
            "create",
            "acme",
            "--max-active",
            "3",
            "--daily-cap",
            "12.50",
            "--default-ttl",
            "20m",
        ])
        .ok();
    assert!(created.stdout.contains("$12.50"), "{created:#?}");
    assert!(created.stdout.contains("20m"), "{created:#?}");
    assert!(
        !created.stdout.contains("12500000"),
        "no micro-units in tables"
    );

    berth
        .admin(&["tenant", "create", "acme"])
        .code(1)
        .one_line_error(&["acme", "(conflict)"]);
    berth
        .admin(&["tenant", "create", "Not_A_Name"])
        .code(1)
        .one_line_error(&["(invalid_request)"]);

    let list = berth.admin(&["tenant", "list", "-o", "json"]).ok().json();
    assert_eq!(list["items"][0]["name"], "acme");
    assert!(list["next_cursor"].is_null());
    let table = berth.admin(&["tenant", "list"]).ok();
    assert!(table.stdout.starts_with("NAME"), "{table:#?}");
    assert!(table.stdout.contains("acme"));
    assert_eq!(
        berth.admin(&["tenant", "list", "-o", "id"]).ok().stdout,
        "acme\n"
    );

    let shown = berth
        .admin(&["tenant", "show", "acme", "-o", "json"])
        .ok()
        .json();
    assert_eq!(shown["limits"]["max_active_leases"], 3);
    assert_eq!(shown["limits"]["spend_cap_daily_micros"], 12_500_000);
    assert_eq!(shown["limits"]["default_ttl_s"], 1200);

    let set = berth
        .admin(&[
            "--tenant",
            "acme",
            "tenant",
            "set",
            "--daily-cap",
            "none",
            "--monthly-cap",
            "$100",
            "--default-idle",
            "5m",
            "-o",
            "json",
        ])
        .ok()
        .json();
    assert!(set["limits"]["spend_cap_daily_micros"].is_null());
    assert_eq!(set["limits"]["spend_cap_monthly_micros"], 100_000_000);
    assert_eq!(set["limits"]["default_idle_timeout_s"], 300);
    assert_eq!(
        set["limits"]["max_active_leases"], 3,
        "untouched limits stay"
    );
    let table = berth.admin(&["tenant", "show", "acme"]).ok();
    assert!(table.stdout.contains("$100.00"), "{table:#?}");
}

/// The operator sets a quota with `--quota-…` flags; `tenant show` prints each limit with its
/// quota; the tenant's own admin token sets limits within it, and is refused above it (exit
/// 1, one line naming the limit) and for the quota itself.
#[test]
fn quota_flags() {
    let berth = Berth::start();
    berth
        .admin(&[
            "tenant",
            "create",
            "acme",
            "--max-active",
            "2",
            "--quota-max-active",
            "5",
            "--quota-daily-cap",
            "20",
            "--quota-pools",
            "3",
        ])
        .ok();
    let table = berth.admin(&["tenant", "show", "acme"]).ok();
    assert!(table.stdout.contains("2 (quota 5)"), "{table:#?}");
    assert!(table.stdout.contains("$20.00 (quota $20.00)"), "{table:#?}");
    let created = berth
        .admin(&[
            "--tenant",
            "acme",
            "token",
            "create",
            "--scope",
            "tenant:admin",
            "-o",
            "json",
        ])
        .ok();
    let token = created.json()["token"].as_str().expect("token").to_owned();
    let as_admin = |args: &[&str]| {
        run(berth
            .cmd()
            .env("BERTH_TOKEN", &token)
            .env("BERTH_TENANT", "acme")
            .args(args))
    };
    let within = as_admin(&["tenant", "set", "--max-active", "5", "-o", "json"]).ok();
    assert_eq!(within.json()["limits"]["max_active_leases"], 5);
    let above = as_admin(&["tenant", "set", "--max-active", "6"])
        .code(1)
        .one_line_error(&["--max-active 6", "quota of 5", "(quota_exceeded)"])
        .hint(&["operator's admin token"]);
    assert!(!above.stderr.contains("max_active_leases"), "{above:#?}");
    as_admin(&["tenant", "set", "--daily-cap", "none"])
        .code(1)
        .one_line_error(&["--daily-cap cannot be `none`", "$20.00", "(quota_exceeded)"])
        .hint(&["operator's admin token"]);
    as_admin(&["tenant", "set", "--quota-max-active", "50"])
        .code(1)
        .one_line_error(&["(operator_only)"])
        .hint(&["operator's admin token", "admin-token"]);
}

/// `token create` shows the secret once and it works; provider credentials come from a file
/// or stdin and are never shown; pool prices go in as currency and are micro-units on the
/// wire; a revoked token is refused in one line.
#[test]
fn tokens_providers_and_pools() {
    // The hetzner accounts below point at a loopback port nothing listens on.
    let berth = Berth::start_with(&["--allow-private-providers"]);
    berth.admin(&["tenant", "create", "acme"]).ok();
    let acme = |args: &[&str]| berth.admin(&[&["--tenant", "acme"], args].concat());

    let local = acme(&[
        "provider",
        "set",
        "local",
        "--kind",
        "process",
        "--config",
        r#"{"grace_ms": 500}"#,
        "-o",
        "json",
    ])
    .ok()
    .json();
    assert_eq!(local["kind"], "process");
    assert_eq!(local["has_credentials"], false);

    // A loopback base URL that nothing listens on: berth must never reach the real API.
    let credentials = berth.dir.path().join("hetzner.json");
    std::fs::write(&credentials, r#"{"token": "s3cret-from-file"}"#).expect("write");
    let config = r#"{"base_url": "http://127.0.0.1:9"}"#;
    let from_file = acme(&[
        "provider",
        "set",
        "cloud",
        "--kind",
        "hetzner",
        "--config",
        config,
        "--credentials",
        &format!("@{}", credentials.display()),
        "-o",
        "json",
    ])
    .ok();
    assert_eq!(from_file.json()["has_credentials"], true);
    assert!(!from_file.stdout.contains("s3cret"));
    let from_stdin = run_with_stdin(
        berth.admin_cmd().args([
            "--tenant",
            "acme",
            "provider",
            "set",
            "cloud2",
            "--kind",
            "hetzner",
            "--config",
            config,
            "--credentials",
            "-",
        ]),
        r#"{"token": "s3cret-from-stdin"}"#,
    )
    .ok();
    assert!(from_stdin.stdout.contains("stored"), "{from_stdin:#?}");
    let providers = acme(&["provider", "list"]).ok();
    assert!(providers.stdout.contains("cloud2"), "{providers:#?}");
    assert!(!providers.stdout.contains("s3cret"));
    assert_eq!(
        acme(&["provider", "list", "-o", "json"]).json()["items"]
            .as_array()
            .map(Vec::len),
        Some(3)
    );
    acme(&[
        "provider",
        "set",
        "bad",
        "--kind",
        "process",
        "--config",
        "{not json",
    ])
    .code(2);

    let pool = acme(&[
        "pool",
        "set",
        "small",
        "--provider",
        "local",
        "--machine-type",
        "local",
        "--price",
        "0.12",
        "--label",
        "linux",
        "-o",
        "json",
        "--",
        "sh",
        "-c",
        "exec sleep 60",
    ])
    .ok()
    .json();
    assert_eq!(pool["hourly_price_micros"], 120_000);
    assert_eq!(
        pool["command"],
        serde_json::json!(["sh", "-c", "exec sleep 60"])
    );
    assert_eq!(pool["labels"], serde_json::json!(["linux"]));
    let pools = acme(&["pool", "list"]).ok();
    assert!(pools.stdout.contains("$0.12"), "{pools:#?}");
    assert!(pools.stdout.contains("sh -c 'exec sleep 60'"), "{pools:#?}");
    assert_eq!(acme(&["pool", "list", "-o", "id"]).ok().stdout, "small\n");
    acme(&[
        "pool",
        "set",
        "nope",
        "--provider",
        "missing",
        "--machine-type",
        "x",
    ])
    .code(1)
    .one_line_error(&["missing"]);

    let created = acme(&[
        "token",
        "create",
        "--scope",
        "leases:read",
        "--name",
        "reader",
        "-o",
        "json",
    ])
    .ok()
    .json();
    let secret = created["token"].as_str().expect("secret").to_owned();
    let id = created["id"].as_str().expect("id").to_owned();
    assert_eq!(created["scopes"], serde_json::json!(["leases:read"]));
    let reader = |args: &[&str]| {
        run(berth
            .cmd()
            .env("BERTH_TOKEN", &secret)
            .env("BERTH_TENANT", "acme")
            .args(args))
    };
    reader(&["lease", "list"]).ok();
    // A reader sees the pools and the tenant's limits, but not its tokens.
    reader(&["pool", "list"]).ok();
    reader(&["tenant", "show"]).ok();
    reader(&["token", "list"])
        .code(1)
        .one_line_error(&["tenant:admin", "(forbidden)"])
        .hint(&[
            "`berth token list` needs a token with the tenant:admin scope",
            "berth token create --scope tenant:admin",
        ]);
    let tokens = acme(&["token", "list"]).ok();
    assert!(tokens.stdout.contains(&id) && tokens.stdout.contains("reader"));
    assert!(!tokens.stdout.contains(&secret), "secrets are never listed");
    acme(&["token", "create"]).code(2);
    acme(&["token", "create", "--scope", "admin"]).code(2);
    acme(&["token", "revoke", &id]).ok();
    reader(&["lease", "list"])
        .code(1)
        .one_line_error(&["(unauthorized)"]);
}

/// A lease's life through the binary: request --wait on a real process runner, list, show,
/// wait, renew, release --wait, then usage and ledger show the charge — all checked through
/// `-o json`, with tables in currency.
#[test]
fn lease_lifecycle() {
    let berth = Berth::start();
    let tenant = berth.tenant("acme", &[]);
    let lease = berth
        .as_tenant(
            &tenant,
            &[
                "lease", "request", "--pool", "local", "--ttl", "10m", "--idle", "5m", "--wait",
                "--label", "repo=web", "--label", "run=42", "-o", "json",
            ],
        )
        .ok()
        .json();
    let id = lease["id"].as_str().expect("id").to_owned();
    assert!(id.starts_with("lease_"));
    assert_eq!(lease["state"], "ready");
    assert_eq!(lease["ttl_s"], 600);
    assert_eq!(lease["idle_timeout_s"], 300);
    assert_eq!(lease["labels"]["repo"], "web");
    let address = lease["runner"]["address"].as_str().expect("address");
    assert!(
        std::path::Path::new(address).is_dir(),
        "the runner's work dir"
    );
    assert_eq!(lease["cost"]["reserved_micros"], 20_000, "$0.12/h × 10 min");

    let list = berth
        .as_tenant(
            &tenant,
            &["lease", "list", "--label", "repo=web", "-o", "json"],
        )
        .ok()
        .json();
    assert_eq!(list["items"][0]["id"], id.as_str());
    let active = berth
        .as_tenant(&tenant, &["lease", "list", "--state", "active", "-o", "id"])
        .ok();
    assert_eq!(active.stdout, format!("{id}\n"));
    let table = berth.as_tenant(&tenant, &["lease", "list"]).ok();
    assert!(table.stdout.starts_with("ID"), "{table:#?}");
    assert!(table.stdout.contains("$0.02 reserved"), "{table:#?}");
    assert!(table.stdout.contains("ago)") || table.stdout.contains("(now)"));

    let shown = berth.as_tenant(&tenant, &["lease", "show", &id]).ok();
    assert!(shown.stdout.contains("$0.12/hour"), "{shown:#?}");
    assert!(shown.stdout.contains("repo=web"), "{shown:#?}");
    let waited = berth
        .as_tenant(
            &tenant,
            &["lease", "wait", &id, "--for", "ready", "-o", "json"],
        )
        .ok()
        .json();
    assert_eq!(waited["state"], "ready");

    let renewed = berth
        .as_tenant(
            &tenant,
            &["lease", "renew", &id, "--extend", "5m", "-o", "json"],
        )
        .ok()
        .json();
    assert_eq!(renewed["ttl_s"], 900);
    assert!(renewed["last_heartbeat_at"].is_string());

    let released = berth
        .as_tenant(&tenant, &["lease", "release", &id, "--wait", "-o", "json"])
        .ok()
        .json();
    assert_eq!(released["state"], "released");
    assert_eq!(released["end_reason"], "released");
    assert!(released["runner_destroyed_at"].is_string());
    let charged = released["cost"]["charged_micros"].as_i64().expect("charge");
    assert!(charged > 0);
    berth
        .as_tenant(&tenant, &["lease", "wait", &id, "--for", "ended"])
        .ok();
    berth
        .as_tenant(&tenant, &["lease", "renew", &id])
        .code(1)
        .one_line_error(&["(lease_ended)"]);

    let usage = berth
        .as_tenant(&tenant, &["usage", "--period", "month", "-o", "json"])
        .ok()
        .json();
    assert_eq!(usage["period"], "month");
    assert_eq!(usage["charged_micros"], charged);
    assert_eq!(usage["reserved_micros"], 0);
    assert_eq!(usage["by_pool"][0]["pool"], "local");
    let table = berth.as_tenant(&tenant, &["usage"]).ok();
    assert!(table.stdout.contains("charged"), "{table:#?}");
    assert!(table.stdout.contains('$'), "{table:#?}");
    berth.as_tenant(&tenant, &["usage", "-o", "id"]).code(2);

    let ledger = berth
        .as_tenant(&tenant, &["ledger", "-o", "json"])
        .ok()
        .json();
    let rows = ledger["items"].as_array().expect("rows");
    let kinds: Vec<&str> = rows.iter().filter_map(|r| r["kind"].as_str()).collect();
    assert!(
        kinds.contains(&"reserve") && kinds.contains(&"charge"),
        "{kinds:?}"
    );
    assert!(rows.iter().all(|r| r["lease_id"] == id.as_str()));
    let after = berth
        .as_tenant(
            &tenant,
            &["ledger", "--after", "1", "--limit", "1", "-o", "json"],
        )
        .ok()
        .json();
    assert_eq!(after["items"][0]["seq"], 2);
    let table = berth.as_tenant(&tenant, &["ledger"]).ok();
    assert!(
        table.stdout.contains("$0.02"),
        "the reservation: {table:#?}"
    );
}

/// `--github-output` appends `lease_id=…` and `runner_address=…` to $GITHUB_OUTPUT (after
/// what is already there), and without $GITHUB_OUTPUT it is a usage error that leases nothing.
#[test]
fn github_output_file() {
    let berth = Berth::start();
    let tenant = berth.tenant("acme", &[]);
    let outputs = berth.dir.path().join("github_output");
    std::fs::write(&outputs, "earlier=step\n").expect("write");
    let lease = run(berth
        .tenant_cmd(&tenant)
        .env("GITHUB_OUTPUT", &outputs)
        .args([
            "lease",
            "request",
            "--pool",
            "local",
            "--wait",
            "2m",
            "--github-output",
            "-o",
            "json",
        ]))
    .ok()
    .json();
    let text = std::fs::read_to_string(&outputs).expect("read");
    let address = lease["runner"]["address"].as_str().expect("address");
    assert_eq!(
        text,
        format!(
            "earlier=step\nlease_id={}\nrunner_address={address}\n",
            lease["id"].as_str().expect("id")
        )
    );

    berth
        .as_tenant(
            &tenant,
            &["lease", "request", "--pool", "local", "--github-output"],
        )
        .code(2)
        .one_line_error(&["GITHUB_OUTPUT"]);
    let ids = berth
        .as_tenant(&tenant, &["lease", "list", "-o", "id"])
        .ok()
        .stdout;
    assert_eq!(ids.lines().count(), 1, "the usage error leased nothing");
}

/// `release` without `--wait` shows the lease as `releasing` (not `releasing (released)`),
/// and a released lease shows no expiry (`expires … (in 9m)` would be false).
#[test]
fn released_leases_read_as_released() {
    let berth = Berth::start();
    let tenant = berth.tenant("acme", &[]);
    let id = berth
        .as_tenant(
            &tenant,
            &["lease", "request", "--pool", "local", "--wait", "-o", "id"],
        )
        .ok()
        .stdout
        .trim()
        .to_owned();
    let released = berth.as_tenant(&tenant, &["lease", "release", &id]).ok();
    assert!(
        !released.stdout.contains("(released)"),
        "no confusing reason: {released:#?}"
    );
    assert!(!released.stdout.contains("expires"), "{released:#?}");
    berth
        .as_tenant(&tenant, &["lease", "wait", &id, "--for", "ended"])
        .ok();
    let shown = berth.as_tenant(&tenant, &["lease", "show", &id]).ok();
    assert!(shown.stdout.contains("released"), "{shown:#?}");
    assert!(!shown.stdout.contains("expires"), "{shown:#?}");
}
