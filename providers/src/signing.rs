//! Standard Webhooks v1 signatures (HMAC-SHA256), for requests berth sends and checks.
//!
//! The `http` provider signs every request to the operator's endpoint with this module, and
//! berth's outbound webhooks sign their deliveries with it. The scheme (spec 1.0.0):
//!
//! - the secret is serialised as `whsec_` + base64 of the key bytes; the HMAC key is the
//!   **decoded bytes**, not the ASCII of the string;
//! - the signed content is `<webhook-id>.<webhook-timestamp>.<body>`, over the exact body bytes;
//! - the `webhook-signature` header holds space-separated `v1,<base64 of the 32-byte HMAC>`
//!   entries (several during secret rotation); a receiver accepts if any `v1` entry matches,
//!   and ignores entries of other versions;
//! - a receiver refuses timestamps more than [`TOLERANCE`] (5 minutes) away from its clock, in
//!   either direction, which bounds replays.
//!
//! # Request signatures (`v2`), for the `http` provider
//!
//! A Standard Webhooks signature covers the body only: a signed request could be replayed to
//! another path of the same endpoint (a `list` body to `/destroy`, say). Requests of the
//! `http` provider are therefore signed with berth's own scheme, version `v2`, which also
//! covers the method and the request target:
//!
//! - the headers `webhook-id` and `webhook-timestamp` are as above;
//! - [`HEADER_REQUEST_SIGNATURE`] (`berth-signature`) holds space-separated
//!   `v2,<base64 of the 32-byte HMAC>` entries;
//! - the signed content is the lines `v2`, id, timestamp, method (uppercase), target (the
//!   path and query as on the request line, e.g. `/berth/create`), each ended by `\n`, then
//!   the exact body bytes.
//!
//! Fields are separated by newlines, which none of them but the body can hold, so no two
//! requests sign the same content. A receiver accepts only `v2` entries: the body-only `v1`
//! signature is not sent with these requests at all, so an endpoint cannot be talked into
//! accepting less. A later change of the signed content gets a new version.
//!
//! # Example
//!
//! ```
//! use providers::signing::{self, Headers, Secret};
//!
//! let secret = Secret::parse("whsec_YmVydGgtc3RhbmRhcmQtd2ViaG9va3MtdGVzdC1rZXk=").unwrap();
//! let body = br#"{"hello":"world"}"#;
//! let signature = secret.sign("msg_1", 1767225600, body);
//! let headers = Headers { id: "msg_1", timestamp: "1767225600", signature: &signature };
//! assert!(secret.verify(&headers, body, 1767225660, signing::TOLERANCE).is_ok());
//! ```

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use hmac::{Hmac, Mac};
use rand::Rng as _;
use sha2::Sha256;
use subtle::ConstantTimeEq as _;

/// Header carrying the message id (unique per message, the same on every retry of it).
pub const HEADER_ID: &str = "webhook-id";
/// Header carrying the Unix time in seconds of this attempt.
pub const HEADER_TIMESTAMP: &str = "webhook-timestamp";
/// Header carrying the space-separated `v1,<base64>` signatures.
pub const HEADER_SIGNATURE: &str = "webhook-signature";
/// Header carrying the space-separated `v2,<base64>` request signatures (method, target and
/// body; see "Request signatures" in the module docs).
pub const HEADER_REQUEST_SIGNATURE: &str = "berth-signature";
/// The version tag of request signatures.
pub const REQUEST_VERSION: &str = "v2";

/// How far a timestamp may be from the receiver's clock, either way: 5 minutes, as in every
/// Standard Webhooks reference library.
pub const TOLERANCE: Duration = Duration::from_secs(300);

/// The prefix of a serialised symmetric secret.
pub const SECRET_PREFIX: &str = "whsec_";

/// Why a secret could not be used or a signature did not verify. The messages never contain
/// the secret.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The secret is not `whsec_` + base64 of at least one byte.
    #[error("invalid webhook secret: expected `whsec_` followed by base64")]
    InvalidSecret,
    /// One of the three headers is missing (the name says which).
    #[error("missing `{0}` header")]
    MissingHeader(&'static str),
    /// `webhook-timestamp` is not an integer number of seconds.
    #[error("invalid `webhook-timestamp` header")]
    InvalidTimestamp,
    /// The timestamp is older than the tolerance allows.
    #[error("webhook timestamp too old")]
    TooOld,
    /// The timestamp is further in the future than the tolerance allows.
    #[error("webhook timestamp too new")]
    TooNew,
    /// No `v1` signature in the header matches the body.
    #[error("no matching webhook signature")]
    NoMatch,
}

/// The three signature headers of one request, as received.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Headers<'a> {
    /// The `webhook-id` header.
    pub id: &'a str,
    /// The `webhook-timestamp` header (Unix seconds, as text).
    pub timestamp: &'a str,
    /// The `webhook-signature` header: space-separated `<version>,<base64>` entries.
    pub signature: &'a str,
}

impl<'a> Headers<'a> {
    /// Collects the three headers through `get`, which looks a header up by its lowercase name
    /// (HTTP header names are case-insensitive; `http::HeaderMap` lookups already are).
    ///
    /// # Errors
    ///
    /// [`SignatureError::MissingHeader`] naming the first header that is missing.
    pub fn from_lookup(get: impl Fn(&str) -> Option<&'a str>) -> Result<Self, SignatureError> {
        Self::lookup(get, HEADER_SIGNATURE)
    }

    /// Like [`Headers::from_lookup`], for a request signed with [`Secret::sign_request`]: the
    /// signature comes from [`HEADER_REQUEST_SIGNATURE`].
    ///
    /// # Errors
    ///
    /// [`SignatureError::MissingHeader`] naming the first header that is missing.
    pub fn from_request_lookup(
        get: impl Fn(&str) -> Option<&'a str>,
    ) -> Result<Self, SignatureError> {
        Self::lookup(get, HEADER_REQUEST_SIGNATURE)
    }

    fn lookup(
        get: impl Fn(&str) -> Option<&'a str>,
        signature_header: &'static str,
    ) -> Result<Self, SignatureError> {
        let id = get(HEADER_ID).ok_or(SignatureError::MissingHeader(HEADER_ID))?;
        let timestamp =
            get(HEADER_TIMESTAMP).ok_or(SignatureError::MissingHeader(HEADER_TIMESTAMP))?;
        let signature =
            get(signature_header).ok_or(SignatureError::MissingHeader(signature_header))?;
        Ok(Headers {
            id,
            timestamp,
            signature,
        })
    }
}

/// A decoded symmetric secret. Its `Debug` output never shows the key.
#[derive(Clone)]
pub struct Secret {
    key: Vec<u8>,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Decodes standard base64 with or without padding, as the reference libraries accept.
const LENIENT_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

impl Secret {
    /// Parses `whsec_<base64>`. Like the reference libraries, a secret without the prefix and
    /// base64 without padding are accepted.
    ///
    /// # Errors
    ///
    /// [`SignatureError::InvalidSecret`] if the rest is not base64 or decodes to no bytes.
    pub fn parse(secret: &str) -> Result<Self, SignatureError> {
        let encoded = secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret);
        let key = LENIENT_BASE64
            .decode(encoded)
            .map_err(|_| SignatureError::InvalidSecret)?;
        if key.is_empty() {
            return Err(SignatureError::InvalidSecret);
        }
        Ok(Secret { key })
    }

    /// The raw HMAC of `id.timestamp.body`.
    fn mac(&self, id: &str, timestamp: &str, body: &[u8]) -> [u8; 32] {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key)
            .expect("BUG: HMAC-SHA256 accepts keys of any length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        mac.finalize().into_bytes().into()
    }

    /// The `webhook-signature` value (`v1,<base64>`) for one message.
    ///
    /// `id` must not contain `.` (it is `.`-joined into the signed content); ids made by
    /// [`new_message_id`] never do.
    pub fn sign(&self, id: &str, timestamp_s: i64, body: &[u8]) -> String {
        let mac = self.mac(id, &timestamp_s.to_string(), body);
        format!("v1,{}", STANDARD.encode(mac))
    }

    /// The raw HMAC of a request (see "Request signatures" in the module docs).
    fn request_mac(
        &self,
        id: &str,
        timestamp: &str,
        method: &str,
        target: &str,
        body: &[u8],
    ) -> [u8; 32] {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key)
            .expect("BUG: HMAC-SHA256 accepts keys of any length");
        for field in [REQUEST_VERSION, id, timestamp, method, target] {
            mac.update(field.as_bytes());
            mac.update(b"\n");
        }
        mac.update(body);
        mac.finalize().into_bytes().into()
    }

    /// The [`HEADER_REQUEST_SIGNATURE`] value (`v2,<base64>`) for one request: `method` as
    /// sent (uppercase), `target` the path and query as on the request line.
    ///
    /// `id` must be free of newlines; ids made by [`new_message_id`] are.
    pub fn sign_request(
        &self,
        id: &str,
        timestamp_s: i64,
        method: &str,
        target: &str,
        body: &[u8],
    ) -> String {
        let mac = self.request_mac(id, &timestamp_s.to_string(), method, target, body);
        format!("{REQUEST_VERSION},{}", STANDARD.encode(mac))
    }

    /// Verifies a received request signed with [`Secret::sign_request`]: the timestamp is
    /// within `tolerance` of `now_s` and one `v2` entry of `headers.signature` (the
    /// [`HEADER_REQUEST_SIGNATURE`] header) matches `method`, `target` and `body`, compared
    /// in constant time. Entries of any other version, `v1` included, never match.
    ///
    /// # Errors
    ///
    /// As [`Secret::verify`].
    pub fn verify_request(
        &self,
        headers: &Headers<'_>,
        method: &str,
        target: &str,
        body: &[u8],
        now_s: i64,
        tolerance: Duration,
    ) -> Result<(), SignatureError> {
        check_timestamp(headers.timestamp, now_s, tolerance)?;
        let expected = self.request_mac(headers.id, headers.timestamp.trim(), method, target, body);
        matches_any(headers.signature, REQUEST_VERSION, &expected)
    }

    /// Verifies a received message: the timestamp is within `tolerance` of `now_s` and one
    /// `v1` entry of the signature header matches, compared in constant time.
    ///
    /// # Errors
    ///
    /// [`SignatureError::InvalidTimestamp`], [`SignatureError::TooOld`],
    /// [`SignatureError::TooNew`] or [`SignatureError::NoMatch`].
    pub fn verify(
        &self,
        headers: &Headers<'_>,
        body: &[u8],
        now_s: i64,
        tolerance: Duration,
    ) -> Result<(), SignatureError> {
        check_timestamp(headers.timestamp, now_s, tolerance)?;
        // Sign the header's timestamp text as received: that is what the sender signed.
        let expected = self.mac(headers.id, headers.timestamp.trim(), body);
        matches_any(headers.signature, "v1", &expected)
    }
}

/// Refuses a timestamp that is not an integer or lies more than `tolerance` from `now_s`.
fn check_timestamp(text: &str, now_s: i64, tolerance: Duration) -> Result<(), SignatureError> {
    let timestamp: i64 = text
        .trim()
        .parse()
        .map_err(|_| SignatureError::InvalidTimestamp)?;
    let tolerance_s = i64::try_from(tolerance.as_secs()).unwrap_or(i64::MAX);
    if now_s.saturating_sub(timestamp) > tolerance_s {
        return Err(SignatureError::TooOld);
    }
    if timestamp.saturating_sub(now_s) > tolerance_s {
        return Err(SignatureError::TooNew);
    }
    Ok(())
}

/// Whether one `<version>,<base64>` entry of `header` with this `version` carries `expected`.
fn matches_any(header: &str, version: &str, expected: &[u8; 32]) -> Result<(), SignatureError> {
    let mut matched = false;
    for entry in header.split_whitespace() {
        let Some((tag, encoded)) = entry.split_once(',') else {
            continue; // Malformed entries are skipped.
        };
        if tag != version {
            continue; // Other versions are skipped.
        }
        let Ok(candidate) = LENIENT_BASE64.decode(encoded) else {
            continue;
        };
        // Constant time, and no early exit, so the position of a match leaks nothing.
        matched |= bool::from(candidate.as_slice().ct_eq(expected));
    }
    if matched {
        Ok(())
    } else {
        Err(SignatureError::NoMatch)
    }
}

/// Signs one message with a serialised secret: returns the `webhook-signature` value
/// `v1,<base64>`.
///
/// # Errors
///
/// [`SignatureError::InvalidSecret`] if `secret` does not parse (see [`Secret::parse`]).
pub fn sign(
    secret: &str,
    msg_id: &str,
    timestamp_s: i64,
    body: &[u8],
) -> Result<String, SignatureError> {
    Ok(Secret::parse(secret)?.sign(msg_id, timestamp_s, body))
}

/// Verifies a received message with a serialised secret; see [`Secret::verify`].
///
/// # Errors
///
/// [`SignatureError::InvalidSecret`] if `secret` does not parse, otherwise as
/// [`Secret::verify`].
pub fn verify(
    secret: &str,
    headers: &Headers<'_>,
    body: &[u8],
    now_s: i64,
    tolerance: Duration,
) -> Result<(), SignatureError> {
    Secret::parse(secret)?.verify(headers, body, now_s, tolerance)
}

/// A new random secret: `whsec_` + base64 of 32 random bytes.
pub fn generate_secret() -> String {
    let mut key = [0u8; 32];
    rand::rng().fill(&mut key);
    format!("{SECRET_PREFIX}{}", STANDARD.encode(key))
}

/// A new random message id: `msg_` + 24 alphanumeric characters (no `.`).
pub fn new_message_id() -> String {
    let suffix: String = rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(24)
        .map(char::from)
        .collect();
    format!("msg_{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET_A: &str = "whsec_YmVydGgtc3RhbmRhcmQtd2ViaG9va3MtdGVzdC1rZXk=";
    const SECRET_B: &str = "whsec_YmVydGgtcm90YXRlZC1zZWNyZXQta2V5LTAwMDIhISE=";
    const ID_A: &str = "msg_2Yb7cQ0rWn4tKx9LmP3sVd8eHf1";
    const TS_A: i64 = 1767225600;
    const BODY_A: &[u8] = br#"{"type":"lease.granted","timestamp":"2026-01-01T00:00:00Z","data":{"lease_id":"lse_01","tenant":"acme"}}"#;
    const SIG_A: &str = "v1,vR0/cLLmL02pRDbeCEPUBpH193cE4mNxJYRwkIbFpR0=";
    const SIG_B: &str = "v1,TfwOwh4Cfqs/qFZqt9bddHd3UlGT84KOvQDuJxOZwZc=";

    fn headers<'a>(signature: &'a str) -> Headers<'a> {
        Headers {
            id: ID_A,
            timestamp: "1767225600",
            signature,
        }
    }

    /// Vector A of standard-webhooks.md: our own signature.
    #[test]
    fn vector_a_signs() {
        assert_eq!(BODY_A.len(), 104);
        assert_eq!(sign(SECRET_A, ID_A, TS_A, BODY_A).unwrap(), SIG_A);
    }

    /// Vector A boundaries: ±300 s pass, 301 s either way fails, a changed byte fails.
    #[test]
    fn vector_a_tolerance_and_tamper() {
        let h = headers(SIG_A);
        assert_eq!(verify(SECRET_A, &h, BODY_A, TS_A, TOLERANCE), Ok(()));
        assert_eq!(verify(SECRET_A, &h, BODY_A, 1767225900, TOLERANCE), Ok(()));
        assert_eq!(verify(SECRET_A, &h, BODY_A, 1767225300, TOLERANCE), Ok(()));
        assert_eq!(
            verify(SECRET_A, &h, BODY_A, 1767225901, TOLERANCE),
            Err(SignatureError::TooOld)
        );
        assert_eq!(
            verify(SECRET_A, &h, BODY_A, 1767225299, TOLERANCE),
            Err(SignatureError::TooNew)
        );
        let mut tampered = BODY_A.to_vec();
        tampered[10] ^= 1;
        assert_eq!(
            verify(SECRET_A, &h, &tampered, TS_A, TOLERANCE),
            Err(SignatureError::NoMatch)
        );
        let other_id = Headers {
            id: "msg_other",
            ..h
        };
        assert_eq!(
            verify(SECRET_A, &other_id, BODY_A, TS_A, TOLERANCE),
            Err(SignatureError::NoMatch)
        );
    }

    /// Vector B: the rotated secret's signature, and a two-entry header verifying with either.
    #[test]
    fn vector_b_rotation() {
        assert_eq!(sign(SECRET_B, ID_A, TS_A, BODY_A).unwrap(), SIG_B);
        let both = format!("{SIG_B} {SIG_A}");
        assert_eq!(
            verify(SECRET_A, &headers(&both), BODY_A, TS_A, TOLERANCE),
            Ok(())
        );
        assert_eq!(
            verify(SECRET_B, &headers(&both), BODY_A, TS_A, TOLERANCE),
            Ok(())
        );
        assert_eq!(
            verify(SECRET_B, &headers(SIG_A), BODY_A, TS_A, TOLERANCE),
            Err(SignatureError::NoMatch)
        );
    }

    /// Vector C: the reference libraries' own unit-test vectors.
    #[test]
    fn vector_c_reference_libraries() {
        let body = br#"{"email":"test@example.com","username":"test_user"}"#;
        assert_eq!(
            sign(
                "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
                "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
                1649367553,
                body
            )
            .unwrap(),
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="
        );
        assert_eq!(
            sign(
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                br#"{"test": 2432232314}"#
            )
            .unwrap(),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    /// Entries of other versions and malformed entries are skipped, not fatal.
    #[test]
    fn other_versions_and_garbage_are_skipped() {
        let header = format!("v1a,AAAA garbage v1,!!!notbase64 {SIG_A}");
        assert_eq!(
            verify(SECRET_A, &headers(&header), BODY_A, TS_A, TOLERANCE),
            Ok(())
        );
        assert_eq!(
            verify(
                SECRET_A,
                &headers("v1a,AAAA v2,xyz"),
                BODY_A,
                TS_A,
                TOLERANCE
            ),
            Err(SignatureError::NoMatch)
        );
        assert_eq!(
            verify(SECRET_A, &headers(""), BODY_A, TS_A, TOLERANCE),
            Err(SignatureError::NoMatch)
        );
    }

    /// A timestamp that is not an integer is refused before any HMAC.
    #[test]
    fn bad_timestamp_is_refused() {
        let h = Headers {
            id: ID_A,
            timestamp: "soon",
            signature: SIG_A,
        };
        assert_eq!(
            verify(SECRET_A, &h, BODY_A, TS_A, TOLERANCE),
            Err(SignatureError::InvalidTimestamp)
        );
    }

    /// Bad secrets are refused; the prefix and the padding are optional, as in the reference.
    #[test]
    fn secret_parsing() {
        assert_eq!(
            Secret::parse("whsec_").unwrap_err(),
            SignatureError::InvalidSecret
        );
        assert_eq!(
            Secret::parse("whsec_***").unwrap_err(),
            SignatureError::InvalidSecret
        );
        let unprefixed = SECRET_A.trim_start_matches(SECRET_PREFIX);
        assert_eq!(sign(unprefixed, ID_A, TS_A, BODY_A).unwrap(), SIG_A);
        assert_eq!(
            sign(SECRET_A.trim_end_matches('='), ID_A, TS_A, BODY_A).unwrap(),
            SIG_A
        );
        assert_eq!(
            format!("{:?}", Secret::parse(SECRET_A).unwrap()),
            "Secret(<redacted>)"
        );
    }

    /// Generated secrets are `whsec_` + 32 bytes, and they differ.
    #[test]
    fn generated_secrets() {
        let a = generate_secret();
        let b = generate_secret();
        assert_ne!(a, b);
        assert!(a.starts_with(SECRET_PREFIX));
        assert_eq!(Secret::parse(&a).unwrap().key.len(), 32);
        let id = new_message_id();
        assert!(id.starts_with("msg_") && !id.contains('.') && id.len() == 28);
    }

    /// A request signature (`v2`) covers method, target and body: the README's worked
    /// example verifies; any change of them, or a body-only `v1` signature, does not.
    #[test]
    fn request_signatures_cover_method_target_and_body() {
        let secret = Secret::parse(SECRET_A).unwrap();
        let body = br#"{"tenant":"acme","installation_id":"7c1e9f0a4b2d4e6f8a0b1c2d3e4f5a6b"}"#;
        let signature = secret.sign_request(ID_A, TS_A, "POST", "/berth/list", body);
        assert_eq!(signature, "v2,a0vrULdSvq5GZJsEJlZQKcu5+4f1tvQH6bQoHaSp0MU=");
        let h = headers(&signature);
        let verify = |method: &str, target: &str, body: &[u8]| {
            secret.verify_request(&h, method, target, body, TS_A, TOLERANCE)
        };
        assert_eq!(verify("POST", "/berth/list", body), Ok(()));
        for (method, target) in [
            ("POST", "/berth/destroy"),
            ("POST", "/berth/list?x=1"),
            ("GET", "/berth/list"),
        ] {
            assert_eq!(
                verify(method, target, body),
                Err(SignatureError::NoMatch),
                "{method} {target}"
            );
        }
        assert_eq!(
            verify("POST", "/berth/list", b"{}"),
            Err(SignatureError::NoMatch)
        );
        // Moving bytes between fields changes the signed content (newline-separated).
        let shifted = secret.sign_request(ID_A, TS_A, "POST", "/berth/lis", b"t\n{}");
        assert_ne!(
            shifted,
            secret.sign_request(ID_A, TS_A, "POST", "/berth/list", b"{}")
        );
        let v1 = secret.sign(ID_A, TS_A, body);
        assert_eq!(
            secret.verify_request(&headers(&v1), "POST", "/berth/list", body, TS_A, TOLERANCE),
            Err(SignatureError::NoMatch)
        );
        assert_eq!(
            secret.verify_request(&h, "POST", "/berth/list", body, TS_A + 301, TOLERANCE),
            Err(SignatureError::TooOld)
        );
    }

    /// Header lookup names the first missing header.
    #[test]
    fn headers_from_lookup() {
        let found = Headers::from_lookup(|name| match name {
            HEADER_ID => Some("msg_1"),
            HEADER_TIMESTAMP => Some("1"),
            HEADER_SIGNATURE => Some("v1,x"),
            _ => None,
        })
        .unwrap();
        assert_eq!(found.id, "msg_1");
        let missing = Headers::from_lookup(|name| (name == HEADER_ID).then_some("msg_1"));
        assert_eq!(
            missing.unwrap_err(),
            SignatureError::MissingHeader(HEADER_TIMESTAMP)
        );
    }
}
