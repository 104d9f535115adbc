//! Keeping berth's outbound requests out of private networks (an SSRF guard).
//!
//! Tenants configure URLs that berth calls (the `http` provider's endpoint, the `hetzner`
//! provider's base URL, webhook targets). Without a guard, a tenant could make berth call
//! its own admin port, a cloud metadata service (`169.254.169.254`) or anything else on the
//! operator's network. The rules:
//!
//! - only `http` and `https` URLs;
//! - every address the host resolves to must be public: not loopback, private (RFC 1918,
//!   `fc00::/7`), link-local, unspecified, CGNAT (`100.64.0.0/10`), multicast, broadcast,
//!   reserved, benchmarking or documentation space, nor an IPv6 form embedding such an IPv4
//!   address (mapped `::ffff:a.b.c.d`, translated `::ffff:0:a.b.c.d` (`::ffff:0:0:0/96`),
//!   compatible `::a.b.c.d`, NAT64 `64:ff9b::/96`, 6to4 `2002::/16`), nor the local-use NAT64
//!   prefix `64:ff9b:1::/48` (RFC 8215), whose translators sit on the operator's own network
//!   and whose embedding is not fixed, so it is refused whatever address it carries;
//! - the operator may allow private addresses (`allow_private`), for tests and for endpoints
//!   on their own network.
//!
//! [`ensure_public`] (or [`check`], which also says whether a refusal is final) checks before
//! a request, which gives a clear message. Because DNS may
//! answer differently a moment later (DNS rebinding), clients also resolve through
//! [`PublicResolver`], which drops non-public addresses at connect time.
//!
//! # Proxies
//!
//! reqwest sends through any proxy named by `HTTP_PROXY`, `HTTPS_PROXY` or `ALL_PROXY`
//! (lowercase too) unless told otherwise. Behind such a proxy the resolver only ever resolves
//! the proxy's address, never the target's, so the guard would see nothing. Every client berth
//! builds is therefore routed by [`route`]: straight to the target, ignoring those variables,
//! unless the operator names a proxy (`--outbound-proxy`). Through that proxy, the target is
//! resolved and judged before each request ([`check`]; the proxy itself may be on a private
//! address). The proxy resolves the target again when it connects, so a DNS answer that
//! changes in between is not seen here: an operator who routes berth through a proxy should
//! let the proxy refuse private destinations too.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use url::{Host, Url};

/// Why an address is not public, or `None` when it is. The reason is meant for messages.
pub fn non_public_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_reason(v4),
        IpAddr::V6(v6) => v6_reason(v6),
    }
}

/// Whether an address is publicly routable (see the module docs for the refused ranges).
pub fn is_public(ip: IpAddr) -> bool {
    non_public_reason(ip).is_none()
}

fn in_v4(ip: Ipv4Addr, net: [u8; 4], prefix: u32) -> bool {
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    };
    u32::from(ip) & mask == u32::from(Ipv4Addr::from(net)) & mask
}

fn v4_reason(ip: Ipv4Addr) -> Option<&'static str> {
    // Ordered from most to least specific where ranges nest (192.0.0.0/24 and 192.0.2.0/24).
    const RANGES: [([u8; 4], u32, &str); 16] = [
        ([0, 0, 0, 0], 8, "unspecified (\"this network\")"),
        ([10, 0, 0, 0], 8, "private"),
        ([100, 64, 0, 0], 10, "shared address space (CGNAT)"),
        ([127, 0, 0, 0], 8, "loopback"),
        ([169, 254, 0, 0], 16, "link-local"),
        ([172, 16, 0, 0], 12, "private"),
        ([192, 0, 0, 0], 24, "IETF protocol assignments"),
        ([192, 0, 2, 0], 24, "documentation"),
        ([192, 88, 99, 0], 24, "6to4 relay anycast"),
        ([192, 168, 0, 0], 16, "private"),
        ([198, 18, 0, 0], 15, "benchmarking"),
        ([198, 51, 100, 0], 24, "documentation"),
        ([203, 0, 113, 0], 24, "documentation"),
        ([224, 0, 0, 0], 4, "multicast"),
        ([255, 255, 255, 255], 32, "broadcast"),
        ([240, 0, 0, 0], 4, "reserved"),
    ];
    RANGES
        .iter()
        .find(|(net, prefix, _)| in_v4(ip, *net, *prefix))
        .map(|(_, _, reason)| *reason)
}

fn v6_reason(ip: Ipv6Addr) -> Option<&'static str> {
    let segments = ip.segments();
    let embedded_v4 = |high: u16, low: u16| {
        Ipv4Addr::new((high >> 8) as u8, high as u8, (low >> 8) as u8, low as u8)
    };
    if ip.is_unspecified() {
        return Some("unspecified");
    }
    if ip.is_loopback() {
        return Some("loopback");
    }
    // IPv4-mapped (::ffff:a.b.c.d) reaches the IPv4 address on dual-stack sockets.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return v4_reason(v4);
    }
    // IPv4-translated (::ffff:0:a.b.c.d, RFC 2765 SIIT) reaches the IPv4 address through a
    // translator: judge the embedded address, like the mapped form.
    if segments[..6] == [0, 0, 0, 0, 0xffff, 0] {
        return v4_reason(embedded_v4(segments[6], segments[7]));
    }
    // Deprecated IPv4-compatible (::a.b.c.d): judge the embedded address.
    if segments[..6].iter().all(|&s| s == 0) {
        return v4_reason(embedded_v4(segments[6], segments[7])).or(Some("IPv4-compatible"));
    }
    // NAT64 well-known prefix 64:ff9b::/96 translates to the embedded IPv4 address.
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return v4_reason(embedded_v4(segments[6], segments[7]));
    }
    // Local-use NAT64 64:ff9b:1::/48 (RFC 8215) is translated by the operator's own network,
    // with a prefix length (and so an embedding) of its choosing: refuse it outright.
    if segments[..3] == [0x64, 0xff9b, 1] {
        return Some("local-use NAT64 (RFC 8215)");
    }
    // 6to4 2002:a.b.c.d::/48 embeds an IPv4 address in segments 1 and 2.
    if segments[0] == 0x2002 {
        return v4_reason(embedded_v4(segments[1], segments[2]));
    }
    let first = segments[0];
    if first & 0xfe00 == 0xfc00 {
        return Some("unique local (private)");
    }
    if first & 0xffc0 == 0xfe80 {
        return Some("link-local");
    }
    if first & 0xffc0 == 0xfec0 {
        return Some("site-local (deprecated)");
    }
    if first & 0xff00 == 0xff00 {
        return Some("multicast");
    }
    if first == 0x2001 && segments[1] == 0x0db8 {
        return Some("documentation");
    }
    if first == 0x3fff && segments[1] & 0xf000 == 0 {
        return Some("documentation");
    }
    if segments[..4] == [0x0100, 0, 0, 0] {
        return Some("discard-only");
    }
    None
}

/// Checks the parts of a URL that need no DNS: the scheme, the presence of a host, and a host
/// written as an IP address. Used where no I/O is allowed (building a provider).
///
/// # Errors
///
/// A message for people saying why the URL is refused.
pub fn check_static(url: &Url, allow_private: bool) -> Result<(), String> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "URL scheme `{}` is not allowed: use http or https",
            url.scheme()
        ));
    }
    match url.host() {
        None => Err("URL has no host".to_string()),
        Some(Host::Domain("")) => Err("URL has no host".to_string()),
        Some(_) if allow_private => Ok(()),
        Some(Host::Ipv4(v4)) => refuse_if_private(IpAddr::V4(v4)),
        Some(Host::Ipv6(v6)) => refuse_if_private(IpAddr::V6(v6)),
        Some(Host::Domain(_)) => Ok(()),
    }
}

fn refuse_if_private(ip: IpAddr) -> Result<(), String> {
    match non_public_reason(ip) {
        None => Ok(()),
        Some(reason) => Err(format!(
            "address {ip} is {reason}; private network targets are refused unless the operator \
             allows them"
        )),
    }
}

/// Why [`check`] refused a URL.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The URL is not allowed, whatever DNS says: a scheme, a missing host, a private
    /// address. Retrying will not help.
    #[error("{0}")]
    Refused(String),
    /// The host could not be resolved now. Retrying may help.
    #[error("{0}")]
    Unresolved(String),
}

/// Like [`ensure_public`], but says whether the refusal is permanent or a DNS failure.
///
/// # Errors
///
/// [`Refusal::Refused`] for a URL that must not be called, [`Refusal::Unresolved`] when its
/// host does not resolve.
pub async fn check(url: &Url, allow_private: bool) -> Result<(), Refusal> {
    check_static(url, allow_private).map_err(Refusal::Refused)?;
    if allow_private {
        return Ok(());
    }
    let Some(Host::Domain(domain)) = url.host() else {
        return Ok(()); // An IP literal was fully judged by `check_static`.
    };
    let port = url.port_or_known_default().unwrap_or(443);
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((domain, port))
        .await
        .map_err(|e| Refusal::Unresolved(format!("cannot resolve `{domain}`: {e}")))?
        .collect();
    if addrs.is_empty() {
        return Err(Refusal::Unresolved(format!(
            "`{domain}` resolves to no address"
        )));
    }
    for addr in addrs {
        refuse_if_private(addr.ip())
            .map_err(|e| Refusal::Refused(format!("`{domain}` resolves to {e}")))?;
    }
    Ok(())
}

/// Refuses a URL that is not http(s) or whose host resolves to any non-public address, unless
/// `allow_private`.
///
/// Every resolved address must be public: a host with one public and one private address is
/// refused, since the client could connect to either.
///
/// # Errors
///
/// A message for people: the scheme, an unresolvable host, or the offending address.
pub async fn ensure_public(url: &Url, allow_private: bool) -> Result<(), String> {
    check(url, allow_private)
        .await
        .map_err(|refusal| refusal.to_string())
}

/// Checks the URL of an outbound proxy (`--outbound-proxy`): `http` or `https`, with a host,
/// and nothing after it but `/`. It may carry `user:password@` for the proxy's basic auth.
///
/// # Errors
///
/// A message for people saying what is wrong with the URL (never echoing a password).
pub fn parse_proxy(text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|e| format!("the proxy is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "proxy scheme `{}` is not supported: use http:// or https://",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("the proxy URL has no host".to_string());
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err("the proxy URL must be only scheme, host and port".to_string());
    }
    Ok(url)
}

/// Routes a client's requests: through `proxy` when the operator named one, otherwise
/// straight to the target, never through a proxy named by the environment. Going straight,
/// the client resolves through [`PublicResolver`] unless `allow_private`; through a proxy it
/// resolves only the proxy's own name, so callers must [`check`] each target first (see the
/// module docs).
///
/// `proxy` must come from [`parse_proxy`].
pub fn route(
    builder: reqwest::ClientBuilder,
    allow_private: bool,
    proxy: Option<&Url>,
) -> reqwest::ClientBuilder {
    match proxy {
        Some(proxy) => builder.proxy(
            reqwest::Proxy::all(proxy.clone())
                .expect("BUG: parse_proxy admits only http(s) URLs, which reqwest takes"),
        ),
        None if allow_private => builder.no_proxy(),
        None => builder
            .no_proxy()
            .dns_resolver(std::sync::Arc::new(PublicResolver)),
    }
}

/// A reqwest DNS resolver that drops non-public addresses, so that a host which passed
/// [`ensure_public`] cannot be re-pointed at a private address before the connection is made.
///
/// reqwest does not resolve IP literals; [`check_static`] covers those.
#[derive(Clone, Copy, Debug, Default)]
pub struct PublicResolver;

impl reqwest::dns::Resolve for PublicResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        Box::pin(async move {
            let host = name.as_str().to_string();
            let all: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let addrs: Vec<SocketAddr> = all
                .iter()
                .copied()
                .filter(|addr| is_public(addr.ip()))
                .collect();
            if addrs.is_empty() {
                let why = all
                    .first()
                    .and_then(|addr| Some((addr.ip(), non_public_reason(addr.ip())?)))
                    .map(|(ip, reason)| format!(" ({ip} is {reason})"))
                    .unwrap_or_default();
                let message = format!(
                    "`{host}` has no public address{why}; private network targets are refused \
                     unless the operator allows them"
                );
                return Err(
                    std::io::Error::new(std::io::ErrorKind::PermissionDenied, message).into(),
                );
            }
            let addrs: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    /// Every refused IPv4 range is refused, at its edges too.
    #[test]
    fn refuses_non_public_v4() {
        for text in [
            "0.0.0.0",
            "0.1.2.3",
            "10.0.0.1",
            "10.255.255.255",
            "100.64.0.1",
            "100.127.255.254",
            "127.0.0.1",
            "127.255.0.1",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.19.255.255",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
        ] {
            assert!(!is_public(ip(text)), "{text} should be refused");
        }
    }

    /// Public IPv4 addresses next to the refused ranges pass.
    #[test]
    fn allows_public_v4() {
        for text in [
            "1.1.1.1",
            "8.8.8.8",
            "9.255.255.255",
            "11.0.0.1",
            "100.63.255.255",
            "100.128.0.1",
            "172.15.255.255",
            "172.32.0.1",
            "192.167.1.1",
            "192.169.0.1",
            "198.20.0.1",
            "223.255.255.255",
            "5.9.10.11",
        ] {
            assert!(is_public(ip(text)), "{text} should pass");
        }
    }

    /// Refused IPv6 ranges, including IPv6 forms of refused IPv4 addresses.
    #[test]
    fn refuses_non_public_v6() {
        for text in [
            "::",
            "::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "febf::1",
            "fec0::1",
            "ff02::1",
            "2001:db8::1",
            "3fff::1",
            "100::1",
            "::ffff:127.0.0.1",
            "::ffff:10.1.2.3",
            "::ffff:169.254.169.254",
            "::ffff:100.64.0.1",
            "::127.0.0.1",
            "::8.8.8.8",
            "64:ff9b::10.0.0.1",
            "64:ff9b::7f00:1",
            "2002:c0a8:0101::1",
            "2002:7f00:1::1",
            // IPv4-translated (::ffff:0:0:0/96) forms of refused IPv4 addresses.
            "::ffff:0:127.0.0.1",
            "::ffff:0:10.0.0.1",
            "::ffff:0:169.254.169.254",
            "::ffff:0:0.0.0.0",
            "::ffff:0:192.168.1.1",
            // Local-use NAT64 (64:ff9b:1::/48), whatever it embeds.
            "64:ff9b:1::",
            "64:ff9b:1::808:808",
            "64:ff9b:1:0:8:808:808:0",
            "64:ff9b:1:ffff:ffff:ffff:ffff:ffff",
        ] {
            assert!(!is_public(ip(text)), "{text} should be refused");
        }
    }

    /// Public IPv6 addresses, and IPv6 forms of public IPv4 addresses, pass.
    #[test]
    fn allows_public_v6() {
        for text in [
            "2a01:4f8::1",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:0808:0808::1",
            "2001:4860::8888",
            // IPv4-translated forms of public IPv4 addresses.
            "::ffff:0:8.8.8.8",
            "::ffff:0:1.1.1.1",
            // The /48s on either side of the local-use NAT64 prefix.
            "64:ff9b:0:1::",
            "64:ff9b:2::1",
        ] {
            assert!(is_public(ip(text)), "{text} should pass");
        }
    }

    /// Only http(s) URLs with a host; IP literals are judged without DNS.
    #[test]
    fn static_checks() {
        let url = |text: &str| Url::parse(text).unwrap();
        assert!(check_static(&url("ftp://example.com/"), true).is_err());
        assert!(check_static(&url("file:///etc/passwd"), true).is_err());
        assert!(check_static(&url("http://127.0.0.1:8080/"), false).is_err());
        assert!(check_static(&url("http://[::ffff:127.0.0.1]/"), false).is_err());
        assert!(check_static(&url("http://127.0.0.1:8080/"), true).is_ok());
        assert!(check_static(&url("https://8.8.8.8/"), false).is_ok());
        assert!(check_static(&url("https://example.com/"), false).is_ok());
    }

    /// Proxy URLs: http(s) with a host and nothing else.
    #[test]
    fn proxy_urls() {
        assert!(parse_proxy("http://127.0.0.1:3128").is_ok());
        assert!(parse_proxy("https://user:pw@proxy.example:8443/").is_ok());
        for bad in [
            "socks5://127.0.0.1:1080",
            "http://",
            "http://proxy/path",
            "http://proxy/?q=1",
            "proxy:3128",
            "",
        ] {
            assert!(parse_proxy(bad).is_err(), "{bad}");
        }
        let error = parse_proxy("ftp://user:secret@proxy/").unwrap_err();
        assert!(!error.contains("secret"), "{error}");
    }

    /// `ensure_public` refuses loopback literals and `localhost`, unless allowed.
    #[tokio::test]
    async fn ensure_public_resolves() {
        let url = |text: &str| Url::parse(text).unwrap();
        assert!(
            ensure_public(&url("http://127.0.0.1:1/"), false)
                .await
                .is_err()
        );
        assert!(ensure_public(&url("http://[::1]:1/"), false).await.is_err());
        // `localhost` resolves locally (from /etc/hosts), without network traffic.
        let error = ensure_public(&url("http://localhost:1/"), false)
            .await
            .unwrap_err();
        assert!(
            error.contains("loopback") || error.contains("resolve"),
            "{error}"
        );
        assert!(
            ensure_public(&url("http://localhost:1/"), true)
                .await
                .is_ok()
        );
        assert!(
            ensure_public(&url("gopher://localhost/"), true)
                .await
                .is_err()
        );
        assert!(ensure_public(&url("https://1.1.1.1/"), false).await.is_ok());
    }
}
