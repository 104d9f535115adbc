//! The client commands, one file per noun. Each has `Command` (or `Args`) parsed by clap and
//! `run(ctx, …)`; [`Context`] holds the settings in effect and hands out the API client.

pub mod backup;
pub mod github;
pub mod lease;
pub mod ledger;
pub mod login;
pub mod logs;
pub mod pool;
pub mod provider;
pub mod quickstart;
pub mod tenant;
pub mod token;
pub mod usage;
pub mod version;
pub mod watch;
pub mod webhook;

use crate::client::Api;
use crate::failure;
use crate::output::Format;
use crate::settings::{Global, Settings};

/// What every client command gets: the resolved settings.
#[derive(Debug)]
pub struct Context {
    pub settings: Settings,
}

impl Context {
    /// Resolves flags, environment and the config file.
    ///
    /// # Errors
    ///
    /// The config file exists but is unreadable or malformed.
    pub fn new(global: Global) -> anyhow::Result<Context> {
        Ok(Context {
            settings: Settings::resolve(global)?,
        })
    }

    /// The `-o` format.
    pub fn format(&self) -> Format {
        self.settings.format
    }

    /// A client with the token in effect.
    ///
    /// # Errors
    ///
    /// No token is set anywhere, or the URL is malformed (usage errors).
    pub fn api(&self) -> anyhow::Result<Api> {
        let token = self.settings.token.clone().ok_or_else(|| {
            failure::usage(
                "no token: pass --token, set BERTH_TOKEN, or run `berth login --url … --token …`",
            )
        })?;
        Api::new(&self.settings.url, Some(token))
    }

    /// The tenant the command is about: `name` if given, else the one in effect.
    ///
    /// # Errors
    ///
    /// No tenant is set anywhere (a usage error).
    pub fn tenant(&self, name: Option<&str>) -> anyhow::Result<String> {
        name.map(str::to_owned)
            .or_else(|| self.settings.tenant.clone())
            .ok_or_else(|| {
                failure::usage(
                    "no tenant: pass --tenant, set BERTH_TENANT, or run `berth login --tenant …`",
                )
            })
    }
}

/// Refuses `-o id` for output that has no identifier.
///
/// # Errors
///
/// `format` is [`Format::Id`] (a usage error).
pub fn no_ids(format: Format, what: &str) -> anyhow::Result<()> {
    if format == Format::Id {
        return Err(failure::usage(format!(
            "`-o id` does not apply to {what}; use `-o table` or `-o json`"
        )));
    }
    Ok(())
}
