//! Where a webhook may go: http(s) URLs whose addresses are public. Loopback, private,
//! link-local, shared (CGNAT), unique-local, multicast and unspecified addresses are refused
//! unless the operator allows them; the check runs on the URL when it is stored (a literal
//! address) and on every resolved address when it is sent (the connection is pinned to the
//! checked address, so a DNS answer cannot change between the check and the connect).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::Url;

use crate::error::{Error, Result};

/// The longest URL accepted.
pub const MAX_URL_LEN: usize = 2048;

/// A URL as stored: syntax, scheme, and a literal address's class.
pub fn check_url(field: &str, url: &str, allow_private: bool) -> Result<Url> {
    if url.is_empty() {
        return Err(Error::invalid(field, "is required"));
    }
    if url.len() > MAX_URL_LEN {
        return Err(Error::invalid(
            field,
            format!("must be at most {MAX_URL_LEN} bytes"),
        ));
    }
    let parsed =
        Url::parse(url).map_err(|e| Error::invalid(field, format!("must be a URL ({e})")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(Error::invalid(field, "must be an http or https URL"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(Error::invalid(field, "must not carry credentials"));
    }
    let host = parsed
        .host_str()
        .ok_or_else(|| Error::invalid(field, "must name a host"))?;
    let literal = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>();
    if let Ok(ip) = literal {
        if !allow_private && !is_public(ip) {
            return Err(Error::invalid(
                field,
                "must not be a loopback, private or link-local address",
            ));
        }
    }
    if !allow_private && host.eq_ignore_ascii_case("localhost") {
        return Err(Error::invalid(field, "must not be a loopback address"));
    }
    Ok(parsed)
}

/// Resolves the URL's host to one address it may be sent to.
pub async fn resolve(url: &Url, allow_private: bool) -> std::result::Result<SocketAddr, String> {
    let host = url.host_str().ok_or("no host")?;
    let port = url.port_or_known_default().ok_or("no port")?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| format!("resolving {host}: {e}"))?
        .collect();
    if addrs.is_empty() {
        return Err(format!("{host} has no address"));
    }
    // Any refused address refuses the host: a name must not mix public and private answers.
    if !allow_private {
        if let Some(a) = addrs.iter().find(|a| !is_public(a.ip())) {
            return Err(format!(
                "{host} resolves to {} (not a public address)",
                a.ip()
            ));
        }
    }
    Ok(addrs[0])
}

/// Whether `ip` is a public unicast address.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => public_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => public_v4(v4),
            None => public_v6(v6),
        },
    }
}

fn public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    !(ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        // Shared address space (RFC 6598) and the benchmarking range (RFC 2544).
        || (a == 100 && (64..128).contains(&b))
        || (a == 198 && (b == 18 || b == 19))
        || a >= 240)
}

fn public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        // Unique local fc00::/7, link-local fe80::/10, documentation 2001:db8::/32.
        || (first & 0xfe00) == 0xfc00
        || (first & 0xffc0) == 0xfe80
        || (first == 0x2001 && ip.segments()[1] == 0x0db8))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_targets_are_refused_unless_allowed() {
        for url in [
            "http://127.0.0.1:8080/hook",
            "http://10.1.2.3/",
            "http://192.168.0.1/",
            "http://172.16.0.1/",
            "http://169.254.169.254/latest/meta-data",
            "http://100.64.0.1/",
            "http://[::1]/",
            "http://[fe80::1]/",
            "http://[fd00::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://0.0.0.0/",
            "http://localhost:9000/",
        ] {
            let e = check_url("webhook.url", url, false).expect_err(url);
            assert!(
                e.to_string().starts_with("webhook.url: must not be"),
                "{url}: {e}"
            );
            check_url("webhook.url", url, true).expect(url);
        }
        check_url("webhook.url", "https://hooks.example.com/x?y=1", false).expect("public");
        check_url("webhook.url", "https://8.8.8.8/", false).expect("public literal");
        for (url, rule) in [
            ("", "is required"),
            ("ftp://example.com/", "must be an http or https URL"),
            ("https://user:pw@example.com/", "must not carry credentials"),
            ("not a url", "must be a URL"),
        ] {
            let e = check_url("webhook.url", url, true).expect_err(url);
            assert!(e.to_string().contains(rule), "{url}: {e}");
        }
    }

    #[tokio::test]
    async fn resolved_addresses_are_checked_too() {
        let url = Url::parse("http://localhost:1/").expect("url");
        let e = resolve(&url, false).await.expect_err("loopback");
        assert!(e.contains("not a public address"), "{e}");
        assert!(resolve(&url, true)
            .await
            .expect("allowed")
            .ip()
            .is_loopback());
    }
}
