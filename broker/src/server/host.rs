//! What berth sets up on its own machine before it serves: a private data directory, the
//! runners directory beside it (never inside), and whom `process` runners run as
//! (DESIGN.md §6: runners are untrusted code).

use anyhow::Context as _;

use crate::Config;

/// Makes the data directory private (0700: nothing in it is for anyone but berth) and the
/// runners directory passable (0711: runners reach their own work directory, list nothing).
/// Returns the runners directory.
///
/// # Errors
///
/// The runners directory lies in the data directory or the other way round (a runner could
/// then reach berth's files, or a tenant's runners land among them), or either cannot be set
/// up.
pub(super) fn prepare_dirs(config: &Config) -> anyhow::Result<std::path::PathBuf> {
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

/// Files berth keeps open beside object databases and HTTP connections: the directory
/// database, the journal, the lock, logs, outbound connections to providers and webhooks,
/// runners' pipes.
const OTHER_FILES: u64 = 256;

/// `--max-live-objects` when the open-file limit holds it.
const DEFAULT_MAX_LIVE_OBJECTS: usize = 10_000;

/// The fewest object databases berth keeps open by default, however short the limit: below
/// this, tenants would take turns at every request.
const MIN_LIVE_OBJECTS: usize = 64;

/// Raises the soft limit on open files to the hard limit (as Go's runtime and most servers
/// do: the soft limit's usual 1,024 is a default for `select`-era programs) and returns the
/// cap on open object databases that fits it: each holds two files, beside one per HTTP
/// connection (`--max-connections`) and [`OTHER_FILES`]. Past the limit an object that wakes
/// fails to open its database and its request is answered 503, so:
///
/// - `--max-live-objects` not given: [`DEFAULT_MAX_LIVE_OBJECTS`], or as many as the limit
///   holds if that is fewer (said at start), but never under [`MIN_LIVE_OBJECTS`];
/// - given: that, with a warning at start when the limit cannot hold it (or, unset, when it
///   cannot even hold [`MIN_LIVE_OBJECTS`]).
pub(super) fn open_files(config: &Config) -> usize {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let default = config.max_live_objects.unwrap_or(DEFAULT_MAX_LIVE_OBJECTS);
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return default;
    };
    // An unlimited hard limit cannot be the soft one (the kernel caps it at `fs.nr_open`).
    let target = hard.min(1 << 20);
    let soft = if soft < target && setrlimit(Resource::RLIMIT_NOFILE, target, hard).is_ok() {
        target
    } else {
        soft
    };
    let connections = u64::try_from(config.max_connections.get()).unwrap_or(u64::MAX);
    let fits = soft.saturating_sub(connections.saturating_add(OTHER_FILES)) / 2;
    let fits = usize::try_from(fits).unwrap_or(usize::MAX);
    let cap = match config.max_live_objects {
        Some(cap) => cap,
        None if fits >= DEFAULT_MAX_LIVE_OBJECTS => return DEFAULT_MAX_LIVE_OBJECTS,
        None => {
            let cap = fits.max(MIN_LIVE_OBJECTS);
            tracing::info!(
                limit = soft,
                max_live_objects = cap,
                "--max-live-objects is lowered to what the open-file limit holds (two files \
                 per open object database, one per connection); raise the limit (`ulimit -n`, \
                 LimitNOFILE=) to keep more tenants open"
            );
            cap
        }
    };
    if cap > fits {
        tracing::warn!(
            limit = soft,
            max_live_objects = cap,
            max_connections = config.max_connections.get(),
            "the open-file limit is below what the caps may open (two files per open object \
             database, one per connection): under load, objects would fail to open and \
             requests be answered 503; raise the limit (`ulimit -n`, LimitNOFILE=) or lower \
             --max-live-objects"
        );
    }
    cap
}

/// Whom `process` runners run as, from `--runner-user` / `--runner-uids`, and the warning an
/// operator must see when runners are not kept from berth's files or from each other.
///
/// # Errors
///
/// Either flag without root (only root can start processes as other users), an unknown user,
/// root itself, or a malformed range.
pub(super) fn runner_identity(
    config: &Config,
) -> anyhow::Result<Option<providers::process::Identity>> {
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
