//! The first run of `berth`: `login` saving settings, `serve`'s first start pointing to the
//! admin token, `quickstart` (idempotent, careful with what exists), help pages with examples,
//! and `serve`'s logs off a terminal — the real binary, 127.0.0.1 only.

#[path = "support/cli.rs"]
mod cli_support;
mod support;

use std::time::Duration;

use cli_support::{Berth, mode, run};

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
