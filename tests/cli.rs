//! The `berth` client commands as a person or a CI script runs them: the real binary against
//! a real `berth serve` on 127.0.0.1, real SQLite files and real runner processes.
//!
//! Each command's success path is checked through `-o json` (parsed) and its table output;
//! the failures are checked by exit code (1 error, 2 usage, 3 cap reached, 4 timed out) and by
//! the one line on stderr.

#[path = "support/cli.rs"]
mod cli_support;
mod support;

use std::time::Duration;

use cli_support::{Berth, mode, run, run_with_stdin};

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

/// An unknown lease is exit 1 with one line from the server's problem (`detail` and `code`),
/// for show, wait, renew and release alike.
#[test]
fn unknown_lease_is_one_line_exit_1() {
    let berth = Berth::start();
    let tenant = berth.tenant("acme", &[]);
    for args in [
        &["lease", "show", "lease_nope"][..],
        &["lease", "wait", "lease_nope"],
        &["lease", "renew", "lease_nope"],
        &["lease", "release", "lease_nope"],
    ] {
        berth
            .as_tenant(&tenant, args)
            .code(1)
            .one_line_error(&["lease_nope", "(not_found)"]);
    }
    berth
        .as_tenant(&tenant, &["--tenant", "other", "lease", "list"])
        .code(1)
        .one_line_error(&["other", "(not_found)"]);
}

/// Bad flags and values are usage errors: exit 2, nothing sent.
#[test]
fn bad_flags_exit_2() {
    let berth = Berth::start();
    let tenant = berth.tenant("acme", &[]);
    for args in [
        &["lease", "request", "--pool", "local", "--no-such-flag"][..],
        &["lease", "request"],
        &["lease", "request", "--pool", "local", "--ttl", "soon"],
        &["lease", "request", "--pool", "local", "--label", "novalue"],
        &["lease", "request", "--pool", "local", "--wait", "0s"],
        &["lease", "list", "--state", "sleepy"],
        &["lease", "wait", "lease_x", "--for", "lunch"],
        &["lease", "no-such-verb"],
        &["usage", "--period", "week"],
        &["-o", "yaml", "lease", "list"],
    ] {
        berth.as_tenant(&tenant, args).code(2);
    }
    berth
        .admin(&["tenant", "create", "x", "--daily-cap", "lots"])
        .code(2);
    let ids = berth
        .as_tenant(&tenant, &["lease", "list", "-o", "id"])
        .ok()
        .stdout;
    assert!(ids.is_empty(), "no usage error leased anything: {ids}");
}

/// A tenant at its cap is refused with exit 3, one line naming the cap in the CLI's words
/// (no API field names) and a `hint:` line saying what to type: `--wait 5m` to queue, and
/// `berth lease list --state active` to see what holds the cap — for the concurrency cap,
/// and a spend cap too small for the lease's reservation.
#[test]
fn cap_reached_exits_3() {
    let berth = Berth::start();
    let tenant = berth.tenant("acme", &["--max-active", "1"]);
    berth
        .as_tenant(&tenant, &["lease", "request", "--pool", "local"])
        .ok();
    let refused = berth
        .as_tenant(&tenant, &["lease", "request", "--pool", "local"])
        .code(3)
        .one_line_error(&[
            "tenant acme is at its cap: 1 of 1 leases active",
            "(concurrency_cap)",
        ])
        .hint(&["--wait 5m", "berth lease list --state active"]);
    assert!(
        !refused.stderr.contains("max_active_leases"),
        "{refused:#?}"
    );

    // $0.12/h for 10 minutes reserves $0.02; a $0.01 daily cap cannot hold it.
    let poor = berth.tenant("poor", &["--daily-cap", "0.01"]);
    berth
        .as_tenant(
            &poor,
            &["lease", "request", "--pool", "local", "--ttl", "10m"],
        )
        .code(3)
        .one_line_error(&["(spend_cap)"])
        .hint(&[
            "--wait 5m",
            "berth usage",
            "berth lease list --state active",
        ]);
}

/// A duration without a unit is a usage error (exit 2) that says how to write it, naming only
/// the units berth takes; nothing is leased. Durations in the server's terms come back as
/// the flag with durations (`--ttl must be between 1s and …`), not `ttl_s` in seconds.
#[test]
fn durations_need_units() {
    let berth = Berth::start();
    let tenant = berth.tenant("acme", &["--max-ttl", "1h"]);
    let bare = berth
        .as_tenant(
            &tenant,
            &["lease", "request", "--pool", "local", "--ttl", "10"],
        )
        .code(2);
    assert!(
        bare.stderr.contains("`10s`") && bare.stderr.contains("`10m`"),
        "{bare:#?}"
    );
    for unknown in ["10x", "10ns", "2years"] {
        let refused = berth
            .as_tenant(
                &tenant,
                &["lease", "request", "--pool", "local", "--ttl", unknown],
            )
            .code(2);
        assert!(refused.stderr.contains("units: s, m, h, d"), "{refused:#?}");
        assert!(
            !refused.stderr.contains("nsec") && !refused.stderr.contains("years,"),
            "only berth's units are named: {refused:#?}"
        );
    }
    for args in [
        &["lease", "wait", "lease_x", "--timeout", "30"][..],
        &["lease", "renew", "lease_x", "--extend", "5"],
        &["watch", "--timeout", "10"],
    ] {
        berth.as_tenant(&tenant, args).code(2);
    }
    berth
        .admin(&["tenant", "create", "other", "--default-ttl", "30"])
        .code(2);
    let long = berth
        .as_tenant(
            &tenant,
            &["lease", "request", "--pool", "local", "--ttl", "2h"],
        )
        .code(1)
        .one_line_error(&[
            "--ttl must be between 1s and 1h",
            "max TTL",
            "(invalid_request)",
        ]);
    assert!(!long.stderr.contains("ttl_s"), "{long:#?}");
    let ids = berth
        .as_tenant(&tenant, &["lease", "list", "-o", "id"])
        .ok()
        .stdout;
    assert!(ids.is_empty(), "nothing was leased: {ids}");
}

/// A token used with `--tenant` of another tenant gets the server's one-line 404, and a hint
/// naming the tenant the token belongs to (found with one read the token may make), never
/// the token itself; the admin token asking for a tenant that does not exist is pointed to
/// `berth tenant list`.
#[test]
fn another_tenants_token_names_its_tenant() {
    let berth = Berth::start();
    let tenant = berth.tenant("acme", &[]);
    berth.tenant("other", &[]);
    let refused = berth
        .as_tenant(&tenant, &["--tenant", "other", "lease", "list"])
        .code(1)
        .one_line_error(&["tenant `other` not found", "(not_found)"])
        .hint(&["this token belongs to tenant `acme`", "--tenant other"]);
    assert!(!refused.stderr.contains(&tenant.token), "{refused:#?}");

    // Logged in (the token and its tenant in the config file), as after `quickstart`.
    run(berth
        .cmd()
        .args(["login", "--token", &tenant.token, "--tenant", "acme"]))
    .ok();
    run(berth.cmd().args(["--tenant", "other", "pool", "list"]))
        .code(1)
        .one_line_error(&["(not_found)"])
        .hint(&["belongs to tenant `acme`"]);

    berth
        .admin(&["--tenant", "nosuch", "lease", "list"])
        .code(1)
        .one_line_error(&["tenant `nosuch` not found", "(not_found)"])
        .hint(&["berth tenant list"]);
}

/// An unknown pool is one line, and a hint lists the pools that exist when the token may
/// list them (else says which command would); an unknown provider account of `pool set`
/// lists the accounts.
#[test]
fn unknown_pool_lists_the_pools() {
    let berth = Berth::start();
    let tenant = berth.tenant("acme", &[]);
    let as_admin = |args: &[&str]| berth.admin(&[&["--tenant", "acme"], args].concat());
    as_admin(&[
        "pool",
        "set",
        "linux",
        "--provider",
        "local",
        "--machine-type",
        "local",
        "--price",
        "0.10",
        "--",
        "sleep",
        "60",
    ])
    .ok();
    as_admin(&["lease", "request", "--pool", "nosuch"])
        .code(1)
        .one_line_error(&["pool `nosuch` does not exist", "(invalid_request)"])
        .hint(&["the pools of acme: linux, local"]);
    // A CI token (leases:write) sees the pools too.
    berth
        .as_tenant(&tenant, &["lease", "request", "--pool", "nosuch"])
        .code(1)
        .one_line_error(&["nosuch", "(invalid_request)"])
        .hint(&["the pools of acme: linux, local"]);
    as_admin(&[
        "pool",
        "set",
        "x",
        "--provider",
        "missing",
        "--machine-type",
        "local",
        "--price",
        "1",
    ])
    .code(1)
    .one_line_error(&["missing"])
    .hint(&["the provider accounts of acme: local"]);
}

/// Waits that run out exit 4: `lease wait` on a lease that does not end, and `lease request
/// --wait` at a full cap, whose queued request is then canceled, not left behind.
#[test]
fn wait_timeouts_exit_4() {
    let berth = Berth::start();
    let tenant = berth.tenant("acme", &["--max-active", "1"]);
    let id = berth
        .as_tenant(
            &tenant,
            &["lease", "request", "--pool", "local", "-o", "id"],
        )
        .ok()
        .stdout
        .trim()
        .to_owned();
    berth
        .as_tenant(
            &tenant,
            &["lease", "wait", &id, "--for", "ended", "--timeout", "1s"],
        )
        .code(4)
        .last_line_error(&[&id, "has not ended"]);

    let queued = berth
        .as_tenant(
            &tenant,
            &["lease", "request", "--pool", "local", "--wait", "1s"],
        )
        .code(4);
    assert!(queued.stderr.contains("queued"), "{queued:#?}");
    let left = berth
        .as_tenant(&tenant, &["lease", "list", "--state", "queued", "-o", "id"])
        .ok();
    assert!(
        left.stdout.is_empty(),
        "nothing left in the queue: {left:#?}"
    );
    let canceled = berth
        .as_tenant(
            &tenant,
            &["lease", "list", "--state", "canceled", "-o", "json"],
        )
        .ok()
        .json();
    assert_eq!(canceled["items"].as_array().map(Vec::len), Some(1));
}

/// A server that does not answer (none listens on the port, as when `berth serve` is
/// stopped) is one line naming the URL and a hint asking whether `berth serve` runs there,
/// exit 1; missing settings are usage errors (exit 2) that say where to set them.
#[test]
fn unreachable_server_and_missing_settings() {
    let berth = Berth::start();
    let tenant = berth.tenant("acme", &[]);
    berth
        .as_tenant(&tenant, &["--url", "http://127.0.0.1:1", "lease", "list"])
        .code(1)
        .one_line_error(&["cannot reach berth at http://127.0.0.1:1"])
        .hint(&["is `berth serve` running at http://127.0.0.1:1?"]);
    berth
        .as_tenant(&tenant, &["--url", "not a url", "lease", "list"])
        .code(2);
    run(berth.cmd().args(["--tenant", "acme", "lease", "list"]))
        .code(2)
        .one_line_error(&["BERTH_TOKEN", "berth login"]);
    run(berth
        .cmd()
        .env("BERTH_TOKEN", &tenant.token)
        .args(["lease", "list"]))
    .code(2)
    .one_line_error(&["BERTH_TENANT"]);
}

/// `berth login` checks the token, then saves URL, token and tenant with mode 0600 without
/// printing the token; later commands use the file, the environment overrides it, and flags
/// override the environment. A refused token saves nothing.
#[test]
fn login_saves_settings() {
    let berth = Berth::start();
    let tenant = berth.tenant("acme", &[]);
    berth.tenant("other", &[]);
    let url = berth.server.url.clone();
    let config = berth.config_file();

    run(berth.cmd().env_remove("BERTH_URL").args([
        "login", "--url", &url, "--token", "wrong", "--tenant", "acme",
    ]))
    .code(1)
    .one_line_error(&["(unauthorized)"]);
    assert!(!config.exists(), "a refused token is not saved");

    let login = run(berth.cmd().env_remove("BERTH_URL").args([
        "login",
        "--url",
        &url,
        "--token",
        &tenant.token,
        "--tenant",
        "acme",
    ]))
    .ok();
    assert!(!login.stdout.contains(&tenant.token), "{login:#?}");
    assert_eq!(mode(&config), 0o600);
    assert_eq!(mode(config.parent().expect("dir")), 0o700);
    let text = std::fs::read_to_string(&config).expect("config");
    assert!(text.contains("tenant = \"acme\""), "{text}");

    // The file alone is enough.
    run(berth.cmd().env_remove("BERTH_URL").args(["lease", "list"])).ok();
    // The environment wins over the file: the acme token gets 404 for tenant `other`.
    run(berth
        .cmd()
        .env("BERTH_TENANT", "other")
        .args(["lease", "list"]))
    .code(1)
    .one_line_error(&["(not_found)"]);
    // The flag wins over the environment.
    run(berth
        .cmd()
        .env("BERTH_TENANT", "other")
        .args(["--tenant", "acme", "lease", "list"]))
    .ok();

    // The admin token logs in without a tenant; a tenant token without one is told to add it.
    run(berth.cmd().args([
        "--config-file",
        "admin.toml",
        "login",
        "--token",
        &berth.admin,
    ]))
    .ok();
    assert_eq!(mode(&berth.dir.path().join("admin.toml")), 0o600);
    run(berth
        .cmd()
        .args(["--config-file", "admin.toml", "tenant", "list", "-o", "id"]))
    .ok();
    run(berth.cmd().args([
        "--config-file",
        "tenant.toml",
        "login",
        "--token",
        &tenant.token,
    ]))
    .code(2)
    .one_line_error(&["--tenant"]);
}

/// On a fresh data directory `berth serve` says where the admin token is and what to run
/// next; a restart on the same directory does not repeat it.
#[test]
fn serve_first_run_points_to_the_admin_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = support::Server::start(dir.path(), &[]);
    // The message waits for the token file, which the server makes just before it announces
    // its address: under load it may come on either side of the address line.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut early = server.early.iter().cloned();
    let line = loop {
        let line = early.next().unwrap_or_else(|| {
            let remaining = deadline.saturating_duration_since(std::time::Instant::now());
            server
                .log
                .recv_timeout(remaining)
                .expect("the first-run message within 30 s")
        });
        if line.contains("admin_token_file") {
            break line;
        }
    };
    let event: serde_json::Value = serde_json::from_str(&line).expect("a JSON log line");
    let path = event["fields"]["admin_token_file"]
        .as_str()
        .expect("the path");
    assert!(path.ends_with("admin-token") && std::path::Path::new(path).exists());
    assert_eq!(
        mode(std::path::Path::new(path)),
        0o600,
        "the admin token file is 0600"
    );
    assert!(
        event["fields"]["next"]
            .as_str()
            .is_some_and(|next| next.contains("berth quickstart"))
    );
    assert!(server.terminate().success());

    // Restart, stop, and read the whole log (until the reader thread sees the end of it).
    let mut again = support::Server::start(dir.path(), &[]);
    support::signal(&again.child, "TERM");
    assert!(support::wait_bounded(&mut again.child).success());
    let mut lines = again.early.clone();
    while let Ok(line) = again.log.recv_timeout(Duration::from_secs(30)) {
        lines.push(line);
    }
    assert!(
        !lines.iter().any(|l| l.contains("admin_token_file")),
        "only the first start says it: {lines:#?}"
    );
}

/// `berth quickstart` next to the data directory sets up `demo` and saves its token like
/// `berth login`; a second run changes nothing and reuses the token; a config file set up for
/// something else is left alone (export lines instead); without an admin token or a server
/// it says what to do.
#[test]
fn quickstart_is_idempotent_and_careful() {
    let berth = Berth::start();
    berth.track("demo");
    run(berth.cmd().args(["quickstart"]))
        .code(2)
        .one_line_error(&["admin-token", "--data-dir"]);
    run(berth.cmd().args([
        "--url",
        "http://127.0.0.1:1",
        "quickstart",
        "--data-dir",
        "data",
    ]))
    .code(1)
    .one_line_error(&["cannot reach berth", "berth serve"]);

    let first = run(berth
        .cmd()
        .args(["quickstart", "--data-dir", "data", "-o", "json"]))
    .ok()
    .json();
    assert_eq!(first["tenant_created"], true);
    assert_eq!(first["pool"]["name"], "local");
    assert!(first["token"].is_null(), "a saved token is not printed");
    let config = berth.config_file();
    assert_eq!(first["config_path"], config.display().to_string());
    assert_eq!(mode(&config), 0o600);
    let saved = std::fs::read_to_string(&config).expect("config");

    let again = run(berth.cmd().args(["quickstart", "--data-dir", "data"])).ok();
    assert!(again.stdout.contains("demo (already there)"), "{again:#?}");
    assert_eq!(
        std::fs::read_to_string(&config).expect("config"),
        saved,
        "the working token is reused"
    );
    let id = run(berth
        .cmd()
        .args(["lease", "request", "--pool", "local", "--wait", "-o", "id"]))
    .ok()
    .stdout;
    run(berth.cmd().args(["lease", "release", id.trim(), "--wait"])).ok();

    let other = berth.dir.path().join("other.toml");
    let foreign = format!("url = \"{}\"\ntenant = \"acme\"\n", berth.server.url);
    std::fs::write(&other, &foreign).expect("write");
    let exports = run(berth.cmd().args([
        "--config-file",
        "other.toml",
        "quickstart",
        "--data-dir",
        "data",
    ]))
    .ok();
    assert!(
        exports.stdout.contains("export BERTH_TOKEN="),
        "{exports:#?}"
    );
    assert!(exports.stdout.contains("left alone"), "{exports:#?}");
    assert_eq!(std::fs::read_to_string(&other).expect("read"), foreign);
}

/// The help pages people reach for first have an "Examples:" block; the global options are
/// documented once, in `berth --help`, and each subcommand's help points there instead of
/// repeating them; plain `berth` and `berth --help` open with the same description.
#[test]
fn help_pages_have_examples_and_global_options_once() {
    let help = |args: &[&str]| run(support::berth().env_clear().args(args));
    for page in [
        &["lease", "request"][..],
        &["lease", "wait"],
        &["pool", "set"],
        &["provider", "set"],
        &["watch"],
        &["webhook", "set"],
        &["github", "set"],
    ] {
        let shown = help(&[page, &["--help"]].concat()).ok();
        assert!(
            shown.stdout.contains("Examples:\n  berth "),
            "{page:?}: {shown:#?}"
        );
        assert!(
            !shown.stdout.contains("--config-file <PATH>"),
            "{page:?}: {shown:#?}"
        );
        assert!(
            shown.stdout.contains("see `berth --help`"),
            "{page:?}: {shown:#?}"
        );
        let short = help(&[page, &["-h"]].concat()).ok();
        assert!(short.stdout.contains("Examples:"), "{page:?}: {short:#?}");
    }
    let top = help(&["--help"]).ok();
    assert_eq!(
        top.stdout.matches("--config-file <PATH>").count(),
        1,
        "{top:#?}"
    );
    for flag in [
        "--url <URL>",
        "--token <TOKEN>",
        "--tenant <NAME>",
        "--output <FORMAT>",
    ] {
        assert!(top.stdout.contains(flag), "{flag}: {top:#?}");
    }
    // Global options still work after the subcommand, where the tour writes `-o id`.
    help(&["lease", "list", "--tenant", "x", "-o", "id", "--help"]).ok();

    let lease = help(&["lease", "--help"]).ok();
    assert!(
        !lease.stdout.contains("watch"),
        "no `lease watch`: {lease:#?}"
    );
    let request = help(&["lease", "request", "--help"]).ok();
    assert!(
        !request.stdout.contains("printed as granted"),
        "{request:#?}"
    );
    let wait = help(&["lease", "wait", "--help"]).ok();
    assert!(!wait.stdout.contains("or until it has ended"), "{wait:#?}");

    let bare = help(&[]).code(2);
    let first_line = |text: &str| text.lines().next().unwrap_or_default().to_owned();
    assert_eq!(
        first_line(&bare.stderr),
        first_line(&top.stdout),
        "{bare:#?}"
    );
    assert_eq!(
        first_line(&help(&["-h"]).ok().stdout),
        first_line(&top.stdout)
    );
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

/// `berth serve`'s text logs carry no ANSI escape codes when stderr is not a terminal (a log
/// file, a journal), with or without `NO_COLOR`.
#[test]
fn serve_logs_have_no_colours_off_a_terminal() {
    use std::io::BufRead as _;
    for no_color in [None, Some("1")] {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut command = support::berth();
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("data"))
            .env_remove("NO_COLOR")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        if let Some(value) = no_color {
            command.env("NO_COLOR", value);
        }
        let mut child = command.spawn().expect("berth starts");
        let stderr = child.stderr.take().expect("piped");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut seen = Vec::new();
        while !seen
            .iter()
            .any(|line: &String| line.contains("berth is serving"))
        {
            let line = lines
                .recv_timeout(Duration::from_secs(60))
                .expect("berth logs that it serves within 60 s");
            seen.push(line);
        }
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            seen.iter().all(|line| !line.contains('\x1b')),
            "NO_COLOR={no_color:?}: {seen:#?}"
        );
        assert!(
            seen.iter().any(|line| line.contains("INFO")),
            "text logs: {seen:#?}"
        );
    }
}
