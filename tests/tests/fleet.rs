//! Fleet scale: collectors forward into NATS `JetStream` (`--forward nats://`, `--nats-stream`),
//! what redundant collectors both heard is stored once, and `netcon-sniff tail` prints the
//! stream as a local capture prints it. Against Debian's real `nats-server -js`, started by
//! each test inside its own namespaces.
//!
//! Needs root and `nats-server` (Debian's `nats-server`).

use std::time::Duration;

use netcon_testkit::nats::{NatsServer, NodeConfig};
use netcon_testkit::{
    BROADCAST_MAC, Link, Netns, Sniffer, Stats, Topology, UdpFrame, mac_to_string,
};

/// The stream every test publishes into.
const STREAM: &str = "FLEET";
/// Deadline for the stream to hold what was sent (a failure deadline: a reconnection backs off
/// up to 10 s, and a lost acknowledgement is retried after 5 s).
const DELIVERY_TIMEOUT: Duration = Duration::from_mins(1);
/// Deadline for a collector's stdout to show a record.
const LINE_TIMEOUT: Duration = Duration::from_secs(30);

/// The extended netconsole payload of record `seq`: level 6, kernel time `seq` × 10 ms plus
/// `quiet_us`.
///
/// 10 ms per record is more than any pace used here takes on the wall clock, and `quiet_us`
/// is the wall time that passed without records: a sender's kernel clock that falls behind the
/// wall clock by more than a second implies a later boot, and the decoder rightly reports a
/// reboot (an event that would be published too).
fn payload(seq: u64, quiet_us: u64) -> Vec<u8> {
    format!("6,{seq},{},-;fleet record {seq}\n", seq * 10_000 + quiet_us).into_bytes()
}

/// Broadcast frames to an address nobody owns (what netconsole sends by default when the log
/// host is not on the segment), records `seqs`.
fn frames(link: &Link, seqs: impl Iterator<Item = u64>) -> Vec<Vec<u8>> {
    frames_after(link, seqs, Duration::ZERO)
}

/// [`frames`] of a sender whose kernel clock went on for `quiet` without records.
fn frames_after(link: &Link, seqs: impl Iterator<Item = u64>, quiet: Duration) -> Vec<Vec<u8>> {
    let quiet_us = u64::try_from(quiet.as_micros()).expect("a short pause");
    seqs.map(|seq| {
        UdpFrame::v4(link, payload(seq, quiet_us))
            .dst_mac(BROADCAST_MAC)
            .dst_ip(link.foreign_v4())
            .build()
    })
    .collect()
}

/// Stops a collector (SIGTERM: it delivers what is queued within its grace period) and returns
/// its exit counters.
fn stop(collector: &mut Sniffer) -> Stats {
    collector.sigterm();
    let (status, stderr) = collector.wait();
    assert!(
        status.success(),
        "collector exited with {status}:\n{stderr}"
    );
    // The last one: SIGUSR1 may have printed others before.
    Stats::last(&stderr)
}

/// Starts a collector on `interface` in `ns` that forwards to `url` into the `JetStream` stream
/// [`STREAM`], with `extra` arguments, and waits until it listens.
fn forwarding_collector(ns: &Netns, interface: &str, url: &str, extra: &[&str]) -> Sniffer {
    let mut args = vec!["-i", interface, "--forward", url, "--nats-stream", STREAM];
    args.extend_from_slice(extra);
    Sniffer::start_ready(ns, &args)
}

/// `netcon-sniff tail ARGS --no-follow` in `ns`: its stdout lines.
fn tail(ns: &Netns, args: &[&str]) -> Vec<String> {
    let mut all = vec!["tail"];
    all.extend_from_slice(args);
    all.push("--no-follow");
    let mut tail = Sniffer::start(ns, &all);
    let (status, stderr) = tail.wait();
    assert!(
        status.success(),
        "tail {args:?} exited with {status}:\n{stderr}"
    );
    tail.stdout_lines().to_vec()
}

/// One bridged segment: a sender, `n` collectors and a NATS server, each in its own namespace
/// with an `eth0` on bridge `br0` (in a namespace of its own): 10.S.0.10 the sender, 10.S.0.1,
/// .2, ... the collectors, 10.S.0.5 the server.
struct Segment {
    sender: Netns,
    collectors: Vec<Netns>,
    server: Netns,
    link: Link,
    // Last: the bridge goes when everything attached to it is gone.
    bridge: Netns,
}

impl Segment {
    const SUBNET: u8 = 71;

    fn new(collectors: usize) -> Segment {
        let bridge = Netns::new("br");
        bridge.ip(&["link", "add", "br0", "type", "bridge"]);
        bridge.ip(&["link", "set", "br0", "up"]);
        let s = Segment::SUBNET;
        let segment = Segment {
            sender: Netns::new("s0"),
            collectors: (1..=collectors)
                .map(|k| Netns::new(&format!("c{k}")))
                .collect(),
            server: Netns::new("nats"),
            link: Link {
                subnet: s,
                sender: 0,
                sender_if: "eth0".to_owned(),
                collector_if: "eth0".to_owned(),
                sender_mac: [0x02, 0, 0, 0, s, 0x10],
                collector_mac: [0x02, 0, 0, 0, s, 0x01],
                sender_v4: [10, s, 0, 10].into(),
                collector_v4: [10, s, 0, 1].into(),
                sender_v6: std::net::Ipv6Addr::new(0xfd00, s.into(), 0, 0, 0, 0, 0, 0x10),
                collector_v6: std::net::Ipv6Addr::new(0xfd00, s.into(), 0, 0, 0, 0, 0, 0x1),
            },
            bridge,
        };
        let mut hosts: Vec<(&Netns, u8)> = vec![(&segment.sender, 10), (&segment.server, 5)];
        hosts.extend(segment.collectors.iter().zip(1..));
        for (port, (ns, host)) in hosts.into_iter().enumerate() {
            let port = format!("p{port}");
            let mac = mac_to_string([0x02, 0, 0, 0, s, host]);
            segment.bridge.ip(&[
                "link",
                "add",
                &port,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "address",
                &mac,
                "netns",
                ns.name(),
            ]);
            segment
                .bridge
                .ip(&["link", "set", &port, "master", "br0", "up"]);
            ns.ip(&["addr", "add", &format!("10.{s}.0.{host}/24"), "dev", "eth0"]);
            ns.ip(&["link", "set", "eth0", "up"]);
        }
        segment
    }
}

/// Two collectors hear every record on one segment and both publish it; the stream holds each
/// once, and `tail` prints each once, as the collectors printed it.
#[test]
fn redundant_collectors_store_each_record_once() {
    const RECORDS: u64 = 400;
    let segment = Segment::new(2);
    let server = NatsServer::start(&segment.server, NodeConfig::single());
    server.wait_ready(&segment.server);
    let url = format!("nats://10.{}.0.5/site1.netcon", Segment::SUBNET);
    let mut collectors: Vec<Sniffer> = segment
        .collectors
        .iter()
        .map(|ns| forwarding_collector(ns, "eth0", &url, &[]))
        .collect();
    let mut sender = netcon_testkit::FrameSender::open(&segment.sender, "eth0");
    sender.send_paced(
        &frames(&segment.link, 1..=RECORDS),
        Duration::from_micros(500),
    );
    let last = format!("fleet record {RECORDS}");
    for collector in &mut collectors {
        collector.expect_line_containing(&last, LINE_TIMEOUT);
    }
    server.wait_stream_messages(&segment.server, STREAM, RECORDS, DELIVERY_TIMEOUT);

    let stats: Vec<Stats> = collectors.iter_mut().map(stop).collect();
    for s in &stats {
        assert_eq!(s.counter("records"), RECORDS, "{s}");
        assert_eq!(s.counter("nats_sent"), RECORDS, "{s}");
        assert_eq!(s.counter("nats_dropped"), 0, "{s}");
        assert_eq!(s.counter("nats_queued"), 0, "{s}");
    }
    // Each record was acknowledged as new to one collector and as a duplicate to the other.
    let duplicates: u64 = stats.iter().map(|s| s.counter("nats_duplicates")).sum();
    assert_eq!(duplicates, RECORDS, "{stats:#?}");
    assert_eq!(
        server.stream_messages(&segment.server, STREAM),
        Some(RECORDS)
    );

    // tail prints every record once, each line as one of the collectors printed it.
    let tail_url = "nats://127.0.0.1/site1.netcon";
    let lines = tail(&segment.server, &[tail_url, "--stream", STREAM]);
    assert_eq!(lines.len(), usize::try_from(RECORDS).unwrap(), "{lines:#?}");
    for seq in 1..=RECORDS {
        let text = format!("fleet record {seq}");
        let found: Vec<&String> = lines.iter().filter(|l| l.ends_with(&text)).collect();
        let [line] = found[..] else {
            panic!("{text}: {} lines in tail: {found:#?}", found.len());
        };
        assert!(
            collectors
                .iter()
                .any(|c| c.stdout_lines().iter().any(|l| l == line)),
            "tail printed {line:?}, which no collector printed"
        );
    }
    // --sender filters; --format json passes the objects through.
    let sender_ip = segment.link.sender_v4.to_string();
    let json = tail(
        &segment.server,
        &[
            tail_url, "--stream", STREAM, "--sender", &sender_ip, "--format", "json",
        ],
    );
    assert_eq!(json.len(), lines.len());
    assert!(
        json.iter()
            .all(|l| l.starts_with("{\"type\":\"record\"") && l.contains(&sender_ip)),
        "{json:#?}"
    );
    let other = tail(
        &segment.server,
        &[tail_url, "--stream", STREAM, "--sender", "10.71.0.99"],
    );
    assert!(other.is_empty(), "{other:#?}");
}

/// A three-node `JetStream` cluster, stream of 3 replicas: the node the collector is connected
/// to is killed while records flow, and the stream still holds every record, once.
#[test]
fn replicated_stream_survives_a_node_killed_mid_flow() {
    const RECORDS: u64 = 1500;
    let topo = Topology::on_subnet(72);
    let ns = &topo.collector;
    let mut servers: Vec<NatsServer> = (0..3)
        .map(|i| NatsServer::start(ns, NodeConfig::cluster_node(i, 3)))
        .collect();
    for server in &servers {
        server.wait_ready(ns);
    }
    let link = topo.link().clone();
    let mut collector = forwarding_collector(
        ns,
        &link.collector_if,
        "nats://127.0.0.1:4222,127.0.0.1:4223,127.0.0.1:4224",
        &["--nats-replicas", "3"],
    );
    let mut sender = topo.sender(&link);
    let all = frames(&link, 1..=RECORDS);
    // About 3 s of records, a tenth before the kill.
    let (before, after) = all.split_at(all.len() / 10);
    sender.send_paced(before, Duration::from_millis(2));
    servers[0].wait_stream_messages(
        ns,
        STREAM,
        u64::try_from(before.len()).unwrap(),
        DELIVERY_TIMEOUT,
    );
    std::thread::scope(|scope| {
        let sending = scope.spawn(|| sender.send_paced(after, Duration::from_millis(2)));
        std::thread::sleep(Duration::from_millis(500));
        let connected = servers
            .iter()
            .position(|s| s.connections_named(ns, "netcon-sniff") > 0)
            .expect("the collector is connected to one node");
        servers[connected].kill();
        sending.join().expect("sending");
        let survivor = servers
            .iter()
            .find(|s| s.config.name != servers[connected].config.name)
            .expect("two nodes left");
        survivor.wait_stream_messages(ns, STREAM, RECORDS, DELIVERY_TIMEOUT);
    });
    collector.expect_line_containing(&format!("fleet record {RECORDS}"), LINE_TIMEOUT);
    let exit = stop(&mut collector);
    eprintln!("{exit}");
    assert_eq!(exit.counter("records"), RECORDS, "{exit}");
    assert_eq!(exit.counter("nats_dropped"), 0, "{exit}");
    assert_eq!(exit.counter("nats_queued"), 0, "{exit}");
    // Every live node has every record, once: publishes retried after the kill were
    // recognised as duplicates.
    for server in servers
        .iter()
        .filter(|s| s.try_get(ns, "/healthz").is_some())
    {
        server.wait_stream_messages(ns, STREAM, RECORDS, DELIVERY_TIMEOUT);
    }
}

/// NATS is down when the collector starts, for longer than its queue holds: capture and stdout
/// go on, the queue stays within its bound, the drops are counted (in the stats and in a
/// `forward_lost` event in the stream), and delivery resumes once the server is up.
#[test]
fn nats_down_at_start_bounds_the_queue_and_resumes() {
    const QUEUE: u64 = 10_000;
    const WHILE_DOWN: u64 = 12_000;
    const AFTER: u64 = 100;
    let topo = Topology::on_subnet(73);
    let ns = &topo.collector;
    let link = topo.link().clone();
    let mut collector = forwarding_collector(ns, &link.collector_if, "nats://127.0.0.1:4222", &[]);
    let mut sender = topo.sender(&link);
    sender.send_paced(&frames(&link, 1..=WHILE_DOWN), Duration::from_micros(100));
    let quiet = std::time::Instant::now();
    collector.expect_line_containing(&format!("fleet record {WHILE_DOWN}"), LINE_TIMEOUT);
    let printed = collector.stdout_lines_containing("fleet record ");
    assert_eq!(
        printed,
        usize::try_from(WHILE_DOWN).unwrap(),
        "stdout goes on"
    );

    let stats = collector.stats();
    let (queued, dropped) = (stats.counter("nats_queued"), stats.counter("nats_dropped"));
    assert_eq!(stats.counter("nats_sent"), 0, "{stats}");
    assert!(queued <= QUEUE, "the queue bound holds: {stats}");
    assert_eq!(queued + dropped, WHILE_DOWN, "{stats}");
    assert!(dropped >= WHILE_DOWN - QUEUE, "{stats}");

    let server = NatsServer::start(ns, NodeConfig::single());
    server.wait_ready(ns);
    server.wait_stream_messages(ns, STREAM, queued, DELIVERY_TIMEOUT);
    // The next records come after a report of the gap.
    sender.send_paced(
        &frames_after(&link, WHILE_DOWN + 1..=WHILE_DOWN + AFTER, quiet.elapsed()),
        Duration::from_millis(1),
    );
    server.wait_stream_messages(ns, STREAM, queued + 1 + AFTER, DELIVERY_TIMEOUT);
    let exit = stop(&mut collector);
    assert_eq!(exit.counter("nats_dropped"), dropped, "{exit}");
    assert_eq!(exit.counter("nats_queued"), 0, "{exit}");
    assert_eq!(exit.counter("nats_sent"), queued + 1 + AFTER, "{exit}");
    // The collector's own output says so too, in notices that add up to the drops.
    let noticed: u64 = collector
        .stdout_lines()
        .iter()
        .filter_map(|l| {
            let rest = l.split_once(" -- FORWARD LOST ")?.1;
            let (n, url) = rest.split_once(" messages ")?;
            assert_eq!(url, "(nats://127.0.0.1:4222/netcon)", "{l}");
            n.parse::<u64>().ok()
        })
        .sum();
    assert_eq!(noticed, dropped, "FORWARD LOST notices on stdout");

    let lines = tail(ns, &["nats://127.0.0.1", "--stream", STREAM]);
    let lost: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("FORWARD LOST"))
        .collect();
    let [lost] = lost[..] else {
        panic!("expected one FORWARD LOST line: {lost:#?}");
    };
    assert!(
        lost.contains(&format!("FORWARD LOST {dropped} messages")),
        "{lost}"
    );
    let records = lines.iter().filter(|l| l.contains("fleet record ")).count();
    assert_eq!(records, usize::try_from(queued + AFTER).unwrap());
}

/// Without `--nats-stream`: core NATS publish, and `tail` without `--stream` prints what is
/// published while it runs, each line as the collector printed it.
#[test]
fn core_publish_reaches_a_live_tail() {
    const RECORDS: u64 = 50;
    let topo = Topology::on_subnet(74);
    let ns = &topo.collector;
    let server = NatsServer::start(ns, NodeConfig::single());
    server.wait_ready(ns);
    let mut tail = Sniffer::start(ns, &["tail", "nats://127.0.0.1"]);
    server.wait_subscribed(ns, "netcon-sniff tail");
    let link = topo.link().clone();
    let mut collector = Sniffer::start_ready(
        ns,
        &["-i", &link.collector_if, "--forward", "nats://127.0.0.1"],
    );
    topo.sender(&link)
        .send_paced(&frames(&link, 1..=RECORDS), Duration::from_millis(1));
    let printed = collector.expect_lines(usize::try_from(RECORDS).unwrap(), LINE_TIMEOUT);
    let tailed = tail.expect_lines(usize::try_from(RECORDS).unwrap(), LINE_TIMEOUT);
    assert_eq!(tailed, printed);
    let exit = stop(&mut collector);
    assert_eq!(exit.counter("nats_sent"), RECORDS, "{exit}");
    tail.sigterm();
    let (status, stderr) = tail.wait();
    assert!(status.success(), "tail exited with {status}:\n{stderr}");
}
