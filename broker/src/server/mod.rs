//! `berth serve`: open the data directory, serve the API, shut down cleanly.
//!
//! `transport` accepts the connections and bounds them: header, body and keep-alive timeouts,
//! and a limit on open connections. `host` sets up what berth keeps on its machine: a private
//! data directory, the runners directory beside it, and whom process runners run as.
//!
//! Every data directory has an **installation id**, made on the first start and kept in its
//! directory database ([`installation_id`]): every runner berth creates carries it, and
//! providers list and destroy only runners that carry it (or none), so two berths sharing a
//! cloud project or a runners directory never reconcile away each other's runners (see
//! "Ownership" in the `providers` crate docs).

mod backups;
mod cluster;
mod exits;
mod host;
mod rotate;
mod transport;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::Config;
use crate::api;
use crate::objects::{self, Runtime};
use crate::secrets::{self, Keys};
use crate::tenant::{self, TenantBroker, Timing};

pub use rotate::{Rotation, rotate_master_key};
pub use transport::BodyError;
use transport::Limits;

/// Serves berth on `listener` until `shutdown` is cancelled, then drains: `/readyz` answers 503
/// at once while everything else is served for `config.drain_delay`; then the listener stops
/// accepting, long polls answer, requests in flight finish, every object finishes its current
/// event, commits and closes its database (waiting at most `config.shutdown_grace`).
///
/// Connections are bounded by the config's header, body and keep-alive timeouts and its
/// connection limit (see `server/transport.rs`).
///
/// `main` and the end-to-end tests start the server the same way: with a listener that is
/// already bound (tests bind `127.0.0.1:0`).
///
/// # Errors
///
/// The data directory cannot be opened (or another berth holds it), or a secret file is
/// unreadable or readable by others. Once serving, it returns only after a shutdown (a failed
/// accept is logged and retried).
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
    let cluster = cluster::join(&config, addr).await?;
    let mut options = runtime_options(&config, clock);
    options.cluster.clone_from(&cluster);
    let runtime = Runtime::open(options).await?;
    let installation_id = installation_id(&runtime).await?;
    let runners_dir = host::prepare_dirs(&config)?;
    let runner_identity = host::runner_identity(&config)?;

    let restored_key = runtime.directory().key(
        objects::backup::RESTORED_KIND,
        objects::backup::RESTORED_KEY_FINGERPRINT,
    );
    if let Some(expected) = &restored_key
        && config.master_key.is_none()
        && !config.data_dir.join(secrets::MASTER_KEY_FILE).exists()
    {
        // Without this, a new key would be made and every sealed secret lost.
        anyhow::bail!(
            "this data directory was restored from a backup whose secrets are sealed under the \
             master key with fingerprint {expected}: put that key in {} (mode 0600) or set \
             BERTH_MASTER_KEY",
            config.data_dir.join(secrets::MASTER_KEY_FILE).display()
        );
    }
    let keys = Keys::load_or_create(&config.data_dir, config.master_key.as_deref())?;
    if let Some(expected) = restored_key {
        if keys.fingerprint() != expected {
            anyhow::bail!(
                "this data directory was restored from a backup whose secrets are sealed under \
                 the master key with fingerprint {expected}, not this one ({}): give berth that key",
                keys.fingerprint()
            );
        }
        runtime
            .directory()
            .delete_key(
                objects::backup::RESTORED_KIND,
                objects::backup::RESTORED_KEY_FINGERPRINT,
            )
            .await?;
    }
    let backups = Arc::new(api::admin::Backups {
        dir: config.backup_dir(),
        data_dir: std::path::absolute(&config.data_dir)?,
        fingerprint: keys.fingerprint(),
        master_key: config.master_key.clone(),
        running: tokio::sync::Mutex::new(()),
    });
    let admin_token = match &config.admin_token {
        Some(token) => token.clone(),
        None => {
            let path = config.data_dir.join("admin-token");
            let token = secrets::read_or_create_secret_file(&path, secrets::new_token)?;
            tracing::info!(path = %path.display(), "the admin token is in this file (mode 0600)");
            token
        }
    };
    if cluster.is_some() {
        cluster::check_shared_secrets(&runtime, &keys, &admin_token).await?;
    }
    let public_url = config
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{addr}"))
        .trim_end_matches('/')
        .to_owned();
    let tenant_metrics = Arc::new(tenant::Metrics {
        families: Arc::new(crate::metrics::Families::new(config.metrics_per_tenant)),
        ..tenant::Metrics::default()
    });
    let (runner_exits, exit_reports) = providers::exits::Exits::channel();
    let env = Arc::new(tenant_env(
        &config,
        keys,
        Host {
            runners_dir,
            runner_identity,
            installation_id: installation_id.clone(),
            runner_exits: Some(runner_exits.clone()),
        },
        public_url,
        tenant_metrics.clone(),
    ));
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
    let http_metrics = Arc::new(api::HttpMetrics::default());
    let auth = Arc::new(api::Auth::new(&admin_token));
    if config.admin_token.is_none() {
        tokio::spawn(watch_admin_token(
            config.data_dir.join("admin-token"),
            auth.clone(),
            stopping.clone(),
        ));
    }
    // Deadlines first: the edge admits fewer requests into the objects while alarms run late.
    let admission = Arc::new(api::admission::Admission::default());
    tokio::spawn(api::admission::steer(
        admission.clone(),
        runtime.metrics().clone(),
        stopping.clone(),
    ));
    let state = api::State {
        admission,
        runtime: runtime.clone(),
        tenants,
        auth: auth.clone(),
        http_metrics: http_metrics.clone(),
        tenant_metrics,
        draining: shutdown.clone(),
        stopping: stopping.clone(),
        creating: Arc::default(),
        backups: backups.clone(),
        forwarder: match cluster {
            Some(cluster) => Some(Arc::new(api::forward::Forwarder::new(cluster)?)),
            None => None,
        },
    };
    exits::route(state.clone(), exit_reports);
    if let Some(every) = config.backup_every {
        if state.forwarder.is_some() {
            tracing::warn!(
                "--backup-every is ignored in cluster mode: back up PostgreSQL with pg_dump"
            );
        } else {
            tokio::spawn(backups::schedule(
                backups,
                runtime.clone(),
                every,
                config.backup_keep,
                stopping.clone(),
            ));
        }
    }
    let app = api::router(state);

    let limits = Limits {
        header_timeout: config.header_timeout,
        body_timeout: config.body_timeout,
        keepalive_timeout: config.keepalive_timeout,
        max_connections: config.max_connections,
    };

    tracing::info!(%addr, data_dir = %config.data_dir.display(), %installation_id, "berth is serving");
    transport::serve(listener, app, limits, http_metrics, stopping).await;
    exits::at_shutdown(&runner_exits);
    tracing::info!("shutting down: closing objects");
    runtime.shutdown(config.shutdown_grace).await;
    tracing::info!("stopped");
    Ok(())
}

/// Directory kind of the installation's own keys.
const INSTALLATION_KIND: &str = "installation";
/// The key of the installation id under [`INSTALLATION_KIND`].
const INSTALLATION_ID_KEY: &str = "id";

/// The installation id of the data directory `runtime` opened: read from its directory
/// database, or made (32 lowercase hex digits, random) and committed there on the first start,
/// before any runner can be created. Logged at every start, so an operator can tell which
/// berth made a runner.
///
/// # Errors
///
/// The directory database could not commit a new id.
async fn installation_id(runtime: &Runtime) -> anyhow::Result<String> {
    let directory = runtime.directory();
    if let Some(id) = directory.key(INSTALLATION_KIND, INSTALLATION_ID_KEY) {
        tracing::info!(installation_id = %id, "this data directory's installation id: every runner berth makes carries it");
        return Ok(id);
    }
    // Nodes of a cluster starting together agree on one id: the first insert wins.
    let made = uuid::Uuid::new_v4().simple().to_string();
    let id = directory
        .key_or_insert(INSTALLATION_KIND, INSTALLATION_ID_KEY, made.clone())
        .await?;
    if id == made {
        tracing::info!(installation_id = %id, "made this data directory's installation id: every runner berth makes carries it");
    } else {
        tracing::info!(installation_id = %id, "this cluster's installation id: every runner berth makes carries it");
    }
    Ok(id)
}

/// What the server knows about the machine and itself that providers need.
struct Host {
    runners_dir: std::path::PathBuf,
    runner_identity: Option<providers::process::Identity>,
    installation_id: String,
    /// Where providers report runner exits (`exits::route` takes the other end); `None` where
    /// nobody acts on them (a master-key rotation).
    runner_exits: Option<providers::exits::Exits>,
}

/// What every tenant object of this server shares: keys, the providers' environment, the
/// callback URL, provider timing, metrics and the webhook sender.
fn tenant_env(
    config: &Config,
    keys: Keys,
    host: Host,
    public_url: String,
    metrics: Arc<tenant::Metrics>,
) -> tenant::Env {
    tenant::Env {
        keys,
        providers: providers::Environment {
            data_dir: config.data_dir.clone(),
            runners_dir: host.runners_dir,
            allow_private_network: config.allow_private_providers,
            enable_fake: config.enable_fake,
            runner_identity: host.runner_identity,
            outbound_proxy: config.outbound_proxy.clone(),
            installation_id: Some(host.installation_id),
            runner_exits: host.runner_exits,
        },
        public_url,
        timing: Timing {
            create_timeout: config.provider_timeout,
            destroy_timeout: config.provider_timeout,
            retry_base: config.provider_retry_base,
            ready_timeout: config.ready_timeout,
            reconcile_interval: config.reconcile_interval,
            orphan_grace: config.orphan_grace,
            max_orphan_destroys: config.reconcile_max_destroys,
            reconcile_mode: if config.reconcile_mode == "report" {
                tenant::ReconcileMode::Report
            } else {
                tenant::ReconcileMode::Destroy
            },
            ..Timing::default()
        },
        metrics,
        webhooks: Arc::new(tenant::WebhookSender::new(
            config.allow_private_webhooks,
            config.outbound_proxy.as_ref(),
            usize::from(config.webhook_concurrency),
        )),
    }
}

/// The object runtime's options from the server's config, the cap on open object databases
/// sized to the open-file limit ([`host::open_files`]).
fn runtime_options(config: &Config, clock: Arc<dyn objects::Clock>) -> objects::Options {
    let mut options = objects::Options::new(&config.data_dir);
    options.clock = clock;
    options.object_idle = config.object_idle;
    options.max_live_objects = host::open_files(config);
    options.warm_objects = config.warm_objects;
    options.warm_idle = config.warm_idle;
    options.inbox_capacity = config.inbox_capacity;
    options.max_batch = config.max_batch;
    options.durability = config.durability;
    options
}

/// How often the admin token file is looked at for a rotation.
const ADMIN_TOKEN_POLL: std::time::Duration = std::time::Duration::from_secs(2);

/// Reads the admin token file again whenever it changes (`berth rotate-admin-token` replaces
/// it atomically), until the server stops. A file that cannot be read keeps the token as it
/// was, and says so once per change.
async fn watch_admin_token(
    path: std::path::PathBuf,
    auth: Arc<api::Auth>,
    stopping: CancellationToken,
) {
    let changed = |path: &std::path::Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let mut seen = changed(&path);
    loop {
        tokio::select! {
            () = stopping.cancelled() => return,
            () = tokio::time::sleep(ADMIN_TOKEN_POLL) => {}
        }
        let now = changed(&path);
        if now == seen {
            continue;
        }
        seen = now;
        match secrets::read_secret_file(&path) {
            Ok(token) if !token.is_empty() => {
                auth.replace_admin_token(&token);
                tracing::warn!(path = %path.display(), "the admin token was replaced; the old one no longer works");
            }
            Ok(_) => {
                tracing::error!(path = %path.display(), "the admin token file is empty; keeping the token in use")
            }
            Err(err) => {
                tracing::error!(error = %err, "the admin token file cannot be read; keeping the token in use")
            }
        }
    }
}
