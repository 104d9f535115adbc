//! What the `process` provider reads from `/proc` and the signals it sends: process stats
//! (state, group, start time), the environment scan that finds a runner's processes by its
//! lease, and signalling whole process groups without ever hitting berth's own.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

use super::{DIR_VAR, LEASE_VAR, blocking};

/// The fields of `/proc/<pid>/stat` we use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Stat {
    /// Field 3: `R`, `S`, `D`, `Z`, …
    pub(super) state: char,
    /// Field 5: the process group id.
    pub(super) pgrp: i32,
    /// Field 22: start time in clock ticks after boot.
    pub(super) start_time: u64,
}

pub(super) fn proc_stat(pid: i32) -> Option<Stat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

pub(super) fn parse_stat(text: &str) -> Option<Stat> {
    // The command name (field 2) is in parentheses and may itself contain spaces and
    // parentheses, so split after the last `)`. Fields 3… follow.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(Stat {
        state: fields.first()?.chars().next()?,
        pgrp: fields.get(2)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

/// Pids under `/proc`, except berth's own.
pub(super) fn proc_pids() -> Vec<i32> {
    let own = std::process::id() as i32;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != own)
        .collect()
}

/// Scans `/proc` off the async threads; a failed scan finds nothing.
pub(super) async fn scan(dir: &Path, lease_id: &str) -> Vec<i32> {
    let (lease_id, dir) = (lease_id.to_string(), dir.to_path_buf());
    blocking(move || Ok(find_by_environ(&lease_id, &dir)))
        .await
        .unwrap_or_default()
}

/// Live processes whose environment holds `BERTH_LEASE_ID=<lease_id>` and
/// `BERTH_RUNNER_DIR=<dir>`: of berth's own uid, or of any uid when berth runs as root (its
/// runners then run as other users, and only berth and the runner itself can set those
/// variables on a process of that user).
pub(super) fn find_by_environ(lease_id: &str, dir: &Path) -> Vec<i32> {
    let Ok(own_uid) = std::fs::metadata("/proc/self").map(|meta| meta.uid()) else {
        return Vec::new();
    };
    let any_uid = nix::unistd::geteuid().is_root();
    let lease_entry = format!("{LEASE_VAR}={lease_id}").into_bytes();
    let mut dir_entry = format!("{DIR_VAR}=").into_bytes();
    dir_entry.extend_from_slice(dir.as_os_str().as_encoded_bytes());
    proc_pids()
        .into_iter()
        .filter(|pid| {
            let same_uid = any_uid
                || std::fs::metadata(format!("/proc/{pid}"))
                    .is_ok_and(|meta| meta.uid() == own_uid);
            // Reading may fail (the process exited, or is a kernel thread): not ours then.
            same_uid
                && std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|environ| {
                    let (mut lease, mut dir) = (false, false);
                    for entry in environ.split(|byte| *byte == 0) {
                        lease |= entry == lease_entry.as_slice();
                        dir |= entry == dir_entry.as_slice();
                    }
                    lease && dir
                })
                && proc_stat(*pid).is_some_and(|stat| stat.state != 'Z')
        })
        .collect()
}

/// The live group leader among the processes of a lease, for adoption.
pub(super) fn find_leader(lease_id: &str, dir: &Path) -> Option<(i32, Stat)> {
    find_by_environ(lease_id, dir)
        .into_iter()
        .filter_map(|pid| Some((pid, proc_stat(pid)?)))
        .find(|(pid, stat)| stat.pgrp == *pid)
}

/// A process group berth may signal as a whole: not berth's own, not init's.
pub(super) fn is_foreign_group(pgrp: i32) -> bool {
    pgrp > 1 && pgrp != nix::unistd::getpgrp().as_raw()
}

/// Live (non-zombie) processes in `groups` or in `pids`.
pub(super) fn alive(groups: &BTreeSet<i32>, pids: &BTreeSet<i32>) -> Vec<i32> {
    proc_pids()
        .into_iter()
        .filter(|pid| {
            proc_stat(*pid).is_some_and(|stat| {
                stat.state != 'Z' && (groups.contains(&stat.pgrp) || pids.contains(pid))
            })
        })
        .collect()
}

pub(super) fn signal_all(groups: &BTreeSet<i32>, pids: &BTreeSet<i32>, signal: Signal) {
    for &group in groups {
        if is_foreign_group(group) {
            // ESRCH: the group is already gone, which is what we want.
            if let Err(e) = killpg(Pid::from_raw(group), signal)
                && e != Errno::ESRCH
            {
                tracing::warn!(group, %signal, error = %e, "signalling a runner's process group");
            }
        }
    }
    let own = std::process::id() as i32;
    for &pid in pids {
        if pid > 1 && pid != own {
            let _ = kill(Pid::from_raw(pid), signal);
        }
    }
}

/// The uids of every process now running (the owners of `/proc/<pid>`).
pub(super) fn uids_in_use() -> BTreeSet<u32> {
    proc_pids()
        .into_iter()
        .filter_map(|pid| std::fs::metadata(format!("/proc/{pid}")).ok())
        .map(|meta| meta.uid())
        .collect()
}

/// The real uid and gid of a process (from `/proc/<pid>/status`), when it runs as another
/// user than berth; `None` for berth's own user or an unreadable process.
pub(super) fn ids_of(pid: i32) -> Option<(u32, u32)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u32> {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    let (uid, gid) = (field("Uid:")?, field("Gid:")?);
    (uid != nix::unistd::getuid().as_raw()).then_some((uid, gid))
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`), read once.
pub(super) fn boot_id() -> Option<String> {
    static BOOT_ID: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    BOOT_ID
        .get_or_init(|| {
            std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
                .ok()
                .map(|id| id.trim().to_owned())
                .filter(|id| !id.is_empty())
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `/proc/<pid>/stat` parses even when the command name has spaces and parentheses.
    #[test]
    fn parses_stat_with_odd_command_names() {
        let line = "4242 (my (odd) cmd) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 100";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                state: 'S',
                pgrp: 4242,
                start_time: 987654
            })
        );
        assert_eq!(parse_stat("garbage"), None);
    }

    /// Our own stat is readable and our group is never a target.
    #[test]
    fn own_process_is_never_a_target() {
        let own = std::process::id() as i32;
        assert!(proc_stat(own).is_some());
        assert!(!is_foreign_group(nix::unistd::getpgrp().as_raw()));
        assert!(!is_foreign_group(1));
        assert!(!proc_pids().contains(&own));
    }
}
