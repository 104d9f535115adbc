//! Reading a runner's `stdout.log` and `stderr.log` for the broker (`berth lease logs`, and
//! the last stderr line of a runner that exited).
//!
//! The logs lie in the runner's directory, which berth made and the runner cannot write when
//! it runs as a user of its own. When it runs as berth's user it can: it could replace
//! `stdout.log` with a symbolic link to berth's master key, a hard link to the admin token
//! file, or a FIFO that blocks every reader. So a log is opened relative to the runner
//! directory (itself opened without following a link), with `O_NOFOLLOW` (a link is refused,
//! not followed) and `O_NONBLOCK` (a FIFO cannot hold the open), and served only if it is
//! what berth made: a regular file owned by berth, with one link, that nobody else may read
//! or write. Anything else is refused and logged; its bytes are never read.

use std::fs::File;
use std::io::{self, Read as _, Seek as _, SeekFrom};
use std::os::fd::AsFd as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{OFlag, open, openat};
use nix::sys::stat::Mode;

use crate::exits::TAIL_CHARS;
use crate::logs::{Chunk, Logs, Stream};

/// The file name of a stream in a runner directory.
fn file_name(stream: Stream) -> &'static str {
    match stream {
        Stream::Stdout => "stdout.log",
        Stream::Stderr => "stderr.log",
    }
}

/// Up to `max` bytes of `stream` of the runner in `dir`, from `offset` (an offset past the end
/// reads nothing, from the end).
///
/// # Errors
///
/// Reading a log that passed the checks failed (an I/O error of the disk).
pub(super) fn read(dir: &Path, stream: Stream, offset: u64, max: usize) -> io::Result<Logs> {
    let mut file = match open_log(dir, stream) {
        Ok(file) => file,
        Err(refused) => return Ok(refused),
    };
    let size = file.metadata()?.len();
    let offset = offset.min(size);
    file.seek(SeekFrom::Start(offset))?;
    let want = usize::try_from(size - offset)
        .unwrap_or(usize::MAX)
        .min(max);
    let mut bytes = Vec::with_capacity(want);
    file.take(u64::try_from(want).unwrap_or(u64::MAX))
        .read_to_end(&mut bytes)?;
    Ok(Logs::Chunk(Chunk {
        offset,
        size,
        bytes,
    }))
}

/// The last line the runner in `dir` wrote to its stderr that has something to show, without
/// control characters and cut to [`TAIL_CHARS`] characters; `None` when there is none (or the
/// log is refused).
pub(super) fn last_stderr_line(dir: &Path) -> Option<String> {
    /// Enough for a last line worth showing; a longer one is cut anyway.
    const TAIL_BYTES: u64 = 4096;
    let mut file = open_log(dir, Stream::Stderr).ok()?;
    let size = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(size.saturating_sub(TAIL_BYTES)))
        .ok()?;
    let mut bytes = Vec::new();
    file.take(TAIL_BYTES).read_to_end(&mut bytes).ok()?;
    let text = String::from_utf8_lossy(&bytes);
    text.lines().rev().find_map(|line| {
        let shown = plain(line);
        let shown = shown.trim();
        (!shown.is_empty()).then(|| shown.chars().take(TAIL_CHARS).collect())
    })
}

/// `line` without terminal escape sequences (CSI `ESC [ … final`, OSC `ESC ] … BEL|ESC \`,
/// two-byte `ESC x`) and without other control characters: a colour code a job printed must
/// not become text, nor reach someone's terminal as a command.
fn plain(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            if !c.is_control() {
                out.push(c);
            }
            continue;
        }
        match chars.next() {
            Some('[') => {
                // Parameters and intermediates, then one final byte in `@`..=`~`.
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            Some(']') => {
                while let Some(c) = chars.next() {
                    if c == '\u{7}' || (c == '\u{1b}' && chars.next_if_eq(&'\\').is_some()) {
                        break;
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// Opens a log of the runner in `dir` if it is the file berth made (see the module docs); the
/// answer to give instead when it is not.
fn open_log(dir: &Path, stream: Stream) -> Result<File, Logs> {
    let name = file_name(stream);
    let gone = || Logs::Unavailable("the runner's directory is gone, and its logs with it".into());
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let dir_fd = match open(dir, flags | OFlag::O_DIRECTORY, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Err(gone()),
        Err(errno) => return Err(refuse(dir, "the runner directory", errno.desc())),
    };
    let fd = match openat(
        dir_fd.as_fd(),
        name,
        flags | OFlag::O_NONBLOCK | OFlag::O_NOCTTY,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => {
            return Err(Logs::Unavailable(format!(
                "the runner has no {name} (it was started by an older berth, or is gone)"
            )));
        }
        Err(Errno::ELOOP) => return Err(refuse(dir, name, "it is a symbolic link")),
        Err(errno) => return Err(refuse(dir, name, errno.desc())),
    };
    let file = File::from(fd);
    let meta = match file.metadata() {
        Ok(meta) => meta,
        Err(err) => return Err(refuse(dir, name, &err.to_string())),
    };
    let berth = nix::unistd::geteuid().as_raw();
    let why = if !meta.file_type().is_file() {
        Some("it is not a regular file")
    } else if meta.uid() != berth {
        Some("berth does not own it")
    } else if meta.nlink() != 1 {
        Some("it has other names (hard links)")
    } else if meta.mode() & 0o077 != 0 {
        Some("others may read or write it")
    } else {
        None
    };
    match why {
        Some(why) => Err(refuse(dir, name, why)),
        None => Ok(file),
    }
}

/// A log that is not what berth made: logged for the operator, refused to the caller.
fn refuse(dir: &Path, name: &str, why: &str) -> Logs {
    tracing::warn!(dir = %dir.display(), file = name, why, "not serving a runner log that is not the file berth made (did the runner replace it?)");
    Logs::Unavailable(format!(
        "the runner's {name} is not the file berth made ({why}); it is not shown"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};

    fn log(dir: &Path, name: &str, text: &str) {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(dir.join(name))
            .and_then(|mut file| io::Write::write_all(&mut file, text.as_bytes()))
            .expect("log");
    }

    fn chunk(logs: Logs) -> Chunk {
        match logs {
            Logs::Chunk(chunk) => chunk,
            other => panic!("{other:?}"),
        }
    }

    fn refused(logs: Logs) -> String {
        match logs {
            Logs::Unavailable(why) => why,
            other => panic!("{other:?}"),
        }
    }

    /// A log reads from an offset, at most `max` bytes; an offset past the end reads nothing.
    #[test]
    fn reads_from_an_offset_within_a_bound() {
        let dir = tempfile::tempdir().expect("tempdir");
        log(dir.path(), "stdout.log", "hello\nworld\n");
        let first = chunk(read(dir.path(), Stream::Stdout, 0, 5).expect("read"));
        assert_eq!(
            (first.offset, first.size, first.bytes),
            (0, 12, b"hello".to_vec())
        );
        let rest = chunk(read(dir.path(), Stream::Stdout, 6, 100).expect("read"));
        assert_eq!(rest.bytes, b"world\n");
        let past = chunk(read(dir.path(), Stream::Stdout, 99, 100).expect("read"));
        assert_eq!((past.offset, past.bytes.len()), (12, 0));
    }

    /// A link to a secret, a hard link, a FIFO and a file others may read are refused without
    /// reading them; a missing directory says the runner is gone.
    #[test]
    fn refuses_what_berth_did_not_make() {
        let dir = tempfile::tempdir().expect("tempdir");
        log(dir.path(), "secret", "the master key");
        std::os::unix::fs::symlink(dir.path().join("secret"), dir.path().join("stdout.log"))
            .expect("symlink");
        let why = refused(read(dir.path(), Stream::Stdout, 0, 100).expect("read"));
        assert!(why.contains("symbolic link"), "{why}");
        assert!(!why.contains("master key"));

        std::fs::hard_link(dir.path().join("secret"), dir.path().join("stderr.log"))
            .expect("hard link");
        let why = refused(read(dir.path(), Stream::Stderr, 0, 100).expect("read"));
        assert!(why.contains("hard links"), "{why}");
        assert_eq!(last_stderr_line(dir.path()), None);

        let fifo = tempfile::tempdir().expect("tempdir");
        nix::unistd::mkfifo(
            &fifo.path().join("stdout.log"),
            Mode::from_bits_truncate(0o600),
        )
        .expect("mkfifo");
        let why = refused(read(fifo.path(), Stream::Stdout, 0, 100).expect("read"));
        assert!(why.contains("not a regular file"), "{why}");

        let open = tempfile::tempdir().expect("tempdir");
        log(open.path(), "stdout.log", "x");
        std::fs::set_permissions(
            open.path().join("stdout.log"),
            std::fs::Permissions::from_mode(0o644),
        )
        .expect("chmod");
        let why = refused(read(open.path(), Stream::Stdout, 0, 100).expect("read"));
        assert!(why.contains("others may read"), "{why}");

        let why = refused(read(&dir.path().join("gone"), Stream::Stdout, 0, 1).expect("read"));
        assert!(why.contains("gone"), "{why}");
    }

    /// Escape sequences go whole; other control characters go; the rest stays.
    #[test]
    fn plain_text_only() {
        assert_eq!(
            plain("\x1b[1;31mred\x1b[0m \x1b]0;title\x07ok\x1b]8;;u\x1b\\x\x1bc\r"),
            "red okx"
        );
    }

    /// The last stderr line that shows something, without control characters, cut short.
    #[test]
    fn last_line_of_stderr() {
        let dir = tempfile::tempdir().expect("tempdir");
        let long = "y".repeat(500);
        log(
            dir.path(),
            "stderr.log",
            &format!("first\n\x1b[31moops\x1b[0m: {long}\n\n  \n"),
        );
        let line = last_stderr_line(dir.path()).expect("a line");
        assert!(line.starts_with("oops: yyy"), "{line}");
        assert_eq!(line.chars().count(), TAIL_CHARS);
    }
}
