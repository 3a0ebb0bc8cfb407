//! Which address an event came from: the peer, or — only when the peer is a
//! trusted proxy — the right-most untrusted hop of `X-Forwarded-For`.

use std::net::IpAddr;

use http::HeaderMap;
use ipnet::IpNet;

#[derive(Debug, Clone, Default)]
pub struct ClientIp {
    trusted: Vec<IpNet>,
}

impl ClientIp {
    pub fn new(trusted: Vec<IpNet>) -> Self {
        Self { trusted }
    }

    /// Whether `ip` is one of the configured proxies.
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.trusted.iter().any(|n| n.contains(&ip))
    }

    /// Walks `X-Forwarded-For` from the right while the hops are trusted
    /// proxies; the first untrusted one is the client. Clients can prepend
    /// anything, so nothing left of that hop is believed.
    pub fn resolve(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = canonical(peer);
        if !self.is_trusted(peer) {
            return peer;
        }
        let mut client = peer;
        let hops = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .collect::<Vec<_>>();
        for hop in hops.iter().rev() {
            let Ok(ip) = hop.trim().parse::<IpAddr>() else {
                break;
            };
            client = canonical(ip);
            if !self.is_trusted(client) {
                break;
            }
        }
        client
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(trusted: &[&str], peer: &str, xff: Option<&str>, expected: &str) {
        let r = ClientIp::new(trusted.iter().map(|n| n.parse().expect("net")).collect());
        let mut h = HeaderMap::new();
        if let Some(x) = xff {
            h.insert("x-forwarded-for", x.parse().expect("value"));
        }
        let got = r.resolve(peer.parse().expect("peer"), &h);
        assert_eq!(got.to_string(), expected, "{trusted:?} {peer} {xff:?}");
    }

    #[test]
    fn forwarded_for_only_from_trusted_proxies() {
        check(&[], "198.51.100.1", Some("203.0.113.5"), "198.51.100.1");
        check(
            &["10.0.0.0/8"],
            "10.0.0.2",
            Some("203.0.113.5"),
            "203.0.113.5",
        );
        check(
            &["10.0.0.0/8"],
            "10.0.0.2",
            Some("1.2.3.4, 203.0.113.5, 10.0.0.9"),
            "203.0.113.5",
        );
        check(
            &["10.0.0.0/8"],
            "10.0.0.2",
            Some("10.0.0.7, 10.0.0.9"),
            "10.0.0.7",
        );
        check(&["10.0.0.0/8"], "10.0.0.2", None, "10.0.0.2");
        check(
            &["10.0.0.0/8"],
            "10.0.0.2",
            Some("garbage, 203.0.113.5"),
            "203.0.113.5",
        );
        check(
            &["10.0.0.0/8"],
            "10.0.0.2",
            Some("203.0.113.5, garbage"),
            "10.0.0.2",
        );
        check(
            &["10.0.0.0/8"],
            "::ffff:10.0.0.2",
            Some("2001:db8::1"),
            "2001:db8::1",
        );
        check(
            &["10.0.0.0/8"],
            "192.0.2.1",
            Some("203.0.113.5"),
            "192.0.2.1",
        );
    }
}
