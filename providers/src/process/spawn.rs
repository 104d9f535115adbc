//! Starting a runner: the pool's command in the runner's fresh work directory, in a process
//! group of its own, as the account's identity, with its output in the directory's log files;
//! then its record (see "Crash safety" in the module docs of `process`).

use std::io;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;
use std::process::Stdio;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use super::ownership::{Record, save_record};
use super::procfs::proc_stat;
use super::{DIR_VAR, LEASE_VAR, Process, exit, identity, io_error};
use crate::{Error, RunnerSpec, settings};

impl Process {
    /// Starts the runner's process in `dir` (which exists and holds nothing of an earlier
    /// runner) and writes its record.
    pub(super) async fn start(&self, spec: &RunnerSpec, dir: &Path) -> Result<Record, Error> {
        // A runner of a uid range holds the allocation lock until its record names its uid.
        let _allocating = match &self.identity {
            Some(identity) if identity.is_range() => Some(identity::ALLOCATING.lock().await),
            _ => None,
        };
        let ids = match &self.identity {
            None => None,
            Some(identity) => {
                let taken = self.uids_taken().await;
                Some(
                    identity
                        .allocate(&spec.tenant, &spec.lease_id, &taken)
                        .ok_or_else(|| {
                            Error::Capacity("every uid of the runner uid range is in use".into())
                        })?,
                )
            }
        };
        let work = dir.join("work");
        tokio::fs::create_dir_all(&work)
            .await
            .map_err(|e| io_error("making the work directory", &e))?;
        tokio::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o700))
            .await
            .map_err(|e| io_error("making the work directory private", &e))?;
        if let Some((uid, gid)) = ids {
            std::os::unix::fs::chown(&work, Some(uid), Some(gid))
                .map_err(|e| io_error("giving the work directory to the runner's user", &e))?;
        }
        let log = |name: &str| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(dir.join(name))
                .map_err(|e| io_error("opening a log file", &e))
        };
        let (stdout, stderr) = (log("stdout.log")?, log("stderr.log")?);

        let mut command = tokio::process::Command::new(&spec.command[0]);
        command
            .args(&spec.command[1..])
            .current_dir(&work)
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(stderr))
            // Its own process group, so destroy can signal the runner and all it started.
            .process_group(0)
            // The record, not the handle, owns the runner's life: dropping the handle (berth
            // stopping) must not kill it.
            .kill_on_drop(false);
        for name in ["PATH", "HOME", "LANG"] {
            if let Some(value) = std::env::var_os(name) {
                command.env(name, value);
            }
        }
        if let Some((uid, gid)) = ids {
            // Another user, with no supplementary groups (the standard library drops them
            // when root sets a uid), at home in its own work directory.
            command.uid(uid).gid(gid).env("HOME", &work);
        }
        command.envs(&spec.env);
        // Always set, whatever spec.env says: the /proc environ scan depends on them.
        command.env(LEASE_VAR, &spec.lease_id);
        command.env(DIR_VAR, dir);

        let child = command.spawn().map_err(|e| {
            let program = settings::printable(&spec.command[0]);
            match e.kind() {
                io::ErrorKind::NotFound
                | io::ErrorKind::PermissionDenied
                | io::ErrorKind::InvalidInput => {
                    Error::Permanent(format!("cannot start `{program}`: {e}"))
                }
                _ => Error::transient(format!("cannot start `{program}`: {e}")),
            }
        })?;
        let pid = child.id().and_then(|pid| i32::try_from(pid).ok()).expect(
            "BUG: a child that was just spawned and not yet waited on has a pid that fits pid_t",
        );
        // Read the start time before the reaper may wait on the child: until then the pid
        // cannot be reused, even if the process already exited (it is a zombie).
        let start_time = proc_stat(pid)
            .map(|stat| stat.start_time)
            .unwrap_or_default();
        let who = exit::Subject {
            dir: dir.to_path_buf(),
            tenant: spec.tenant.clone(),
            lease_id: spec.lease_id.clone(),
        };
        exit::reap(child, pid, who, self.exits.clone());

        let record = Record::new(spec, self.installation.as_deref(), pid, start_time, ids);
        if let Err(e) = save_record(dir, &record).await {
            // Without a record the runner would still be found by the environ scan, but a
            // create that reports failure must not leave a process behind.
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            return Err(e);
        }
        Ok(record)
    }
}
