//! `berth serve`: open the data directory, serve the API, shut down cleanly.

use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::Config;
use crate::api;
use crate::objects::{self, Runtime};
use crate::secrets::{self, Keys};
use crate::tenant::{self, TenantBroker, Timing};

/// Serves berth on `listener` until `shutdown` is cancelled, then drains: `/readyz` answers 503
/// at once while everything else is served for `config.drain_delay`; then the listener stops
/// accepting, long polls answer, requests in flight finish, every object finishes its current
/// event, commits and closes its database (waiting at most `config.shutdown_grace`).
///
/// `main` and the end-to-end tests start the server the same way: with a listener that is
/// already bound (tests bind `127.0.0.1:0`).
///
/// # Errors
///
/// The data directory cannot be opened (or another berth holds it), a secret file is
/// unreadable or readable by others, or serving fails.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    run_with_clock(listener, config, shutdown, Arc::new(objects::SystemClock)).await
}

/// [`run`] with an injected clock: tests drive lease deadlines with a `ManualClock`.
///
/// # Errors
///
/// As [`run`].
pub async fn run_with_clock(
    listener: TcpListener,
    config: Config,
    shutdown: CancellationToken,
    clock: Arc<dyn objects::Clock>,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    let mut options = objects::Options::new(&config.data_dir);
    options.clock = clock;
    options.object_idle = config.object_idle;
    options.max_live_objects = config.max_live_objects;
    options.inbox_capacity = config.inbox_capacity;
    options.max_batch = config.max_batch;
    options.durability = config.durability;
    let runtime = Runtime::open(options).await?;
    let runners_dir = prepare_dirs(&config)?;
    let runner_identity = runner_identity(&config)?;

    let keys = Keys::load_or_create(&config.data_dir, config.master_key.as_deref())?;
    let admin_token = match &config.admin_token {
        Some(token) => token.clone(),
        None => {
            let path = config.data_dir.join("admin-token");
            let token = secrets::read_or_create_secret_file(&path, secrets::new_token)?;
            tracing::info!(path = %path.display(), "the admin token is in this file (mode 0600)");
            token
        }
    };
    let public_url = config
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{addr}"))
        .trim_end_matches('/')
        .to_owned();
    let tenant_metrics = Arc::new(tenant::Metrics::default());
    let env = Arc::new(tenant::Env {
        keys,
        providers: providers::Environment {
            data_dir: config.data_dir.clone(),
            runners_dir,
            allow_private_network: config.allow_private_providers,
            enable_fake: config.enable_fake,
            runner_identity,
            outbound_proxy: config.outbound_proxy.clone(),
        },
        public_url,
        timing: Timing {
            create_timeout: config.provider_timeout,
            destroy_timeout: config.provider_timeout,
            retry_base: config.provider_retry_base,
            ready_timeout: config.ready_timeout,
            reconcile_interval: config.reconcile_interval,
            ..Timing::default()
        },
        metrics: tenant_metrics.clone(),
        webhooks: Arc::new(tenant::WebhookSender::new(
            config.allow_private_webhooks,
            config.outbound_proxy.as_ref(),
            usize::from(config.webhook_concurrency),
        )),
    });
    let tenants = runtime.namespace::<TenantBroker>(env);
    let stopping = CancellationToken::new();
    tokio::spawn({
        let (draining, stopping, delay) = (shutdown.clone(), stopping.clone(), config.drain_delay);
        async move {
            draining.cancelled().await;
            if !delay.is_zero() {
                tracing::info!(
                    ?delay,
                    "draining: /readyz answers 503, still serving until the drain delay ends"
                );
                tokio::time::sleep(delay).await;
            }
            stopping.cancel();
        }
    });
    let state = api::State {
        runtime: runtime.clone(),
        tenants,
        auth: Arc::new(api::Auth::new(&admin_token)),
        http_metrics: Arc::new(api::HttpMetrics::default()),
        tenant_metrics,
        draining: shutdown.clone(),
        stopping: stopping.clone(),
        creating: Arc::new(tokio::sync::Mutex::new(())),
    };
    let app = api::router(state);

    tracing::info!(%addr, data_dir = %config.data_dir.display(), "berth is serving");
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stopping.cancelled().await })
        .await
        .context("serving HTTP");
    tracing::info!("shutting down: closing objects");
    runtime.shutdown(config.shutdown_grace).await;
    served?;
    tracing::info!("stopped");
    Ok(())
}

/// Makes the data directory private (0700: nothing in it is for anyone but berth) and the
/// runners directory passable (0711: runners reach their own work directory, list nothing).
/// Returns the runners directory.
///
/// # Errors
///
/// The runners directory lies in the data directory or the other way round (a runner could
/// then reach berth's files, or a tenant's runners land among them), or either cannot be set
/// up.
fn prepare_dirs(config: &Config) -> anyhow::Result<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let runners_dir = config.runners_dir();
    let data_dir = std::path::absolute(&config.data_dir)?;
    if providers::lies_within(&runners_dir, &data_dir)
        || providers::lies_within(&data_dir, &runners_dir)
    {
        anyhow::bail!(
            "the runners directory {} and the data directory {} must not lie in one another: \
             runners must not reach berth's files; set --runners-dir elsewhere",
            runners_dir.display(),
            data_dir.display()
        );
    }
    std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("making {} private", data_dir.display()))?;
    if !runners_dir.exists() {
        std::fs::create_dir_all(&runners_dir)
            .with_context(|| format!("creating the runners directory {}", runners_dir.display()))?;
        std::fs::set_permissions(&runners_dir, std::fs::Permissions::from_mode(0o711))
            .with_context(|| format!("setting the mode of {}", runners_dir.display()))?;
    }
    Ok(runners_dir)
}

/// Whom `process` runners run as, from `--runner-user` / `--runner-uids`, and the warning an
/// operator must see when runners are not kept from berth's files or from each other.
///
/// # Errors
///
/// Either flag without root (only root can start processes as other users), an unknown user,
/// root itself, or a malformed range.
fn runner_identity(config: &Config) -> anyhow::Result<Option<providers::process::Identity>> {
    use providers::process::Identity;
    let root = nix::unistd::geteuid().is_root();
    let identity = match (&config.runner_user, &config.runner_uids) {
        (Some(_), _) | (_, Some(_)) if !root => anyhow::bail!(
            "--runner-user and --runner-uids need berth to run as root (to start runners as \
             other users); without root, runners run as berth's own user"
        ),
        (Some(user), _) => Some(resolve_user(user)?),
        (None, Some(range)) => Some(Identity::parse_range(range).map_err(anyhow::Error::msg)?),
        (None, None) => None,
    };
    match &identity {
        None if root => tracing::warn!(
            "process runners run as root, like berth: a CI job on one can read the data \
             directory, the admin token and the master key; start berth with --runner-uids \
             (or --runner-user)"
        ),
        None => tracing::warn!(
            "process runners run as berth's own user: a CI job on one can read the data \
             directory, the admin token and the master key; run berth as root with \
             --runner-uids to keep runners out (see SECURITY.md)"
        ),
        Some(Identity::User { uid, .. }) => tracing::warn!(
            uid,
            "process runners share one user: a runner can read another's environment and \
             files; --runner-uids gives each runner a user of its own"
        ),
        Some(Identity::Range { first, last }) => {
            tracing::info!(first, last, "each process runner runs as a uid of its own")
        }
    }
    Ok(identity)
}

/// A user name or uid as an identity: its uid and primary group (the uid's number as the gid
/// for a uid with no account).
fn resolve_user(user: &str) -> anyhow::Result<providers::process::Identity> {
    use nix::unistd::{Uid, User};
    let found = match user.parse::<u32>() {
        Ok(uid) => User::from_uid(Uid::from_raw(uid))
            .ok()
            .flatten()
            .map_or((uid, uid), |u| (u.uid.as_raw(), u.gid.as_raw())),
        Err(_) => {
            let account = User::from_name(user)
                .ok()
                .flatten()
                .with_context(|| format!("--runner-user: no user `{user}` on this machine"))?;
            (account.uid.as_raw(), account.gid.as_raw())
        }
    };
    if found.0 == 0 {
        anyhow::bail!("--runner-user must not be root: runners would read berth's files");
    }
    Ok(providers::process::Identity::User {
        uid: found.0,
        gid: found.1,
    })
}
