//! Secrets: the master key, credentials encrypted at rest, bearer tokens, runner tokens.
//!
//! - The **master key** (32 bytes) comes from `BERTH_MASTER_KEY` (64 hex digits or base64) or
//!   from `<data>/master.key`, created with mode 0600 on first start. Two keys are derived
//!   from it by HMAC-SHA256 with fixed labels, so one use never weakens another.
//! - **Provider credentials** are sealed with XChaCha20-Poly1305 (random 24-byte nonce); the
//!   tenant and account names are the associated data, so a sealed blob cannot be moved to
//!   another account.
//! - **Bearer tokens** (admin and tenant) are random and stored only as SHA-256 hashes.
//! - **Runner tokens** are never stored at all: `HMAC(runner key, tenant, lease id)`. The
//!   broker can hand the same token to a provider on every create retry (also after a
//!   restart), and checks a presented token by recomputing it and comparing in constant time.
//!
//! # Rotating the master key
//!
//! [`Keys`] may hold a *previous* master key beside the current one (`BERTH_PREVIOUS_MASTER_KEY`
//! or `<data>/master.key.previous`). Sealing always uses the current key; opening tries the
//! current key, then the previous one, and [`Keys::reseal`] turns a blob that opens only under
//! the previous key into one sealed under the current key. Each tenant object re-seals its
//! secrets that way when it opens, so a rotation completes as tenants wake, or at once with
//! `berth rotate-master-key`, which opens every tenant and then forgets the previous key.
//! Runner tokens made under the previous key are accepted while it is configured.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use base64::Engine;
use chacha20poly1305::KeyInit as _;
use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// Why secrets could not be set up or opened.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The master key given is not 32 bytes of hex or base64.
    #[error("BERTH_MASTER_KEY must be 32 bytes as 64 hex digits or base64")]
    BadMasterKey,
    /// The key file could not be read or created.
    #[error("master key file {path}: {source}")]
    KeyFile {
        path: String,
        source: std::io::Error,
    },
    /// A key file readable by others is refused rather than used.
    #[error("{path} is readable by group or others (mode {mode:o}); run `chmod 600 {path}`")]
    KeyFileMode { path: String, mode: u32 },
    /// Sealed data could not be opened: another master key, or tampering.
    #[error("stored credentials cannot be decrypted with this master key")]
    Undecryptable,
}

/// The keys derived from the master key, and from the previous master key while a rotation
/// is in progress.
#[derive(Clone)]
pub struct Keys {
    sealing: [u8; 32],
    runner: [u8; 32],
    /// `(sealing, runner)` of the previous master key.
    previous: Option<([u8; 32], [u8; 32])>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(<redacted>)")
    }
}

impl Keys {
    /// Derives the working keys from a 32-byte master key.
    pub fn from_master(master: &[u8; 32]) -> Keys {
        Keys {
            sealing: derive(master, b"berth credentials v1"),
            runner: derive(master, b"berth runner tokens v1"),
            previous: None,
        }
    }

    /// These keys, still accepting what was sealed (or runner tokens made) under `previous`.
    pub fn with_previous(mut self, previous: &[u8; 32]) -> Keys {
        let old = Keys::from_master(previous);
        self.previous = Some((old.sealing, old.runner));
        self
    }

    /// A fingerprint of the current master key: 16 hex digits of a hash of a key derived from
    /// it, so it names the key (in a backup's manifest, in a restore's message) without
    /// telling anything about it.
    pub fn fingerprint(&self) -> String {
        let digest = Sha256::new()
            .chain_update(b"berth master key fingerprint v1\0")
            .chain_update(self.sealing)
            .finalize();
        hex::encode(&digest[..8])
    }

    /// Whether a previous master key is configured (a rotation is in progress).
    pub fn rotating(&self) -> bool {
        self.previous.is_some()
    }

    /// Loads the master key from `BERTH_MASTER_KEY` (`from_env`) or `<data_dir>/master.key`,
    /// creating the file (mode 0600) with a fresh random key if neither exists.
    ///
    /// # Errors
    ///
    /// A malformed key, an unreadable file, or a key file other users can read.
    pub fn load_or_create(data_dir: &Path, from_env: Option<&str>) -> Result<Keys, Error> {
        let keys = match from_env {
            Some(text) => Keys::from_master(&decode_key(text)?),
            None => {
                let path = data_dir.join(MASTER_KEY_FILE);
                let text = read_or_create_secret_file(&path, new_master_key)?;
                Keys::from_master(&decode_key(text.trim())?)
            }
        };
        Ok(match previous_master_key(data_dir)? {
            Some(previous) => keys.with_previous(&previous),
            None => keys,
        })
    }

    /// Seals `plaintext` for the account `tenant`/`account`: nonce followed by ciphertext.
    pub fn seal(&self, tenant: &str, account: &str, plaintext: &[u8]) -> Vec<u8> {
        let cipher = XChaCha20Poly1305::new((&self.sealing).into());
        let nonce: [u8; 24] = rand::random();
        let aad = associated_data(tenant, account);
        let sealed = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .expect("BUG: XChaCha20-Poly1305 encryption cannot fail for in-memory buffers");
        let mut out = nonce.to_vec();
        out.extend(sealed);
        out
    }

    /// Opens what [`Keys::seal`] sealed for the same account, under the current master key
    /// or the previous one.
    ///
    /// # Errors
    ///
    /// [`Error::Undecryptable`] under another master key, for another account, or tampered.
    pub fn open(&self, tenant: &str, account: &str, sealed: &[u8]) -> Result<Vec<u8>, Error> {
        open_with(&self.sealing, tenant, account, sealed).or_else(|err| match &self.previous {
            Some((previous, _)) => open_with(previous, tenant, account, sealed),
            None => Err(err),
        })
    }

    /// `sealed` sealed again under the current master key, when it opens only under the
    /// previous one; `None` when it needs nothing (or opens under neither).
    pub fn reseal(&self, tenant: &str, account: &str, sealed: &[u8]) -> Option<Vec<u8>> {
        let (previous, _) = self.previous.as_ref()?;
        if open_with(&self.sealing, tenant, account, sealed).is_ok() {
            return None;
        }
        let plaintext = open_with(previous, tenant, account, sealed).ok()?;
        Some(self.seal(tenant, account, &plaintext))
    }

    /// The runner token of a lease: `brt_<tenant>_<64 hex digits>`. The tenant is in the
    /// clear so the runner routes (`/v1/runners/{lease}/…`) can find the tenant's object;
    /// only the MAC authenticates.
    pub fn runner_token(&self, tenant: &str, lease_id: &str) -> String {
        runner_token_with(&self.runner, tenant, lease_id)
    }

    /// Whether `presented` is the runner token of the lease (under the current or the
    /// previous master key), compared in constant time.
    pub fn check_runner_token(&self, tenant: &str, lease_id: &str, presented: &str) -> bool {
        let matches = |key: &[u8; 32]| -> bool {
            let expected = runner_token_with(key, tenant, lease_id);
            expected.as_bytes().ct_eq(presented.as_bytes()).into()
        };
        matches(&self.runner)
            || self
                .previous
                .as_ref()
                .is_some_and(|(_, runner)| matches(runner))
    }
}

/// The file holding the master key in the data directory.
pub const MASTER_KEY_FILE: &str = "master.key";
/// The file holding the previous master key while a rotation is in progress.
pub const PREVIOUS_MASTER_KEY_FILE: &str = "master.key.previous";

/// A new random master key, as 64 hex digits.
pub fn new_master_key() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// The previous master key: `BERTH_PREVIOUS_MASTER_KEY`, else `<data>/master.key.previous`.
///
/// # Errors
///
/// A malformed key, or a key file that is unreadable or readable by others.
pub fn previous_master_key(data_dir: &Path) -> Result<Option<[u8; 32]>, Error> {
    if let Ok(text) = std::env::var("BERTH_PREVIOUS_MASTER_KEY")
        && !text.trim().is_empty()
    {
        return decode_key(&text).map(Some);
    }
    let path = data_dir.join(PREVIOUS_MASTER_KEY_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let text = read_secret_file(&path)?;
    decode_key(&text).map(Some)
}

/// Decodes a master key written as 64 hex digits or base64.
///
/// # Errors
///
/// [`Error::BadMasterKey`] for anything else.
pub fn decode_master_key(text: &str) -> Result<[u8; 32], Error> {
    decode_key(text)
}

fn open_with(
    sealing: &[u8; 32],
    tenant: &str,
    account: &str,
    sealed: &[u8],
) -> Result<Vec<u8>, Error> {
    if sealed.len() < 24 {
        return Err(Error::Undecryptable);
    }
    let (nonce, body) = sealed.split_at(24);
    let cipher = XChaCha20Poly1305::new(sealing.into());
    let aad = associated_data(tenant, account);
    cipher
        .decrypt(
            XNonce::from_slice(nonce),
            Payload {
                msg: body,
                aad: &aad,
            },
        )
        .map_err(|_| Error::Undecryptable)
}

fn runner_token_with(key: &[u8; 32], tenant: &str, lease_id: &str) -> String {
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key).expect("BUG: HMAC takes any key length");
    mac.update(tenant.as_bytes());
    mac.update(&[0]);
    mac.update(lease_id.as_bytes());
    format!("brt_{tenant}_{}", hex::encode(mac.finalize().into_bytes()))
}

fn derive(master: &[u8; 32], label: &[u8]) -> [u8; 32] {
    let mut mac =
        <HmacSha256 as Mac>::new_from_slice(master).expect("BUG: HMAC takes any key length");
    mac.update(label);
    mac.finalize().into_bytes().into()
}

fn associated_data(tenant: &str, account: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(tenant.len() + account.len() + 1);
    aad.extend_from_slice(tenant.as_bytes());
    aad.push(0);
    aad.extend_from_slice(account.as_bytes());
    aad
}

fn decode_key(text: &str) -> Result<[u8; 32], Error> {
    let text = text.trim();
    let bytes = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        hex::decode(text).map_err(|_| Error::BadMasterKey)?
    } else {
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|_| Error::BadMasterKey)?
    };
    bytes.try_into().map_err(|_| Error::BadMasterKey)
}

/// The tenant a runner token names (not yet authenticated: check the token with
/// [`Keys::check_runner_token`]).
pub fn runner_token_tenant(token: &str) -> Option<&str> {
    let rest = token.strip_prefix("brt_")?;
    let (tenant, mac) = rest.rsplit_once('_')?;
    (mac.len() == 64 && !tenant.is_empty()).then_some(tenant)
}

/// Reads a secret file, or creates it with mode 0600 holding `make()`. A file that group or
/// others can read is refused.
pub fn read_or_create_secret_file(
    path: &Path,
    make: impl FnOnce() -> String,
) -> Result<String, Error> {
    let shown = path.display().to_string();
    let io = |source| Error::KeyFile {
        path: shown.clone(),
        source,
    };
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(mut file) => {
            let secret = make();
            file.write_all(secret.as_bytes()).map_err(io)?;
            file.write_all(b"\n").map_err(io)?;
            file.sync_all().map_err(io)?;
            Ok(secret)
        }
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => read_secret_file(path),
        Err(err) => Err(io(err)),
    }
}

/// Reads a secret file that must exist; one that group or others can read is refused.
///
/// # Errors
///
/// The file is unreadable, or its mode lets others read it.
pub fn read_secret_file(path: &Path) -> Result<String, Error> {
    let shown = path.display().to_string();
    let io = |source| Error::KeyFile {
        path: shown.clone(),
        source,
    };
    let mode = std::fs::metadata(path).map_err(io)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(Error::KeyFileMode { path: shown, mode });
    }
    Ok(std::fs::read_to_string(path).map_err(io)?.trim().to_owned())
}

/// Replaces a secret file atomically with `secret` (mode 0600): readers see the old or the
/// new content, never a torn one.
///
/// # Errors
///
/// The file or its directory cannot be written.
pub fn replace_secret_file(path: &Path, secret: &str) -> Result<(), Error> {
    let shown = path.display().to_string();
    let io = |source| Error::KeyFile {
        path: shown.clone(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    file.write_all(secret.as_bytes()).map_err(io)?;
    file.write_all(b"\n").map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|dir| dir.sync_all())
            .map_err(io)?;
    }
    Ok(())
}

/// A new bearer token: `bt_` + 43 characters of base64url (32 random bytes).
pub fn new_token() -> String {
    format!(
        "bt_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
    )
}

/// The stored form of a bearer token: SHA-256, hex.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Compares two token hashes in constant time.
pub fn hashes_equal(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sealed credentials open only under the same key and account.
    #[test]
    fn sealing_binds_key_and_account() {
        let keys = Keys::from_master(&[7; 32]);
        let sealed = keys.seal("acme", "cloud", b"{\"token\":\"s3cret\"}");
        assert!(
            !sealed.windows(6).any(|w| w == b"s3cret"),
            "plaintext visible in the blob"
        );
        assert_eq!(
            keys.open("acme", "cloud", &sealed).expect("opens"),
            b"{\"token\":\"s3cret\"}"
        );
        assert!(keys.open("acme", "other", &sealed).is_err());
        assert!(keys.open("evil", "cloud", &sealed).is_err());
        assert!(
            Keys::from_master(&[8; 32])
                .open("acme", "cloud", &sealed)
                .is_err()
        );
        let mut tampered = sealed.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(keys.open("acme", "cloud", &tampered).is_err());
    }

    /// Runner tokens are stable per lease, differ between leases, and are checked exactly.
    #[test]
    fn runner_tokens() {
        let keys = Keys::from_master(&[1; 32]);
        let token = keys.runner_token("acme", "lease_1");
        assert_eq!(token, keys.runner_token("acme", "lease_1"));
        assert_ne!(token, keys.runner_token("acme", "lease_2"));
        assert_ne!(token, keys.runner_token("other", "lease_1"));
        assert!(keys.check_runner_token("acme", "lease_1", &token));
        assert!(!keys.check_runner_token("acme", "lease_2", &token));
        assert!(!keys.check_runner_token("acme", "lease_1", &token[..token.len() - 1]));
        assert_eq!(runner_token_tenant(&token), Some("acme"));
        assert_eq!(
            runner_token_tenant(&keys.runner_token("a-b-c", "l")),
            Some("a-b-c")
        );
        assert_eq!(runner_token_tenant("brt_acme_short"), None);
        assert_eq!(runner_token_tenant("bt_whatever"), None);
    }

    /// During a rotation, secrets sealed and runner tokens made under the previous key still
    /// work; `reseal` moves a blob to the current key and leaves current blobs alone.
    #[test]
    fn rotation_keeps_the_previous_key_working() {
        let old = Keys::from_master(&[1; 32]);
        let sealed_old = old.seal("acme", "cloud", b"secret");
        let token_old = old.runner_token("acme", "lease_1");
        let new = Keys::from_master(&[2; 32]);
        assert!(new.open("acme", "cloud", &sealed_old).is_err());
        let rotating = Keys::from_master(&[2; 32]).with_previous(&[1; 32]);
        assert!(rotating.rotating());
        assert_eq!(
            rotating.open("acme", "cloud", &sealed_old).expect("opens"),
            b"secret"
        );
        assert!(rotating.check_runner_token("acme", "lease_1", &token_old));
        let resealed = rotating
            .reseal("acme", "cloud", &sealed_old)
            .expect("resealed");
        assert_eq!(
            new.open("acme", "cloud", &resealed).expect("opens"),
            b"secret"
        );
        assert_eq!(rotating.reseal("acme", "cloud", &resealed), None);
        assert_eq!(rotating.reseal("acme", "other", &sealed_old), None);
        assert_eq!(
            new.reseal("acme", "cloud", &sealed_old),
            None,
            "no previous key"
        );
    }

    /// The key file is created 0600 and reused; a world-readable one is refused.
    #[test]
    fn key_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = Keys::load_or_create(dir.path(), None).expect("created");
        let mode = std::fs::metadata(dir.path().join("master.key"))
            .expect("file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = Keys::load_or_create(dir.path(), None).expect("reused");
        assert_eq!(a.runner_token("t", "l"), b.runner_token("t", "l"));
        std::fs::set_permissions(
            dir.path().join("master.key"),
            std::fs::Permissions::from_mode(0o644),
        )
        .expect("chmod");
        assert!(matches!(
            Keys::load_or_create(dir.path(), None),
            Err(Error::KeyFileMode { .. })
        ));
        assert!(Keys::load_or_create(dir.path(), Some("short")).is_err());
        assert!(Keys::load_or_create(dir.path(), Some(&"ab".repeat(32))).is_ok());
    }
}
