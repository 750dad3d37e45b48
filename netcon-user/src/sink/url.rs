//! The URL pieces the forwarding sinks share: `SCHEME://`, and one server's `HOST[:PORT]`
//! with an IPv6 address in brackets. Each sink keeps its own rules for names and defaults.

use std::net::Ipv6Addr;

/// `SCHEME://REST`: the value of the scheme among `schemes` (compared ignoring ASCII case)
/// and the rest. `missing` is the reason when there is no `://` at all.
pub(crate) fn split_scheme<'a, T: Copy>(
    url: &'a str,
    schemes: &[(&str, T)],
    missing: &'static str,
) -> Result<(T, &'a str), &'static str> {
    let (scheme, rest) = url.split_once("://").ok_or(missing)?;
    let value = schemes
        .iter()
        .find(|(name, _)| scheme.eq_ignore_ascii_case(name))
        .map(|&(_, value)| value)
        .ok_or("unknown scheme")?;
    Ok((value, rest))
}

/// The host of a `HOST[:PORT]`, before the sink checks a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HostPart<'a> {
    /// `[IPV6]`: the address and its text as written between the brackets.
    Ipv6 { ip: Ipv6Addr, text: &'a str },
    /// Anything else: an IPv4 address or a name, for the sink to check.
    Other(&'a str),
}

/// Splits `HOST[:PORT]` into its host and the port's text. `unbracketed_v6` is the reason
/// when a second `:` shows an IPv6 address written without brackets (with an example).
pub(crate) fn split_host_port<'a>(
    server: &'a str,
    unbracketed_v6: &'static str,
) -> Result<(HostPart<'a>, Option<&'a str>), &'static str> {
    if let Some(bracketed) = server.strip_prefix('[') {
        let (text, after) = bracketed.split_once(']').ok_or("`[` without `]`")?;
        let ip = text
            .parse::<Ipv6Addr>()
            .map_err(|_| "not an IPv6 address in `[]`")?;
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':').ok_or("unexpected text after `]`")?),
        };
        return Ok((HostPart::Ipv6 { ip, text }, port));
    }
    let (host, port) = match server.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (server, None),
    };
    if port.is_some_and(|p| p.contains(':')) {
        return Err(unbracketed_v6);
    }
    Ok((HostPart::Other(host), port))
}

/// The port's text (as [`split_host_port`] returns it) as a port, `default` when there is none.
pub(crate) fn parse_port(port: Option<&str>, default: u16) -> Result<u16, &'static str> {
    match port {
        None => Ok(default),
        Some(p) => match p.parse::<u16>() {
            Ok(0) | Err(_) => Err("the port must be a number from 1 to 65535"),
            Ok(p) => Ok(p),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes_are_matched_ignoring_case() {
        let schemes = [("a+b", 1), ("c", 2)];
        assert_eq!(split_scheme("A+B://x", &schemes, "none"), Ok((1, "x")));
        assert_eq!(split_scheme("c://", &schemes, "none"), Ok((2, "")));
        assert_eq!(
            split_scheme("d://x", &schemes, "none"),
            Err("unknown scheme")
        );
        assert_eq!(split_scheme("c:/x", &schemes, "none"), Err("none"));
    }

    #[test]
    fn host_and_port_are_split_with_ipv6_in_brackets() {
        let v6 = "v6 needs brackets";
        assert_eq!(
            split_host_port("[0::1]:7", v6),
            Ok((
                HostPart::Ipv6 {
                    ip: Ipv6Addr::LOCALHOST,
                    text: "0::1"
                },
                Some("7")
            ))
        );
        assert_eq!(
            split_host_port("h:", v6),
            Ok((HostPart::Other("h"), Some("")))
        );
        assert_eq!(split_host_port("h", v6), Ok((HostPart::Other("h"), None)));
        assert_eq!(split_host_port("::1", v6), Err(v6));
        assert_eq!(split_host_port("[::1", v6), Err("`[` without `]`"));
        assert_eq!(
            split_host_port("[x]", v6),
            Err("not an IPv6 address in `[]`")
        );
        assert_eq!(
            split_host_port("[::1]x", v6),
            Err("unexpected text after `]`")
        );
        assert_eq!(parse_port(None, 9), Ok(9));
        assert_eq!(parse_port(Some("65535"), 9), Ok(65535));
        for bad in ["0", "", "65536", "-1"] {
            assert!(parse_port(Some(bad), 9).is_err(), "{bad}");
        }
    }
}
