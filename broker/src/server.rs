//! `berth serve`: open the data directory, serve the API, shut down cleanly.

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::Config;
use crate::api;
use crate::objects::{self, Runtime};

/// Serves berth on `listener` until `shutdown` is cancelled, then drains: the listener stops
/// accepting, requests in flight finish, every object finishes its current event, commits
/// and closes its database (waiting at most `config.shutdown_grace`).
///
/// `main` and the end-to-end tests start the server the same way: with a listener that is
/// already bound (tests bind `127.0.0.1:0`).
///
/// # Errors
///
/// The data directory cannot be opened (or another berth holds it), or serving fails.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut options = objects::Options::new(&config.data_dir);
    options.object_idle = config.object_idle;
    options.max_live_objects = config.max_live_objects;
    options.inbox_capacity = config.inbox_capacity;
    options.max_batch = config.max_batch;
    options.durability = config.durability;
    let runtime = Runtime::open(options).await?;
    let app = api::router(api::State {
        runtime: runtime.clone(),
    });

    tracing::info!(addr = %listener.local_addr()?, data_dir = %config.data_dir.display(), "berth is serving");
    let stopping = shutdown.clone();
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stopping.cancelled().await })
        .await;
    tracing::info!("shutting down: closing objects");
    runtime.shutdown(config.shutdown_grace).await;
    served?;
    tracing::info!("stopped");
    Ok(())
}
