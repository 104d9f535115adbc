//! Cluster mode at the server (DESIGN.md §10): joining the cluster `--cluster` names, and
//! checking that this node shares the cluster's secrets before it serves.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use base64::Engine as _;

use crate::config::Config;
use crate::objects::{Cluster, ClusterOptions, Runtime};
use crate::secrets::{self, Keys};

/// Directory kind of the cluster's own keys.
const CLUSTER_KIND: &str = "cluster";
/// A value sealed under the cluster's master key: a node that cannot open it has another key.
const KEY_CHECK: &str = "key-check";
/// The hash of the cluster's admin token.
const ADMIN_HASH: &str = "admin-token-hash";

/// Joins the cluster of `config.cluster_url`, if any: this node's name is `--node-id` (the host
/// name by default) and other nodes reach it at `--advertise-url` (`--public-url`, else
/// `http://<listen address>`).
///
/// # Errors
///
/// PostgreSQL cannot be reached or migrated.
pub(super) async fn join(
    config: &Config,
    addr: SocketAddr,
) -> anyhow::Result<Option<Arc<Cluster>>> {
    let Some(url) = &config.cluster_url else {
        return Ok(None);
    };
    let name = match &config.node_id {
        Some(name) => name.clone(),
        None => nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| addr.to_string()),
    };
    let advertise = config
        .advertise_url
        .clone()
        .or_else(|| config.public_url.clone())
        .unwrap_or_else(|| format!("http://{addr}"));
    let mut options = ClusterOptions::new(url, name, advertise.trim_end_matches('/'));
    options.membership_ttl = config.cluster_membership;
    options.heartbeat_every = config.cluster_membership / 5;
    let cluster = Cluster::join(options)
        .await
        .context("joining the cluster (--cluster)")?;
    tracing::info!(node = %cluster.options().node_name, url = %cluster.options().advertise_url, incarnation = %cluster.membership().incarnation, "cluster node");
    Ok(Some(cluster))
}

/// Checks that this node has the cluster's master key and admin token (the first node to
/// start records them: a check value sealed under the key, and the token's hash), so a node
/// with another key can neither open the tenants' sealed credentials nor derive their runner
/// tokens, and the admin token works on every node.
///
/// # Errors
///
/// This node's key or admin token differs from the cluster's.
pub(super) async fn check_shared_secrets(
    runtime: &Runtime,
    keys: &Keys,
    admin_token: &str,
) -> anyhow::Result<()> {
    let directory = runtime.directory();
    let b64 = base64::engine::general_purpose::STANDARD;
    let sealed = keys.seal(CLUSTER_KIND, KEY_CHECK, b"berth");
    let check = directory
        .key_or_insert(CLUSTER_KIND, KEY_CHECK, b64.encode(sealed))
        .await?;
    let opens = b64
        .decode(check)
        .is_ok_and(|sealed| keys.open(CLUSTER_KIND, KEY_CHECK, &sealed).is_ok());
    anyhow::ensure!(
        opens,
        "this node's master key is not the cluster's: give every node the same --master-key (or master.key file)"
    );
    let hash = secrets::token_hash(admin_token);
    let stored = directory
        .key_or_insert(CLUSTER_KIND, ADMIN_HASH, hash.clone())
        .await?;
    let same = secrets::hashes_equal(&stored, &hash);
    anyhow::ensure!(
        same,
        "this node's admin token is not the cluster's: give every node the same --admin-token (or admin-token file)"
    );
    Ok(())
}
