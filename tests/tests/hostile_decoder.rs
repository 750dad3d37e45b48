//! Hostile senders against the decoder, with the real binary in a collector namespace: a
//! continuation flood that used to grow without bound, and a spray of spoofed sources that used
//! to evict the senders that were actually talking. In both, peak RSS (`VmHWM`) stays under
//! 64 MiB and every record of a genuine sender sending meanwhile is printed.
//!
//! Subnets 61, 62 and 64 (addresses only inside the namespaces these tests create).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

mod common;

use common::{sniff_on_link, stop};
use netcon_testkit::outputs::{proc_status_field, sniffer_pid};
use netcon_testkit::{FrameSender, LINE_TIMEOUT, Link, Sniffer, Stats, Topology, UdpFrame};

/// Peak RSS allowed: the default 24 MiB budget plus the process's fixed cost (8 MiB ring
/// buffer, binary, buffers).
const MAX_PEAK_RSS_KIB: u64 = 64 * 1024;

/// `VmHWM` (peak resident set) of `pid`, KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let hwm = proc_status_field(pid, "VmHWM");
    hwm.trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("VmHWM {hwm:?} in /proc/{pid}/status: {e}"))
}

/// A frame from `src` (an address on the link's subnet that the sender namespace sends as).
fn frame_from(link: &Link, src: SocketAddr, payload: Vec<u8>) -> Vec<u8> {
    UdpFrame {
        src,
        ..UdpFrame::v4(link, payload)
    }
    .build()
}

/// The genuine sender's record `k`: `<text> NCT-VICTIM <k>.`, extended, seq `k`, stamped as a
/// kernel up 5 s at `start` would stamp it now (so that its implied boot
/// time stays put, as a real sender's does).
fn victim_record(k: u64, start: Instant, text: &str) -> Vec<u8> {
    let ts = 5_000_000 + start.elapsed().as_micros();
    format!("6,{k},{ts},-;{text} NCT-VICTIM {k}.\n").into_bytes()
}

fn victim_addr(link: &Link) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, link.subnet, 0, 20)), 6665)
}

/// Sends the genuine sender's record `k` (see [`victim_record`]) from [`victim_addr`].
fn send_victim(sender: &mut FrameSender, link: &Link, k: u64, start: Instant, text: &str) {
    sender.send(&frame_from(
        link,
        victim_addr(link),
        victim_record(k, start, text),
    ));
}

/// Stops the sniffer and returns its exit counters, all of them (capture, decoder, sinks).
fn exit_stats(mut s: Sniffer) -> Stats {
    Stats::last(&stop(&mut s))
}

#[test]
fn continuation_flood_stays_under_the_budget_and_the_victim_is_heard() {
    let topo = Topology::on_subnet(61);
    let link = topo.link();
    let mut s = sniff_on_link(&topo, &[]);
    let pid = sniffer_pid(&s);
    let rss_at_start = peak_rss_kib(pid);

    // Continuation records of 600 empty dictionary lines each, seq N, N+1, ... one a
    // millisecond from one sender (5,000 of them: the unbounded decoder held about 29 KB per
    // datagram, so 140 MB by the end); every 50th, a genuine record from another sender. The
    // frames fit in the capture ring buffer even if a slow (debug) build falls behind.
    let body = " \n".repeat(600);
    let attacker = SocketAddr::new(link.sender_v4.into(), 6665);
    let mut sender = topo.sender(link);
    let start = Instant::now();
    let mut victim = 0u64;
    for chunk in 0..100u64 {
        let frames: Vec<Vec<u8>> = (chunk * 50..(chunk + 1) * 50)
            .map(|n| {
                let payload = format!("6,{n},{},c;\n{body}", n * 1000).into_bytes();
                frame_from(link, attacker, payload)
            })
            .collect();
        sender.send_paced(&frames, Duration::from_millis(1));
        victim += 1;
        send_victim(&mut sender, link, victim, start, "during the flood");
    }
    for k in 1..=victim {
        s.expect_line_containing(&format!("during the flood NCT-VICTIM {k}."), LINE_TIMEOUT);
    }
    let peak = peak_rss_kib(pid);
    eprintln!("continuation flood: VmHWM {rss_at_start} KiB at start, {peak} KiB after");
    assert!(
        peak < MAX_PEAK_RSS_KIB,
        "peak RSS {peak} KiB under a continuation flood"
    );
    let stats = exit_stats(s);
    // Every flood record came out, cut at its bound, not held.
    assert!(stats.counter("continuations_cut") >= 4_900, "{stats}");
    assert_eq!(stats.counter("records_lost"), 0, "{stats}");
}

#[test]
fn spoofed_source_spray_does_not_evict_a_talking_sender() {
    let topo = Topology::on_subnet(62);
    let link = topo.link();
    let mut s = sniff_on_link(&topo, &[]);
    let pid = sniffer_pid(&s);

    // 24,000 one-off sources (10.62.0.100-199, 240 ports each), more than the 10,000 senders
    // the decoder tracks; the genuine sender speaks between every 12,000 of them, so that a
    // plain least-recently-heard table would have evicted it each time.
    let spoofed = |i: u32| {
        let host = u8::try_from(100 + i % 100).expect("host");
        let port = u16::try_from(1024 + i / 100).expect("port");
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, link.subnet, 0, host)), port)
    };
    let mut sender = topo.sender(link);
    let start = Instant::now();
    for (k, text) in [(1, "Kernel panic - not syncing: NCT"), (2, "RIP: before")] {
        send_victim(&mut sender, link, k, start, text);
    }
    let mut victim = 2u64;
    for half in 0..2u32 {
        let frames: Vec<Vec<u8>> = (half * 12_000..(half + 1) * 12_000)
            .map(|i| frame_from(link, spoofed(i), b"[    1.000000] NCT-SPOOFED\n".to_vec()))
            .collect();
        sender.send_paced(&frames, Duration::from_micros(20));
        victim += 1;
        send_victim(&mut sender, link, victim, start, "during the spray");
    }
    for k in 3..=victim {
        let printed =
            s.expect_line_containing(&format!("during the spray NCT-VICTIM {k}."), LINE_TIMEOUT);
        // Still attributed to the crash report it opened: the sender kept its state.
        assert!(printed.contains("<panic #"), "{printed}");
    }
    // One record of the victim goes missing: the gap is seen, so its sequence state survived.
    send_victim(&mut sender, link, victim + 2, start, "after the spray");
    let lost = s.expect_line_containing(" -- LOST 1 records", LINE_TIMEOUT);
    assert!(lost.contains(" 10.62.0.20 "), "{lost}");
    s.expect_line_containing("after the spray", LINE_TIMEOUT);

    let peak = peak_rss_kib(pid);
    eprintln!("spoofed spray: VmHWM {peak} KiB");
    assert!(peak < MAX_PEAK_RSS_KIB, "peak RSS {peak} KiB under a spray");
    let stats = exit_stats(s);
    assert!(stats.counter("senders_evicted") >= 14_000, "{stats}");
    assert_eq!(stats.counter("reboots"), 0, "{stats}");
}

/// A collector kept off the CPU (SIGSTOP) for longer than the decoder's reboot threshold (1 s):
/// what waited in the XDP ring meanwhile is dated near its arrival, not when netcon-sniff got to
/// it (the reader's receive times are bounded by the program's coarse clock), so a genuine
/// sender's steady records are not taken for a reboot. Read-time stamps without the bound
/// dated the record 1.5 s late and printed `rebooted`.
#[test]
fn a_stalled_collector_does_not_take_its_backlog_for_a_reboot() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;

    let topo = Topology::on_subnet(64);
    let link = topo.link();
    let mut s = sniff_on_link(&topo, &["--backend", "xdp", "--xdp-timestamps", "read"]);
    let pid = Pid::from_raw(i32::try_from(sniffer_pid(&s)).expect("pid"));
    let mut sender = topo.sender(link);
    let start = Instant::now();
    send_victim(&mut sender, link, 1, start, "before the stall");
    s.expect_line_containing("before the stall NCT-VICTIM 1.", LINE_TIMEOUT);
    kill(pid, Signal::SIGSTOP).expect("SIGSTOP netcon-sniff");
    let resume = || kill(pid, Signal::SIGCONT).expect("SIGCONT netcon-sniff");
    std::thread::sleep(Duration::from_millis(100));
    send_victim(&mut sender, link, 2, start, "during the stall");
    std::thread::sleep(Duration::from_millis(1_500));
    resume();
    s.expect_line_containing("during the stall NCT-VICTIM 2.", LINE_TIMEOUT);
    send_victim(&mut sender, link, 3, start, "after the stall");
    s.expect_line_containing("after the stall NCT-VICTIM 3.", LINE_TIMEOUT);
    let stats = exit_stats(s);
    assert_eq!(stats.counter("reboots"), 0, "{stats}");
    assert_eq!(stats.counter("records_lost"), 0, "{stats}");
}
