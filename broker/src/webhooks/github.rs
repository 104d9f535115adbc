//! GitHub's webhook signature: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(secret, body)>`
//! over the raw body, compared in constant time.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// Whether `header` is `sha256=<hex HMAC-SHA256(secret, body)>`, compared in constant time.
pub fn signature_matches(secret: &[u8], body: &[u8], header: Option<&str>) -> bool {
    let Some(header) = header else { return false };
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("BUG: HMAC takes any key length");
    mac.update(body);
    let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    expected.as_bytes().ct_eq(header.trim().as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// GitHub's documented test vector and ours.
    #[test]
    fn signature_vectors() {
        assert!(signature_matches(
            b"It's a Secret to Everybody",
            b"Hello, World!",
            Some("sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17")
        ));
        let body =
            br#"{"action":"queued","workflow_job":{"id":1,"labels":["self-hosted","linux"]}}"#;
        assert!(signature_matches(
            b"berth-gh-test-secret",
            body,
            Some("sha256=1b719581f806cb2ad3fcc254445da0bf72bec0f2ce591bfba3e734b826fd6bf6")
        ));
        assert!(!signature_matches(
            b"berth-gh-test-secret",
            body,
            Some("sha256=00")
        ));
        assert!(!signature_matches(b"berth-gh-test-secret", body, None));
        assert!(!signature_matches(
            b"other",
            body,
            Some("sha256=1b719581f806cb2ad3fcc254445da0bf72bec0f2ce591bfba3e734b826fd6bf6")
        ));
    }
}
