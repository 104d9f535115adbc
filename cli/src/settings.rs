//! Where a client command finds its server, token and tenant.
//!
//! Each setting comes from, in order: the flag (`--url`, `--token`, `--tenant`), the
//! environment (`BERTH_URL`, `BERTH_TOKEN`, `BERTH_TENANT`), then the config file, which
//! `berth login` and `berth quickstart` write:
//!
//! ```toml
//! url = "http://127.0.0.1:8080"
//! token = "…"
//! tenant = "demo"
//! ```
//!
//! The file lives at `--config-file` / `BERTH_CONFIG` if given, else
//! `$XDG_CONFIG_HOME/berth/config.toml`, else `~/.config/berth/config.toml`. It holds a
//! secret, so it is written with mode 0600 (in a 0700 directory), atomically, and a file
//! readable by others draws a warning.

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::output::Format;

/// The URL used when no flag, variable or config file names one: `berth serve`'s default.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8080";

/// The flags every client command takes (before or after the subcommand).
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Client options")]
pub struct Global {
    /// The berth server. Default: the config file's, else http://127.0.0.1:8080.
    #[arg(long, global = true, env = "BERTH_URL", value_name = "URL")]
    pub url: Option<String>,

    /// The API token (a tenant token, or the operator's admin token). Default: the config
    /// file's.
    #[arg(
        long,
        global = true,
        env = "BERTH_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,

    /// The tenant the command is about. Default: the config file's.
    #[arg(long, global = true, env = "BERTH_TENANT", value_name = "NAME")]
    pub tenant: Option<String>,

    /// Output: `table` for people, `json` for scripts (one document), `id` for the
    /// identifiers only (lease ids, names), one per line.
    #[arg(
        short = 'o',
        long = "output",
        global = true,
        value_enum,
        default_value_t = Format::Table,
        value_name = "FORMAT"
    )]
    pub output: Format,

    /// The client config file. Default: $XDG_CONFIG_HOME/berth/config.toml, else
    /// ~/.config/berth/config.toml.
    #[arg(long, global = true, env = "BERTH_CONFIG", value_name = "PATH")]
    pub config_file: Option<PathBuf>,
}

/// What the config file holds. Every field is optional.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

/// The settings in effect for one command.
#[derive(Clone, Debug)]
pub struct Settings {
    pub url: String,
    pub token: Option<String>,
    /// The token given by flag or environment (not from the config file).
    pub explicit_token: Option<String>,
    pub tenant: Option<String>,
    pub format: Format,
    /// Where the config file is (whether or not it exists).
    pub config_path: Option<PathBuf>,
    /// The config file's contents (empty when there is none).
    pub file: File,
}

impl Settings {
    /// Merges flags and environment (already merged by clap) with the config file.
    ///
    /// # Errors
    ///
    /// The config file exists but cannot be read or parsed.
    pub fn resolve(global: Global) -> anyhow::Result<Settings> {
        let config_path = global.config_file.clone().or_else(default_path);
        let file = match &config_path {
            Some(path) => load(path)?.unwrap_or_default(),
            None => File::default(),
        };
        let url = global
            .url
            .or_else(|| file.url.clone())
            .unwrap_or_else(|| DEFAULT_URL.to_owned());
        Ok(Settings {
            url,
            explicit_token: global.token.clone(),
            token: global.token.or_else(|| file.token.clone()),
            tenant: global.tenant.or_else(|| file.tenant.clone()),
            format: global.output,
            config_path,
            file,
        })
    }
}

/// `$XDG_CONFIG_HOME/berth/config.toml`, else `$HOME/.config/berth/config.toml`.
pub fn default_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|path| path.is_absolute())
        .or_else(|| {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .filter(|path| path.is_absolute())
                .map(|home| home.join(".config"))
        })?;
    Some(base.join("berth").join("config.toml"))
}

/// Reads the config file; `None` if it does not exist.
///
/// # Errors
///
/// It exists but cannot be read, or is not valid TOML of the expected shape.
pub fn load(path: &Path) -> anyhow::Result<Option<File>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => {
            return Err(err).with_context(|| format!("reading {}", path.display()));
        }
    };
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        eprintln!(
            "warning: {} holds a token but others may read it; run `chmod 600 {}`",
            path.display(),
            path.display()
        );
    }
    let file = toml::from_str(&text)
        .map_err(|err| anyhow::anyhow!("{} is not a valid berth config: {err}", path.display()))?;
    Ok(Some(file))
}

/// Writes the config file atomically with mode 0600 (its directory 0700 if it is made).
///
/// # Errors
///
/// The directory cannot be made or the file cannot be written.
pub fn save(path: &Path, file: &File) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or_else(|| Path::new("."));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let text = format!(
        "# berth client settings, written by `berth login` (mode 0600: it holds a token).\n{}",
        toml::to_string(file).context("encoding the config")?
    );
    let temp = dir.join(format!(".config.toml.{}.tmp", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temp)?;
        // `mode` applies only when the file is created; make sure of it anyway.
        out.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        out.write_all(text.as_bytes())?;
        out.sync_all()?;
        std::fs::rename(&temp, path)
    };
    write().map_err(|err| {
        let _ = std::fs::remove_file(&temp);
        anyhow::anyhow!("writing {}: {err}", path.display())
    })
}
