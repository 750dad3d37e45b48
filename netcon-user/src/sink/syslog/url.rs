//! `--forward` syslog URLs: `syslog+udp://HOST[:PORT]`, `syslog+tcp://HOST[:PORT]`, and the
//! server's addresses they name.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs as _};
use std::str::FromStr;

use super::SyslogError;
use crate::sink::url::{HostPart, parse_port, split_host_port, split_scheme};

/// The port when the URL gives none: 514, syslog's UDP port (RFC 5426). RFC 6587 assigns no TCP
/// port, but 514/tcp is what rsyslog and syslog-ng listen on for plain TCP by convention (6514
/// is syslog over TLS, which this does not speak).
pub const DEFAULT_PORT: u16 = 514;

/// How to reach the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// One datagram per message (RFC 5426).
    Udp,
    /// A stream of octet-counted messages (RFC 6587).
    Tcp,
}

impl Transport {
    fn scheme(self) -> &'static str {
        match self {
            Self::Udp => "syslog+udp",
            Self::Tcp => "syslog+tcp",
        }
    }
}

/// The server's host as written in the URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// An IPv4 address, or an IPv6 address written in brackets.
    Ip(IpAddr),
    /// A name, resolved once when forwarding starts.
    Name(String),
}

/// `syslog+udp://HOST[:PORT]` or `syslog+tcp://HOST[:PORT]`; HOST is an IPv4 address, an IPv6
/// address in brackets, or a name (resolved when forwarding starts); PORT defaults to
/// [`DEFAULT_PORT`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardUrl {
    /// UDP or TCP.
    pub transport: Transport,
    /// The server.
    pub host: Host,
    /// The server's port.
    pub port: u16,
}

impl fmt::Display for ForwardUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://", self.transport.scheme())?;
        match &self.host {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]")?,
            Host::Ip(IpAddr::V4(ip)) => write!(f, "{ip}")?,
            Host::Name(name) => f.write_str(name)?,
        }
        write!(f, ":{}", self.port)
    }
}

impl FromStr for ForwardUrl {
    type Err = SyslogError;
    fn from_str(url: &str) -> Result<Self, Self::Err> {
        let bad = |reason| SyslogError::BadUrl {
            url: url.to_owned(),
            reason,
        };
        let (transport, rest) = split_scheme(
            url,
            &[
                ("syslog+udp", Transport::Udp),
                ("syslog+tcp", Transport::Tcp),
            ],
            "no scheme (`syslog+udp://` or `syslog+tcp://`)",
        )
        .map_err(bad)?;
        // Only an authority: a path, query or user name would be silently ignored otherwise.
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains(['/', '?', '#', '@']) {
            return Err(bad("only HOST[:PORT] may follow the scheme"));
        }
        let (host, port) = split_host_port(
            authority,
            "an IPv6 address must be in brackets, `[::1]:514`",
        )
        .map_err(bad)?;
        let host = match host {
            HostPart::Ipv6 { ip, .. } => Host::Ip(IpAddr::V6(ip)),
            HostPart::Other(host) => {
                parse_host(host).ok_or_else(|| bad("not an IPv4 address or host name"))?
            }
        };
        let port = parse_port(port, DEFAULT_PORT).map_err(bad)?;
        Ok(Self {
            transport,
            host,
            port,
        })
    }
}

/// An IPv4 address or a DNS name (letters, digits, `-`, `_`, dot-separated labels).
fn parse_host(host: &str) -> Option<Host> {
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return Some(Host::Ip(IpAddr::V4(ip)));
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    let name = host.strip_suffix('.').unwrap_or(host);
    // All digits and dots would be a mistyped IPv4 address, not a name.
    let numeric = name.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    (name.len() <= 253 && !numeric && name.split('.').all(label_ok))
        .then(|| Host::Name(host.to_owned()))
}

/// The server's addresses: the IP as given, or what the name resolves to now.
pub(super) fn resolve(url: &ForwardUrl) -> Result<Vec<SocketAddr>, SyslogError> {
    match &url.host {
        Host::Ip(ip) => Ok(vec![SocketAddr::new(*ip, url.port)]),
        Host::Name(name) => {
            let addrs: Vec<SocketAddr> = (name.as_str(), url.port)
                .to_socket_addrs()
                .map_err(|source| SyslogError::Resolve {
                    url: url.to_string(),
                    source,
                })?
                .collect();
            if addrs.is_empty() {
                return Err(SyslogError::NoAddress {
                    url: url.to_string(),
                });
            }
            Ok(addrs)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::url;
    use super::*;
    use std::net::Ipv6Addr;

    #[test]
    fn good_urls() {
        let v4 = Host::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST));
        for (text, transport, host, port) in [
            (
                "syslog+udp://127.0.0.1:5514",
                Transport::Udp,
                v4.clone(),
                5514,
            ),
            ("syslog+tcp://127.0.0.1", Transport::Tcp, v4.clone(), 514),
            ("SYSLOG+TCP://127.0.0.1:1/", Transport::Tcp, v4, 1),
            (
                "syslog+udp://[::1]:6514",
                Transport::Udp,
                Host::Ip(IpAddr::V6(Ipv6Addr::LOCALHOST)),
                6514,
            ),
            (
                "syslog+tcp://[fe80::1]",
                Transport::Tcp,
                Host::Ip("fe80::1".parse().expect("ip")),
                514,
            ),
            (
                "syslog+tcp://logs.example.org:65535",
                Transport::Tcp,
                Host::Name("logs.example.org".into()),
                65535,
            ),
            (
                "syslog+udp://loghost",
                Transport::Udp,
                Host::Name("loghost".into()),
                514,
            ),
        ] {
            let parsed = url(text);
            assert_eq!(
                parsed,
                ForwardUrl {
                    transport,
                    host,
                    port
                },
                "{text}"
            );
            // Display gives a URL that parses back to the same thing.
            assert_eq!(url(&parsed.to_string()), parsed, "{text}");
        }
        assert_eq!(
            url("syslog+udp://[::1]").to_string(),
            "syslog+udp://[::1]:514"
        );
    }

    #[test]
    fn bad_urls() {
        for text in [
            "",
            "127.0.0.1:514",
            "udp://127.0.0.1:514",
            "syslog://127.0.0.1:514",
            "syslog+tls://127.0.0.1:6514",
            "syslog+udp://",
            "syslog+udp://:514",
            "syslog+udp://127.0.0.1:",
            "syslog+udp://127.0.0.1:0",
            "syslog+udp://127.0.0.1:65536",
            "syslog+udp://127.0.0.1:x",
            "syslog+udp://::1",
            "syslog+udp://::1:514",
            "syslog+udp://[::1",
            "syslog+udp://[::1]x",
            "syslog+udp://[127.0.0.1]:514",
            "syslog+udp://[nope]:514",
            "syslog+udp://999.1.1.1",
            "syslog+udp://host/path",
            "syslog+udp://user@host",
            "syslog+udp://host?x=1",
            "syslog+udp://bad_host!",
            "syslog+udp://-host",
            "syslog+udp://a..b",
        ] {
            let error = text.parse::<ForwardUrl>().expect_err(text);
            assert!(
                matches!(&error, SyslogError::BadUrl { url, .. } if url == text),
                "{text}: {error}"
            );
            assert!(
                error
                    .to_string()
                    .contains("expected syslog+udp://HOST[:PORT]"),
                "{error}"
            );
        }
    }
}
