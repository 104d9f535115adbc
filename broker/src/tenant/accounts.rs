//! The tenant's provider accounts: their rows (credentials sealed), and the live provider
//! client built from each; and **retired identities**: what an account was before a forced
//! change while it still had live runners (`retired_providers`). A lease whose runner was made
//! under an old identity is destroyed through that identity's client, never through the new
//! one (which could not find it: a destroy by id at another project answers 404, "gone", and
//! the old server would bill on unseen); the retired row goes with the last such lease.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::json;

use crate::objects::Error;
use crate::objects::clock::rfc3339;
use crate::wire;

use super::Env;
use super::row::{self, table};

table! {
    /// A provider account as stored: its non-secret config, and its credentials sealed under
    /// the master key (bound to tenant and account).
    #[derive(Clone, Debug, PartialEq)]
    pub struct Account in "providers" {
        pub name: String,
        /// `fake`, `process`, `hetzner` or `http`.
        pub kind: String,
        pub config: serde_json::Value [json],
        pub credentials: Option<Vec<u8>>,
        pub updated_at: i64,
    }
}

table! {
    /// An account's identity before a forced change, kept for the destroys still owed to the
    /// runners it made.
    #[derive(Clone, Debug, PartialEq)]
    pub struct Retired in "retired_providers" {
        /// `<name>@<retired_at>`.
        pub id: String,
        pub name: String,
        pub kind: String,
        pub config: serde_json::Value [json],
        pub credentials: Option<Vec<u8>>,
        pub retired_at: i64,
        /// The leases still owed a destroy through this identity.
        pub leases: Vec<String> [json],
    }
}

/// A retired identity and its client.
struct RetiredLive {
    row: Retired,
    client: Result<Arc<dyn providers::Provider>, String>,
}

/// An account and the client built from it (or why none can be built: a config a newer
/// rule refuses, credentials that do not open).
pub struct Live {
    pub account: Account,
    pub client: Result<Arc<dyn providers::Provider>, String>,
}

/// Every provider account of the tenant, by name.
#[derive(Default)]
pub struct Accounts {
    accounts: BTreeMap<String, Live>,
    retired: Vec<RetiredLive>,
}

impl Accounts {
    /// The read of every account, for [`Accounts::from_rows`].
    pub fn load_sql() -> String {
        format!("SELECT {} FROM providers", row::select_list::<Account>())
    }

    /// The read of every retired identity, oldest first, for [`Accounts::from_rows`].
    pub fn retired_sql() -> String {
        format!(
            "SELECT {} FROM retired_providers ORDER BY retired_at",
            row::select_list::<Retired>()
        )
    }

    /// Every account and retired identity ([`Accounts::load_sql`]'s and
    /// [`Accounts::retired_sql`]'s rows), each with its client built.
    pub fn from_rows(
        rows: Vec<Account>,
        retired: Vec<Retired>,
        env: &Env,
        tenant: &str,
    ) -> Accounts {
        let accounts = rows
            .into_iter()
            .map(|account| {
                let client = build_client(env, tenant, &account);
                (account.name.clone(), Live { account, client })
            })
            .collect();
        let retired = retired
            .into_iter()
            .map(|row| {
                let client = build_client(env, tenant, &row.as_account());
                RetiredLive { row, client }
            })
            .collect();
        Accounts { accounts, retired }
    }

    /// The client that destroys `lease_id`'s runner at account `name`: the retired identity
    /// that made it, if the account was re-pointed since, else the account's own.
    pub fn client_for(
        &self,
        name: &str,
        lease_id: &str,
    ) -> Result<Arc<dyn providers::Provider>, String> {
        match self
            .retired
            .iter()
            .find(|r| r.row.name == name && r.row.leases.iter().any(|l| l == lease_id))
        {
            Some(retired) => retired.client.clone(),
            None => self.client(name),
        }
    }

    /// Keeps `old` (the account as it was) for the destroys owed to `leases`' runners; the
    /// row is queued in the event. Leases an earlier retired identity of the account owes
    /// already stay with it (their runners were made there), so after two forced changes each
    /// runner is still destroyed where it lives.
    pub fn retire(
        &mut self,
        ctx: &mut super::Ctx<'_>,
        env: &Env,
        tenant: &str,
        old: &Account,
        leases: Vec<String>,
        now: i64,
    ) -> Result<(), Error> {
        let leases: Vec<String> = leases
            .into_iter()
            .filter(|lease| {
                !self
                    .retired
                    .iter()
                    .any(|r| r.row.name == old.name && r.row.leases.contains(lease))
            })
            .collect();
        if leases.is_empty() {
            return Ok(());
        }
        let row = Retired {
            id: format!("{}@{now}", old.name),
            name: old.name.clone(),
            kind: old.kind.clone(),
            config: old.config.clone(),
            credentials: old.credentials.clone(),
            retired_at: now,
            leases,
        };
        row::insert(ctx, &row)?;
        let client = build_client(env, tenant, &row.as_account());
        self.retired.push(RetiredLive { row, client });
        Ok(())
    }

    /// `lease_id`'s runner is gone: no retired identity owes it a destroy any more; one that
    /// owes nothing else is deleted.
    pub fn settled(&mut self, ctx: &mut super::Ctx<'_>, lease_id: &str) -> Result<(), Error> {
        let mut changed = false;
        for retired in &mut self.retired {
            let before = retired.row.leases.len();
            retired.row.leases.retain(|l| l != lease_id);
            if retired.row.leases.len() != before {
                changed = true;
                if retired.row.leases.is_empty() {
                    ctx.write("DELETE FROM retired_providers WHERE id = ?")
                        .bind(retired.row.id.clone());
                } else {
                    row::insert(ctx, &retired.row)?;
                }
            }
        }
        if changed {
            self.retired.retain(|r| !r.row.leases.is_empty());
        }
        Ok(())
    }

    /// A retired identity's credentials were re-sealed under a new master key.
    pub fn resealed(&mut self, id: &str, fresh: Vec<u8>) {
        if let Some(retired) = self.retired.iter_mut().find(|r| r.row.id == id) {
            retired.row.credentials = Some(fresh);
        }
    }

    /// The sealed credentials of every retired identity, by row id (for re-sealing).
    pub fn retired_credentials(&self) -> Vec<(String, String, Vec<u8>)> {
        self.retired
            .iter()
            .filter_map(|r| {
                r.row
                    .credentials
                    .clone()
                    .map(|c| (r.row.id.clone(), r.row.name.clone(), c))
            })
            .collect()
    }

    /// One account.
    pub fn get(&self, name: &str) -> Option<&Live> {
        self.accounts.get(name)
    }

    /// How many accounts there are.
    pub fn len(&self) -> usize {
        self.accounts.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.accounts.is_empty()
    }

    /// Adds or replaces an account.
    pub fn put(&mut self, live: Live) {
        self.accounts.insert(live.account.name.clone(), live);
    }

    /// The client of an account, or why there is none.
    pub fn client(&self, name: &str) -> Result<Arc<dyn providers::Provider>, String> {
        match self.accounts.get(name) {
            Some(live) => live.client.clone(),
            None => Err(format!("provider account `{name}` no longer exists")),
        }
    }

    /// Every account that has a client, by name.
    pub fn clients(&self) -> impl Iterator<Item = (&str, &Arc<dyn providers::Provider>)> {
        self.accounts
            .iter()
            .filter_map(|(name, live)| live.client.as_ref().ok().map(|c| (name.as_str(), c)))
    }

    /// Every account as the API shows it.
    pub fn views(&self) -> Vec<wire::ProviderAccount> {
        self.accounts
            .values()
            .map(|live| view(&live.account))
            .collect()
    }
}

impl Retired {
    /// The retired identity as an account row, to build its client.
    fn as_account(&self) -> Account {
        Account {
            name: self.name.clone(),
            kind: self.kind.clone(),
            config: self.config.clone(),
            credentials: self.credentials.clone(),
            updated_at: self.retired_at,
        }
    }
}

/// The settings of a config that name *where* an account's runners live: the endpoint,
/// API or cloud, and the root directory. Changing one re-points the account.
const IDENTITY_KEYS: [&str; 5] = ["base_url", "url", "root", "cloud", "state_dir"];

/// What identifies where an account's runners live: its kind, the identity settings of its
/// config and, for `hetzner`, its token (a token belongs to one project). Compared, never
/// shown: it may hold the token.
pub fn identity(
    kind: &str,
    config: &serde_json::Value,
    credentials: &serde_json::Value,
) -> serde_json::Value {
    let mut picked = serde_json::Map::new();
    picked.insert("kind".into(), json!(kind));
    for key in IDENTITY_KEYS {
        if let Some(value) = config.get(key) {
            picked.insert(key.into(), value.clone());
        }
    }
    if kind == "hetzner" {
        picked.insert(
            "token".into(),
            credentials.get("token").cloned().unwrap_or_default(),
        );
    }
    serde_json::Value::Object(picked)
}

/// The identity of a stored account (its credentials opened); `None` when they do not open.
pub fn stored_identity(env: &Env, tenant: &str, account: &Account) -> Option<serde_json::Value> {
    let credentials = match &account.credentials {
        None => json!({}),
        Some(sealed) => {
            let plaintext = env.keys.open(tenant, &account.name, sealed).ok()?;
            serde_json::from_slice(&plaintext).ok()?
        }
    };
    Some(identity(&account.kind, &account.config, &credentials))
}

/// An account as the API shows it: never its credentials.
pub fn view(account: &Account) -> wire::ProviderAccount {
    wire::ProviderAccount {
        name: account.name.clone(),
        kind: account.kind.clone(),
        config: account.config.clone(),
        has_credentials: account.credentials.is_some(),
        updated_at: rfc3339(account.updated_at),
    }
}

/// The provider client of a stored account, with its credentials opened.
pub fn build_client(
    env: &Env,
    tenant: &str,
    account: &Account,
) -> Result<Arc<dyn providers::Provider>, String> {
    let credentials = match &account.credentials {
        None => json!({}),
        Some(sealed) => {
            let plaintext = env
                .keys
                .open(tenant, &account.name, sealed)
                .map_err(|err| format!("provider account `{}`: {err}", account.name))?;
            serde_json::from_slice(&plaintext).map_err(|_| {
                format!(
                    "provider account `{}`: stored credentials are not JSON",
                    account.name
                )
            })?
        }
    };
    let spec = providers::Account {
        tenant: tenant.to_owned(),
        name: account.name.clone(),
        kind: account.kind.clone(),
        config: account.config.clone(),
        credentials,
    };
    providers::build(&spec, &env.providers)
        .map_err(|err| format!("provider account `{}`: {err}", account.name))
}
