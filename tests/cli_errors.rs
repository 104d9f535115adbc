//! The `berth` client's failures as a person or a CI script meets them: the real binary
//! against a real `berth serve` on 127.0.0.1. Each is checked by exit code (1 error, 2 usage,
//! 3 cap reached, 4 timed out) and by the one line on stderr.

#[path = "support/cli.rs"]
mod cli_support;
mod support;

use cli_support::{Berth, run};

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
