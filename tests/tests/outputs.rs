//! End-to-end tests of the file and command outputs, with the real binary: `--log-dir` on a
//! real kernel capture and live in a namespace with logrotate-style rotation (rename, SIGHUP),
//! and `--on-panic` with a script that records its environment.
//!
//! Deadlines are failure deadlines only; nothing asserts how fast anything is.

use std::path::Path;
use std::time::Duration;

mod common;

use common::{sniff_on_link, stop};
use netcon_testkit::outputs::{
    NetnsHosts, env_recording_hook, extended, file_lines, mode_of, signal_sniffer, stats_counter,
    topology_on_subnet, wait_for_lines,
};
use netcon_testkit::{LINE_TIMEOUT, Sniffer, TempDir, UdpFrame, fixture};
use nix::sys::signal::Signal;

/// How long to keep watching for something that must not happen (a second hook run), after
/// everything sent later was already printed.
const QUIET: Duration = Duration::from_millis(1500);
/// Attempts at getting a record into the new file after SIGHUP (the signal and the next frame
/// race; each attempt sends one more record).
const HUP_ATTEMPTS: usize = 20;
/// Pause between those attempts.
const HUP_PAUSE: Duration = Duration::from_millis(50);

/// `netcon-sniff -r ext.pcap --log-dir DIR` to the end; returns its stdout lines and stderr.
fn read_capture_into(dir: &Path) -> (Vec<String>, String) {
    let pcap = fixture("ext.pcap");
    let mut s = Sniffer::start_offline(
        &[
            "-r",
            pcap.to_str().expect("UTF-8 path"),
            "--log-dir",
            dir.to_str().expect("UTF-8 path"),
        ],
        None,
    );
    let (status, stderr) = s.wait();
    assert!(
        status.success(),
        "netcon-sniff failed ({status}):\n{stderr}"
    );
    (s.stdout_lines().to_vec(), stderr)
}

#[test]
fn log_dir_from_a_real_capture_has_every_line_and_appends() {
    let dir = TempDir::new("logdir-ext");
    let file = dir.join("10.77.0.10.log");

    let (first, stderr) = read_capture_into(dir.path());
    let nct: Vec<&String> = first.iter().filter(|l| l.contains("NCT-")).collect();
    assert!(
        nct.len() > 200,
        "the capture holds over 200 NCT- lines: {}",
        nct.len()
    );
    let written = file_lines(&file).expect("10.77.0.10.log was created");
    // The file holds exactly what the text output printed: same lines, same order.
    assert_eq!(written, first, "file and stdout differ");
    for line in &nct {
        assert!(written.contains(line), "missing from the file: {line}");
    }
    assert_eq!(stats_counter(&stderr, "files_errors"), 0, "{stderr}");
    assert!(stats_counter(&stderr, "files_written") > 200, "{stderr}");
    assert_eq!(
        std::fs::read_dir(dir.path()).expect("list dir").count(),
        1,
        "one sender, one file"
    );
    assert_eq!(mode_of(&file) & !0o640, 0, "mode {:o}", mode_of(&file));

    // A second run appends: nothing truncated, the line count doubles.
    let (second, _) = read_capture_into(dir.path());
    let written = file_lines(&file).expect("still there");
    assert_eq!(written.len(), first.len() + second.len());
    assert_eq!(written.len(), 2 * first.len());
    assert_eq!(&written[..first.len()], first.as_slice(), "first run kept");
    assert_eq!(
        &written[first.len()..],
        second.as_slice(),
        "second run appended"
    );
}

#[test]
fn log_dir_reopens_on_sighup_after_logrotate_moved_the_file() {
    let topo = topology_on_subnet(41);
    let link = topo.link();
    let dir = TempDir::new("logdir-live");
    let name = format!("{}.log", link.sender_v4);
    let file = dir.join(&name);
    let rotated = dir.join(&format!("{name}.1"));
    let mut s = sniff_on_link(&topo, &["--log-dir", dir.path().to_str().expect("UTF-8")]);
    let mut sender = topo.sender(link);
    let mut send = |seq: u64, text: &str| {
        let payload = extended(6, seq, 1_000_000 + seq, text);
        sender.send(&UdpFrame::v4(link, payload).build());
    };

    send(1, "NCT-ROT record 1");
    let line1 = s.expect_line_containing("NCT-ROT record 1", LINE_TIMEOUT);
    // Sinks get each event before stdout does: once printed, it is in the file.
    assert_eq!(file_lines(&file), Some(vec![line1.clone()]));
    assert_eq!(mode_of(&file) & !0o640, 0, "mode {:o}", mode_of(&file));

    // logrotate (without copytruncate): rename, then SIGHUP.
    std::fs::rename(&file, &rotated).expect("rename");
    signal_sniffer(&s, Signal::SIGHUP);

    let mut printed = vec![line1.clone()];
    let mut seq = 1;
    while file_lines(&file).is_none() {
        assert!(
            seq <= HUP_ATTEMPTS as u64,
            "after SIGHUP and {HUP_ATTEMPTS} more records, {name} was not created again; \
             {name}.1 holds {:#?}",
            file_lines(&rotated)
        );
        seq += 1;
        let text = format!("NCT-ROT record {seq}");
        send(seq, &text);
        printed.push(s.expect_line_containing(&text, LINE_TIMEOUT));
        // The signal is handled between batches: give it a moment, on a loaded machine too.
        std::thread::sleep(HUP_PAUSE);
    }
    // One more, certainly after the reopen.
    seq += 1;
    let text = format!("NCT-ROT record {seq}");
    send(seq, &text);
    printed.push(s.expect_line_containing(&text, LINE_TIMEOUT));

    let old = file_lines(&rotated).expect("rotated file");
    let new = file_lines(&file).expect("new file");
    assert_eq!(old.first(), Some(&line1), "{old:#?}");
    assert_eq!(new.last(), printed.last(), "{new:#?}");
    // Every record is in exactly one of the two files, in order: nothing lost or doubled.
    let both: Vec<String> = old.iter().chain(&new).cloned().collect();
    assert_eq!(both, printed);
    assert_eq!(mode_of(&file) & !0o640, 0, "mode {:o}", mode_of(&file));

    let stderr = stop(&mut s);
    assert_eq!(stats_counter(&stderr, "files_errors"), 0, "{stderr}");
    assert_eq!(
        stats_counter(&stderr, "files_written"),
        u64::try_from(printed.len()).expect("small")
    );
}

#[test]
fn log_dir_resolve_names_files_by_host_and_falls_back_to_the_address() {
    let topo = topology_on_subnet(44);
    let link = topo.link();
    // Only the IPv4 address has a name: the IPv6 sender keeps its address.
    let _hosts = NetnsHosts::new(
        &topo.collector,
        &format!("{} Sender-44.netcon.test\n", link.sender_v4),
    );
    let dir = TempDir::new("logdir-resolve");
    let mut s = sniff_on_link(
        &topo,
        &[
            "--log-dir",
            dir.path().to_str().expect("UTF-8"),
            "--resolve",
            "--fsync",
        ],
    );
    let mut sender = topo.sender(link);
    let by_name = dir.join("sender-44.netcon.test.log");
    let by_address = dir.join(&format!("{}.log", link.sender_v4));
    // The lookup runs off the packet path: records go to the address-named file until the
    // name is known, then to the host-named one. Nothing is lost or written twice.
    let mut printed = Vec::new();
    for seq in 1..=HUP_ATTEMPTS as u64 {
        let text = format!("NCT-RES over v4 {seq}");
        sender.send(&UdpFrame::v4(link, extended(6, seq, 1000 + seq, &text)).build());
        printed.push(s.expect_line_containing(&text, LINE_TIMEOUT));
        if file_lines(&by_name).is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let named = file_lines(&by_name).expect("the host-named file was never written");
    let early = file_lines(&by_address).unwrap_or_default();
    let both: Vec<String> = early.iter().chain(&named).cloned().collect();
    assert_eq!(both, printed);
    sender.send(&UdpFrame::v6(link, extended(6, 1, 1000, "NCT-RES over v6")).build());
    let v6 = s.expect_line_containing("NCT-RES over v6", LINE_TIMEOUT);
    assert_eq!(
        file_lines(&dir.join(&format!("{}.log", link.sender_v6))),
        Some(vec![v6])
    );
    let stderr = stop(&mut s);
    assert_eq!(
        stats_counter(&stderr, "files_written"),
        printed.len() as u64 + 1,
        "{stderr}"
    );
}

#[test]
fn on_panic_runs_once_per_interval_with_the_environment() {
    let topo = topology_on_subnet(42);
    let link = topo.link();
    let dir = TempDir::new("on-panic");
    let (command, out) = env_recording_hook(dir.path());
    let mut s = sniff_on_link(
        &topo,
        &["--on-panic", &command, "--on-panic-interval", "3600"],
    );
    let mut sender = topo.sender(link);
    let mut send = |payload: Vec<u8>| sender.send(&UdpFrame::v4(link, payload).build());

    send(b"0,10,1000,-;Kernel panic - not syncing: test\n".to_vec());
    let first = s.expect_line_containing("<PANIC #", LINE_TIMEOUT);
    // The report's end line closes it, so the next panic line begins a report of its own (and
    // is suppressed by the rate limit, not by belonging to the first report).
    send(extended(
        0,
        11,
        1001,
        "---[ end Kernel panic - not syncing: test ]---",
    ));
    send(extended(0, 12, 1002, "Kernel panic - not syncing: test"));
    let second = s.expect_line_containing("<PANIC #", LINE_TIMEOUT);
    assert_ne!(first, second);
    send(extended(6, 13, 1003, "NCT-HOOK after the panics"));
    s.expect_line_containing("NCT-HOOK after the panics", LINE_TIMEOUT);

    let runs = wait_for_lines(&out, 1);
    s.assert_no_line_containing("never printed", QUIET);
    let runs_later = file_lines(&out).expect("hook output");
    assert_eq!(
        runs_later, runs,
        "the command ran again within the interval"
    );
    assert_eq!(runs.len(), 1, "{runs:#?}");
    let received = first.split(' ').next().expect("time column");
    assert_eq!(
        runs[0],
        format!(
            "SENDER={}:6665 TIME={received} TEXT=Kernel panic - not syncing: test",
            link.sender_v4
        )
    );

    let stderr = stop(&mut s);
    assert_eq!(stats_counter(&stderr, "hooks_run"), 1, "{stderr}");
    assert_eq!(stats_counter(&stderr, "hooks_failed"), 0, "{stderr}");
    assert_eq!(stats_counter(&stderr, "hooks_suppressed"), 1, "{stderr}");
}

#[test]
fn on_panic_with_a_missing_command_keeps_printing() {
    let topo = topology_on_subnet(43);
    let link = topo.link();
    let mut s = sniff_on_link(&topo, &["--on-panic", "/nonexistent/netcon-hook"]);
    let mut sender = topo.sender(link);
    let mut send = |payload: Vec<u8>| sender.send(&UdpFrame::v4(link, payload).build());

    send(extended(0, 20, 2000, "Kernel panic - not syncing: test"));
    s.expect_line_containing("<PANIC #", LINE_TIMEOUT);
    send(extended(6, 21, 2001, "NCT-HOOK still printing"));
    s.expect_line_containing("NCT-HOOK still printing", LINE_TIMEOUT);

    let stderr = stop(&mut s);
    assert!(
        stderr.contains("/nonexistent/netcon-hook"),
        "the failure is logged:\n{stderr}"
    );
    assert_eq!(stats_counter(&stderr, "hooks_failed"), 1, "{stderr}");
    assert_eq!(stats_counter(&stderr, "hooks_run"), 0, "{stderr}");
}
