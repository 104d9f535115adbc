//! Re-sealing a tenant's secrets after the operator rotated the master key.
//!
//! While a previous master key is configured (`crate::secrets`, "Rotating the master key"),
//! every activation moves what still opens only under the previous key — provider
//! credentials (also of retired account identities), webhook signing secrets, the GitHub secret — to the current key, in the same
//! transaction as the rest of the activation. Blobs already under the current key are left as
//! they are, so a tenant pays for this once.

use crate::objects::Error;

use super::broker::TenantBroker;
use super::{Ctx, outbox};

/// Re-seals every secret of the tenant that opens only under the previous master key;
/// returns how many.
pub async fn reseal(t: &mut TenantBroker, ctx: &mut Ctx<'_>) -> Result<usize, Error> {
    if !ctx.env().keys.rotating() {
        return Ok(0);
    }
    let mut resealed = 0;
    let accounts: Vec<(String, Vec<u8>)> = ctx
        .db()?
        .query("SELECT name, credentials FROM providers WHERE credentials IS NOT NULL")
        .fetch_all()?;
    for (account, sealed) in accounts {
        if let Some(fresh) = ctx.env().keys.reseal(&t.name, &account, &sealed) {
            ctx.write("UPDATE providers SET credentials = ? WHERE name = ?")
                .bind(fresh)
                .bind(account);
            resealed += 1;
        }
    }
    for (id, account, sealed) in t.accounts.retired_credentials() {
        if let Some(fresh) = ctx.env().keys.reseal(&t.name, &account, &sealed) {
            ctx.write("UPDATE retired_providers SET credentials = ? WHERE id = ?")
                .bind(fresh.clone())
                .bind(id.clone());
            t.accounts.resealed(&id, fresh);
            resealed += 1;
        }
    }
    let endpoints: Vec<(String, Vec<u8>)> = ctx
        .db()?
        .query("SELECT name, secret FROM webhooks")
        .fetch_all()?;
    for (endpoint, sealed) in endpoints {
        let name = outbox::secret_name(&endpoint);
        if let Some(fresh) = ctx.env().keys.reseal(&t.name, &name, &sealed) {
            ctx.write("UPDATE webhooks SET secret = ? WHERE name = ?")
                .bind(fresh)
                .bind(endpoint);
            resealed += 1;
        }
    }
    if let Some(github) = &mut t.github
        && github.reseal(&ctx.env().keys, &t.name)
    {
        ctx.kv_put("github", &*github)?;
        resealed += 1;
    }
    for (lease_id, sealed) in t.jit.sealed_configs() {
        let name = format!("github:jit:{lease_id}");
        if let Some(fresh) = ctx.env().keys.reseal(&t.name, &name, &sealed) {
            t.jit.resealed(ctx, &lease_id, fresh)?;
            resealed += 1;
        }
    }
    if resealed > 0 {
        tracing::info!(tenant = %t.name, resealed, "secrets re-sealed under the new master key");
    }
    Ok(resealed)
}
