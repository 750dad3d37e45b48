//! NATS URLs (`nats://HOST[:PORT][,HOST[:PORT]...][/PREFIX]`, `tls://...`) and stream names.

use std::fmt;
use std::str::FromStr;

use super::{DEFAULT_PORT, DEFAULT_PREFIX, NatsError};
use crate::sink::url::{HostPart, parse_port, split_host_port, split_scheme};

/// `nats://HOST[:PORT][,HOST[:PORT]...][/PREFIX]` (or `tls://...`): the servers of one cluster
/// and the subject prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsUrl {
    /// TLS (`tls://`) or plain (`nats://`).
    pub tls: bool,
    /// `HOST:PORT` of each server, IPv6 in brackets.
    pub servers: Vec<String>,
    /// Subject prefix, e.g. `netcon` or `site1.netcon`.
    pub prefix: String,
}

impl fmt::Display for NatsUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "tls" } else { "nats" };
        write!(f, "{scheme}://{}/{}", self.servers.join(","), self.prefix)
    }
}

impl FromStr for NatsUrl {
    type Err = NatsError;
    fn from_str(url: &str) -> Result<Self, Self::Err> {
        let bad = |reason| NatsError::BadUrl {
            url: url.to_owned(),
            reason,
        };
        let (tls, rest) = split_scheme(
            url,
            &[("nats", false), ("tls", true)],
            "no scheme (`nats://` or `tls://`)",
        )
        .map_err(bad)?;
        let (hosts, prefix) = match rest.split_once('/') {
            Some((hosts, "")) => (hosts, DEFAULT_PREFIX),
            Some((hosts, prefix)) => (hosts, prefix),
            None => (rest, DEFAULT_PREFIX),
        };
        if hosts.contains(['?', '#', '@']) {
            return Err(bad("only HOST[:PORT] may name a server"));
        }
        let servers = hosts
            .split(',')
            .map(|host| parse_server(host).map_err(bad))
            .collect::<Result<Vec<_>, _>>()?;
        if !valid_prefix(prefix) {
            return Err(bad(
                "the prefix is dot-separated tokens of letters, digits, `-` and `_`",
            ));
        }
        Ok(Self {
            tls,
            servers,
            prefix: prefix.to_owned(),
        })
    }
}

/// `HOST[:PORT]` to `HOST:PORT`.
fn parse_server(server: &str) -> Result<String, &'static str> {
    let (host, port) =
        split_host_port(server, "an IPv6 address must be in brackets, `[::1]:4222`")?;
    let host = match host {
        HostPart::Ipv6 { text, .. } => format!("[{text}]"),
        HostPart::Other(host) => {
            let label_ok = |l: &str| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            };
            if host.len() > 253 || !host.split('.').all(label_ok) {
                return Err("not an IPv4 address or host name");
            }
            host.to_owned()
        }
    };
    let port = parse_port(port, DEFAULT_PORT)?;
    Ok(format!("{host}:{port}"))
}

/// Subject tokens: no wildcards, no empty tokens, nothing a subject may not hold.
fn valid_prefix(prefix: &str) -> bool {
    prefix.len() <= 200
        && prefix.split('.').all(|token| {
            !token.is_empty()
                && token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// A stream name as `JetStream` accepts it (no `.`, `*`, `>`, whitespace or path separators).
///
/// # Errors
/// [`NatsError::BadStreamName`].
pub fn parse_stream_name(name: &str) -> Result<String, NatsError> {
    if !name.is_empty()
        && name.len() <= 200
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        Ok(name.to_owned())
    } else {
        Err(NatsError::BadStreamName {
            name: name.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_defaults_and_clusters() {
        let url: NatsUrl = "nats://10.1.0.5".parse().unwrap();
        assert_eq!(url.servers, vec!["10.1.0.5:4222"]);
        assert_eq!(url.prefix, "netcon");
        assert!(!url.tls);
        let url: NatsUrl = "nats://a:4223,b,[fd00:1::5]:4224/site1.netcon"
            .parse()
            .unwrap();
        assert_eq!(url.servers, vec!["a:4223", "b:4222", "[fd00:1::5]:4224"]);
        assert_eq!(url.prefix, "site1.netcon");
        assert_eq!(
            url.to_string(),
            "nats://a:4223,b:4222,[fd00:1::5]:4224/site1.netcon"
        );
        assert!("tls://nats.example/".parse::<NatsUrl>().unwrap().tls);
    }

    #[test]
    fn bad_urls_say_why() {
        for (url, why) in [
            ("http://a", "unknown scheme"),
            ("nats://a:0", "port"),
            ("nats://a:99999", "port"),
            ("nats://fd00::1", "brackets"),
            ("nats://a/net.*", "prefix"),
            ("nats://a/net..con", "prefix"),
            ("nats://user@a", "only HOST"),
            ("nats://a,,b", "host name"),
        ] {
            let error = url.parse::<NatsUrl>().unwrap_err().to_string();
            assert!(error.contains(why), "{url}: {error}");
        }
        assert!(parse_stream_name("NETCON").is_ok());
        assert!(parse_stream_name("a.b").is_err());
        assert!(parse_stream_name("").is_err());
    }
}
