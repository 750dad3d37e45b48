//! End-to-end tests of operating features: dropping root with `--user`, `--allow`, and the
//! stats line on SIGUSR1, with the real binary in a collector namespace.

use std::time::Duration;

mod common;

use common::{refused, sniff_on_link, start_on_link, stop};
use netcon_testkit::outputs::{proc_status_field, sniffer_pid};
use netcon_testkit::{BROADCAST_MAC, LINE_TIMEOUT, Stats, Topology, UdpFrame};

#[test]
fn user_drops_root_and_keeps_capturing() {
    let topo = Topology::new();
    let link = topo.link();
    let mut s = sniff_on_link(&topo, &["--user", "nobody"]);
    // The switch happens right after the ready lines; give it a moment to be visible.
    let pid = sniffer_pid(&s);
    let mut uid = String::new();
    for _ in 0..50 {
        uid = proc_status_field(pid, "Uid");
        if uid.split_whitespace().all(|u| u == "65534") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        uid.split_whitespace().all(|u| u == "65534"),
        "real, effective, saved and fs uid should all be nobody's: {uid}"
    );
    assert!(
        proc_status_field(pid, "Gid")
            .split_whitespace()
            .all(|g| g == "65534")
    );
    assert_eq!(proc_status_field(pid, "CapEff"), "0000000000000000");
    assert_eq!(proc_status_field(pid, "CapPrm"), "0000000000000000");
    assert_eq!(proc_status_field(pid, "NoNewPrivs"), "1");

    let frame = UdpFrame::v4(link, b"6,7,1000,-;NCT unprivileged hello\n".to_vec())
        .dst_mac(BROADCAST_MAC)
        .dst_ip(link.foreign_v4());
    topo.sender(link).send(&frame.build());
    let printed = s.expect_line_containing("NCT unprivileged hello", LINE_TIMEOUT);
    assert!(printed.contains(" kern.info "), "{printed}");
    let stderr = stop(&mut s);
    assert_eq!(
        Stats::last(&stderr).counter("matched"),
        1,
        "counters still readable after the drop:\n{stderr}"
    );
}

#[test]
fn unknown_user_is_an_error_not_a_root_run() {
    let topo = Topology::new();
    let mut s = start_on_link(&topo, &["--user", "nct-no-such-user"]);
    let stderr = refused(&mut s);
    assert!(stderr.contains("nct-no-such-user"), "{stderr}");
}

#[test]
fn allow_keeps_only_listed_senders_and_usr1_prints_stats() {
    let topo = Topology::new();
    let link = topo.link();
    let mut s = sniff_on_link(&topo, &["--allow", "10.200.0.0/16"]);
    // The sender is 10.N.0.10, outside the allowed prefix.
    let frame = UdpFrame::v4(link, b"6,1,1,-;NCT denied\n".to_vec());
    topo.sender(link).send(&frame.build());
    let mut denied = None;
    for _ in 0..50 {
        let stats = s.stats();
        // Also lets the harness collect stdout meanwhile.
        s.assert_no_line_containing("NCT denied", Duration::from_millis(100));
        if stats.counter("denied") == 1 {
            denied = Some(stats);
            break;
        }
    }
    let stats =
        denied.unwrap_or_else(|| panic!("no stats with denied=1:\n{:#?}", s.stderr_lines()));
    assert_eq!(stats.counter("records"), 0, "{stats}");
    s.assert_no_line_containing("NCT denied", Duration::from_millis(500));
}

/// `--color always` colors levels as `dmesg --color` does; by default (stdout is a pipe here)
/// and with `--color never` nothing but escaped text is written.
#[test]
fn color_only_when_asked_or_on_a_terminal() {
    let run = |extra: &[&str]| {
        let out = std::process::Command::new(netcon_testkit::sniff_binary())
            .args(["-r", netcon_testkit::fixture("ext.pcap").to_str().unwrap()])
            .args(extra)
            .output()
            .expect("running netcon-sniff");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("UTF-8 output")
    };
    let colored = run(&["--color", "always"]);
    let emerg = colored
        .lines()
        .find(|l| l.contains("LEVEL0"))
        .expect("the LEVEL0 record");
    assert!(
        emerg.starts_with("\x1b[7;31m") && emerg.ends_with("\x1b[0m"),
        "{emerg:?}"
    );
    let info = colored
        .lines()
        .find(|l| l.contains("LEVEL6"))
        .expect("LEVEL6");
    assert!(!info.contains('\x1b'), "info is plain: {info:?}");
    for plain in [run(&[]), run(&["--color", "never"])] {
        assert!(
            !plain.contains('\x1b'),
            "no escape sequences without a terminal"
        );
    }
}

/// A SIGUSR1 sent the moment `listening on` appears asks for counters: the handlers are in
/// place before the ready line (the default action of SIGUSR1 would end the process).
#[test]
fn usr1_right_after_ready_prints_stats() {
    let topo = Topology::new();
    for backend in ["xdp", "raw"] {
        let mut s = sniff_on_link(&topo, &["--backend", backend]);
        let stats = s.stats();
        assert_eq!(stats.counter("datagrams"), 0, "{backend}: {stats}");
        stop(&mut s);
    }
}
