//! The caller's IP address: the socket's peer, or — only when the peer is one
//! of `TRUSTED_PROXIES` — the nearest untrusted hop of `X-Forwarded-For`.
//! Anyone can send that header; believing it from anyone else would let a
//! client pick its own rate-limit bucket.

use std::net::{IpAddr, Ipv4Addr};

use axum::{
    extract::{ConnectInfo, FromRef, FromRequestParts},
    http::{Extensions, HeaderMap, request::Parts},
};
use ipnet::IpNet;

use crate::server::PeerAddr;

/// The client, as far as this server can tell, as the per-IP limits count
/// it: an IPv4 address, or the /64 network of an IPv6 one ([`bucket`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

// Over any state that holds the configuration, not `AppState`: the state
// holds the rate limiter, which reads the client's address from here.
impl<S> FromRequestParts<S> for ClientIp
where
    std::sync::Arc<keel_shared::Config>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let config = std::sync::Arc::<keel_shared::Config>::from_ref(state);
        Ok(Self(bucket(of(
            &parts.extensions,
            &parts.headers,
            &config.http.trusted_proxies,
        ))))
    }
}

/// The address limits count `ip` under: an IPv6 client by its /64. One
/// host is usually handed a whole /64 and picks addresses in it at will
/// (privacy extensions), so counting each address alone would multiply
/// every per-IP limit by 2^64.
pub fn bucket(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let network = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(network.into())
        }
        v4 => v4,
    }
}

/// The client address of a request, from its extensions and headers.
pub fn of(extensions: &Extensions, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    // Without connect info (a server built without it) every client looks alike.
    let peer = extensions.get::<ConnectInfo<PeerAddr>>().map_or(
        IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        |ConnectInfo(PeerAddr(addr))| addr.ip(),
    );
    resolve(peer, headers, trusted)
}

/// Walks `X-Forwarded-For` from the right while the hop is trusted; a hop
/// that does not parse ends the walk at the last address known good, since
/// nothing left of it can be attributed.
pub fn resolve(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    let mut client = peer.to_canonical();
    if !is_trusted(&client) {
        return client;
    }
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    for hop in hops.into_iter().rev() {
        let Ok(ip) = hop.parse::<IpAddr>().map(|ip| ip.to_canonical()) else {
            return client;
        };
        client = ip;
        if !is_trusted(&client) {
            return client;
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_count_by_their_64_and_ipv4_alone() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(bucket(ip("2001:db8:1:2:3:4:5:6")), ip("2001:db8:1:2::"));
        assert_eq!(
            bucket(ip("2001:db8:1:2:ffff:ffff:ffff:ffff")),
            bucket(ip("2001:db8:1:2::1")),
            "one /64, one bucket"
        );
        assert_ne!(bucket(ip("2001:db8:1:2::1")), bucket(ip("2001:db8:1:3::1")));
        assert_eq!(bucket(ip("203.0.113.7")), ip("203.0.113.7"));
        assert_eq!(
            bucket(ip("::ffff:203.0.113.7")),
            ip("203.0.113.7"),
            "IPv4-mapped is IPv4"
        );
    }

    fn headers(xff: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", xff.parse().unwrap());
        h
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let proxy: IpAddr = "10.0.0.5".parse().unwrap();
        let stranger: IpAddr = "203.0.113.9".parse().unwrap();
        let client: IpAddr = "198.51.100.7".parse().unwrap();

        assert_eq!(
            resolve(stranger, &headers("1.2.3.4"), &trusted),
            stranger,
            "a spoofed header is ignored"
        );
        assert_eq!(resolve(proxy, &headers("198.51.100.7"), &trusted), client);
        assert_eq!(
            resolve(proxy, &headers("1.2.3.4, 198.51.100.7, 10.0.0.9"), &trusted),
            client,
            "the nearest untrusted hop, not the client-written leftmost"
        );
        assert_eq!(resolve(proxy, &HeaderMap::new(), &trusted), proxy);
        assert_eq!(
            resolve(proxy, &headers("1.2.3.4, 198.51.100.7:4711"), &trusted),
            proxy,
            "an unparseable hop stops the walk; the spoofable left part is never reached"
        );
        let mapped: IpAddr = "::ffff:10.0.0.5".parse().unwrap();
        assert_eq!(
            resolve(mapped, &headers("198.51.100.7"), &trusted),
            client,
            "IPv4-mapped peers are canonical"
        );
    }
}
