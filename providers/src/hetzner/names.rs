//! Names and values as Hetzner takes them: label values and keys, server names, the IPv6
//! address of a server's network, user data, and decimal prices as micros (see "Label values"
//! in the provider's docs).

use std::net::Ipv6Addr;

use sha2::{Digest as _, Sha256};

use crate::RunnerSpec;

/// A text as a Hetzner label value: itself when it is a valid one, otherwise
/// `<readable part>_<first 16 hex digits of its SHA-256>` (or the digits alone when nothing
/// readable is left), at most 63 characters and alphanumeric at both ends. Deterministic, so
/// lookups find what creates labelled. See "Label values" in the module docs.
pub fn label_value(text: &str) -> String {
    if valid_label_value(text) {
        return text.to_string();
    }
    let digest = Sha256::digest(text.as_bytes());
    let hex: String = digest[..8]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    let readable: String = text
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .take(46)
        .collect();
    let readable = readable.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    if readable.is_empty() {
        hex
    } else {
        format!("{readable}_{hex}")
    }
}

/// The address of a server on its IPv6 network: `<prefix>::1` of a `/64` (or shorter)
/// network as the API reports it (`2001:db8::/64` → `2001:db8::1`), or the address itself
/// when the API gives one. `None` for text that is neither.
pub fn ipv6_host(network: &str) -> Option<String> {
    let (address, prefix) = match network.split_once('/') {
        Some((address, prefix)) => (address, prefix.parse::<u32>().ok()?),
        None => (network, 128),
    };
    let address: Ipv6Addr = address.trim().parse().ok()?;
    if prefix >= 128 {
        return Some(address.to_string());
    }
    let host_bits = 128 - prefix;
    let network_part = u128::from(address)
        .checked_shr(host_bits)
        .and_then(|high| high.checked_shl(host_bits))
        .unwrap_or(0);
    Some(Ipv6Addr::from(network_part | 1).to_string())
}

/// `berth-<lease id>` as an RFC 1123 hostname: lowercase `[a-z0-9-]`, at most 63 characters,
/// alphanumeric at both ends.
pub fn server_name(lease_id: &str) -> String {
    let mut name = String::from("berth-");
    name.extend(lease_id.chars().map(|c| {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_alphanumeric() { c } else { '-' }
    }));
    name.truncate(63);
    name.trim_end_matches('-').to_string()
}

pub(super) fn render_user_data(template: &str, spec: &RunnerSpec) -> String {
    let var = |name: &str| spec.env.get(name).map(String::as_str).unwrap_or_default();
    let lease_id = spec.env.get("BERTH_LEASE_ID").unwrap_or(&spec.lease_id);
    template
        .replace("{{BERTH_LEASE_ID}}", lease_id)
        .replace("{{BERTH_CALLBACK_URL}}", var("BERTH_CALLBACK_URL"))
        .replace("{{BERTH_RUNNER_TOKEN}}", var("BERTH_RUNNER_TOKEN"))
        .replace("{{BERTH_GITHUB_JITCONFIG}}", var("BERTH_GITHUB_JITCONFIG"))
}

/// `[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?`: a label name, or a non-empty value.
fn valid_label_part(text: &str, max: usize) -> bool {
    let bytes = text.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= max
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A label value: empty, or a valid label part.
pub fn valid_label_value(value: &str) -> bool {
    value.is_empty() || valid_label_part(value, 63)
}

/// A label key: an optional DNS prefix (≤ 253 characters, not the reserved `hetzner.cloud`)
/// and `/`, then a name.
pub fn valid_label_key(key: &str) -> bool {
    match key.rsplit_once('/') {
        None => valid_label_part(key, 63),
        Some((prefix, name)) => {
            valid_label_part(name, 63)
                && valid_label_part(prefix, 253)
                && !prefix.contains('_')
                && prefix != "hetzner.cloud"
                && !prefix.ends_with(".hetzner.cloud")
        }
    }
}

/// Parses a non-negative decimal string (`"0.0071400000000000"`) into integer micro-units,
/// rounding any partial micro up. No floating point is involved. `None` if it is not such a
/// decimal or does not fit an `i64`.
pub fn decimal_to_micros(text: &str) -> Option<i64> {
    let text = text.trim();
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let digits = |part: &str| part.bytes().all(|b| b.is_ascii_digit());
    if (whole.is_empty() && fraction.is_empty()) || !digits(whole) || !digits(fraction) {
        return None;
    }
    let mut micros: i64 = 0;
    for digit in whole.bytes() {
        micros = micros
            .checked_mul(10)?
            .checked_add(i64::from(digit - b'0'))?;
    }
    micros = micros.checked_mul(1_000_000)?;
    let mut scale = 100_000;
    for digit in fraction.bytes().take(6) {
        micros = micros.checked_add(i64::from(digit - b'0') * scale)?;
        scale /= 10;
    }
    if fraction.bytes().skip(6).any(|digit| digit != b'0') {
        micros = micros.checked_add(1)?;
    }
    Some(micros)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decimal strings become exact micros; partial micros round up; garbage is refused.
    #[test]
    fn decimal_prices() {
        assert_eq!(decimal_to_micros("0.0071400000000000"), Some(7_140));
        assert_eq!(decimal_to_micros("0.0060000000"), Some(6_000));
        assert_eq!(decimal_to_micros("4.5101000000000000"), Some(4_510_100));
        assert_eq!(decimal_to_micros("0.00000001"), Some(1));
        assert_eq!(decimal_to_micros("0.0000011"), Some(2));
        assert_eq!(decimal_to_micros("0.000001"), Some(1));
        assert_eq!(decimal_to_micros("12"), Some(12_000_000));
        assert_eq!(decimal_to_micros(".5"), Some(500_000));
        assert_eq!(decimal_to_micros("0"), Some(0));
        for bad in [
            "",
            ".",
            "-1.0",
            "1e-3",
            "1.2.3",
            "abc",
            "1,5",
            "99999999999999999999",
        ] {
            assert_eq!(decimal_to_micros(bad), None, "{bad:?}");
        }
    }

    /// Server names are valid hostnames for any lease id.
    #[test]
    fn server_names() {
        assert_eq!(server_name("lease_01JD0ZABC"), "berth-lease-01jd0zabc");
        let long = server_name(&"x".repeat(100));
        assert_eq!(long.len(), 63);
        assert_eq!(
            server_name(&format!("{}_", "y".repeat(56))),
            format!("berth-{}", "y".repeat(56))
        );
        let odd = server_name("Lease.é/1");
        assert!(
            odd.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
            "{odd}"
        );
    }

    /// Valid label values are kept; others (a name ending in `-`, characters Hetzner
    /// refuses, too long) become valid, distinct, deterministic values.
    #[test]
    fn label_values_are_mapped_only_when_invalid() {
        for kept in ["acme", "lease_01JD0Z", "a-b.c_d", ""] {
            assert_eq!(label_value(kept), kept);
        }
        let long = format!("{}-", "t".repeat(62));
        let mapped: Vec<String> = ["acme-", "acme--", "-", "a/b", "é", &long]
            .iter()
            .map(|name| label_value(name))
            .collect();
        for value in &mapped {
            assert!(valid_label_value(value) && !value.is_empty(), "{value}");
        }
        assert!(mapped[0].starts_with("acme_"), "{}", mapped[0]);
        assert_ne!(mapped[0], mapped[1], "two names, one label");
        assert_eq!(label_value("acme-"), mapped[0], "not deterministic");
        assert_eq!(mapped[2].len(), 16, "{}", mapped[2]);
    }

    /// The IPv6 address of a server is `::1` of its network; an address stays itself.
    #[test]
    fn ipv6_hosts() {
        assert_eq!(ipv6_host("2001:db8::/64").as_deref(), Some("2001:db8::1"));
        assert_eq!(
            ipv6_host("2a01:4f8:c17:b8f::/64").as_deref(),
            Some("2a01:4f8:c17:b8f::1")
        );
        assert_eq!(
            ipv6_host("2001:db8:0:1:ffff::/64").as_deref(),
            Some("2001:db8:0:1::1"),
            "host bits are cleared"
        );
        assert_eq!(ipv6_host("2001:db8::/56").as_deref(), Some("2001:db8::1"));
        assert_eq!(ipv6_host("2001:db8::5").as_deref(), Some("2001:db8::5"));
        assert_eq!(ipv6_host("::/0").as_deref(), Some("::1"));
        for bad in ["", "2001:db8::/x", "203.0.113.1", "not an address"] {
            assert_eq!(ipv6_host(bad), None, "{bad}");
        }
    }

    /// Label keys and values follow the documented rules.
    #[test]
    fn label_rules() {
        for good in [
            "env",
            "berth-lease",
            "a",
            "k8s.io/role",
            "example.com/x_y",
            "A9",
        ] {
            assert!(valid_label_key(good), "{good}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "has space",
            "hetzner.cloud/x",
            "a/b/",
            "/x",
            "ex_ample.com/x",
            &"k".repeat(64),
        ] {
            assert!(!valid_label_key(bad), "{bad}");
        }
        for good in ["", "acme", "lease_01", "v1.2-3"] {
            assert!(valid_label_value(good), "{good}");
        }
        for bad in ["a/b", "a:b", "a=b", "a,b", " a", "_a", &"v".repeat(64)] {
            assert!(!valid_label_value(bad), "{bad}");
        }
    }
}
