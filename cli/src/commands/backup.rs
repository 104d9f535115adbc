//! `berth backup` (against a running server, admin token; `--verify` checks a backup on this
//! machine) and `berth restore` (offline into a new data directory, or one tenant online).

use std::path::PathBuf;
use std::time::Duration;

use broker::objects::backup;
use broker::wire::{Backup, BackupRequest, TenantRestoreRequest, TenantRestored};
use reqwest::Method;

use super::Context;
use crate::failure;
use crate::output::{self, Fields, Format};

/// The longest a backup or a tenant's restore may take before the client stops waiting (the
/// server finishes it anyway).
const BACKUP_TIMEOUT: Duration = Duration::from_secs(6 * 3600);

/// `berth backup`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  berth backup --to nightly                 # <server's --backup-dir>/nightly
  berth backup --verify /var/lib/berth-backups/nightly")]
pub struct BackupArgs {
    /// The new backup directory, on the server's machine, inside its --backup-dir (relative to
    /// it, or absolute within it). Default: berth-<UTC time>.
    #[arg(long, value_name = "DIR", conflicts_with = "verify")]
    to: Option<String>,
    /// Put the master key in the backup (master.key, mode 0600). Without it, restoring needs
    /// the key, which the backup names by fingerprint.
    #[arg(long, conflicts_with = "verify")]
    include_master_key: bool,
    /// Check the backup in DIR on this machine instead (every file's size and SHA-256
    /// against the manifest, and PRAGMA integrity_check of every database); no server.
    #[arg(long, value_name = "DIR")]
    verify: Option<PathBuf>,
}

/// `berth restore`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  berth restore --from /var/lib/berth-backups/nightly --data-dir /var/lib/berth/data   # berth stopped
  berth restore --tenant acme --from nightly                                         # berth running")]
pub struct RestoreArgs {
    /// The backup. With --data-dir: a directory on this machine. With --tenant: a directory
    /// inside the server's --backup-dir (relative to it, or absolute within it).
    #[arg(long, value_name = "DIR")]
    from: String,
    /// Offline: restore the whole backup into this new (or empty) data directory, with berth
    /// stopped; then start berth on it. Without it the restore is online: the tenant named by
    /// the global --tenant (on this command line) gets the backup's state on the running
    /// server, and its runners are reconciled with the provider afterwards.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

/// Runs `berth backup`.
///
/// # Errors
///
/// The server refuses or cannot be reached; with `--verify`, the backup is not sound.
pub async fn backup(ctx: &Context, args: BackupArgs) -> anyhow::Result<()> {
    if let Some(dir) = args.verify {
        return verify(ctx, &dir).await;
    }
    let api = ctx.api()?;
    let request = BackupRequest {
        to: args.to,
        include_master_key: args.include_master_key,
    };
    let answer: Backup = api
        .send(
            Method::POST,
            &["v1", "admin", "backups"],
            &[],
            Some(&request),
            Some(BACKUP_TIMEOUT),
            &[],
        )
        .await?
        .body;
    if ctx.format() == Format::Json {
        return output::json(&answer);
    }
    let mut fields = Fields::new();
    fields
        .add("path", &answer.path)
        .add("started", output::time(&answer.started_at))
        .add("objects", answer.objects.to_string())
        .add("bytes", answer.bytes.to_string())
        .add(
            "master key",
            format!(
                "{} ({})",
                answer.master_key_fingerprint,
                if answer.master_key_included {
                    "included"
                } else {
                    "not included: keep it safe, a restore needs it"
                }
            ),
        );
    print!("{}", fields.render());
    Ok(())
}

async fn verify(ctx: &Context, dir: &std::path::Path) -> anyhow::Result<()> {
    let (manifest, verified) = backup::verify(dir).await?;
    if ctx.format() == Format::Json {
        output::json(&verified)?;
    } else {
        for problem in &verified.problems {
            eprintln!("problem: {problem}");
        }
    }
    if !verified.problems.is_empty() {
        anyhow::bail!(
            "the backup in {} is not sound: {} problems",
            dir.display(),
            verified.problems.len()
        );
    }
    if ctx.format() != Format::Json {
        println!(
            "ok: {} files, {} bytes, taken {} by berth {}; master key {} ({})",
            verified.files,
            verified.bytes,
            manifest.started_at,
            manifest.berth_version,
            manifest.master_key.fingerprint,
            if manifest.master_key.included {
                "included"
            } else {
                "not included"
            }
        );
    }
    Ok(())
}

/// Runs `berth restore`.
///
/// # Errors
///
/// The backup is not sound, the data directory is not empty, the server refuses.
pub async fn restore(ctx: &Context, args: RestoreArgs) -> anyhow::Result<()> {
    // An online restore replaces a tenant's state: the tenant must be named on this command
    // line, never taken from BERTH_TENANT or the config file.
    let tenant_flag = std::env::args().any(|a| a == "--tenant" || a.starts_with("--tenant="));
    match (args.data_dir, tenant_flag) {
        (Some(data_dir), false) => offline(ctx, std::path::Path::new(&args.from), &data_dir).await,
        (None, true) => online(ctx, args.from, ctx.tenant(None)?).await,
        _ => Err(failure::usage(
            "give either --data-dir DIR (offline, berth stopped) or --tenant NAME (online)",
        )),
    }
}

async fn offline(
    ctx: &Context,
    from: &std::path::Path,
    data_dir: &std::path::Path,
) -> anyhow::Result<()> {
    let restored = backup::restore(from, data_dir).await?;
    if ctx.format() == Format::Json {
        return output::json(&restored);
    }
    println!(
        "Restored {} files ({} bytes) into {}.",
        restored.files,
        restored.bytes,
        data_dir.display()
    );
    let fingerprint = &restored.master_key.fingerprint;
    if restored.master_key.included {
        println!("The master key ({fingerprint}) is restored too (master.key).");
    } else {
        println!(
            "The backup's secrets are sealed under the master key with fingerprint {fingerprint}, \
             which the backup does not hold: put that key in {} (mode 0600) or set \
             BERTH_MASTER_KEY before starting berth (berth refuses to start with another key).",
            data_dir.join("master.key").display()
        );
    }
    println!(
        "A new admin token is made on the first start (admin tokens are not in backups). Runners \
         created after the backup was taken are not known to the restored berth: check the \
         providers for them."
    );
    Ok(())
}

async fn online(ctx: &Context, from: String, tenant: String) -> anyhow::Result<()> {
    let api = ctx.api()?;
    let request = TenantRestoreRequest { from, tenant };
    let answer: TenantRestored = api
        .send(
            Method::POST,
            &["v1", "admin", "restores"],
            &[],
            Some(&request),
            Some(BACKUP_TIMEOUT),
            &[],
        )
        .await?
        .body;
    if ctx.format() == Format::Json {
        return output::json(&answer);
    }
    println!(
        "Tenant {} restored to its state of {}; {} runners it no longer owns are being destroyed.",
        answer.tenant,
        output::time(&answer.backup_started_at),
        answer.runners_destroying
    );
    if !answer.runners_left.is_empty() {
        println!(
            "Remove by hand the runners of these leases (their provider account is not in the backup): {}",
            answer.runners_left.join(", ")
        );
    }
    Ok(())
}
