//! A flood from one source against the raw backend (`--backend raw`), with the real binary in a
//! collector namespace: the attacker sends continuation records faster than the decoder can
//! take them, while a genuine sender on another address sends a record every 50 frames. Every
//! genuine record is printed, and the frames the attacker lost are reported under its address.
//!
//! This is the raw backend's fair hand-over: its receive thread reads on whatever the pipeline
//! does, and a flooder overflows only its own queue. (When the receive thread waited for the
//! pipeline instead, the socket buffer overflowed and the kernel dropped frames of both
//! senders alike.)
//!
//! Subnet 63 (addresses only inside the namespaces this test creates).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use netcon_testkit::{LINE_TIMEOUT, Link, Stats, Topology, UdpFrame};

/// Attack frames between two genuine records.
const ATTACK_PER_VICTIM: u64 = 50;
/// Genuine records sent (and so `ATTACK_PER_VICTIM` times as many attack frames).
const VICTIM_RECORDS: u64 = 1200;
/// Pace of the attack: one frame each 40 µs (25,000 frames/s, 3 s for 60,000 frames): well
/// beyond what the decoder takes of these records, well within what the receive thread reads.
const ATTACK_INTERVAL: Duration = Duration::from_micros(40);

fn frame_from(link: &Link, src: SocketAddr, payload: Vec<u8>) -> Vec<u8> {
    UdpFrame {
        src,
        ..UdpFrame::v4(link, payload)
    }
    .build()
}

#[test]
fn a_flood_from_one_source_costs_another_sender_nothing_and_is_named() {
    let topo = Topology::on_subnet(63);
    let link = topo.link();
    let mut s = netcon_testkit::Sniffer::start(
        &topo.collector,
        &["-i", link.collector_if.as_str(), "--backend", "raw"],
    );
    s.wait_ready();

    // Continuation records of 600 empty dictionary lines, seq N, N+1, ...: the most work per
    // byte the decoder has (each is cut at its bound and printed, so they are not held).
    let body = " \n".repeat(600);
    let attacker = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, link.subnet, 0, 66)), 6665);
    let victim = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, link.subnet, 0, 20)), 6665);
    let mut sender = topo.sender(link);
    let start = Instant::now();
    for k in 0..VICTIM_RECORDS {
        let frames: Vec<Vec<u8>> = (k * ATTACK_PER_VICTIM..(k + 1) * ATTACK_PER_VICTIM)
            .map(|n| {
                let payload = format!("6,{n},{},c;\n{body}", n * 1000).into_bytes();
                frame_from(link, attacker, payload)
            })
            .collect();
        sender.send_paced(&frames, ATTACK_INTERVAL);
        let ts = 5_000_000 + start.elapsed().as_micros();
        let record = format!("6,{k},{ts},-;during the flood NCT-VICTIM {k}.\n").into_bytes();
        sender.send(&frame_from(link, victim, record));
    }
    let sent_for = start.elapsed();
    for k in 0..VICTIM_RECORDS {
        s.expect_line_containing(&format!("during the flood NCT-VICTIM {k}."), LINE_TIMEOUT);
    }
    // The attacker's drops are a notice that names it, within a second of happening.
    let named = s.expect_line_containing(
        &format!("frames from {} on {}", attacker.ip(), link.collector_if),
        LINE_TIMEOUT,
    );
    assert!(named.contains("-- CAPTURE LOST "), "{named}");
    assert!(named.ends_with("(capture queue full)"), "{named}");
    s.sigterm();
    let (status, stderr) = s.wait();
    assert!(status.success(), "{stderr}");
    let summary = Stats::last(&stderr);
    eprintln!("attack sent in {sent_for:?}; {summary}");
    // The flood did overflow something: else this test proves nothing.
    let queue_full = summary.counter("queue_full");
    assert!(queue_full > 0, "{stderr}");
}
