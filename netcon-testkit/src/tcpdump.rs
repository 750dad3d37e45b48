//! Reading a capture file with Debian's `tcpdump` (`tcpdump -r FILE -nn -e -x -tt`) and parsing
//! what it prints, so that a file `netcon-sniff -w` wrote is checked by a real tool.
//!
//! The output format is tcpdump 4.99's: one header line per frame, with `-e` the link layer
//! (`SRC > DST, ethertype NAME (0xXXXX), length N: ` then per VLAN tag `vlan V, p P, ethertype
//! ...`), then the UDP summary (`A.B.C.D.PORT > ...: UDP, length N`); with `-x`, hex lines of
//! the bytes after the link-layer header (the Ethernet header and all VLAN tags).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::files::run_bounded;
use crate::netns::Mac;

/// How long tcpdump may take to read a small file (a failure deadline only).
const TCPDUMP_TIMEOUT: Duration = Duration::from_mins(1);

/// 802.1Q and 802.1ad tag protocol identifiers.
const VLAN_TPIDS: [u16; 2] = [0x8100, 0x88a8];

/// One VLAN tag as tcpdump decoded it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VlanTag {
    /// Tag protocol identifier (`0x8100` or `0x88a8`).
    pub tpid: u16,
    /// VLAN id.
    pub vid: u16,
}

/// One frame as tcpdump printed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpdumpFrame {
    /// The header line, for messages.
    pub line: String,
    /// Timestamp as printed with `-tt`: `SECONDS.MICROSECONDS` since the epoch.
    pub ts: String,
    /// Ethernet source.
    pub src_mac: Mac,
    /// Ethernet destination.
    pub dst_mac: Mac,
    /// VLAN tags, outermost first.
    pub tags: Vec<VlanTag>,
    /// Ethertype after the tags.
    pub ethertype: u16,
    /// Frame length.
    pub length: usize,
    /// IP source and UDP port.
    pub src: SocketAddr,
    /// IP destination and UDP port.
    pub dst: SocketAddr,
    /// UDP payload length.
    pub udp_length: usize,
    /// The bytes after the link-layer header (`-x`): IP header onwards.
    pub data: Vec<u8>,
}

/// What `tcpdump -r` printed.
#[derive(Debug, Clone)]
pub struct TcpdumpOutput {
    /// Every frame, in file order.
    pub frames: Vec<TcpdumpFrame>,
    /// Its stderr (`reading from file F, link-type EN10MB (Ethernet), snapshot length N`).
    pub stderr: String,
}

/// Where `tcpdump` is: on `PATH`, or in `/usr/sbin`, `/usr/bin`, `/sbin` (root's usual places,
/// which a test runner's `PATH` may lack).
///
/// # Panics
/// If it is not installed, with what to do about it.
#[must_use]
pub fn tcpdump_binary() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    find_tcpdump(
        std::env::split_paths(&path).chain(["/usr/sbin", "/usr/bin", "/sbin"].map(PathBuf::from)),
    )
}

fn find_tcpdump(dirs: impl IntoIterator<Item = PathBuf>) -> PathBuf {
    dirs.into_iter()
        .map(|dir| dir.join("tcpdump"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "tcpdump is not installed, and the -w tests check the written file with it: \
                 install it (`apt-get install -y tcpdump`; CI's .ci/run does)"
            )
        })
}

/// Runs `tcpdump -r FILE -nn -e -x -tt` and parses every frame.
///
/// # Panics
/// If tcpdump is missing, fails, or prints something this parser does not understand.
#[must_use]
pub fn tcpdump_read(file: &Path) -> TcpdumpOutput {
    let bin = tcpdump_binary();
    let out = run_bounded(
        Command::new(&bin)
            .arg("-r")
            .arg(file)
            .args(["-nn", "-e", "-x", "-tt"]),
        TCPDUMP_TIMEOUT,
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "`{} -r {} -nn -e -x -tt` failed ({}):\n{stderr}",
        bin.display(),
        file.display(),
        out.status
    );
    TcpdumpOutput {
        frames: parse_output(&stdout),
        stderr,
    }
}

fn parse_output(stdout: &str) -> Vec<TcpdumpFrame> {
    let mut frames: Vec<TcpdumpFrame> = Vec::new();
    for line in stdout.lines() {
        if line.starts_with(char::is_whitespace) {
            let frame = frames
                .last_mut()
                .unwrap_or_else(|| panic!("tcpdump: hex line before any frame: {line:?}"));
            frame.data.extend(parse_hex_line(line));
        } else if !line.is_empty() {
            frames.push(parse_header(line));
        }
    }
    frames
}

fn parse_hex_line(line: &str) -> Vec<u8> {
    let bad = || -> ! { panic!("tcpdump: unexpected hex line {line:?}") };
    let (offset, groups) = line.trim_start().split_once(':').unwrap_or_else(|| bad());
    if !offset.starts_with("0x") {
        bad();
    }
    let mut bytes = Vec::new();
    for group in groups.split_whitespace() {
        if group.len() % 2 != 0 || group.len() > 4 {
            bad();
        }
        for i in (0..group.len()).step_by(2) {
            bytes.push(u8::from_str_radix(&group[i..i + 2], 16).unwrap_or_else(|_| bad()));
        }
    }
    bytes
}

fn parse_header(line: &str) -> TcpdumpFrame {
    try_parse_header(line)
        .unwrap_or_else(|what| panic!("tcpdump: cannot parse ({what}) the frame line {line:?}"))
}

fn try_parse_header(line: &str) -> Result<TcpdumpFrame, &'static str> {
    let (ts, rest) = line.split_once(' ').ok_or("timestamp")?;
    let (src_mac, rest) = rest.split_once(" > ").ok_or("source MAC")?;
    let (dst_mac, mut rest) = rest.split_once(", ").ok_or("destination MAC")?;
    let mut tags = Vec::new();
    let mut length = None;
    let ethertype = loop {
        rest = rest.strip_prefix("ethertype ").ok_or("`ethertype`")?;
        let open = rest.find("(0x").ok_or("ethertype number")?;
        let close = open + rest[open..].find(')').ok_or("ethertype number")?;
        let ethertype = u16::from_str_radix(&rest[open + 3..close], 16).map_err(|_| "ethertype")?;
        rest = rest[close + 1..]
            .strip_prefix(", ")
            .ok_or("`, ` after ethertype")?;
        if length.is_none() {
            let (len, r) = rest
                .strip_prefix("length ")
                .and_then(|r| r.split_once(": "))
                .ok_or("frame length")?;
            length = Some(len.parse().map_err(|_| "frame length")?);
            rest = r;
        }
        if !VLAN_TPIDS.contains(&ethertype) {
            break ethertype;
        }
        let (vid, r) = rest
            .strip_prefix("vlan ")
            .and_then(|r| r.split_once(", p "))
            .ok_or("VLAN id")?;
        let (_priority, r) = r.split_once(", ").ok_or("VLAN priority")?;
        tags.push(VlanTag {
            tpid: ethertype,
            vid: vid.parse().map_err(|_| "VLAN id")?,
        });
        rest = r;
    };
    let (src, r) = rest.split_once(" > ").ok_or("IP source")?;
    let (dst, r) = r.split_once(": ").ok_or("IP destination")?;
    let udp_length = r
        .strip_prefix("UDP, length ")
        .and_then(|l| l.parse().ok())
        .ok_or("`UDP, length N`")?;
    Ok(TcpdumpFrame {
        line: line.to_owned(),
        ts: ts.to_owned(),
        src_mac: parse_mac(src_mac).ok_or("source MAC")?,
        dst_mac: parse_mac(dst_mac).ok_or("destination MAC")?,
        tags,
        ethertype,
        length: length.ok_or("frame length")?,
        src: parse_endpoint(src).ok_or("IP source")?,
        dst: parse_endpoint(dst).ok_or("IP destination")?,
        udp_length,
        data: Vec::new(),
    })
}

fn parse_mac(s: &str) -> Option<Mac> {
    let mut mac = [0; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// `10.1.0.10.6665` or `fd00:1::10.6665` (tcpdump joins address and port with a dot).
fn parse_endpoint(s: &str) -> Option<SocketAddr> {
    let (ip, port) = s.rsplit_once('.')?;
    Some(SocketAddr::new(
        ip.parse::<IpAddr>().ok()?,
        port.parse().ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Verbatim tcpdump 4.99.3 output for a double-tagged IPv4 frame and an untagged IPv6 one.
    const OUTPUT: &str = "\
1795822008.519824 02:00:00:00:09:10 > ff:ff:ff:ff:ff:ff, ethertype 802.1Q-QinQ (0x88a8), length 60: vlan 100, p 0, ethertype 802.1Q (0x8100), vlan 200, p 0, ethertype IPv4 (0x0800), 10.9.0.10.6665 > 10.9.0.99.6666: UDP, length 10
\t0x0000:  4500 0026 0001 0000 4011 6648 0a09 000a
\t0x0010:  0a09 0063 1a09 1a0a 0012 0000 7461 6767
\t0x0020:  6564 2068 690a
1795822009.000001 02:00:00:00:01:10 > 02:00:00:00:01:01, ethertype IPv6 (0x86dd), length 64: fd00:1::10.6665 > fd00:1::1.6666: UDP, length 2
\t0x0000:  6000 0000 000a 1120 fd00 0001 0000 0000
";

    #[test]
    fn parses_tagged_and_v6_frames() {
        let frames = parse_output(OUTPUT);
        assert_eq!(frames.len(), 2);
        let f = &frames[0];
        assert_eq!(f.ts, "1795822008.519824");
        assert_eq!(f.src_mac, [2, 0, 0, 0, 9, 0x10]);
        assert_eq!(f.dst_mac, [0xff; 6]);
        assert_eq!(
            f.tags,
            [
                VlanTag {
                    tpid: 0x88a8,
                    vid: 100
                },
                VlanTag {
                    tpid: 0x8100,
                    vid: 200
                }
            ]
        );
        assert_eq!((f.ethertype, f.length, f.udp_length), (0x0800, 60, 10));
        assert_eq!(f.src, "10.9.0.10:6665".parse().unwrap());
        assert_eq!(f.dst, "10.9.0.99:6666".parse().unwrap());
        assert_eq!(f.data.len(), 38);
        assert_eq!(&f.data[f.data.len() - 10..], b"tagged hi\n");
        let g = &frames[1];
        assert!(g.tags.is_empty());
        assert_eq!(g.ethertype, 0x86dd);
        assert_eq!(g.src, "[fd00:1::10]:6665".parse().unwrap());
        assert_eq!(g.dst, "[fd00:1::1]:6666".parse().unwrap());
        assert_eq!(g.data[..2], [0x60, 0]);
    }

    #[test]
    #[should_panic(expected = "install it (`apt-get install -y tcpdump`")]
    fn missing_tcpdump_says_how_to_install_it() {
        let _ = find_tcpdump([PathBuf::from("/nonexistent-netcon-tests-dir")]);
    }

    #[test]
    #[should_panic(expected = "cannot parse")]
    fn rejects_non_udp() {
        let _ = parse_output(
            "1.000001 02:00:00:00:01:10 > ff:ff:ff:ff:ff:ff, ethertype ARP (0x0806), length 42: Request who-has 10.1.0.1 tell 10.1.0.10, length 28\n",
        );
    }
}
