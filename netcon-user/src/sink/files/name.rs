//! A sender's file name: its address, or its host name once reverse DNS gave a usable one,
//! made safe to use as a file name.

use std::net::IpAddr;

use super::MAX_STEM_BYTES;

/// A sender's file name stem (no [`FILE_SUFFIX`](super::FILE_SUFFIX)): its host name when
/// `resolved` is a usable one, else its address. Both go through [`safe_stem`]. Host names are
/// lowercased (DNS does not distinguish case, so neither do the files), and a name that reads as
/// an IP address is refused.
#[must_use]
pub fn stem_for(ip: IpAddr, resolved: Option<&str>) -> String {
    if let Some(host) = resolved {
        let stem = safe_stem(&host.trim_end_matches('.').to_ascii_lowercase());
        if stem.parse::<IpAddr>().is_err() && !stem.chars().all(|c| c == '_') {
            return stem;
        }
    }
    safe_stem(&ip.to_string())
}

/// `name` made into a file name stem: every character outside `[A-Za-z0-9._:-]` becomes `_`, a
/// leading `.` becomes `_` (no hidden files, no `.` or `..`), the result is cut to
/// [`MAX_STEM_BYTES`], and an empty name becomes `_`.
#[must_use]
pub fn safe_stem(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(MAX_STEM_BYTES)
        .collect();
    if out.starts_with('.') {
        out.replace_range(..1, "_");
    }
    if out.is_empty() {
        out.push('_');
    }
    out
}

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;

    use super::*;
    use crate::testing::ipv4;

    #[test]
    fn names_v4_and_v6_by_address() {
        assert_eq!(stem_for(ipv4(41, 10), None), "10.41.0.10");
        let v6 = IpAddr::V6(Ipv6Addr::new(0xfd00, 0x41, 0, 0, 0, 0, 0, 0x10));
        assert_eq!(stem_for(v6, None), "fd00:41::10");
        let mapped: IpAddr = "::ffff:10.41.0.10".parse().unwrap();
        assert_eq!(stem_for(mapped, None), "::ffff:10.41.0.10");
    }

    #[test]
    fn names_by_resolved_host_lowercased() {
        assert_eq!(
            stem_for(ipv4(41, 10), Some("Node-7.Example.")),
            "node-7.example"
        );
    }

    #[test]
    fn hostile_names_are_made_safe() {
        assert_eq!(safe_stem("../../etc/passwd"), "_._.._etc_passwd");
        assert_eq!(safe_stem(".hidden"), "_hidden");
        assert_eq!(safe_stem(".."), "_.");
        assert_eq!(safe_stem(""), "_");
        assert_eq!(safe_stem("a b\n\x1b[31mc\0"), "a_b___31mc_");
        assert_eq!(safe_stem("日本"), "__");
        let long = "x".repeat(1000);
        assert_eq!(safe_stem(&long).len(), MAX_STEM_BYTES);
        for name in ["a/b", "\u{202e}evil", "..\\..", "x%y$z", "-rf *"] {
            let stem = safe_stem(name);
            assert!(
                stem.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._:-".contains(c)),
                "{stem}"
            );
            assert!(!stem.starts_with('.'), "{stem}");
        }
    }

    #[test]
    fn resolved_names_that_look_like_addresses_are_refused() {
        // A sender must not be able to name its file after another sender's address.
        assert_eq!(stem_for(ipv4(41, 10), Some("10.41.0.11")), "10.41.0.10");
        assert_eq!(stem_for(ipv4(41, 10), Some("fd00::1")), "10.41.0.10");
        assert_eq!(stem_for(ipv4(41, 10), Some("")), "10.41.0.10");
        assert_eq!(stem_for(ipv4(41, 10), Some("/")), "10.41.0.10");
        assert_eq!(stem_for(ipv4(41, 10), Some("../x")), "_._x");
    }
}
