//! The `--target IP[:PORT]` value: an IPv4 or IPv6 address, an optional port, and for IPv6 an
//! optional `%DEV` zone (a link-local target needs one).

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;

/// A parsed `--target`: `10.0.0.5`, `10.0.0.5:6666`, `fd00::5`, `[fd00::5]:6666`,
/// `fe80::5%eth0` or `[fe80::5%eth0]:6666`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetArg {
    /// The collector's address.
    pub ip: IpAddr,
    /// The collector's UDP port, when given.
    pub port: Option<u16>,
    /// The IPv6 zone (`%DEV`): the device to reach a link-local target through.
    pub zone: Option<String>,
}

/// Why a `--target` value was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetParseError(String);

impl fmt::Display for TargetParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TargetParseError {}

fn bad(input: &str, why: &str) -> TargetParseError {
    TargetParseError(format!(
        "`{input}`: {why} (expected IP[:PORT], e.g. 10.0.0.5:6666, fd00::5 or [fe80::5%eth0]:6666)"
    ))
}

fn parse_port(input: &str, port: &str) -> Result<u16, TargetParseError> {
    match port.parse::<u16>() {
        Ok(0) => Err(bad(input, "port 0 is not a valid UDP destination")),
        Ok(p) => Ok(p),
        Err(_) => Err(bad(input, &format!("`{port}` is not a port (1-65535)"))),
    }
}

fn parse_v6(input: &str, text: &str) -> Result<(Ipv6Addr, Option<String>), TargetParseError> {
    let (addr, zone) = match text.split_once('%') {
        Some((addr, "")) => {
            return Err(bad(input, &format!("empty zone after `{addr}%`")));
        }
        Some((addr, zone)) => (addr, Some(zone.to_owned())),
        None => (text, None),
    };
    let ip = addr
        .parse::<Ipv6Addr>()
        .map_err(|_| bad(input, &format!("`{addr}` is not an IPv6 address")))?;
    Ok((ip, zone))
}

impl FromStr for TargetArg {
    type Err = TargetParseError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let s = input.trim();
        if let Some(rest) = s.strip_prefix('[') {
            // `[v6]` or `[v6]:port`, as in URLs.
            let (inside, after) = rest
                .split_once(']')
                .ok_or_else(|| bad(input, "`[` without `]`"))?;
            let (ip, zone) = parse_v6(input, inside)?;
            let port = match after {
                "" => None,
                _ => Some(parse_port(
                    input,
                    after
                        .strip_prefix(':')
                        .ok_or_else(|| bad(input, "expected `:PORT` after `]`"))?,
                )?),
            };
            return Ok(TargetArg {
                ip: IpAddr::V6(ip),
                port,
                zone,
            });
        }
        match s.matches(':').count() {
            0 => {
                let ip = s
                    .parse::<IpAddr>()
                    .map_err(|_| bad(input, "not an IP address"))?;
                Ok(TargetArg {
                    ip,
                    port: None,
                    zone: None,
                })
            }
            1 => {
                let (host, port) = s.split_once(':').unwrap_or((s, ""));
                let ip = host
                    .parse::<std::net::Ipv4Addr>()
                    .map_err(|_| bad(input, &format!("`{host}` is not an IPv4 address")))?;
                Ok(TargetArg {
                    ip: IpAddr::V4(ip),
                    port: Some(parse_port(input, port)?),
                    zone: None,
                })
            }
            // A bare IPv6 address: a port needs the brackets.
            _ => {
                let (ip, zone) = parse_v6(input, s)?;
                Ok(TargetArg {
                    ip: IpAddr::V6(ip),
                    port: None,
                    zone,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> TargetArg {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn ipv4_with_and_without_port() {
        assert_eq!(
            parse("10.0.0.5"),
            TargetArg {
                ip: "10.0.0.5".parse().unwrap(),
                port: None,
                zone: None
            }
        );
        assert_eq!(parse("10.0.0.5:6667").port, Some(6667));
    }

    #[test]
    fn ipv6_forms() {
        let t = parse("fd00::5");
        assert_eq!(t.ip, "fd00::5".parse::<IpAddr>().unwrap());
        assert_eq!((t.port, t.zone), (None, None));
        let t = parse("[fd00::5]:6667");
        assert_eq!((t.port, t.zone), (Some(6667), None));
        let t = parse("[fd00::5]");
        assert_eq!(t.port, None);
        let t = parse("fe80::5%eth0");
        assert_eq!(t.zone.as_deref(), Some("eth0"));
        let t = parse("[fe80::5%veth-s1]:7000");
        assert_eq!(t.ip, "fe80::5".parse::<IpAddr>().unwrap());
        assert_eq!((t.port, t.zone.as_deref()), (Some(7000), Some("veth-s1")));
    }

    #[test]
    fn rejects_malformed() {
        for s in [
            "",
            "host.example",
            "10.0.0.5:0",
            "10.0.0.5:70000",
            "10.0.0.5:x",
            "10.0.0.256",
            "[fd00::5",
            "[fd00::5]6666",
            "[10.0.0.5]:1",
            "fe80::5%",
            "fd00::zz",
        ] {
            let err = s.parse::<TargetArg>().expect_err(s);
            assert!(err.to_string().contains("expected IP[:PORT]"), "{err}");
        }
    }
}
