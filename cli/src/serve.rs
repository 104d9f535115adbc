//! `berth serve`.

use std::path::PathBuf;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

/// The flags of `berth serve` (every one also an environment variable).
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    config: broker::Config,
}

/// Runs the server until SIGINT or SIGTERM; a second signal exits at once.
pub fn run(args: Args) -> anyhow::Result<()> {
    let config = args.config;
    init_tracing(&config.log_format);
    // Everything berth writes (databases, keys, logs of runners) is its own: no group or
    // world bits, whatever umask it was started with.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    // A secret on the command line is in /proc/<pid>/cmdline, which every user can read.
    for flag in ["--admin-token", "--master-key"] {
        if std::env::args().any(|arg| arg == flag || arg.starts_with(&format!("{flag}="))) {
            tracing::warn!(
                flag,
                "a secret given as a flag is visible to every user of this machine (ps, \
                 /proc/<pid>/cmdline); use its environment variable or the file in the data \
                 directory instead"
            );
        }
    }
    // A fresh data directory: berth is about to create the admin token. Say where it is and
    // what to do next once it exists.
    let admin_token_file = (config.admin_token.is_none()
        && !config.data_dir.join("admin-token").exists())
    .then(|| config.data_dir.join("admin-token"));
    let text_logs = config.log_format != "json";
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("berth")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("listening on {}", config.listen))?;
        let shutdown = CancellationToken::new();
        // Installed before the server announces its address: a supervisor (or a test) that
        // sends SIGTERM as soon as it reads the address gets a graceful stop, not the default
        // action of a signal nobody listens to yet.
        tokio::spawn(watch_signals(signal_streams(), shutdown.clone()));
        if let Some(path) = admin_token_file {
            let addr = listener.local_addr().context("reading the bound address")?;
            let mut next = String::from("quickstart");
            if addr.to_string() != "127.0.0.1:8080" {
                next.push_str(&format!(" --url http://{addr}"));
            }
            if config.data_dir != std::path::Path::new("./berth-data") {
                next.push_str(&format!(" --data-dir {}", config.data_dir.display()));
            }
            tokio::spawn(first_run(path, addr, next, text_logs));
        }
        broker::server::run(listener, config, shutdown).await
    })
}

/// `berth rotate-master-key`: re-seals every tenant's secrets under a new master key, with the
/// server stopped (see `broker::server::rotate_master_key`).
pub fn rotate_master_key(args: Args) -> anyhow::Result<()> {
    let config = args.config;
    init_tracing(&config.log_format);
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let report = runtime.block_on(broker::server::rotate_master_key(&config))?;
    println!(
        "{} {} tenants: their secrets are sealed under the new master key.",
        if report.resumed {
            "Resumed; re-sealed"
        } else {
            "Re-sealed"
        },
        report.tenants
    );
    if report.forgot_previous {
        println!("The previous key is forgotten (master.key.previous removed).");
    } else {
        println!(
            "Unset BERTH_PREVIOUS_MASTER_KEY before the next start: the old key is no longer needed."
        );
    }
    if report.active_leases > 0 {
        println!(
            "{} active leases were granted under the old key: their runners can no longer call back \
             (ready, release); the leases still end by release, TTL or idle timeout.",
            report.active_leases
        );
    }
    Ok(())
}

/// `berth rotate-admin-token`.
#[derive(Debug, clap::Args)]
pub struct RotateAdminToken {
    /// The data directory whose `admin-token` file is replaced.
    #[arg(long, env = "BERTH_DATA_DIR", default_value = "./berth-data")]
    data_dir: PathBuf,
}

/// Writes a new admin token to `<data-dir>/admin-token` (atomically, mode 0600) and prints it.
/// A running berth reads the file again within seconds; the old token then stops working.
pub fn rotate_admin_token(args: RotateAdminToken) -> anyhow::Result<()> {
    if std::env::var_os("BERTH_ADMIN_TOKEN").is_some() {
        anyhow::bail!(
            "BERTH_ADMIN_TOKEN is set: berth takes the admin token from it, not from the file; \
             change it there and restart berth"
        );
    }
    let path = args.data_dir.join("admin-token");
    if !path.exists() {
        anyhow::bail!(
            "{} does not exist: is {} a berth data directory?",
            path.display(),
            args.data_dir.display()
        );
    }
    let token = broker::secrets::new_token();
    broker::secrets::replace_secret_file(&path, &token)?;
    println!("{token}");
    eprintln!(
        "The admin token in {} is replaced; a running berth accepts only this one within seconds.",
        path.display()
    );
    Ok(())
}

/// On a fresh data directory, once the admin token file exists: where it is and what to run
/// next. People (text logs) get a short block on stderr; log pipelines (JSON) get one event.
async fn first_run(path: PathBuf, addr: std::net::SocketAddr, next: String, text_logs: bool) {
    for _ in 0..600 {
        if path.exists() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    if !path.exists() {
        return;
    }
    if text_logs {
        eprintln!(
            "\n  berth is running at http://{addr} on a fresh data directory.\n  \
             The admin token is in {} (mode 0600; it is the operator's key).\n  \
             Next, in another terminal in this directory: berth {next}\n  \
             (or: cargo run --release -- {next})\n",
            path.display()
        );
    } else {
        tracing::info!(
            admin_token_file = %path.display(),
            next = %format!("berth {next}"),
            "first start: the admin token is in this file; run `next` to set up a demo tenant"
        );
    }
}

type SignalStreams = Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>;

/// SIGTERM and SIGINT listeners, installed at once (inside the runtime); `None` if the
/// operating system refused them.
fn signal_streams() -> SignalStreams {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(term), Ok(int)) => Some((term, int)),
        _ => None,
    }
}

/// The first SIGINT/SIGTERM starts a graceful shutdown; the second exits immediately.
async fn watch_signals(streams: SignalStreams, shutdown: CancellationToken) {
    let Some((mut term, mut int)) = streams else {
        tracing::error!("cannot install signal handlers; stop berth with SIGKILL");
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("signal received: draining (send it again to exit at once)");
    shutdown.cancel();
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::warn!("second signal: exiting now");
    std::process::exit(130);
}

/// Logs to stderr as text (people) or JSON (log pipelines). Text is coloured only on a
/// terminal, and never when `NO_COLOR` is set (no-color.org): escape codes in a log file or a
/// journal are noise.
///
/// What is logged is `BERTH_LOG` if it is set, else `RUST_LOG`, else `info` (both take
/// `tracing` directives such as `info,berth::access=off`): `BERTH_LOG` wins, so a unit or
/// container that sets it is not changed by a `RUST_LOG` meant for another program.
fn init_tracing(format: &str) {
    use std::io::IsTerminal as _;
    use tracing_subscriber::EnvFilter;
    let filter = ["BERTH_LOG", "RUST_LOG"]
        .into_iter()
        .find_map(|var| {
            std::env::var(var)
                .ok()
                .filter(|value| !value.trim().is_empty())
                .and_then(|value| EnvFilter::try_new(value).ok())
        })
        .unwrap_or_else(|| EnvFilter::new("info"));
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}
