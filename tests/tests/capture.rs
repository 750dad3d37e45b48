//! End-to-end tests of `netcon-sniff` (issue 2): the real binary in a collector namespace,
//! crafted frames from sender namespaces over veth pairs.
//!
//! Each test that depends on the XDP mode runs once per mode, as `native::NAME` and `skb::NAME`.
//! Deadlines are generous failure deadlines only; nothing asserts how fast anything is.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use netcon_tests::{
    ALL_NODES_MAC, BROADCAST_MAC, LINE_TIMEOUT, Link, RawLine, Sniffer, Summary, Topology,
    UdpFrame, Vlan,
};

/// How long to keep listening before concluding that a line will not come. Only used after a
/// frame sent later has already been printed, so it covers reordering, not delivery.
const QUIET: Duration = Duration::from_millis(1500);
/// How long the kernel may take to release a link or a packet socket after the process is gone.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy)]
enum Mode {
    Native,
    Skb,
}

impl Mode {
    fn arg(self) -> &'static str {
        match self {
            Mode::Native => "native",
            Mode::Skb => "skb",
        }
    }

    /// What `ip link show` prints for a program attached in this mode.
    fn attachment(self) -> &'static str {
        match self {
            Mode::Native => "xdp",
            Mode::Skb => "xdpgeneric",
        }
    }
}

/// Starts `netcon-sniff -i IF... --xdp-mode MODE --format raw EXTRA...` in the collector, waits
/// until it is ready, and checks its `listening on` lines and that the program is attached to
/// each interface in the requested mode.
fn sniff(topo: &Topology, links: &[&Link], mode: Mode, extra: &[&str], ports: &str) -> Sniffer {
    let mut args = Vec::new();
    for l in links {
        args.extend(["-i", l.collector_if.as_str()]);
    }
    args.extend(["--xdp-mode", mode.arg(), "--format", "raw"]);
    args.extend_from_slice(extra);
    let mut s = Sniffer::start(&topo.collector, &args);
    let ready = s.wait_ready();
    for l in links {
        let want = format!(
            "listening on {} (xdp, {} mode), ports {ports}",
            l.collector_if,
            mode.arg()
        );
        assert!(ready.contains(&want), "expected {want:?} among {ready:#?}");
        assert_eq!(
            topo.collector.xdp_attachment(&l.collector_if).as_deref(),
            Some(mode.attachment()),
            "XDP attachment of {} while running with --xdp-mode {}:\n{}",
            l.collector_if,
            mode.arg(),
            topo.collector.link_summary(&l.collector_if)
        );
    }
    s
}

/// [`sniff`] on the only link with the default port.
fn sniff1(topo: &Topology, mode: Mode, extra: &[&str]) -> Sniffer {
    sniff(topo, &[topo.link()], mode, extra, "6666")
}

/// Sends `frame` from the sender of `link`, waits for the line carrying `marker`, parses it and
/// checks interface and addresses against the frame.
fn send_and_expect(
    topo: &Topology,
    link: &Link,
    s: &mut Sniffer,
    frame: &UdpFrame,
    marker: &str,
) -> RawLine {
    topo.sender(link).send(&frame.build());
    let text = s.expect_line_containing(marker, LINE_TIMEOUT);
    let parsed = RawLine::parse(&text);
    assert_eq!(parsed.iface, link.collector_if, "interface in {text:?}");
    assert_eq!(parsed.src, frame.src, "source in {text:?}");
    assert_eq!(parsed.dst, frame.dst, "destination in {text:?}");
    assert!(
        text.contains(&format!("{} > {}", frame.src, frame.dst)),
        "addresses not printed as `{} > {}` in {text:?}",
        frame.src,
        frame.dst
    );
    parsed
}

/// Stops with SIGTERM and checks the exit: code 0, summary present. Returns the summary.
fn stop(s: &mut Sniffer) -> Summary {
    s.sigterm();
    let (status, stderr) = s.wait();
    assert_eq!(
        status.code(),
        Some(0),
        "exit after SIGTERM ({status}); stderr:\n{stderr}"
    );
    Summary::parse(&stderr)
}

// 1. A datagram addressed to the collector's IP and MAC.
fn addressed_to_collector(mode: Mode) {
    let topo = Topology::new();
    let link = topo.link();
    let mut s = sniff1(&topo, mode, &[]);
    let frame = UdpFrame::v4(link, b"NCT addressed hello\n".to_vec());
    let got = send_and_expect(&topo, link, &mut s, &frame, "NCT addressed");
    assert_eq!(got.iface, "veth-c1");
    assert_eq!(got.src, "10.1.0.10:6665".parse::<SocketAddr>().unwrap());
    assert_eq!(got.dst, "10.1.0.1:6666".parse::<SocketAddr>().unwrap());
    assert_eq!(got.payload, r"NCT addressed hello\n");
    // Capturing does not change what the host receives (no promiscuous mode without --promisc).
    assert_eq!(topo.collector.promiscuity(&link.collector_if), 0);
    let summary = stop(&mut s);
    assert_eq!(summary.printed, 1, "{summary:?}");
}

// 2. Broadcast MAC, destination IP that is not the collector's.
fn broadcast_foreign_ip(mode: Mode) {
    let topo = Topology::new();
    let link = topo.link();
    let mut s = sniff1(&topo, mode, &[]);
    let frame = UdpFrame::v4(link, b"NCT broadcast to .99\n".to_vec())
        .dst_mac(BROADCAST_MAC)
        .dst_ip(link.foreign_v4());
    let got = send_and_expect(&topo, link, &mut s, &frame, "NCT broadcast");
    assert_eq!(got.dst, "10.1.0.99:6666".parse::<SocketAddr>().unwrap());
    assert_eq!(got.payload, r"NCT broadcast to .99\n");
}

// 3. Foreign unicast MAC with --promisc; promiscuity restored after SIGTERM and after SIGKILL.
fn promisc_foreign_mac(mode: Mode) {
    let topo = Topology::new();
    let link = topo.link();
    let dev = &link.collector_if;
    let before = topo.collector.promiscuity(dev);
    let frame = UdpFrame::v4(link, b"NCT mirror port\n".to_vec())
        .dst_mac(link.foreign_mac())
        .dst_ip(link.foreign_v4());

    let mut s = sniff1(&topo, mode, &["--promisc"]);
    let during = topo.collector.promiscuity(dev);
    assert!(
        during > before,
        "promiscuity of {dev} is {during} with --promisc (was {before})"
    );
    let got = send_and_expect(&topo, link, &mut s, &frame, "NCT mirror port");
    assert_eq!(got.payload, r"NCT mirror port\n");
    let _ = stop(&mut s);
    topo.collector
        .wait_promiscuity(dev, before, RELEASE_TIMEOUT);

    let mut s = sniff1(&topo, mode, &["--promisc"]);
    assert!(
        topo.collector.promiscuity(dev) > before,
        "promiscuity with --promisc, second run"
    );
    let _ = send_and_expect(&topo, link, &mut s, &frame, "NCT mirror port");
    s.sigkill();
    let (status, _) = s.wait();
    assert!(
        !status.success(),
        "SIGKILLed process reported success: {status}"
    );
    topo.collector
        .wait_promiscuity(dev, before, RELEASE_TIMEOUT);
}

// 4. IPv6, to the collector and to a foreign address with broadcast and all-nodes MACs.
fn ipv6(mode: Mode) {
    let topo = Topology::new();
    let link = topo.link();
    let mut s = sniff1(&topo, mode, &[]);

    let frame = UdpFrame::v6(link, b"NCT v6 to collector\n".to_vec());
    let got = send_and_expect(&topo, link, &mut s, &frame, "NCT v6 to collector");
    assert_eq!(got.payload, r"NCT v6 to collector\n");
    // `send_and_expect` checked the text form too: `[fd00:1::10]:6665 > [fd00:1::1]:6666`.
    assert_eq!(got.src, "[fd00:1::10]:6665".parse::<SocketAddr>().unwrap());

    for (mac, what) in [(BROADCAST_MAC, "broadcast"), (ALL_NODES_MAC, "all-nodes")] {
        let marker = format!("NCT v6 foreign {what}");
        let frame = UdpFrame::v6(link, format!("{marker}\n"))
            .dst_mac(mac)
            .dst_ip(link.foreign_v6());
        let got = send_and_expect(&topo, link, &mut s, &frame, &marker);
        assert_eq!(got.dst, "[fd00:1::99]:6666".parse::<SocketAddr>().unwrap());
        assert_eq!(got.payload, format!(r"{marker}\n"));
    }
}

// 5. One VLAN tag (802.1Q) and two (802.1ad outside 802.1Q), IPv4 and IPv6.
fn vlan_tags(mode: Mode) {
    let topo = Topology::new();
    let link = topo.link();
    let mut s = sniff1(&topo, mode, &[]);
    let cases = [
        ("single-v4", Vlan::Single(42), false),
        (
            "double-v4",
            Vlan::Double {
                outer: 100,
                inner: 200,
            },
            false,
        ),
        ("single-v6", Vlan::Single(4094), true),
        (
            "double-v6",
            Vlan::Double {
                outer: 1,
                inner: 4094,
            },
            true,
        ),
    ];
    for (name, vlan, v6) in cases {
        let marker = format!("NCT vlan {name}");
        let base = if v6 {
            UdpFrame::v6(link, format!("{marker}\n"))
        } else {
            UdpFrame::v4(link, format!("{marker}\n"))
        };
        // Broadcast, as netconsole sends by default; the collector has no VLAN device.
        let frame = base.dst_mac(BROADCAST_MAC).vlan(vlan);
        let got = send_and_expect(&topo, link, &mut s, &frame, &marker);
        assert_eq!(got.payload, format!(r"{marker}\n"));
    }
}

// 6a. Several ports: both printed, a non-matching port never.
fn ports_listed(mode: Mode) {
    let topo = Topology::new();
    let link = topo.link();
    let mut s = sniff(
        &topo,
        &[link],
        mode,
        &["-p", "6666", "-p", "6667"],
        "6666,6667",
    );
    // The non-matching datagram goes first: once the later ones are printed it had its chance.
    topo.sender(link).send(
        &UdpFrame::v4(link, b"NCT port 7777\n".to_vec())
            .dst_port(7777)
            .build(),
    );
    let a = UdpFrame::v4(link, b"NCT port 6666\n".to_vec());
    let b = UdpFrame::v4(link, b"NCT port 6667\n".to_vec()).dst_port(6667);
    let la = send_and_expect(&topo, link, &mut s, &a, "NCT port 6666");
    let lb = send_and_expect(&topo, link, &mut s, &b, "NCT port 6667");
    assert_eq!(la.dst.port(), 6666);
    assert_eq!(lb.dst.port(), 6667);
    s.assert_no_line_containing("NCT port 7777", QUIET);
    let summary = stop(&mut s);
    assert_eq!((summary.matched, summary.printed), (2, 2), "{summary:?}");
}

// 6b. The default port is 6666 only.
fn ports_default(mode: Mode) {
    let topo = Topology::new();
    let link = topo.link();
    let mut s = sniff1(&topo, mode, &[]);
    topo.sender(link).send(
        &UdpFrame::v4(link, b"NCT not default 6667\n".to_vec())
            .dst_port(6667)
            .build(),
    );
    let frame = UdpFrame::v4(link, b"NCT default 6666\n".to_vec());
    let _ = send_and_expect(&topo, link, &mut s, &frame, "NCT default 6666");
    s.assert_no_line_containing("NCT not default", QUIET);
}

// 7. Two interfaces at once; each line names the interface the frame came in on.
fn two_interfaces(mode: Mode) {
    let topo = Topology::with_links(2);
    let (l1, l2) = (&topo.links[0], &topo.links[1]);
    let mut s = sniff(&topo, &[l1, l2], mode, &[], "6666");
    for round in 0..2 {
        for l in [l2, l1] {
            let marker = format!("NCT via {} round {round}", l.collector_if);
            let frame = UdpFrame::v4(l, format!("{marker}\n")).dst_mac(BROADCAST_MAC);
            let got = send_and_expect(&topo, l, &mut s, &frame, &marker);
            assert_eq!(got.iface, l.collector_if);
            assert_eq!(got.src.ip(), l.sender_v4);
        }
    }
    let summary = stop(&mut s);
    assert_eq!(summary.printed, 4, "{summary:?}");
    for l in [l1, l2] {
        topo.collector
            .wait_xdp_detached(&l.collector_if, RELEASE_TIMEOUT);
    }
}

// 8. After SIGKILL no XDP program stays attached.
fn sigkill_detaches(mode: Mode) {
    let topo = Topology::new();
    let link = topo.link();
    let mut s = sniff1(&topo, mode, &[]);
    // It is really capturing (so the attachment seen was its own and working).
    let frame = UdpFrame::v4(link, b"NCT before kill\n".to_vec());
    let _ = send_and_expect(&topo, link, &mut s, &frame, "NCT before kill");
    s.sigkill();
    let (status, _) = s.wait();
    assert!(
        !status.success(),
        "SIGKILLed process reported success: {status}"
    );
    topo.collector
        .wait_xdp_detached(&link.collector_if, RELEASE_TIMEOUT);
}

// 9. After SIGTERM: exit 0, the program detached, counters add up for a paced bounded burst.
fn sigterm_counters(mode: Mode) {
    const COUNT: usize = 1000;
    let topo = Topology::new();
    let link = topo.link();
    let mut s = sniff1(&topo, mode, &[]);
    let frames: Vec<Vec<u8>> = (0..COUNT)
        .map(|i| {
            UdpFrame::v4(link, format!("NCT burst {i:04}\n"))
                .dst_mac(BROADCAST_MAC)
                .build()
        })
        .collect();
    // About 1 s in all: a modest rate, well inside what the ring buffer must absorb.
    topo.sender(link)
        .send_paced(&frames, Duration::from_millis(1));
    let lines = s.expect_lines(COUNT, Duration::from_mins(1));
    let mut seqs = BTreeSet::new();
    for text in &lines {
        let parsed = RawLine::parse(text);
        let seq: usize = parsed
            .payload
            .strip_prefix("NCT burst ")
            .and_then(|p| p.strip_suffix(r"\n"))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("not a burst line: {text:?}"));
        assert!(seqs.insert(seq), "datagram {seq} printed twice");
    }
    assert_eq!(seqs, (0..COUNT).collect::<BTreeSet<_>>());

    let summary = stop(&mut s);
    assert_eq!(s.stdout_lines().len(), COUNT, "lines printed in all");
    let c = u64::try_from(COUNT).unwrap();
    assert!(summary.seen >= summary.matched, "{summary:?}");
    assert_eq!(summary.matched, c, "matched == datagrams sent: {summary:?}");
    assert_eq!(
        summary.printed, c,
        "printed == lines on stdout: {summary:?}"
    );
    assert_eq!(summary.ringbuf_full, 0, "{summary:?}");
    assert_eq!(summary.truncated, 0, "{summary:?}");
    assert_eq!(summary.copy_failed, 0, "{summary:?}");
    topo.collector
        .wait_xdp_detached(&link.collector_if, RELEASE_TIMEOUT);
}

// 10. Control characters and invalid UTF-8 in the payload are escaped, never raw. (Every stdout
// line of every test is also checked for raw controls and invalid UTF-8 by `Sniffer`.)
fn escaping(mode: Mode) {
    let topo = Topology::new();
    let link = topo.link();
    let mut s = sniff1(&topo, mode, &[]);
    let payload: &[u8] =
        b"NCT esc ESC[\x1b[31m] NUL[\x00] TAB[\t] CR[\r] BS[\\] FF[\xff] TRUNC[\xc3] DEL[\x7f] C1[\xc2\x9b] UTF8[h\xc3\xa9] END\n";
    let frame = UdpFrame::v4(link, payload.to_vec());
    let got = send_and_expect(&topo, link, &mut s, &frame, "NCT esc");
    let expected = |cr: &str| {
        format!(
            r"NCT esc ESC[\u{{1b}}[31m] NUL[\u{{0}}] TAB[\t] CR[{cr}] BS[\\] FF[\xff] TRUNC[\xc3] DEL[\u{{7f}}] C1[\u{{9b}}] UTF8[hé] END\n"
        )
    };
    // The contract names `\n`, `\t`, `\\` and `\u{..}` for other controls; CR may be either.
    assert!(
        got.payload == expected(r"\r") || got.payload == expected(r"\u{d}"),
        "payload escaped as\n  {:?}\nexpected\n  {:?}",
        got.payload,
        expected(r"\r")
    );
}

macro_rules! per_mode {
    ($module:ident => $mode:ident: $($test:ident),* $(,)?) => {
        mod $module {
            $(
                #[test]
                fn $test() {
                    super::$test(super::Mode::$mode);
                }
            )*
        }
    };
}

per_mode!(native => Native: addressed_to_collector, broadcast_foreign_ip, promisc_foreign_mac,
    ipv6, vlan_tags, ports_listed, ports_default, two_interfaces, sigkill_detaches,
    sigterm_counters, escaping);
per_mode!(skb => Skb: addressed_to_collector, broadcast_foreign_ip, promisc_foreign_mac,
    ipv6, vlan_tags, ports_listed, ports_default, two_interfaces, sigkill_detaches,
    sigterm_counters, escaping);

// 11. Errors: exit code 2, no panic, a message that names the culprit; returns stderr.
fn assert_clean_error(args: &[&str], mention: &str) -> String {
    let topo = Topology::new();
    let mut s = Sniffer::start(&topo.collector, args);
    let (status, stderr) = s.wait();
    assert_eq!(
        status.code(),
        Some(2),
        "exit status of netcon-sniff {args:?}; stderr:\n{stderr}"
    );
    for bad in ["panicked", "backtrace", "RUST_BACKTRACE"] {
        assert!(!stderr.contains(bad), "{bad:?} in stderr:\n{stderr}");
    }
    assert!(
        stderr.contains(mention),
        "stderr does not mention {mention:?}:\n{stderr}"
    );
    assert!(
        s.stdout_lines().is_empty(),
        "stdout: {:?}",
        s.stdout_lines()
    );
    stderr
}

fn assert_one_line(stderr: &str) {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "expected one line on stderr, got:\n{stderr}"
    );
}

#[test]
fn unknown_interface_is_a_one_line_error() {
    assert_one_line(&assert_clean_error(
        &["-i", "nct-nosuch0", "--format", "raw"],
        "nct-nosuch0",
    ));
}

#[test]
fn bad_port_is_a_one_line_error() {
    assert_one_line(&assert_clean_error(
        &["-i", "lo", "-p", "70000", "--format", "raw"],
        "70000",
    ));
}
