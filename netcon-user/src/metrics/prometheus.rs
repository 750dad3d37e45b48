//! The Prometheus text exposition of a [`Snapshot`] (see the module documentation of
//! [`super`] for the names and labels).

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use super::{DECODER_COUNTERS, Snapshot, backend_name, capture_counters, ring_fill};
use crate::sink::{CounterKind, SinkCounter};

impl Snapshot {
    /// The Prometheus text exposition (format 0.0.4) of this snapshot, `HELP` and `TYPE` lines
    /// included.
    #[must_use]
    pub fn to_prometheus(&self) -> String {
        let mut registry = Registry::with_prefix("netcon");
        let build = Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]);
        registry.register("build", "The netcon-sniff build", build);

        self.register_capture(&mut registry);

        let datagrams = Family::<[(&str, String); 1], Counter>::default();
        for (interface, n) in &self.datagrams {
            datagrams
                .get_or_create(&[("interface", interface.clone())])
                .inc_by(*n);
        }
        registry.register(
            "datagrams",
            "Netconsole datagrams taken for decoding, by interface",
            datagrams,
        );
        register_counter(
            &mut registry,
            "malformed_frames",
            "Frames that were not well-formed UDP",
            self.malformed_frames,
        );
        register_counter(
            &mut registry,
            "other_ports",
            "UDP datagrams to a port not configured",
            self.other_ports,
        );
        register_counter(
            &mut registry,
            "denied",
            "Datagrams from senders outside --allow",
            self.denied,
        );

        for (_, metric, help, value) in DECODER_COUNTERS {
            register_counter(&mut registry, metric, strip(help), value(&self.decoder));
        }
        register_gauge(
            &mut registry,
            "senders",
            "Senders tracked now",
            self.decoder.senders,
        );
        register_gauge(
            &mut registry,
            "decoder_held_bytes",
            "Bytes of the memory budget the decoder holds now (partial lines, continuations, fragments, senders)",
            self.decoder.held_bytes,
        );

        self.register_sinks(&mut registry);

        register_gauge(
            &mut registry,
            "memory_used_bytes",
            "Bytes of the memory budget held on behalf of senders now",
            self.memory.used,
        );
        register_gauge(
            &mut registry,
            "memory_peak_bytes",
            "The most bytes of the memory budget ever held at once",
            self.memory.peak,
        );
        register_gauge(
            &mut registry,
            "memory_limit_bytes",
            "The memory budget (--max-memory-mib)",
            self.memory.limit,
        );
        register_counter(
            &mut registry,
            "memory_refused",
            "Charges to the memory budget that did not fit (oldest state emitted instead)",
            self.memory.refused,
        );

        if !self.senders.is_empty() {
            self.register_senders(&mut registry);
        }

        let mut out = String::with_capacity(8 * 1024);
        // Writing to a String cannot fail.
        let _ = prometheus_text::encode(&mut out, &registry);
        out
    }

    /// The capture counters (`backend` label) and the frames reported lost (`interface` and
    /// `reason` labels).
    fn register_capture(&self, registry: &mut Registry) {
        let backend = backend_name(&self.capture);
        for (name, help, value) in capture_counters(&self.capture) {
            let family = Family::<[(&str, &str); 1], Counter>::default();
            family.get_or_create(&[("backend", backend)]).inc_by(value);
            registry.register(format!("capture_{name}"), strip(help), family);
        }
        if let Some(ring) = ring_fill(&self.capture) {
            for (name, help, value) in [
                (
                    "ringbuf_used_bytes",
                    "Bytes of the XDP ring buffer holding records not yet read",
                    ring.used,
                ),
                (
                    "ringbuf_size_bytes",
                    "Size of the XDP ring buffer (--ring-mib)",
                    ring.size,
                ),
            ] {
                let family = Family::<[(&str, &str); 1], Gauge<u64, AtomicU64>>::default();
                family.get_or_create(&[("backend", backend)]).set(value);
                registry.register(name, help, family);
            }
        }
        let lost = Family::<[(&str, &str); 1], Counter>::default();
        lost.get_or_create(&[("backend", backend)])
            .inc_by(self.capture_lost());
        registry.register(
            "capture_lost",
            "Matched frames the capture lost before netcon-sniff could read them",
            lost,
        );

        let reported = Family::<[(&str, String); 2], Counter>::default();
        for l in &self.capture_lost {
            reported
                .get_or_create(&[
                    ("interface", l.interface.clone()),
                    ("reason", l.reason.as_str().to_owned()),
                ])
                .inc_by(l.frames);
        }
        registry.register(
            "capture_lost_reported",
            "Frames lost before decoding as reported in capture_lost events, by interface and reason \
             (the interface reason counts any traffic the interface missed)",
            reported,
        );
    }

    fn register_sinks(&self, registry: &mut Registry) {
        let mut done: Vec<&str> = Vec::new();
        for c in &self.sinks {
            if done.contains(&c.name) {
                continue;
            }
            done.push(c.name);
            let same = self.sinks.iter().filter(|o| o.name == c.name);
            let help = strip(c.help);
            match c.kind {
                CounterKind::Total => {
                    let family = Family::<Vec<(&str, String)>, Counter>::default();
                    for o in same {
                        family.get_or_create(&labels(o)).inc_by(o.value);
                    }
                    registry.register(c.name, help, family);
                }
                CounterKind::Gauge => {
                    let family = Family::<Vec<(&str, String)>, Gauge<u64, AtomicU64>>::default();
                    for o in same {
                        family.get_or_create(&labels(o)).inc_by(o.value);
                    }
                    registry.register(c.name, help, family);
                }
            }
        }
    }

    fn register_senders(&self, registry: &mut Registry) {
        type Senders = Family<[(&'static str, String); 1], Counter>;
        let (records, records_lost, msgid_lost, panics) = (
            Senders::default(),
            Senders::default(),
            Senders::default(),
            Senders::default(),
        );
        let last_heard = Family::<[(&str, String); 1], Gauge<f64, AtomicU64>>::default();
        for s in &self.senders {
            let key = [("sender", s.sender.to_string())];
            records.get_or_create(&key).inc_by(s.tally.records);
            records_lost
                .get_or_create(&key)
                .inc_by(s.tally.records_lost);
            msgid_lost.get_or_create(&key).inc_by(s.tally.msgid_lost);
            panics.get_or_create(&key).inc_by(s.tally.panics);
            if let Some(t) = s.tally.last_heard {
                #[expect(
                    clippy::cast_precision_loss,
                    reason = "microseconds since 1970 fit a double's 53 bits until the year 2255"
                )]
                let seconds = t.timestamp_micros() as f64 / 1e6;
                last_heard.get_or_create(&key).set(seconds);
            }
        }
        registry.register("sender_records", "Records decoded, by sender", records);
        registry.register(
            "sender_records_lost",
            "Records missing according to sequence number gaps, by sender",
            records_lost,
        );
        registry.register(
            "sender_msgid_lost",
            "Messages missing according to sysdata msgid gaps, by sender",
            msgid_lost,
        );
        registry.register("sender_panics", "Crash reports begun, by sender", panics);
        registry.register(
            "sender_last_heard_timestamp_seconds",
            "When the sender's latest datagram was captured (Unix time)",
            last_heard,
        );
    }
}

/// prometheus-client ends every HELP text with a period of its own.
fn strip(help: &str) -> &str {
    help.trim_end_matches('.')
}

fn labels(c: &SinkCounter) -> Vec<(&'static str, String)> {
    c.instance.iter().cloned().collect()
}

fn register_counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let counter = Counter::<u64>::default();
    counter.inc_by(value);
    registry.register(name, help, counter);
}

fn register_gauge(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let gauge = Gauge::<u64, AtomicU64>::default();
    gauge.set(value);
    registry.register(name, help, gauge);
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use chrono::DateTime;

    use super::super::SenderSample;
    use super::super::tests::snapshot;
    use crate::netconsole::SenderTally;

    #[test]
    fn prometheus_text_has_help_type_and_labels() {
        let text = snapshot().to_prometheus();
        for expected in [
            "# HELP netcon_records_total Records decoded.\n",
            "# TYPE netcon_records_total counter\n",
            "netcon_records_total 4\n",
            "netcon_capture_lost_total{backend=\"xdp\"} 3\n",
            "netcon_capture_ringbuf_full_total{backend=\"xdp\"} 2\n",
            "netcon_capture_wakeups_total{backend=\"xdp\"} 7\n",
            "# TYPE netcon_ringbuf_used_bytes gauge\n",
            "netcon_ringbuf_used_bytes{backend=\"xdp\"} 4096\n",
            "# TYPE netcon_ringbuf_size_bytes gauge\n",
            "netcon_ringbuf_size_bytes{backend=\"xdp\"} 8388608\n",
            "netcon_datagrams_total{interface=\"eth1\"} 5\n",
            "netcon_datagrams_total{interface=\"eth2\"} 1\n",
            "netcon_records_lost_total 3\n",
            "netcon_capture_lost_reported_total{interface=\"eth1,eth2\",reason=\"ring_full\"} 2\n",
            "netcon_suspicious_datagrams_total 1\n",
            "netcon_senders_evicted_total 3\n",
            "netcon_budget_shed_total 0\n",
            "# TYPE netcon_decoder_held_bytes gauge\n",
            "netcon_decoder_held_bytes 640\n",
            "netcon_panics_total 1\n",
            "# TYPE netcon_senders gauge\n",
            "netcon_senders 2\n",
            "netcon_forward_sent_total{url=\"syslog+tcp://a:514\"} 4\n",
            "netcon_forward_sent_total{url=\"syslog+udp://b:514\"} 2\n",
            "# TYPE netcon_forward_queued gauge\n",
            "netcon_forward_queued{url=\"syslog+tcp://a:514\"} 1\n",
            "netcon_hooks_run_total 1\n",
            "netcon_memory_used_bytes 100\n",
            "netcon_memory_limit_bytes 1000\n",
            "netcon_build_info{version=\"",
        ] {
            assert!(text.contains(expected), "{expected:?} missing in\n{text}");
        }
        // Each family once: HELP and TYPE are not repeated for the second forwarder.
        assert_eq!(text.matches("# TYPE netcon_forward_sent_total ").count(), 1);
        assert!(!text.contains("netcon_sender_"), "{text}");
    }

    #[test]
    fn per_sender_family_lists_the_senders_given() {
        let mut s = snapshot();
        s.senders = vec![SenderSample {
            sender: "10.0.0.1:6665".parse().unwrap(),
            tally: SenderTally {
                records: 7,
                records_lost: 1,
                msgid_lost: 0,
                panics: 1,
                last_heard: DateTime::from_timestamp(1_795_817_636, 500_000_000),
            },
        }];
        let text = s.to_prometheus();
        for expected in [
            "netcon_sender_records_total{sender=\"10.0.0.1:6665\"} 7\n",
            "netcon_sender_records_lost_total{sender=\"10.0.0.1:6665\"} 1\n",
            "netcon_sender_panics_total{sender=\"10.0.0.1:6665\"} 1\n",
            "netcon_sender_last_heard_timestamp_seconds{sender=\"10.0.0.1:6665\"} 1795817636.5\n",
        ] {
            assert!(text.contains(expected), "{expected:?} missing in\n{text}");
        }
    }

    #[test]
    fn a_full_sender_table_makes_five_series_per_sender() {
        let mut s = snapshot();
        let senders = crate::netconsole::DEFAULT_MAX_SENDERS;
        s.senders = (0..senders)
            .map(|i| SenderSample {
                sender: SocketAddr::from((
                    [
                        10,
                        0,
                        u8::try_from(i / 256).unwrap(),
                        u8::try_from(i % 256).unwrap(),
                    ],
                    6665,
                )),
                tally: SenderTally {
                    records: 1,
                    last_heard: DateTime::from_timestamp(1_795_817_636, 0),
                    ..SenderTally::default()
                },
            })
            .collect();
        let started = std::time::Instant::now();
        let text = s.to_prometheus();
        let series = text
            .lines()
            .filter(|l| l.starts_with("netcon_sender_"))
            .count();
        assert_eq!(series, 5 * senders);
        println!(
            "{senders} senders: {} bytes, encoded in {:?}",
            text.len(),
            started.elapsed()
        );
    }
}
