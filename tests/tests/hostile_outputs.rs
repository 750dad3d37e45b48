//! End-to-end tests of the outputs on a hostile segment, with the real binary: forged panics
//! cannot starve the genuine sender's hook, dropping root keeps `--log-dir` working (or is
//! refused at start), and frames lost before decoding show in the output stream and the files.
//!
//! Deadlines are failure deadlines only; nothing asserts how fast anything is.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod common;

use common::{refused, sniff_on_link, start_on_link, stop};
use netcon_testkit::outputs::{
    extended, file_lines, signal_sniffer, stats_counter, topology_on_subnet, wait_for_lines,
};
use netcon_testkit::{
    FrameSender, LINE_TIMEOUT, Link, PcapFile, Sniffer, TempDir, Topology, UdpFrame,
};
use nix::sys::signal::Signal;

/// Forged panic senders: as many as in the report that found the hook starvable.
const FORGED: u8 = 24;
/// How long each forged report's hook runs (a slow pager).
const SLOW_HOOK_SECONDS: u32 = 3;
/// Frames of the burst sent while the reader is stopped: far more than a 1 MiB buffer holds.
const BURST: usize = 20_000;

/// Sends `count` extended records `MARKER record SEQ` (SEQ from 1) from the sender of `topo`'s
/// link, one at a time, each once `s` has printed the one before; returns the printed lines.
fn send_records(topo: &Topology, s: &mut Sniffer, marker: &str, count: u64) -> Vec<String> {
    let link = topo.link();
    let mut sender = topo.sender(link);
    (1..=count)
        .map(|seq| {
            let text = format!("{marker} record {seq}");
            sender.send(&UdpFrame::v4(link, extended(6, seq, 1000 + seq, &text)).build());
            s.expect_line_containing(&text, LINE_TIMEOUT)
        })
        .collect()
}

/// [`sniff_on_link`] with `--user nobody` and `option` naming `path`.
fn sniff_as_nobody(topo: &Topology, option: &str, path: &Path) -> Sniffer {
    sniff_on_link(
        topo,
        &["--user", "nobody", option, path.to_str().expect("UTF-8")],
    )
}

/// A frame from `link`'s sender, but with the IPv4 source `10.N.0.last` (N the link's subnet).
fn forged(link: &Link, last: u8, payload: Vec<u8>) -> Vec<u8> {
    let mut frame = UdpFrame::v4(link, payload);
    frame.src = SocketAddr::new(
        IpAddr::V4(Ipv4Addr::new(10, link.subnet, 0, last)),
        frame.src.port(),
    );
    frame.build()
}

/// Polls until `done` holds, failing with `what` once [`LINE_TIMEOUT`] has passed.
fn wait_until(mut done: impl FnMut() -> bool, what: impl Fn() -> String) {
    let deadline = Instant::now() + LINE_TIMEOUT;
    while !done() {
        assert!(Instant::now() < deadline, "{}", what());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A panic hook in a directory of its own: a script that appends each run's sender to
/// `out`, then does what the test gives it.
struct Hook {
    dir: TempDir,
    script: PathBuf,
    out: PathBuf,
}

impl Hook {
    /// Writes the script: the `echo` to `out`, then `rest` (shell lines).
    fn new(name: &str, rest: impl FnOnce(&TempDir) -> String) -> Hook {
        let dir = TempDir::new(name);
        let script = dir.join("hook.sh");
        let out = dir.join("hook.out");
        let text = format!(
            "#!/bin/sh\necho \"$NETCON_SENDER\" >> '{}'\n{}",
            out.display(),
            rest(&dir)
        );
        std::fs::write(&script, text)
            .unwrap_or_else(|e| panic!("writing {}: {e}", script.display()));
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", script.display()));
        Hook { dir, script, out }
    }

    /// Starts netcon-sniff on `topo` printing JSON, with this script as `--on-panic`.
    fn sniff(&self, topo: &Topology) -> Sniffer {
        sniff_on_link(
            topo,
            &[
                "--format",
                "json",
                "--on-panic",
                self.script.to_str().expect("UTF-8"),
            ],
        )
    }
}

/// Hook script lines that run `genuine` for a report from the link's own sender (any port) and
/// `forged` for one from any other sender.
fn by_sender(link: &Link, genuine: &str, forged: &str) -> String {
    format!(
        "case \"$NETCON_SENDER\" in {}:*) {genuine};; *) {forged};; esac\n",
        link.sender_v4
    )
}

/// Sends the genuine sender's own panic report, waits until it is printed, and returns the
/// sender as its hook sees it (`NETCON_SENDER`).
fn send_genuine_panic(sender: &mut FrameSender, link: &Link, s: &mut Sniffer, seq: u64) -> String {
    sender.send(
        &UdpFrame::v4(
            link,
            extended(0, seq, 9000, "Kernel panic - not syncing: genuine"),
        )
        .build(),
    );
    s.expect_line_containing("not syncing: genuine", LINE_TIMEOUT);
    format!("{}:6665", link.sender_v4)
}

/// Waits for the `hook_late` notice of `genuine`'s report (among the forged reports' notices).
fn expect_hook_late(s: &mut Sniffer, genuine: &str) {
    while !s
        .expect_line_containing("\"type\":\"hook_late\"", LINE_TIMEOUT)
        .contains(genuine)
    {}
}

#[test]
fn forged_panics_from_many_senders_do_not_starve_the_genuine_hook() {
    let topo = topology_on_subnet(45);
    let link = topo.link();
    // Records every run; the forged senders' runs are a slow pager.
    let hook = Hook::new("hostile-hook", |_| {
        by_sender(link, "", &format!("sleep {SLOW_HOOK_SECONDS}"))
    });
    let mut s = hook.sniff(&topo);
    let mut sender = topo.sender(link);
    for i in 0..FORGED {
        sender.send(&forged(
            link,
            100 + i,
            extended(0, 1, 1000, "Kernel panic - not syncing: forged"),
        ));
    }
    for _ in 0..FORGED {
        s.expect_line_containing("not syncing: forged", LINE_TIMEOUT);
    }
    // A second later, with every slot busy with forged reports, the real one.
    std::thread::sleep(Duration::from_secs(1));
    let genuine = send_genuine_panic(&mut sender, link, &mut s, 7);

    let runs = wait_for_lines(&hook.out, usize::from(FORGED) + 1);
    assert!(
        runs.contains(&genuine),
        "the genuine hook never ran: {runs:#?}"
    );
    // It waited for a slot, and the output stream says so.
    expect_hook_late(&mut s, &genuine);
    let stderr = stop(&mut s);
    assert_eq!(
        stats_counter(&stderr, "hooks_run"),
        u64::from(FORGED) + 1,
        "{stderr}"
    );
    assert_eq!(stats_counter(&stderr, "hooks_skipped"), 0, "{stderr}");
    assert!(stats_counter(&stderr, "hooks_late") >= 1, "{stderr}");
}

/// Forged panic senders of the spray: more than the hook's slots (16) and queue (256) together.
const SPRAY: u16 = 300;

#[test]
fn a_spray_of_forged_panics_beyond_the_queue_does_not_crowd_out_a_known_sender() {
    let topo = topology_on_subnet(45);
    let link = topo.link();
    // Forged runs are slow until the genuine one has run; then they end at once.
    let hook = Hook::new("hostile-spray", |dir| {
        let done = dir.join("done");
        let done = done.display();
        by_sender(
            link,
            &format!("touch '{done}'"),
            &format!("[ -e '{done}' ] || sleep {SLOW_HOOK_SECONDS}"),
        )
    });
    let done = hook.dir.join("done");
    let mut s = hook.sniff(&topo);
    let mut sender = topo.sender(link);
    // The real machine has been logging before the attack.
    sender.send(&UdpFrame::v4(link, extended(6, 1, 1000, "NCT-SPRAY booted")).build());
    s.expect_line_containing("NCT-SPRAY booted", LINE_TIMEOUT);
    let frames: Vec<Vec<u8>> = (0..SPRAY)
        .map(|i| {
            // From fd00:N::1000 on: inside the namespace's own prefix, as many as wanted.
            let mut frame = UdpFrame::v6(
                link,
                extended(0, 1, 1000, "Kernel panic - not syncing: sprayed"),
            );
            frame.src = SocketAddr::new(
                IpAddr::V6(Ipv6Addr::new(
                    0xfd00,
                    u16::from(link.subnet),
                    0,
                    0,
                    0,
                    0,
                    0,
                    0x1000 + i,
                )),
                frame.src.port(),
            );
            frame.build()
        })
        .collect();
    sender.send_all(&frames);
    for _ in 0..SPRAY {
        s.expect_line_containing("not syncing: sprayed", LINE_TIMEOUT);
    }
    let genuine = send_genuine_panic(&mut sender, link, &mut s, 2);

    wait_until(
        || done.exists(),
        || {
            format!(
                "the genuine hook never ran; runs: {:?}",
                file_lines(&hook.out).map(|l| l.len())
            )
        },
    );
    expect_hook_late(&mut s, &genuine);
    // The spray beyond slots and queue was skipped, visibly.
    assert!(
        s.stdout_lines()
            .iter()
            .any(|l| l.contains("\"type\":\"hook_skipped\"") && l.contains("queue_full")),
        "no hook_skipped notice"
    );
    let stderr = stop(&mut s);
    assert!(stats_counter(&stderr, "hooks_skipped") > 0, "{stderr}");
}

#[test]
fn user_nobody_with_a_new_log_dir_writes_every_record() {
    let topo = topology_on_subnet(46);
    let link = topo.link();
    let dir = TempDir::new("hostile-user");
    let logs = dir.join("new-logs");
    let mut s = sniff_as_nobody(&topo, "--log-dir", &logs);
    let records = 100;
    let printed = send_records(&topo, &mut s, "NCT-USER", records);
    let file = logs.join(format!("{}.log", link.sender_v4));
    assert_eq!(file_lines(&file), Some(printed));
    let stderr = stop(&mut s);
    assert_eq!(stats_counter(&stderr, "files_errors"), 0, "{stderr}");
    assert_eq!(stats_counter(&stderr, "files_written"), records);
}

#[test]
fn user_nobody_with_a_log_dir_it_cannot_write_is_refused_at_start() {
    let topo = topology_on_subnet(47);
    let dir = TempDir::new("hostile-user-refused");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let mut s = start_on_link(
        &topo,
        &[
            "--user",
            "nobody",
            "--log-dir",
            dir.path().to_str().expect("UTF-8"),
        ],
    );
    let stderr = refused(&mut s);
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.starts_with("listening on "))
        .collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    assert!(
        lines[0].contains(dir.path().to_str().expect("UTF-8"))
            && lines[0].contains("chown -R nobody"),
        "{stderr}"
    );
    assert!(s.stdout_lines().is_empty());
}

#[test]
fn user_nobody_keeps_writing_the_pcap_file() {
    let topo = topology_on_subnet(40);
    let dir = TempDir::new("hostile-user-pcap");
    let pcap = dir.join("out.pcap");
    let mut s = sniff_as_nobody(&topo, "-w", &pcap);
    send_records(&topo, &mut s, "NCT-PCAP", 5);
    stop(&mut s);
    // Opened as root before the drop; written as nobody through the descriptor.
    assert_eq!(PcapFile::read(&pcap).records.len(), 5);
}

#[test]
fn a_closed_stdout_still_lets_the_files_have_what_was_held() {
    use std::io::{BufRead as _, BufReader};
    use std::process::{Command, Stdio};

    let topo = topology_on_subnet(44);
    let link = topo.link();
    let dir = TempDir::new("hostile-epipe");
    let mut child = Command::new("ip")
        .args(["netns", "exec", topo.collector.name()])
        .arg(netcon_testkit::sniff_binary())
        .args(["-i", &link.collector_if, "--log-dir"])
        .arg(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start netcon-sniff");
    let stderr = child.stderr.take().expect("piped");
    let (ready_tx, ready) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.starts_with("listening on ") {
                let _ = ready_tx.send(());
            }
            lines.push(line);
        }
        lines
    });
    if ready.recv_timeout(Duration::from_mins(1)).is_err() {
        let _ = child.kill();
        panic!("netcon-sniff never listened: {:?}", reader.join());
    }
    // The reader of stdout goes away (`netcon-sniff | head -0`).
    drop(child.stdout.take());
    let mut sender = topo.sender(link);
    // A plain line without its end is held by the decoder; the next record from another port
    // makes stdout fail at once. The held line must still reach the file.
    sender.send(&UdpFrame::v4(link, b"NCT-EPIPE held line".to_vec()).build());
    sender.send(
        &UdpFrame::v4(link, extended(6, 1, 1000, "NCT-EPIPE kick"))
            .src_port(6664)
            .build(),
    );
    let mut exit = None;
    wait_until(
        || {
            exit = child.try_wait().expect("wait");
            exit.is_some()
        },
        || "still running after stdout closed".to_owned(),
    );
    let status = exit.expect("exited");
    let stderr = reader.join().expect("stderr reader").join("\n");
    assert!(
        status.success(),
        "a closed pipe is a normal end: {status} {stderr}"
    );
    let lines = file_lines(&dir.join(&format!("{}.log", link.sender_v4))).unwrap_or_default();
    assert!(
        lines.iter().any(|l| l.contains("NCT-EPIPE kick")),
        "{lines:#?}\n{stderr}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("<partial line> NCT-EPIPE held line")),
        "the held line was not flushed to the file: {lines:#?}\n{stderr}"
    );
}

/// Stops the reader, sends a burst far larger than its buffer, resumes it: the loss must show
/// as a `capture_lost` object in the JSON stream and as a line in the sender's file.
fn ring_overflow_is_a_capture_lost_event(backend: &str, subnet: u8, reason: &str) {
    let topo = topology_on_subnet(subnet);
    let link = topo.link();
    let dir = TempDir::new("hostile-lost");
    let mut s = sniff_on_link(
        &topo,
        &[
            "--backend",
            backend,
            "--ring-mib",
            "1",
            "--format",
            "json",
            "--log-dir",
            dir.path().to_str().expect("UTF-8"),
        ],
    );
    let mut sender = topo.sender(link);
    sender.send(&UdpFrame::v4(link, extended(6, 1, 1000, "NCT-LOST before")).build());
    s.expect_line_containing("NCT-LOST before", LINE_TIMEOUT);

    signal_sniffer(&s, Signal::SIGSTOP);
    let text = "NCT-LOST burst ".repeat(8);
    let frames: Vec<Vec<u8>> = (0..BURST)
        .map(|i| {
            let seq = 2 + i as u64;
            UdpFrame::v4(link, extended(6, seq, 2000 + seq, &text)).build()
        })
        .collect();
    sender.send_all(&frames);
    signal_sniffer(&s, Signal::SIGCONT);

    // The raw backend may first report frames its per-sender queue dropped (reason
    // `queue_full`, sender named) when the process resumes; the socket's own loss follows.
    let lost = s.expect_line_containing(&format!("\"reason\":\"{reason}\""), LINE_TIMEOUT);
    assert!(lost.contains("\"type\":\"capture_lost\""), "{lost}");
    assert!(
        lost.contains(&format!("\"interface\":\"{}\"", link.collector_if)),
        "{lost}"
    );
    let frames_lost: u64 = lost
        .split("\"frames\":")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no frames count in {lost}"));
    assert!(frames_lost > 0, "{lost}");

    let file = dir.join(&format!("{}.log", link.sender_v4));
    wait_until(
        || {
            file_lines(&file)
                .unwrap_or_default()
                .iter()
                .any(|l| l.contains("-- CAPTURE LOST"))
        },
        || format!("no CAPTURE LOST line in {}", file.display()),
    );
    let stderr = stop(&mut s);
    assert!(
        stats_counter(&stderr, "capture_lost") >= frames_lost,
        "{stderr}"
    );
}

#[test]
fn xdp_ring_overflow_is_a_capture_lost_event_in_the_stream_and_the_files() {
    ring_overflow_is_a_capture_lost_event("xdp", 48, "ring_full");
}

#[test]
fn raw_socket_overflow_is_a_capture_lost_event_in_the_stream_and_the_files() {
    ring_overflow_is_a_capture_lost_event("raw", 49, "socket");
}
