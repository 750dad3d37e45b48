//! End-to-end tests of `netcon-sniff` (issues 2 and 4): the real binary in a collector namespace,
//! crafted frames from sender namespaces over veth pairs.
//!
//! Each test that depends on the capture backend runs once per mode, as `native::NAME` and
//! `skb::NAME` (XDP, with the default `--backend auto`, so they also check that auto picks XDP
//! when it can) and `raw::NAME` (`--backend raw`, `AF_PACKET` sockets).
//! Deadlines are generous failure deadlines only; nothing asserts how fast anything is.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use netcon_testkit::{
    ALL_NODES_MAC, BROADCAST_MAC, CaptureBackend, FrameSender, LINE_TIMEOUT, LINKTYPE_ETHERNET,
    Link, PcapFile, RawLine, Sniffer, Summary, TempDir, Topology, UdpFrame, Vlan, VlanTag, fixture,
    rfc3339_micros, tcpdump_read, without_stats,
};

/// How long to keep listening before concluding that a line will not come. Only used after a
/// frame sent later has already been printed, so it covers reordering, not delivery.
const QUIET: Duration = Duration::from_millis(1500);
/// How long the kernel may take to release a link or a packet socket after the process is gone.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);
/// Gap between replayed fixture frames: a trickle, not a load test.
const REPLAY_INTERVAL: Duration = Duration::from_micros(200);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Native,
    Skb,
    Raw,
}

impl Mode {
    /// The arguments that select this mode.
    fn args(self) -> &'static [&'static str] {
        match self {
            Mode::Native => &["--xdp-mode", "native"],
            Mode::Skb => &["--xdp-mode", "skb"],
            Mode::Raw => &["--backend", "raw"],
        }
    }

    /// The `listening on` line for `dev`.
    fn ready_line(self, dev: &str, ports: &str) -> String {
        match self {
            Mode::Native => format!("listening on {dev} (xdp, native mode), ports {ports}"),
            Mode::Skb => format!("listening on {dev} (xdp, skb mode), ports {ports}"),
            Mode::Raw => format!("listening on {dev} (raw), ports {ports}"),
        }
    }

    /// What `ip link show` prints for the XDP program attached in this mode (none for raw).
    fn attachment(self) -> Option<&'static str> {
        match self {
            Mode::Native => Some("xdp"),
            Mode::Skb => Some("xdpgeneric"),
            Mode::Raw => None,
        }
    }

    /// The backend whose counters the exit summary must show.
    fn backend(self) -> CaptureBackend {
        match self {
            Mode::Native | Mode::Skb => CaptureBackend::Xdp,
            Mode::Raw => CaptureBackend::Raw,
        }
    }

    /// Frames the backend matched: the XDP program's `matched`, or for raw the frames read from
    /// the sockets (their filter passes only UDP to the configured ports).
    fn matched(self, summary: &Summary) -> u64 {
        match self {
            Mode::Native | Mode::Skb => summary.xdp().matched,
            Mode::Raw => summary.raw().received,
        }
    }
}

/// Starts `netcon-sniff -i IF... MODE-ARGS --format raw EXTRA...` in the collector, waits until
/// it is ready, and checks its `listening on` lines and, for each interface, that the program
/// is attached in the requested mode, or for raw that no XDP program is attached and a packet
/// socket is bound.
fn sniff(topo: &Topology, links: &[&Link], mode: Mode, extra: &[&str], ports: &str) -> Sniffer {
    let mut args = Vec::new();
    for l in links {
        args.extend(["-i", l.collector_if.as_str()]);
    }
    args.extend_from_slice(mode.args());
    args.extend(["--format", "raw"]);
    args.extend_from_slice(extra);
    let mut s = Sniffer::start(&topo.collector, &args);
    let ready = s.wait_ready();
    for l in links {
        let want = mode.ready_line(&l.collector_if, ports);
        assert!(ready.contains(&want), "expected {want:?} among {ready:#?}");
        assert_eq!(
            topo.collector.xdp_attachment(&l.collector_if).as_deref(),
            mode.attachment(),
            "XDP attachment of {} while running with {}:\n{}",
            l.collector_if,
            mode.args().join(" "),
            topo.collector.link_summary(&l.collector_if)
        );
        if mode == Mode::Raw {
            assert!(
                topo.collector.packet_sockets_on(&l.collector_if) >= 1,
                "no packet socket bound to {} with --backend raw",
                l.collector_if
            );
        }
    }
    s
}

/// Waits until the capture on `link` is gone: no XDP program attached, no packet socket bound.
fn wait_released(topo: &Topology, link: &Link) {
    topo.collector
        .wait_xdp_detached(&link.collector_if, RELEASE_TIMEOUT);
    topo.collector
        .wait_no_packet_sockets(&link.collector_if, RELEASE_TIMEOUT);
}

/// [`sniff`] on the only link with the default port.
fn sniff1(topo: &Topology, mode: Mode, extra: &[&str]) -> Sniffer {
    sniff(topo, &[topo.link()], mode, extra, "6666")
}

/// A new one-link topology and [`sniff1`] on it with no extra arguments; the sniffer comes
/// second so that it is dropped (stopped) before the namespaces are.
fn sniff_new(mode: Mode) -> (Topology, Sniffer) {
    let topo = Topology::new();
    let s = sniff1(&topo, mode, &[]);
    (topo, s)
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

/// Stops with SIGTERM and checks the exit: code 0, the summary of `mode`'s backend. Returns the
/// summary.
fn stop(s: &mut Sniffer, mode: Mode) -> Summary {
    s.sigterm();
    let (status, stderr) = s.wait();
    assert_eq!(
        status.code(),
        Some(0),
        "exit after SIGTERM ({status}); stderr:\n{stderr}"
    );
    let summary = Summary::parse(&stderr);
    assert_eq!(
        summary.backend,
        mode.backend(),
        "counters of the wrong backend for {mode:?}; stderr:\n{stderr}"
    );
    summary
}

/// [`stop`], checking that the backend matched, and stdout printed, `frames` frames each.
fn stop_expecting(s: &mut Sniffer, mode: Mode, frames: usize) -> Summary {
    let summary = stop(s, mode);
    let n = u64::try_from(frames).unwrap();
    assert_eq!(
        (mode.matched(&summary), summary.printed),
        (n, n),
        "matched and printed: {summary:?}"
    );
    summary
}

/// Stops with SIGKILL and checks that the process did not report success.
fn kill(s: &mut Sniffer) {
    s.sigkill();
    let (status, _) = s.wait();
    assert!(
        !status.success(),
        "SIGKILLed process reported success: {status}"
    );
}

// 1. A datagram addressed to the collector's IP and MAC.
fn addressed_to_collector(mode: Mode) {
    let (topo, mut s) = sniff_new(mode);
    let link = topo.link();
    let frame = UdpFrame::v4(link, b"NCT addressed hello\n".to_vec());
    let got = send_and_expect(&topo, link, &mut s, &frame, "NCT addressed");
    assert_eq!(got.iface, "veth-c1");
    assert_eq!(got.src, "10.1.0.10:6665".parse::<SocketAddr>().unwrap());
    assert_eq!(got.dst, "10.1.0.1:6666".parse::<SocketAddr>().unwrap());
    assert_eq!(got.payload, r"NCT addressed hello\n");
    // Capturing does not change what the host receives (no promiscuous mode without --promisc).
    assert_eq!(topo.collector.promiscuity(&link.collector_if), 0);
    let summary = stop(&mut s, mode);
    assert_eq!(summary.printed, 1, "{summary:?}");
}

// 2. Broadcast MAC, destination IP that is not the collector's.
fn broadcast_foreign_ip(mode: Mode) {
    let (topo, mut s) = sniff_new(mode);
    let link = topo.link();
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
    let _ = stop(&mut s, mode);
    topo.collector
        .wait_promiscuity(dev, before, RELEASE_TIMEOUT);
    wait_released(&topo, link);

    let mut s = sniff1(&topo, mode, &["--promisc"]);
    assert!(
        topo.collector.promiscuity(dev) > before,
        "promiscuity with --promisc, second run"
    );
    let _ = send_and_expect(&topo, link, &mut s, &frame, "NCT mirror port");
    kill(&mut s);
    topo.collector
        .wait_promiscuity(dev, before, RELEASE_TIMEOUT);
}

// 4. IPv6, to the collector and to a foreign address with broadcast and all-nodes MACs.
fn ipv6(mode: Mode) {
    let (topo, mut s) = sniff_new(mode);
    let link = topo.link();

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
    let (topo, mut s) = sniff_new(mode);
    let link = topo.link();
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
    stop_expecting(&mut s, mode, 2);
}

// 6c. Frames this host sends out of the interface (its own netconsole, say) are not traffic heard
// on the wire: one the collector sends is never printed, the peer's next one is.
fn own_frames_skipped(mode: Mode) {
    let (topo, mut s) = sniff_new(mode);
    let link = topo.link();
    FrameSender::open(&topo.collector, &link.collector_if).send(
        &UdpFrame::v4(link, b"NCT own frame\n".to_vec())
            .dst_mac(BROADCAST_MAC)
            .build(),
    );
    let peer = UdpFrame::v4(link, b"NCT peer frame\n".to_vec());
    send_and_expect(&topo, link, &mut s, &peer, "NCT peer frame");
    s.assert_no_line_containing("NCT own frame", QUIET);
    stop_expecting(&mut s, mode, 1);
}

// 6b. The default port is 6666 only.
fn ports_default(mode: Mode) {
    let (topo, mut s) = sniff_new(mode);
    let link = topo.link();
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
    stop_expecting(&mut s, mode, 4);
    for l in [l1, l2] {
        wait_released(&topo, l);
    }
}

// 8. After SIGKILL no XDP program stays attached and no packet socket stays bound.
fn sigkill_detaches(mode: Mode) {
    let (topo, mut s) = sniff_new(mode);
    let link = topo.link();
    // It is really capturing (so the attachment seen was its own and working).
    let frame = UdpFrame::v4(link, b"NCT before kill\n".to_vec());
    let _ = send_and_expect(&topo, link, &mut s, &frame, "NCT before kill");
    kill(&mut s);
    wait_released(&topo, link);
}

// 9. After SIGTERM: exit 0, the program detached, counters add up for a paced bounded burst.
fn sigterm_counters(mode: Mode) {
    const COUNT: usize = 1000;
    let (topo, mut s) = sniff_new(mode);
    let link = topo.link();
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

    let summary = stop(&mut s, mode);
    assert_eq!(s.stdout_lines().len(), COUNT, "lines printed in all");
    let c = u64::try_from(COUNT).unwrap();
    assert_eq!(
        summary.printed, c,
        "printed == lines on stdout: {summary:?}"
    );
    match mode {
        Mode::Native | Mode::Skb => {
            let x = summary.xdp();
            assert!(x.seen >= x.matched, "{summary:?}");
            assert_eq!(x.matched, c, "matched == datagrams sent: {summary:?}");
            assert_eq!(x.ringbuf_full, 0, "{summary:?}");
            assert_eq!(x.truncated, 0, "{summary:?}");
            assert_eq!(x.copy_failed, 0, "{summary:?}");
        }
        Mode::Raw => {
            let r = summary.raw();
            assert_eq!(r.received, c, "received == datagrams sent: {summary:?}");
            // The kernel's count includes its drops (PACKET_STATISTICS), and the filter passed
            // nothing but the burst.
            assert_eq!(
                r.kernel_received,
                r.received + r.kernel_dropped,
                "kernel_received == received + kernel_dropped: {summary:?}"
            );
            assert_eq!(r.kernel_dropped, 0, "no drops at this rate: {summary:?}");
            assert_eq!(
                r.queue_full, 0,
                "no queue overflow at this rate: {summary:?}"
            );
            assert_eq!(r.truncated, 0, "{summary:?}");
        }
    }
    wait_released(&topo, link);
}

// 9b. A lone record after a silence comes out without anything else arriving: the XDP reader
// parks when the ring stays empty, and the program must wake it for the next record.
fn lone_record_after_silence(mode: Mode) {
    let (topo, mut s) = sniff_new(mode);
    let link = topo.link();
    for i in 0..3 {
        // Long enough for the reader to find the ring empty and park.
        std::thread::sleep(Duration::from_millis(500));
        let frame = UdpFrame::v4(link, format!("NCT lone {i}\n")).dst_mac(BROADCAST_MAC);
        send_and_expect(&topo, link, &mut s, &frame, &format!("NCT lone {i}"));
    }
    let summary = stop(&mut s, mode);
    if matches!(mode, Mode::Native | Mode::Skb) {
        let x = summary.xdp();
        assert_eq!(x.matched, 3, "{summary:?}");
        assert!(
            x.wakeups >= 3,
            "each lone record woke the parked reader: {summary:?}"
        );
    }
    wait_released(&topo, link);
}

// 10. Control characters and invalid UTF-8 in the payload are escaped, never raw. (Every stdout
// line of every test is also checked for raw controls and invalid UTF-8 by `Sniffer`.)
fn escaping(mode: Mode) {
    let (topo, mut s) = sniff_new(mode);
    let link = topo.link();
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

// 11. `-w FILE`: every matched frame, and only those, saved whole with its capture time; Debian's
// tcpdump reads the file and decodes the frames that were sent (VLAN tags included: the raw
// backend must put back the tag the kernel took out), and `-r` gives the same lines again.
fn write_pcap(mode: Mode) {
    let topo = Topology::new();
    let link = topo.link();
    let dir = TempDir::new("write");
    let out = dir.join("out.pcap");
    let out_arg = out.to_str().expect("UTF-8 temp path");
    let mut s = sniff1(&topo, mode, &["-w", out_arg]);

    // Not matched (another port): must not be written. Sent first, so every later line proves
    // it had its chance.
    topo.sender(link).send(
        &UdpFrame::v4(link, b"NCT w port 7777\n".to_vec())
            .dst_port(7777)
            .build(),
    );
    let long: Vec<u8> = b"NCT w 07 long "
        .iter()
        .copied()
        .chain((0..986u16).map(|i| b'a' + u8::try_from(i % 26).unwrap()))
        .collect();
    let frames = [
        UdpFrame::v4(link, b"NCT w 00 addressed\n".to_vec()),
        UdpFrame::v4(link, b"NCT w 01 broadcast\n".to_vec())
            .dst_mac(BROADCAST_MAC)
            .dst_ip(link.foreign_v4()),
        UdpFrame::v6(link, b"NCT w 02 v6 all-nodes\n".to_vec())
            .dst_mac(ALL_NODES_MAC)
            .dst_ip(link.foreign_v6()),
        UdpFrame::v4(link, b"NCT w 03 one tag\n".to_vec())
            .dst_mac(BROADCAST_MAC)
            .vlan(Vlan::Single(42)),
        UdpFrame::v4(link, b"NCT w 04 two tags\n".to_vec())
            .dst_mac(BROADCAST_MAC)
            .vlan(Vlan::Double {
                outer: 100,
                inner: 200,
            }),
        UdpFrame::v6(link, b"NCT w 05 v6 two tags\n".to_vec())
            .dst_mac(BROADCAST_MAC)
            .vlan(Vlan::Double {
                outer: 1,
                inner: 4094,
            }),
        UdpFrame::v4(
            link,
            b"NCT w 06 bytes \x00\x1b[31m\xff\xc3\t\r\\ end\n".to_vec(),
        ),
        UdpFrame::v4(link, long),
    ];
    let live: Vec<RawLine> = frames
        .iter()
        .enumerate()
        .map(|(i, f)| send_and_expect(&topo, link, &mut s, f, &format!("NCT w {i:02} ")))
        .collect();
    stop_expecting(&mut s, mode, frames.len());
    assert_eq!(
        s.stdout_lines().len(),
        frames.len(),
        "{:#?}",
        s.stdout_lines()
    );

    check_saved_frames(&out, &frames, &live);
    check_tcpdump(&out, &frames, &live);
    check_read_back(out_arg, &live);
}

/// The file `-w` wrote, read independently of the binary: the frames byte for byte, capture
/// times as printed.
fn check_saved_frames(out: &Path, frames: &[UdpFrame], live: &[RawLine]) {
    let n = frames.len();
    let file = PcapFile::read(out);
    assert_eq!(
        file.link_type,
        LINKTYPE_ETHERNET,
        "link type of {}",
        out.display()
    );
    assert_eq!(file.records.len(), n, "records in {}", out.display());
    for ((rec, frame), line) in file.records.iter().zip(frames).zip(live) {
        let bytes = frame.build();
        assert_eq!(
            rec.data, bytes,
            "frame saved for {:?} differs from the one sent",
            line.payload
        );
        assert_eq!(usize::try_from(rec.orig_len).unwrap(), bytes.len());
        assert_eq!(
            rfc3339_micros(rec.ts_sec.into(), rec.ts_nsec),
            line.ts,
            "saved capture time of {:?}",
            line.payload
        );
    }
}

/// The file `-w` wrote as tcpdump sees it.
fn check_tcpdump(out: &Path, frames: &[UdpFrame], live: &[RawLine]) {
    let n = frames.len();
    let dump = tcpdump_read(out);
    assert!(
        dump.stderr.contains("link-type EN10MB (Ethernet)"),
        "tcpdump stderr: {}",
        dump.stderr
    );
    assert_eq!(
        dump.frames.len(),
        n,
        "tcpdump read {} frames: {:#?}",
        dump.frames.len(),
        dump.frames.iter().map(|f| &f.line).collect::<Vec<_>>()
    );
    for ((got, frame), line) in dump.frames.iter().zip(frames).zip(live) {
        let bytes = frame.build();
        let tags: Vec<VlanTag> = match frame.vlan {
            Vlan::None => vec![],
            Vlan::Single(vid) => vec![VlanTag { tpid: 0x8100, vid }],
            Vlan::Double { outer, inner } => vec![
                VlanTag {
                    tpid: 0x88a8,
                    vid: outer,
                },
                VlanTag {
                    tpid: 0x8100,
                    vid: inner,
                },
            ],
        };
        let what = &got.line;
        assert_eq!(got.src_mac, frame.src_mac, "source MAC: {what}");
        assert_eq!(got.dst_mac, frame.dst_mac, "destination MAC: {what}");
        assert_eq!(got.tags, tags, "VLAN tags: {what}");
        let ethertype = if frame.src.is_ipv4() { 0x0800 } else { 0x86dd };
        assert_eq!(got.ethertype, ethertype, "ethertype: {what}");
        assert_eq!(got.src, frame.src, "source: {what}");
        assert_eq!(got.dst, frame.dst, "destination: {what}");
        assert_eq!(got.udp_length, frame.payload.len(), "UDP length: {what}");
        assert_eq!(got.length, bytes.len(), "frame length: {what}");
        // -x: IP header, UDP header and payload, byte for byte.
        assert_eq!(
            got.data,
            bytes[14 + 4 * tags.len()..],
            "bytes after the link layer: {what}"
        );
        let (secs, micros) = got.ts.split_once('.').expect("-tt timestamp");
        assert_eq!(
            rfc3339_micros(secs.parse().unwrap(), micros.parse::<u32>().unwrap() * 1000),
            line.ts,
            "tcpdump's time is the printed capture time: {what}"
        );
    }
}

/// `-r` on the file `-w` wrote gives the same lines (apart from the interface column).
fn check_read_back(out_arg: &str, live: &[RawLine]) {
    let n = live.len();
    let n64 = u64::try_from(n).unwrap();
    let replayed = Sniffer::read_file(out_arg, None);
    assert_eq!(
        (
            replayed.summary.file().read,
            replayed.summary.file().skipped,
            replayed.summary.printed
        ),
        (n64, 0, n64),
        "{:?}",
        replayed.summary
    );
    assert_eq!(replayed.lines.len(), n, "{:#?}", replayed.lines);
    for (text, want) in replayed.lines.iter().zip(live) {
        let got = RawLine::parse(text);
        assert_eq!(
            (&got.ts, got.src, got.dst, &got.payload),
            (&want.ts, want.src, want.dst, &want.payload),
            "-r {out_arg} gave {text:?}"
        );
    }
}

/// The lines `-r` prints for a fixture, and the fixture's frames.
fn fixture_reference(name: &str, frames: usize) -> (Vec<RawLine>, Vec<Vec<u8>>) {
    let path = fixture(&format!("{name}.pcap"));
    let file = PcapFile::read(&path);
    assert_eq!(file.link_type, LINKTYPE_ETHERNET);
    assert_eq!(file.records.len(), frames, "frames in {}", path.display());
    let run = Sniffer::read_file(path.to_str().expect("UTF-8 path"), None);
    assert_eq!(run.lines.len(), frames, "lines of -r {}", path.display());
    let lines = run
        .lines
        .iter()
        .map(|l| RawLine::parse_any_time(l))
        .collect();
    let frames = file.records.into_iter().map(|r| r.data).collect();
    (lines, frames)
}

/// `payload -> count` of lines.
fn payload_counts<'a>(lines: impl IntoIterator<Item = &'a RawLine>) -> BTreeMap<&'a str, usize> {
    let mut counts = BTreeMap::new();
    for l in lines {
        *counts.entry(l.payload.as_str()).or_insert(0) += 1;
    }
    counts
}

/// Panics, listing a few differences, unless both multisets are equal.
fn assert_same_payloads(live: &[RawLine], reference: &[RawLine], what: &str) {
    let (a, b) = (payload_counts(live), payload_counts(reference));
    if a == b {
        return;
    }
    let diff = |x: &BTreeMap<&str, usize>, y: &BTreeMap<&str, usize>| -> Vec<String> {
        x.iter()
            .filter(|(p, n)| y.get(*p).copied().unwrap_or(0) < **n)
            .take(5)
            .map(|(p, n)| format!("{n}x {p}"))
            .collect()
    };
    panic!(
        "{what}: live capture printed {} lines, -r {}; only live (first 5): {:#?}; only -r (first 5): {:#?}",
        live.len(),
        reference.len(),
        diff(&a, &b),
        diff(&b, &a)
    );
}

// 12. The real kernel captures replayed through a veth give the same payloads as `-r` on the
// file. Nothing needs rewriting: the frames go out as captured (broadcast MAC, 10.77.0.10:6665 →
// 10.77.0.1:6666, an address no namespace here owns, as netconsole without a target MAC).
fn replay_fixture(mode: Mode, name: &str, count: usize) {
    let (reference, frames) = fixture_reference(name, count);
    for f in &frames {
        assert_eq!(
            f[..6],
            BROADCAST_MAC,
            "{name}.pcap: a frame not sent to broadcast"
        );
    }
    let (topo, mut s) = sniff_new(mode);
    let link = topo.link();
    topo.sender(link).send_paced(&frames, REPLAY_INTERVAL);
    let lines = s.expect_lines(count, Duration::from_mins(1));
    stop_expecting(&mut s, mode, count);
    assert_eq!(s.stdout_lines().len(), count, "lines printed in all");
    let live: Vec<RawLine> = lines.iter().map(|l| RawLine::parse(l)).collect();
    let src: SocketAddr = "10.77.0.10:6665".parse().unwrap();
    let dst: SocketAddr = "10.77.0.1:6666".parse().unwrap();
    for l in &live {
        assert_eq!(
            (l.iface.as_str(), l.src, l.dst),
            (link.collector_if.as_str(), src, dst),
            "{l:?}"
        );
    }
    assert_same_payloads(&live, &reference, &format!("{name}.pcap replayed"));
}

fn replay_plain(mode: Mode) {
    replay_fixture(mode, "plain", 590);
}

fn replay_ext(mode: Mode) {
    replay_fixture(mode, "ext", 595);
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
    ipv6, vlan_tags, ports_listed, ports_default, own_frames_skipped, two_interfaces,
    sigkill_detaches, sigterm_counters, lone_record_after_silence, escaping, write_pcap,
    replay_plain, replay_ext);
per_mode!(skb => Skb: addressed_to_collector, broadcast_foreign_ip, promisc_foreign_mac,
    ipv6, vlan_tags, ports_listed, ports_default, own_frames_skipped, two_interfaces,
    sigkill_detaches, sigterm_counters, lone_record_after_silence, escaping, write_pcap,
    replay_plain, replay_ext);
per_mode!(raw => Raw: addressed_to_collector, broadcast_foreign_ip, promisc_foreign_mac,
    ipv6, vlan_tags, ports_listed, ports_default, own_frames_skipped, two_interfaces,
    sigkill_detaches, sigterm_counters, lone_record_after_silence, escaping, write_pcap,
    replay_plain, replay_ext);

/// Now, as netcon-sniff prints times (RFC 3339, microseconds, truncated), so that printed times
/// compare with it as strings.
fn now_printed() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970");
    rfc3339_micros(i64::try_from(now.as_secs()).unwrap(), now.subsec_nanos())
}

/// XDP receive times, whoever stamps them (`read`: netcon-sniff per batch, the default;
/// `kernel`: the program per frame), are never before the frame was sent nor after its line
/// was printed; some frames come after a silence (a parked reader), some while it drains.
fn xdp_receive_times_bracket_the_sending(timestamps: &str) {
    let topo = Topology::new();
    let link = topo.link();
    let mut s = sniff1(&topo, Mode::Native, &["--xdp-timestamps", timestamps]);
    for i in 0..6 {
        let before = now_printed();
        let frame = UdpFrame::v4(link, format!("NCT t {i}\n").into_bytes());
        let printed = send_and_expect(&topo, link, &mut s, &frame, &format!("NCT t {i}"));
        let after = now_printed();
        assert!(
            before <= printed.ts && printed.ts <= after,
            "--xdp-timestamps {timestamps}: frame {i} stamped {} outside [{before}, {after}]",
            printed.ts
        );
        // Every other frame after long enough a silence for the reader to park.
        if i % 2 == 1 {
            std::thread::sleep(QUIET / 10);
        }
    }
    stop_expecting(&mut s, Mode::Native, 6);
}

#[test]
fn xdp_read_times_bracket_the_sending() {
    xdp_receive_times_bracket_the_sending("read");
}

#[test]
fn xdp_kernel_times_bracket_the_sending() {
    xdp_receive_times_bracket_the_sending("kernel");
}

/// With `-w` the XDP program stamps every frame (`--xdp-timestamps auto`): frames sent back to
/// back, which the reader takes in one batch, keep distinct, increasing times in the file. With
/// times stamped per batch they would share one.
#[test]
fn xdp_pcap_times_are_per_frame() {
    const FRAMES: usize = 64;
    let topo = Topology::new();
    let link = topo.link();
    let dir = TempDir::new("pcap-times");
    let out = dir.join("out.pcap");
    let mut s = sniff1(
        &topo,
        Mode::Native,
        &["-w", out.to_str().expect("UTF-8 temp path")],
    );
    let frames: Vec<Vec<u8>> = (0..FRAMES)
        .map(|i| UdpFrame::v4(link, format!("NCT p {i:02}\n").into_bytes()).build())
        .collect();
    topo.sender(link).send_all(&frames);
    s.expect_line_containing(&format!("NCT p {:02}", FRAMES - 1), LINE_TIMEOUT);
    stop_expecting(&mut s, Mode::Native, FRAMES);
    let file = PcapFile::read(&out);
    let times: Vec<(u32, u32)> = file.records.iter().map(|r| (r.ts_sec, r.ts_nsec)).collect();
    assert_eq!(times.len(), FRAMES, "records in {}", out.display());
    assert!(
        times.windows(2).all(|pair| pair[0] < pair[1]),
        "capture times not distinct and increasing: {times:?}"
    );
}

// 13. Errors: exit code 2, no panic, a message that names the culprit; returns stderr.
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

#[test]
fn unknown_interface_with_raw_backend_is_a_one_line_error() {
    assert_one_line(&assert_clean_error(
        &["-i", "nct-nosuch0", "--backend", "raw", "--format", "raw"],
        "nct-nosuch0",
    ));
}

// 14. `--backend auto` when XDP cannot attach (another program holds the interface's XDP hook:
// a first netcon-sniff with `--backend xdp`): one notice line saying why, then capture through
// raw sockets, while the first program stays attached and keeps working.
fn auto_falls_back(holder: Mode) {
    let topo = Topology::new();
    let link = topo.link();
    let dev = link.collector_if.as_str();
    let mut first = sniff(&topo, &[link], holder, &["--backend", "xdp"], "6666");

    let mut s = Sniffer::start(
        &topo.collector,
        &["-i", dev, "--backend", "auto", "--format", "raw"],
    );
    let ready = s.wait_ready();
    let want = Mode::Raw.ready_line(dev, "6666");
    assert_eq!(
        ready,
        std::slice::from_ref(&want),
        "ready lines of the fallback"
    );
    assert_eq!(
        topo.collector.xdp_attachment(dev).as_deref(),
        holder.attachment(),
        "the first program's attachment, after the fallback:\n{}",
        topo.collector.link_summary(dev)
    );
    assert!(
        topo.collector.packet_sockets_on(dev) >= 1,
        "no packet socket bound to {dev} after the fallback"
    );

    let frame = UdpFrame::v4(link, b"NCT after fallback\n".to_vec()).dst_mac(BROADCAST_MAC);
    let got = send_and_expect(&topo, link, &mut s, &frame, "NCT after fallback");
    assert_eq!(got.payload, r"NCT after fallback\n");
    let _ = first.expect_line_containing("NCT after fallback", LINE_TIMEOUT);

    let summary = stop(&mut s, Mode::Raw);
    assert_eq!(
        (summary.raw().received, summary.printed),
        (1, 1),
        "{summary:?}"
    );
    let stderr = without_stats(s.stderr_lines());
    assert_eq!(
        stderr.len(),
        2,
        "expected the notice and the ready line (besides stats and the summary):\n{}",
        stderr.join("\n")
    );
    let why = stderr[0]
        .strip_prefix("netcon-sniff: XDP unavailable: ")
        .and_then(|l| l.strip_suffix("; using raw sockets"))
        .unwrap_or_else(|| {
            panic!(
                "first stderr line is not `netcon-sniff: XDP unavailable: <why>; using raw sockets`: {:?}",
                stderr[0]
            )
        });
    assert!(
        why.contains(dev),
        "the reason does not name the interface {dev}: {why:?}"
    );
    assert_eq!(stderr[1], want, "the ready line follows the notice");

    let held = stop(&mut first, holder);
    assert_eq!((held.xdp().matched, held.printed), (1, 1), "{held:?}");
    wait_released(&topo, link);
}

#[test]
fn auto_falls_back_when_native_xdp_is_taken() {
    auto_falls_back(Mode::Native);
}

#[test]
fn auto_falls_back_when_skb_xdp_is_taken() {
    auto_falls_back(Mode::Skb);
}

// 14b. `--xdp-mode auto` (the default) attaches in generic mode on veth: native XDP there makes
// veth copy every frame the stack built into a new page before the program runs.
#[test]
fn auto_xdp_mode_is_generic_on_veth() {
    let topo = Topology::new();
    let link = topo.link();
    let dev = link.collector_if.as_str();
    let mut s = Sniffer::start(&topo.collector, &["-i", dev, "--format", "raw"]);
    let ready = s.wait_ready();
    let want = Mode::Skb.ready_line(dev, "6666");
    assert!(ready.contains(&want), "expected {want:?} among {ready:#?}");
    assert_eq!(
        topo.collector.xdp_attachment(dev).as_deref(),
        Some("xdpgeneric"),
        "{}",
        topo.collector.link_summary(dev)
    );
    let frame = UdpFrame::v4(link, b"NCT generic on veth\n".to_vec());
    let _ = send_and_expect(&topo, link, &mut s, &frame, "NCT generic on veth");
    let summary = stop(&mut s, Mode::Skb);
    assert_eq!(summary.xdp().matched, 1, "{summary:?}");
    wait_released(&topo, link);
}

// 15. `--backend xdp` never falls back: when the hook is taken it is a one-line error, and the
// program already attached is left alone.
#[test]
fn xdp_backend_does_not_fall_back() {
    let topo = Topology::new();
    let link = topo.link();
    let dev = link.collector_if.as_str();
    let mut first = sniff(&topo, &[link], Mode::Native, &["--backend", "xdp"], "6666");
    let mut s = Sniffer::start(
        &topo.collector,
        &["-i", dev, "--backend", "xdp", "--format", "raw"],
    );
    let (status, stderr) = s.wait();
    assert_eq!(status.code(), Some(2), "exit status; stderr:\n{stderr}");
    assert_one_line(&stderr);
    assert!(stderr.contains(dev), "error does not name {dev}:\n{stderr}");
    for bad in ["using raw sockets", "listening on", "panicked"] {
        assert!(!stderr.contains(bad), "{bad:?} in stderr:\n{stderr}");
    }
    assert!(
        s.stdout_lines().is_empty(),
        "stdout: {:?}",
        s.stdout_lines()
    );
    assert_eq!(
        topo.collector.xdp_attachment(dev).as_deref(),
        Some("xdp"),
        "the first program's attachment after the refused second one"
    );
    let frame = UdpFrame::v4(link, b"NCT still held\n".to_vec());
    let _ = send_and_expect(&topo, link, &mut first, &frame, "NCT still held");
    let _ = stop(&mut first, Mode::Native);
}
