//! Running as a service: `--metrics` checked by Debian's `promtool` and scraped by a real
//! `prometheus`, systemd's notification protocol on a unix datagram socket, and
//! `--stats-format json`. The real binary, in a collector namespace, with frames sent over a
//! veth pair; every HTTP exchange stays on the namespace's loopback.

use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

mod common;

use common::{refused, sniff_on_link, start_on_link, stop};
use netcon_testkit::outputs::signal_sniffer;
use netcon_testkit::prometheus::{Prometheus, http_get, promtool_check_metrics};
use netcon_testkit::{LINE_TIMEOUT, Link, Netns, Sniffer, TempDir, Topology, UdpFrame, fixture};
use nix::sys::signal::Signal;

/// Where netcon-sniff serves metrics inside the collector namespace.
const METRICS: &str = "127.0.0.1:9469";
/// Where prometheus listens inside the collector namespace.
const PROMETHEUS: &str = "127.0.0.1:9090";
/// Deadline for a value to show up in a scrape or a query (a failure deadline only).
const SCRAPE_DEADLINE: Duration = Duration::from_mins(1);

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("a socket address")
}

/// Extended records with seq 1..=`count`, seq `skip` left out (a loss), and one of them a
/// kernel panic line (a crash report).
fn records(link: &Link, count: u64, skip: u64) -> Vec<Vec<u8>> {
    (1..=count)
        .filter(|&seq| seq != skip)
        .map(|seq| {
            let text = if seq == count {
                "Kernel panic - not syncing: NCT metrics".to_owned()
            } else {
                format!("NCT metrics {seq}")
            };
            UdpFrame::v4(link, format!("6,{seq},{},-;{text}\n", seq * 1000)).build()
        })
        .collect()
}

/// `GET /metrics` in `ns` until `done` holds for the text, which is returned.
fn scrape_until(ns: &Netns, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + SCRAPE_DEADLINE;
    loop {
        let (status, body) = ns.run_in(|| http_get(addr(METRICS), "/metrics"));
        assert_eq!(status, 200, "{body}");
        if done(&body) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "the scrape never satisfied the test; last one:\n{body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The value of the sample line `series` (name and labels exactly as exposed).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
}

/// The XDP ring buffer's fill, read from its mapped positions: there with that backend only,
/// and never more than the ring (the default 8 MiB) holds.
fn assert_ring_fill(text: &str) {
    if text.contains("netcon_capture_lost_total{backend=\"xdp\"}") {
        assert!(
            text.contains("# TYPE netcon_ringbuf_used_bytes gauge"),
            "{text}"
        );
        let used = sample(text, "netcon_ringbuf_used_bytes{backend=\"xdp\"}")
            .expect("the ring buffer's fill");
        let size = sample(text, "netcon_ringbuf_size_bytes{backend=\"xdp\"}")
            .expect("the ring buffer's size");
        assert!((size - f64::from(8u32 << 20)).abs() < 1.0, "{size}");
        assert!((0.0..=size).contains(&used), "used {used} of {size}");
    } else {
        assert!(!text.contains("netcon_ringbuf_"), "{text}");
    }
}

#[test]
fn metrics_pass_promtool_and_count_what_was_sent() {
    let topo = Topology::new();
    let link = topo.link();
    let iface = link.collector_if.as_str();
    let logs = TempDir::new("metrics-logs");
    // Sinks too, so that their families (with a `url` label) go through promtool as well; no
    // NATS server is there, its families are exposed all the same.
    let mut s = sniff_on_link(
        &topo,
        &[
            "--metrics",
            METRICS,
            "--metrics-per-sender",
            "--forward",
            "syslog+udp://127.0.0.1:9",
            "--forward",
            "nats://127.0.0.1:9/metrics",
            "--log-dir",
            logs.path().to_str().expect("UTF-8 path"),
            "--on-panic",
            "/bin/true",
        ],
    );
    let frames = records(link, 25, 10);
    topo.sender(link).send_all(&frames);
    s.expect_lines(frames.len() + 1, LINE_TIMEOUT); // and the loss line
    // The loss counters are first read a second after start; from then on each has a series.
    let reported = format!("netcon_capture_lost_reported_total{{interface=\"{iface}\",reason=\"");
    let text = scrape_until(&topo.collector, |t| {
        sample(t, "netcon_records_total") == Some(24.0) && t.contains(&reported)
    });
    if let Err(problems) = promtool_check_metrics(&text) {
        panic!("promtool check metrics failed:\n{problems}\non:\n{text}");
    }
    let sender = format!("{}:6665", link.sender_v4);
    for (series, value) in [
        ("netcon_records_lost_total".to_owned(), 1.0),
        ("netcon_panics_total".to_owned(), 1.0),
        ("netcon_senders".to_owned(), 1.0),
        (
            format!("netcon_datagrams_total{{interface=\"{iface}\"}}"),
            24.0,
        ),
        (
            format!("netcon_sender_records_total{{sender=\"{sender}\"}}"),
            24.0,
        ),
        (
            format!("netcon_sender_records_lost_total{{sender=\"{sender}\"}}"),
            1.0,
        ),
        (
            format!("netcon_sender_panics_total{{sender=\"{sender}\"}}"),
            1.0,
        ),
    ] {
        assert_eq!(sample(&text, &series), Some(value), "{series} in\n{text}");
    }
    for family in [
        "# TYPE netcon_records_total counter",
        "# HELP netcon_records_total ",
        "# TYPE netcon_senders gauge",
        "# TYPE netcon_memory_used_bytes gauge",
        "# TYPE netcon_memory_limit_bytes gauge",
        "# TYPE netcon_build_info gauge",
        "# TYPE netcon_sender_last_heard_timestamp_seconds gauge",
        "netcon_capture_lost_total{backend=\"",
        "# TYPE netcon_forward_sent_total counter",
        "netcon_forward_queued{url=\"syslog+udp://127.0.0.1:9\"} ",
        "# TYPE netcon_nats_sent_total counter",
        "netcon_nats_queued{url=\"nats://127.0.0.1:9/metrics\"} ",
        "# TYPE netcon_files_written_total counter",
        "# TYPE netcon_hooks_skipped_total counter",
        "# TYPE netcon_hooks_timed_out_total counter",
        "# TYPE netcon_hooks_waiting gauge",
        "# TYPE netcon_suspicious_datagrams_total counter",
        "# TYPE netcon_budget_shed_total counter",
        "# TYPE netcon_continuations_cut_total counter",
        "# TYPE netcon_decoder_held_bytes gauge",
        "# TYPE netcon_capture_lost_reported_total counter",
    ] {
        assert!(text.contains(family), "{family:?} missing in\n{text}");
    }
    assert!(
        text.lines()
            .filter(|l| l.starts_with(&reported))
            .all(|l| l.ends_with(" 0")),
        "nothing lost in\n{text}"
    );
    // The gauges read the budget the decoder and the sinks charge: one sender is held.
    let used = sample(&text, "netcon_memory_used_bytes").expect("the budget in use");
    let held = sample(&text, "netcon_decoder_held_bytes").expect("the decoder's part");
    assert!(held > 0.0 && used >= held, "used {used}, decoder {held}");
    let limit = sample(&text, "netcon_memory_limit_bytes").expect("the budget's limit");
    assert!((limit - f64::from(24u32 << 20)).abs() < 1.0, "{limit}");
    assert_ring_fill(&text);

    let (status, _) = topo
        .collector
        .run_in(|| http_get(addr(METRICS), "/nothing"));
    assert_eq!(status, 404);
    stop(&mut s);
}

/// Prometheus scrapes the real endpoint every second; its own query API then sums
/// `netcon_records_total` to exactly the records sent.
#[test]
fn prometheus_scrapes_the_records_sent() {
    let topo = Topology::new();
    let link = topo.link();
    let mut s = sniff_on_link(&topo, &["--metrics", METRICS]);
    let mut prometheus = Prometheus::start(
        &topo.collector,
        addr(PROMETHEUS),
        addr(METRICS),
        Duration::from_secs(1),
    );
    let frames = records(link, 40, 0);
    topo.sender(link)
        .send_paced(&frames, Duration::from_millis(25));
    s.expect_lines(frames.len(), LINE_TIMEOUT);
    let deadline = Instant::now() + SCRAPE_DEADLINE;
    let mut last = None;
    while Instant::now() < deadline {
        last = prometheus.query_scalar(&topo.collector, "sum(netcon_records_total)");
        if last == Some(40.0) {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(
        last,
        Some(40.0),
        "sum(netcon_records_total) in prometheus; its output:\n{}",
        prometheus.own_output()
    );
    assert_eq!(
        prometheus.query_scalar(&topo.collector, "up"),
        Some(1.0),
        "the target is up"
    );
    drop(prometheus);
    stop(&mut s);
}

/// A socket standing in for systemd's: what netcon-sniff sends to `NOTIFY_SOCKET`.
struct NotifySocket {
    socket: UnixDatagram,
    path: String,
    // Last, so that the socket file goes with the directory.
    _dir: TempDir,
}

impl NotifySocket {
    fn new() -> NotifySocket {
        let dir = TempDir::new("notify");
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        NotifySocket {
            socket,
            path: path.display().to_string(),
            _dir: dir,
        }
    }

    /// Messages until one contains `line` (as a whole line), within `timeout`; all of them.
    fn until(&self, line: &str, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = self.socket.recv(&mut buf) {
                let message = String::from_utf8_lossy(&buf[..n]).into_owned();
                let done = message.lines().any(|l| l == line);
                got.push(message);
                if done {
                    return got;
                }
            }
        }
        panic!("no {line:?} within {timeout:?}; got {got:#?}");
    }
}

/// netcon-sniff in `topo`'s collector with `NOTIFY_SOCKET` (and `WATCHDOG_USEC` if given),
/// once it said `READY=1`: the sniffer, and the messages up to `READY=1`.
fn start_notified(
    topo: &Topology,
    notify: &NotifySocket,
    watchdog_usec: Option<&str>,
) -> (Sniffer, Vec<String>) {
    let mut env = vec![("NOTIFY_SOCKET", notify.path.as_str())];
    env.extend(watchdog_usec.map(|usec| ("WATCHDOG_USEC", usec)));
    let mut s = Sniffer::start_with_env(
        &topo.collector,
        &["-i", topo.link().collector_if.as_str()],
        &env,
    );
    let ready = notify.until("READY=1", LINE_TIMEOUT);
    // READY=1 comes once capture is attached: the ready lines are already out.
    s.wait_ready();
    (s, ready)
}

#[test]
fn notify_socket_gets_ready_watchdog_and_stopping() {
    let topo = Topology::new();
    let notify = NotifySocket::new();
    // 400 ms: pings every 200 ms.
    let (mut s, ready) = start_notified(&topo, &notify, Some("400000"));
    assert!(
        ready
            .last()
            .is_some_and(|m| m.contains("STATUS=capturing on veth-c")),
        "{ready:?}"
    );
    let started = Instant::now();
    for _ in 0..5 {
        let got = notify.until("WATCHDOG=1", Duration::from_secs(10));
        assert!(
            got.iter().all(|m| m.trim() == "WATCHDOG=1"),
            "only pings while running: {got:?}"
        );
    }
    // Five pings at 200 ms take about a second; far less would be a busy loop.
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "{:?}",
        started.elapsed()
    );
    s.sigterm();
    notify.until("STOPPING=1", LINE_TIMEOUT);
    assert!(s.wait().0.success());
}

#[test]
fn no_watchdog_pings_without_watchdog_usec() {
    let topo = Topology::new();
    let notify = NotifySocket::new();
    let (mut s, _) = start_notified(&topo, &notify, None);
    s.sigterm();
    let rest = notify.until("STOPPING=1", LINE_TIMEOUT);
    assert!(rest.iter().all(|m| !m.contains("WATCHDOG")), "{rest:?}");
    assert!(s.wait().0.success());
}

fn json_lines(lines: &[String], kind: &str) -> Vec<serde_json::Value> {
    lines
        .iter()
        .filter(|l| l.starts_with('{'))
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("{e}: {l}"))
        })
        .filter(|v| v["type"] == kind)
        .collect()
}

/// `--stats-format json`: SIGUSR1 and the exit summary are one JSON object per line on
/// stderr, with the stats line's counters under its names; nothing else in prose.
#[test]
fn stats_format_json_on_sigusr1_and_at_exit() {
    let topo = Topology::new();
    let link = topo.link();
    let mut s = sniff_on_link(&topo, &["--stats-format", "json"]);
    // Long enough for an XDP reader to find the ring empty and park (three empty 500 µs
    // drains), so that the first frame must wake it.
    std::thread::sleep(Duration::from_millis(500));
    let frames = records(link, 5, 3);
    topo.sender(link).send_all(&frames);
    s.expect_lines(frames.len() + 1, LINE_TIMEOUT);
    let mut stats = Vec::new();
    for _ in 0..50 {
        signal_sniffer(&s, Signal::SIGUSR1);
        s.assert_no_line_containing("no such line", Duration::from_millis(100));
        stats = json_lines(s.stderr_lines(), "stats");
        if !stats.is_empty() {
            break;
        }
    }
    let stats = stats
        .first()
        .unwrap_or_else(|| panic!("no stats object: {:#?}", s.stderr_lines()));
    assert_eq!(stats["records"], 4, "{stats}");
    assert_eq!(stats["records_lost"], 1, "{stats}");
    assert_eq!(stats["panics"], 1, "{stats}");
    assert_eq!(stats["datagrams"], 4, "{stats}");
    assert_eq!(
        stats["interfaces"][link.collector_if.as_str()],
        4,
        "{stats}"
    );
    assert!(stats["lost"].is_u64(), "{stats}");
    assert!(stats["capture_lost"].is_u64(), "{stats}");
    assert!(stats["capture_losses"].is_array(), "{stats}");
    assert_eq!(stats["suspicious"], 0, "{stats}");
    assert!(stats["held_bytes"].as_u64() > Some(0), "{stats}");
    assert!(
        stats["memory"]["used"].as_u64() >= stats["held_bytes"].as_u64(),
        "{stats}"
    );
    assert!(
        stats["backend"] == "xdp" || stats["backend"] == "raw",
        "{stats}"
    );
    if stats["backend"] == "xdp" {
        // The reader was parked when the first frame came (idle since start): the program
        // woke it, and the count is there beside the other XDP counters.
        assert!(stats["capture"]["wakeups"].as_u64() >= Some(1), "{stats}");
        let size = stats["capture"]["ringbuf_size"].as_u64();
        assert_eq!(size, Some(8 << 20), "{stats}");
        let used = stats["capture"]["ringbuf_used"].as_u64();
        assert!(used.is_some() && used <= size, "{stats}");
    }
    stop(&mut s);
    let summary = json_lines(s.stderr_lines(), "summary");
    assert_eq!(summary.len(), 1, "{:#?}", s.stderr_lines());
    assert_eq!(summary[0]["records"], 4);
    assert!(
        !s.stderr_lines().iter().any(
            |l| l.starts_with("netcon-sniff: stats:") || l.starts_with("netcon-sniff: printed")
        ),
        "no prose summary with --stats-format json: {:#?}",
        s.stderr_lines()
    );
}

/// Offline, the exit summary of a capture file is one JSON object too.
#[test]
fn stats_format_json_summary_of_a_file() {
    let file = fixture("ext.pcap");
    let mut s = Sniffer::start_offline(
        &[
            "-r",
            file.to_str().expect("UTF-8 path"),
            "--format",
            "json",
            "--stats-format",
            "json",
        ],
        None,
    );
    let (status, stderr) = s.wait();
    assert!(status.success(), "{stderr}");
    let summary = json_lines(s.stderr_lines(), "summary");
    assert_eq!(summary.len(), 1, "{stderr}");
    let summary = &summary[0];
    assert_eq!(summary["backend"], "file");
    let printed = s.stdout_lines_containing("\"type\":\"record\"");
    assert_eq!(
        summary["records"],
        u64::try_from(printed).unwrap(),
        "{summary}"
    );
    assert_eq!(
        summary["capture"]["read"], summary["datagrams"],
        "{summary}"
    );
    assert_eq!(
        summary["interfaces"]["file"], summary["datagrams"],
        "{summary}"
    );
}

/// A `--metrics` address that cannot be bound is an error at start, saying which and why.
#[test]
fn metrics_port_in_use_is_an_error_at_start() {
    let topo = Topology::new();
    let _taken = topo
        .collector
        .run_in(|| std::net::TcpListener::bind(METRICS).expect("bind"));
    let mut s = start_on_link(&topo, &["--metrics", METRICS]);
    let stderr = refused(&mut s);
    assert!(
        stderr.contains(&format!("--metrics {METRICS}: cannot listen")),
        "{stderr}"
    );
}
