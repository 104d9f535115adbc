//! The tenant's provider accounts: their rows (credentials sealed), and the live provider
//! client built from each.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::json;
use sqlx::SqliteConnection;

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
}

impl Accounts {
    /// Reads every account and builds its client.
    pub async fn load(
        db: &mut SqliteConnection,
        env: &Env,
        tenant: &str,
    ) -> Result<Accounts, Error> {
        let rows: Vec<Account> = sqlx::query_as(&format!(
            "SELECT {} FROM providers",
            row::select_list::<Account>()
        ))
        .fetch_all(db)
        .await?;
        let accounts = rows
            .into_iter()
            .map(|account| {
                let client = build_client(env, tenant, &account);
                (account.name.clone(), Live { account, client })
            })
            .collect();
        Ok(Accounts { accounts })
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
