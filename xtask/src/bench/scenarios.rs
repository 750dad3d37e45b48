//! The scenarios, each run against every receiver in turn within each repeat, so
//! that machine noise falls on all of them alike.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use netcon_bench::count_f64;
use netcon_bench::load::LoadReport;
use netcon_bench::verify::{Expectation, Summary, UNKNOWN, Verifier};
use netcon_testkit::Stats;

use super::calibrate::{self, BpfStats};
use super::procs::{self, LoadSpec, Output, PORT, Paths, Receiver, Rx, RxOptions};
use super::report::{Row, Section, Unit};
use super::topo::{RX_IF, Topology};

/// Loss under which a rate counts as loss-free: 0.1%.
pub const LOSS_LIMIT: f64 = 0.001;
/// Sender counts of the zero-loss search.
pub const SENDER_COUNTS: [u32; 2] = [1, 1000];
/// Records of the start-up burst (netconsole replays its whole log buffer when it starts).
pub const BURST: u64 = 5000;
/// Offered rate of the latency scenario, records/s.
pub const LATENCY_RATE: f64 = 10_000.0;
/// Offered rate while measuring the XDP program's cost, packets/s.
pub const COST_RATE: f64 = 100_000.0;
/// A UDP port nothing listens on (netcon's program passes these on after the port check).
pub const OTHER_PORT: u16 = 7777;
/// Where the receiver runs in the pinned scenarios: alone on this core.
pub const RX_CPU: usize = 1;
/// Where the sender runs in the pinned scenarios, and with it the receive softirq (veth
/// delivers on the transmitting CPU).
pub const TX_CPU: usize = 0;
/// Offered rates of the loss curve, as fractions of the sender's ceiling (1 sender); the
/// curve ends with a flat-out run.
pub const CURVE_STEPS: [f64; 6] = [0.15, 0.3, 0.45, 0.6, 0.75, 0.9];
/// Longest wait for a lone record to come out.
const LONE_TIMEOUT: Duration = Duration::from_secs(3);
/// The rate at which forwarding to NATS must cost capture nothing, records/s.
pub const NATS_GOAL_RATE: f64 = 100_000.0;
/// Lowest rate the zero-loss search reports, records/s.
const MIN_RATE: f64 = 1000.0;
/// A trial ends when the receiver printed everything, or printed nothing new for this long
/// after the load stopped.
const QUIET: Duration = Duration::from_millis(500);
/// Longest wait for a receiver to catch up after a load.
const MAX_SETTLE: Duration = Duration::from_secs(30);

/// Durations and counts of a bench run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Repeats of every figure.
    pub repeats: usize,
    /// Length of a sender-ceiling run.
    pub ceiling: Duration,
    /// Length of a probe of the zero-loss search.
    pub probe: Duration,
    /// Length of the run that confirms a zero-loss rate.
    pub confirm: Duration,
    /// Probes of the bisection (resolution: the flat-out rate / 2^steps).
    pub steps: usize,
    /// Length of the latency run.
    pub latency: Duration,
    /// Length of each XDP cost run.
    pub cost: Duration,
    /// Length of each flat-out run (pinned and unpinned scenario).
    pub flat: Duration,
    /// Length of each point of the loss curve.
    pub curve: Duration,
    /// Trials of the lone-record latency scenario, per receiver.
    pub lone_trials: usize,
    /// Silence before each lone record.
    pub lone_silence: Duration,
    /// Length of the hostile scenario's victim run.
    pub hostile: Duration,
    /// The receivers each scenario runs, in table order.
    pub receivers: Vec<Rx>,
}

impl Settings {
    /// The full bench (about 12 minutes) or `--quick` (about 2).
    pub fn new(quick: bool) -> Self {
        if quick {
            Self {
                repeats: 1,
                ceiling: Duration::from_secs(1),
                probe: Duration::from_millis(300),
                confirm: Duration::from_secs(2),
                steps: 4,
                latency: Duration::from_secs(1),
                cost: Duration::from_millis(500),
                flat: Duration::from_secs(1),
                curve: Duration::from_millis(500),
                lone_trials: 5,
                lone_silence: Duration::from_secs(1),
                hostile: Duration::from_secs(3),
                receivers: Rx::ALL.to_vec(),
            }
        } else {
            Self {
                repeats: 3,
                ceiling: Duration::from_secs(3),
                probe: Duration::from_millis(500),
                confirm: Duration::from_secs(10),
                steps: 6,
                latency: Duration::from_secs(5),
                cost: Duration::from_secs(2),
                flat: Duration::from_secs(3),
                curve: Duration::from_secs(1),
                lone_trials: 50,
                lone_silence: Duration::from_secs(10),
                hostile: Duration::from_secs(10),
                receivers: Rx::ALL.to_vec(),
            }
        }
    }
}

/// What one trial showed.
#[derive(Debug, Clone)]
pub struct Trial {
    /// What the generator sent.
    pub load: LoadReport,
    /// What the verifier found in the receiver's output.
    pub summary: Summary,
    /// What the receiver itself counted as lost (ring buffer full, socket drops).
    pub rx_drops: u64,
}

impl Trial {
    /// Records lost over records sent.
    pub fn loss(&self) -> f64 {
        self.summary.loss_ratio()
    }

    /// Records lost.
    pub fn lost(&self) -> u64 {
        self.summary.totals.missing + self.summary.totals.incomplete
    }
}

/// A receiver that keeps running over several trials; sequences continue across them.
struct Session {
    rx: Receiver,
    next_seq: u64,
}

/// One zero-loss search.
#[derive(Debug, Clone)]
struct ZeroLoss {
    /// Records/s sent in the confirming run.
    rate: f64,
    /// Its loss.
    loss: f64,
    /// Rate the sender reached flat out with this receiver running.
    flat_rate: f64,
    /// Loss flat out.
    flat_loss: f64,
    /// Whether the confirming run stayed under the limit.
    confirmed: bool,
    /// The receiver's exit counters (netcon only).
    exit_stats: Option<Stats>,
}

/// The scenarios, with the state they share.
pub struct Bench<'a> {
    topo: &'a Topology,
    paths: &'a Paths,
    settings: Settings,
    next_run: u32,
    /// Receiver on [`RX_CPU`], sender on [`TX_CPU`].
    pinned: bool,
}

/// Collects repeat values per receiver for one row.
#[derive(Debug, Default)]
struct Values(BTreeMap<Rx, Vec<f64>>);

impl Values {
    /// `N` empty rows' worth, for `let [mut a, mut b] = Values::several();`.
    fn several<const N: usize>() -> [Values; N] {
        std::array::from_fn(|_| Values::default())
    }

    fn push(&mut self, rx: Rx, v: f64) {
        self.0.entry(rx).or_default().push(v);
    }

    fn row(self, name: &str, unit: Unit, ratio: bool) -> Row {
        Row {
            name: name.to_owned(),
            unit,
            values: self.0,
            ratio,
        }
    }
}

fn log(what: &str) {
    eprintln!("xtask bench: {what}");
}

impl<'a> Bench<'a> {
    /// A bench on `topo` with `paths`' binaries.
    pub fn new(topo: &'a Topology, paths: &'a Paths, settings: Settings) -> Self {
        Self {
            topo,
            paths,
            settings,
            next_run: 1,
            pinned: false,
        }
    }

    fn session(&self, kind: Rx, output: Output, ipv6: bool) -> Result<Session> {
        let options = RxOptions {
            ipv6,
            cpu: self.pinned.then_some(RX_CPU),
            ..RxOptions::new(output)
        };
        Ok(Session {
            rx: Receiver::start(kind, self.topo, self.paths, options)?,
            next_seq: 0,
        })
    }

    /// Sends `spec` to the session's receiver and counts what it printed.
    fn trial(&mut self, s: &mut Session, spec: &LoadSpec, timed: bool) -> Result<Trial> {
        let run = self.next_run;
        self.next_run += 1;
        let seq_start = s.next_seq;
        let fragments = if spec.first_fragment_only {
            1
        } else {
            spec.fragments
        };
        let verifier = Verifier::new(
            Expectation {
                run,
                senders: spec.senders,
                seq_start,
                records: UNKNOWN,
                fragments,
            },
            timed,
        );
        let drops_before = s.rx.drops(self.topo)?;
        let mut local = s.rx.begin(verifier)?;
        let spec = &LoadSpec {
            cpu: spec.cpu.or(self.pinned.then_some(TX_CPU)),
            ..spec.clone()
        };
        let load = procs::run_load(self.paths, self.topo, spec, run, seq_start)?;
        s.next_seq = seq_start + load.records.div_ceil(u64::from(spec.senders));
        let ended = Instant::now();
        let mut last = (0, ended);
        loop {
            let complete = s.rx.poll(&mut local, Verifier::complete)?;
            let now = Instant::now();
            if complete >= load.records || now - ended > MAX_SETTLE {
                break;
            }
            if complete != last.0 {
                last = (complete, now);
            } else if now - last.1 > QUIET {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut verifier = s.rx.end(local)?;
        verifier.set_records(load.records);
        let rx_drops = s.rx.drops(self.topo)?.saturating_sub(drops_before);
        Ok(Trial {
            load,
            summary: verifier.summary(),
            rx_drops,
        })
    }

    /// The sender's own rate, flat out, with no receiver running.
    pub fn ceiling(&mut self) -> Result<BTreeMap<u32, Vec<f64>>> {
        let mut out: BTreeMap<u32, Vec<f64>> = BTreeMap::new();
        for rep in 0..self.settings.repeats {
            for senders in SENDER_COUNTS {
                let spec = LoadSpec::flat(senders, self.settings.ceiling);
                let report = procs::run_load(self.paths, self.topo, &spec, 0, 0)?;
                log(&format!(
                    "ceiling H={senders} rep {}: {:.0} records/s ({} retries)",
                    rep + 1,
                    report.rate(),
                    report.retries
                ));
                out.entry(senders).or_default().push(report.rate());
            }
        }
        Ok(out)
    }

    /// Highest rate with under 0.1% loss over the confirm length: flat out first; if that
    /// loses, a bisection below the flat-out rate with short probes, then a full-length run
    /// to confirm (stepping down 15% at a time, up to three times).
    fn zero_loss(&mut self, kind: Rx, base: &LoadSpec, hint: Option<f64>) -> Result<ZeroLoss> {
        let mut s = self.session(kind, Output::File, base.ipv6)?;
        let probe_spec = |rate: Option<f64>, duration| LoadSpec {
            rate,
            duration,
            ..base.clone()
        };
        let flat = self.trial(&mut s, &probe_spec(None, self.settings.probe), false)?;
        let flat_rate = flat.load.rate();
        log(&format!(
            "  {}: flat out {:.0}/s, loss {:.3}% (receiver counted {} drops)",
            kind.short(),
            flat_rate,
            flat.loss() * 100.0,
            flat.rx_drops
        ));
        let mut offered = None;
        if flat.loss() >= LOSS_LIMIT {
            let (mut lo, mut hi) = (0.0f64, flat_rate);
            let mut probe = hint.filter(|h| *h < hi).unwrap_or(hi / 2.0);
            for _ in 0..self.settings.steps {
                let t = self.trial(&mut s, &probe_spec(Some(probe), self.settings.probe), false)?;
                let good = t.loss() < LOSS_LIMIT;
                log(&format!(
                    "  {}: probe {:.0}/s sent {:.0}/s loss {:.3}% {}",
                    kind.short(),
                    probe,
                    t.load.rate(),
                    t.loss() * 100.0,
                    if good { "ok" } else { "lossy" }
                ));
                if good {
                    lo = probe;
                } else {
                    hi = probe;
                }
                probe = f64::midpoint(lo, hi);
            }
            offered = Some(lo.max(MIN_RATE));
        }
        let mut last = None;
        for _ in 0..3 {
            let t = self.trial(&mut s, &probe_spec(offered, self.settings.confirm), false)?;
            log(&format!(
                "  {}: confirm {} sent {:.0}/s loss {:.4}% (receiver counted {} drops)",
                kind.short(),
                offered.map_or("flat out".to_owned(), |r| format!("{r:.0}/s")),
                t.load.rate(),
                t.loss() * 100.0,
                t.rx_drops
            ));
            let confirmed = t.loss() < LOSS_LIMIT;
            last = Some(ZeroLoss {
                rate: t.load.rate(),
                loss: t.loss(),
                flat_rate,
                flat_loss: flat.loss(),
                confirmed,
                exit_stats: None,
            });
            if confirmed {
                break;
            }
            offered = Some((offered.unwrap_or(t.load.rate()) * 0.85).max(MIN_RATE));
        }
        let exit_stats = s.rx.stop()?;
        last.map(|z| ZeroLoss { exit_stats, ..z })
            .context("no confirming run")
    }

    /// Scenario 1 (and 4 with `fragments` > 1): the zero-loss rate of every receiver.
    pub fn zero_loss_section(
        &mut self,
        title: &str,
        about: &str,
        senders: u32,
        fragments: u8,
        ceiling: Option<f64>,
    ) -> Result<Section> {
        let base = LoadSpec {
            fragments,
            size: 200,
            ..LoadSpec::flat(senders, self.settings.probe)
        };
        let [
            mut rate,
            mut frames,
            mut loss,
            mut flat_rate,
            mut flat_loss,
            mut share,
        ] = Values::several();
        let mut hints: BTreeMap<Rx, f64> = BTreeMap::new();
        let mut unconfirmed = Vec::new();
        for rep in 0..self.settings.repeats {
            log(&format!("{title}, repeat {}", rep + 1));
            for kind in self.settings.receivers.clone() {
                let z = self.zero_loss(kind, &base, hints.get(&kind).copied())?;
                hints.insert(kind, z.rate);
                if !z.confirmed {
                    unconfirmed.push(format!("{} (repeat {})", kind.label(), rep + 1));
                }
                rate.push(kind, z.rate);
                frames.push(kind, z.rate * f64::from(fragments));
                loss.push(kind, z.loss * 100.0);
                flat_rate.push(kind, z.flat_rate);
                flat_loss.push(kind, z.flat_loss * 100.0);
                if let Some(c) = ceiling {
                    share.push(kind, z.rate / c * 100.0);
                }
            }
        }
        let mut rows = vec![rate.row("zero-loss rate", Unit::Rate, true)];
        if fragments > 1 {
            rows.push(frames.row("  the same in datagrams", Unit::Rate, true));
        }
        if ceiling.is_some() {
            rows.push(share.row("  as % of the sender's ceiling", Unit::Percent, false));
        }
        rows.push(loss.row("  loss at that rate", Unit::Percent, false));
        rows.push(flat_rate.row(
            "sender's rate flat out, this receiver running",
            Unit::Rate,
            false,
        ));
        rows.push(flat_loss.row("  loss flat out", Unit::Percent, false));
        let mut about = about.to_owned();
        if !unconfirmed.is_empty() {
            let _ = write!(
                about,
                " Not confirmed under 0.1% after three step-downs: {}.",
                unconfirmed.join(", ")
            );
        }
        Ok(Section {
            title: title.to_owned(),
            about,
            rows,
        })
    }

    /// Scenario 7: the zero-loss rate of the XDP receiver without and with `--forward
    /// nats://` (`JetStream`, one replica, a local `nats-server`), in the same repeat.
    pub fn nats(&mut self) -> Result<Section> {
        let base = LoadSpec {
            size: 200,
            ..LoadSpec::flat(1, self.settings.probe)
        };
        let [
            mut at_goal,
            mut rate,
            mut loss,
            mut flat_rate,
            mut dropped,
            mut errors,
        ] = Values::several();
        let mut hints: BTreeMap<Rx, f64> = BTreeMap::new();
        for rep in 0..self.settings.repeats {
            log(&format!("7. NATS forwarding, repeat {}", rep + 1));
            for kind in [Rx::Xdp, Rx::XdpNats] {
                let server = (kind == Rx::XdpNats)
                    .then(|| procs::NatsServer::start(self.topo))
                    .transpose()?;
                let z = self.zero_loss(kind, &base, hints.get(&kind).copied())?;
                // The goal's own question: is 100k records/s lossless, for as long as a
                // confirming run?
                let mut s = self.session(kind, Output::File, false)?;
                let spec = LoadSpec {
                    rate: Some(NATS_GOAL_RATE),
                    duration: self.settings.confirm,
                    ..base.clone()
                };
                let t = self.trial(&mut s, &spec, false)?;
                s.rx.stop()?;
                log(&format!(
                    "  {}: {NATS_GOAL_RATE:.0}/s offered, sent {:.0}/s, loss {:.4}%",
                    kind.short(),
                    t.load.rate(),
                    t.loss() * 100.0
                ));
                at_goal.push(kind, t.loss() * 100.0);
                drop(server);
                hints.insert(kind, z.rate);
                rate.push(kind, z.rate);
                loss.push(kind, z.loss * 100.0);
                flat_rate.push(kind, z.flat_rate);
                if kind == Rx::XdpNats {
                    let field = |name| {
                        #[expect(clippy::cast_precision_loss, reason = "counts for a table")]
                        z.exit_stats
                            .as_ref()
                            .and_then(|s| s.try_counter(name))
                            .map(|v| v as f64)
                    };
                    if let Some(stats) = &z.exit_stats {
                        log(&format!("  xdp-nats: {stats}"));
                    }
                    dropped.push(kind, field("nats_dropped").unwrap_or(f64::NAN));
                    errors.push(kind, field("nats_retries").unwrap_or(f64::NAN));
                }
            }
        }
        Ok(Section {
            title: "7. Forwarding to NATS JetStream (1 replica), one sender, 200-byte records"
                .to_owned(),
            about: "The zero-loss search of scenario 1 for netcon-sniff --backend xdp without \
                    and with `--forward nats://127.0.0.1/bench --nats-stream BENCH` (a local \
                    Debian `nats-server -js`, file store, one replica; every record published \
                    with an acknowledgement), in the same repeat. Loss is counted in the \
                    capture's own output: the question is whether forwarding slows capture. \
                    The forwarder's own drops (its queue full because the stream could not keep \
                    up) are the counts over the whole search, probes included."
                .to_owned(),
            rows: vec![
                rate.row("zero-loss rate", Unit::Rate, false),
                loss.row("  loss at that rate", Unit::Percent, false),
                flat_rate.row(
                    "sender's rate flat out, this receiver running",
                    Unit::Rate,
                    false,
                ),
                at_goal.row("loss at 100k records/s offered", Unit::Percent, false),
                dropped.row("NATS forwarder: records dropped", Unit::Count, false),
                errors.row("NATS forwarder: publishes retried", Unit::Count, false),
            ],
        })
    }

    /// Scenario 2: one sender, [`BURST`] records as fast as it can.
    pub fn burst(&mut self) -> Result<Section> {
        let [mut lost, mut drops, mut rate] = Values::several();
        for rep in 0..self.settings.repeats {
            for kind in self.settings.receivers.clone() {
                let mut s = self.session(kind, Output::File, false)?;
                let spec = LoadSpec {
                    count: Some(BURST),
                    duration: Duration::from_secs(30),
                    ..LoadSpec::flat(1, Duration::from_secs(30))
                };
                let t = self.trial(&mut s, &spec, false)?;
                s.rx.stop()?;
                log(&format!(
                    "burst rep {} {}: {} of {} lost at {:.0}/s (receiver counted {})",
                    rep + 1,
                    kind.short(),
                    t.lost(),
                    t.load.records,
                    t.load.rate(),
                    t.rx_drops
                ));
                lost.push(kind, count_f64(t.lost()));
                drops.push(kind, count_f64(t.rx_drops));
                rate.push(kind, t.load.rate());
            }
        }
        Ok(Section {
            title: format!("2. Start-up burst: {BURST} records, one sender, flat out"),
            about: "netconsole replays its whole log buffer when it starts. Records lost: \
                    missing or incomplete in the receiver's output."
                .into(),
            rows: vec![
                lost.row("records lost", Unit::Count, false),
                drops.row("  of which the receiver counted", Unit::Count, false),
                rate.row("burst rate sent", Unit::Rate, false),
            ],
        })
    }

    /// Scenario 3: latency at [`LATENCY_RATE`], from the sender's stamp to the line read from
    /// the receiver's stdout pipe.
    pub fn latency(&mut self) -> Result<Section> {
        let [mut p50, mut p99, mut max, mut loss] = Values::several();
        for rep in 0..self.settings.repeats {
            for kind in self.settings.receivers.clone() {
                let mut s = self.session(kind, Output::Pipe, false)?;
                let spec = LoadSpec {
                    rate: Some(LATENCY_RATE),
                    ..LoadSpec::flat(1, self.settings.latency)
                };
                let t = self.trial(&mut s, &spec, true)?;
                s.rx.stop()?;
                let l = t.summary.latency.unwrap_or_default();
                log(&format!(
                    "latency rep {} {}: p50 {:.0} µs, p99 {:.0} µs, max {:.0} µs, loss {:.3}%",
                    rep + 1,
                    kind.short(),
                    l.p50_us,
                    l.p99_us,
                    l.max_us,
                    t.loss() * 100.0
                ));
                p50.push(kind, l.p50_us);
                p99.push(kind, l.p99_us);
                max.push(kind, l.max_us);
                loss.push(kind, t.loss() * 100.0);
            }
        }
        Ok(Section {
            title: format!("3. Latency at {LATENCY_RATE:.0} records/s, one sender"),
            about: "From the send time the sender stamps into each record (CLOCK_MONOTONIC) to \
                    the moment the bench reads the line from the receiver's stdout pipe."
                .into(),
            rows: vec![
                p50.row("p50", Unit::Micros, true),
                p99.row("p99", Unit::Micros, true),
                max.row("max", Unit::Micros, true),
                loss.row("loss", Unit::Percent, false),
            ],
        })
    }

    /// Run time per packet of a program, from `stats` (`run_time_ns`, `run_cnt`), under 1,000
    /// senders at [`COST_RATE`] to `port`: one figure a repeat, logged as `what`.
    fn paced_cost(
        &mut self,
        port: u16,
        what: &str,
        stats: &mut dyn FnMut() -> Result<(u64, u64)>,
    ) -> Result<Values> {
        let mut cost = Values::default();
        for rep in 0..self.settings.repeats {
            let spec = LoadSpec {
                rate: Some(COST_RATE),
                port,
                ..LoadSpec::flat(1000, self.settings.cost)
            };
            let before = stats()?;
            let run = self.next_run;
            self.next_run += 1;
            procs::run_load(self.paths, self.topo, &spec, run, 0)?;
            let per = per_packet(before, stats()?);
            log(&format!("xdp cost rep {}: {per:.1} ns {what}", rep + 1));
            cost.push(Rx::Xdp, per);
        }
        Ok(cost)
    }

    /// The cost of an empty XDP program on the receiver's interface, per repeat.
    fn empty_program_cost(&mut self) -> Result<Values> {
        let program = calibrate::attach_in(&self.topo.receiver, RX_IF)?;
        self.paced_cost(OTHER_PORT, "for an empty program", &mut || program.stats())
    }

    /// The cost of a matching packet at [`COST_RATE`] when the program stamps every frame
    /// itself (`--xdp-timestamps kernel`, what `-w` chooses), per repeat.
    fn kernel_timestamps_cost(&mut self) -> Result<Values> {
        let options = RxOptions {
            netcon_args: &["--xdp-timestamps", "kernel"],
            ..RxOptions::new(Output::File)
        };
        let rx = Receiver::start(Rx::Xdp, self.topo, self.paths, options)?;
        let cost = self.paced_cost(PORT, "matching with --xdp-timestamps kernel", &mut || {
            rx.xdp_prog_stats()
        })?;
        rx.stop()?;
        Ok(cost)
    }

    /// Scenario 5: the XDP program's run time per packet, for matching traffic and for traffic
    /// to another port, from `run_time_ns / run_cnt` with `kernel.bpf_stats_enabled=1`.
    pub fn xdp_cost(&mut self) -> Result<Section> {
        let [
            mut matching,
            mut flat,
            mut other,
            mut wakeups,
            mut flat_wakeups,
        ] = Values::several();
        let [mut program_wakeups, mut flat_program_wakeups] = Values::several();
        let _stats = BpfStats::enable()?;
        let empty = self.empty_program_cost()?;
        let kernel_stamps = self.kernel_timestamps_cost()?;
        let mut s = self.session(Rx::Xdp, Output::File, false)?;
        for rep in 0..self.settings.repeats {
            let paced = LoadSpec {
                rate: Some(COST_RATE),
                ..LoadSpec::flat(1000, self.settings.cost)
            };
            let mut measure =
                |bench: &mut Self, spec: &LoadSpec, verify: bool| -> Result<(f64, f64, f64)> {
                    let woken_before = s.rx.netcon_counter("wakeups")?;
                    let before = s.rx.xdp_prog_stats()?;
                    let irq_before = irq_work_interrupts();
                    let frames = if verify {
                        bench.trial(&mut s, spec, false)?.load.frames
                    } else {
                        let run = bench.next_run;
                        bench.next_run += 1;
                        procs::run_load(bench.paths, bench.topo, spec, run, 0)?.frames
                    };
                    let irqs = irq_work_interrupts().saturating_sub(irq_before);
                    let after = s.rx.xdp_prog_stats()?;
                    let woken = s.rx.netcon_counter("wakeups")?.saturating_sub(woken_before);
                    Ok((
                        per_packet(before, after),
                        count_f64(irqs) / count_f64(frames.max(1)),
                        count_f64(woken) / count_f64(frames.max(1)),
                    ))
                };
            let (per_match, wake, woken) = measure(self, &paced, true)?;
            let (per_flat, flat_wake, flat_woken) =
                measure(self, &LoadSpec::flat(1000, self.settings.cost), true)?;
            let (per_other, _, _) = measure(
                self,
                &LoadSpec {
                    port: OTHER_PORT,
                    ..paced
                },
                false,
            )?;
            log(&format!(
                "xdp cost rep {}: {per_match:.1} ns matching ({wake:.3} IRQ-work interrupts \
                 per packet, {woken:.4} program wake-ups), {per_flat:.1} ns matching flat out \
                 ({flat_wake:.3}, {flat_woken:.4}), {per_other:.1} ns other port",
                rep + 1,
            ));
            matching.push(Rx::Xdp, per_match);
            wakeups.push(Rx::Xdp, wake);
            program_wakeups.push(Rx::Xdp, woken);
            flat.push(Rx::Xdp, per_flat);
            flat_wakeups.push(Rx::Xdp, flat_wake);
            flat_program_wakeups.push(Rx::Xdp, flat_woken);
            other.push(Rx::Xdp, per_other);
        }
        s.rx.stop()?;
        Ok(Section {
            title: "5. XDP program cost per packet".into(),
            about: xdp_cost_about(),
            rows: vec![
                matching.row(
                    &format!("matching packet, {COST_RATE:.0}/s"),
                    Unit::Nanos,
                    false,
                ),
                wakeups.row("  IRQ-work interrupts per packet", Unit::Ratio, false),
                program_wakeups.row("  reader wake-ups per packet", Unit::Ratio, false),
                kernel_stamps.row(
                    &format!(
                        "matching packet, {COST_RATE:.0}/s, stamped in the program \
                         (`--xdp-timestamps kernel`, as with `-w`)"
                    ),
                    Unit::Nanos,
                    false,
                ),
                flat.row("matching packet, flat out", Unit::Nanos, false),
                flat_wakeups.row("  IRQ-work interrupts per packet", Unit::Ratio, false),
                flat_program_wakeups.row("  reader wake-ups per packet", Unit::Ratio, false),
                other.row("non-matching packet (another port)", Unit::Nanos, false),
                empty.row(
                    "an empty XDP program (`return XDP_PASS`), for scale",
                    Unit::Nanos,
                    false,
                ),
            ],
        })
    }

    /// Scenario 6: peak RSS of each receiver under many senders and many pending fragments.
    pub fn memory(&mut self) -> Result<Section> {
        let loads: [(&str, LoadSpec); 3] = [
            (
                "10,000 senders (5 records each)",
                LoadSpec {
                    rate: Some(100_000.0),
                    count: Some(50_000),
                    ..LoadSpec::flat(10_000, Duration::from_secs(30))
                },
            ),
            (
                "100,000 senders, IPv6 (2 records each)",
                LoadSpec {
                    ipv6: true,
                    rate: Some(100_000.0),
                    count: Some(200_000),
                    ..LoadSpec::flat(100_000, Duration::from_secs(30))
                },
            ),
            (
                "10,000 pending 4-fragment records (first fragments only)",
                LoadSpec {
                    fragments: 4,
                    first_fragment_only: true,
                    rate: Some(50_000.0),
                    count: Some(10_000),
                    ..LoadSpec::flat(10_000, Duration::from_secs(30))
                },
            ),
        ];
        let mut rows: Vec<Values> = (0..loads.len()).map(|_| Values::default()).collect();
        let mut idle = Values::default();
        for rep in 0..self.settings.repeats {
            for kind in self.settings.receivers.clone() {
                for (i, (name, spec)) in loads.iter().enumerate() {
                    let mut s = self.session(kind, Output::File, spec.ipv6)?;
                    if i == 0 {
                        idle.push(kind, count_f64(s.rx.peak_rss_kib()?) / 1024.0);
                    }
                    let t = self.trial(&mut s, spec, false)?;
                    let mib = count_f64(s.rx.peak_rss_kib()?) / 1024.0;
                    s.rx.stop()?;
                    log(&format!(
                        "memory rep {} {} {name}: {mib:.1} MiB ({} records sent)",
                        rep + 1,
                        kind.short(),
                        t.load.records
                    ));
                    rows[i].push(kind, mib);
                }
            }
        }
        let mut out = vec![idle.row("idle, after start", Unit::MiB, true)];
        for ((name, _), values) in loads.iter().zip(rows) {
            out.push(values.row(name, Unit::MiB, true));
        }
        Ok(Section {
            title: "6. Memory: peak RSS (VmHWM)".into(),
            about: "VmHWM from /proc/PID/status of a fresh receiver after the load. netcon's \
                    decoder tracks at most 10,000 senders and 256 pending fragmented records \
                    (its documented bounds); what falls out is emitted and counted. socat \
                    keeps no state per sender."
                .into(),
            rows: out,
        })
    }
}

/// Loss against offered rate, per receiver: `(records/s sent, % lost)`, lowest rate first.
pub type Curves = BTreeMap<Rx, Vec<(f64, f64)>>;

impl Bench<'_> {
    /// Scenario 1c: every receiver flat out, unpinned and pinned (receiver on [`RX_CPU`],
    /// sender and softirq on [`TX_CPU`]), 1 and 1,000 senders: the sender's rate and the loss.
    pub fn flat_out(&mut self) -> Result<Section> {
        let mut rows = Vec::new();
        for pinned in [false, true] {
            for h in SENDER_COUNTS {
                let [mut rate, mut loss, mut delivered] = Values::several();
                for rep in 0..self.settings.repeats {
                    for kind in self.settings.receivers.clone() {
                        self.pinned = pinned;
                        let result = self.flat_trial(kind, h);
                        self.pinned = false;
                        let t = result?;
                        log(&format!(
                            "flat out {} H={h} rep {} {}: {:.0}/s, loss {:.3}% (receiver \
                             counted {})",
                            if pinned { "pinned" } else { "unpinned" },
                            rep + 1,
                            kind.short(),
                            t.load.rate(),
                            t.loss() * 100.0,
                            t.rx_drops
                        ));
                        rate.push(kind, t.load.rate());
                        loss.push(kind, t.loss() * 100.0);
                        delivered.push(kind, t.load.rate() * (1.0 - t.loss()));
                    }
                }
                let what = format!(
                    "{h} sender{}, {}",
                    if h == 1 { "" } else { "s" },
                    if pinned { "pinned" } else { "unpinned" }
                );
                rows.push(rate.row(&format!("sender's rate, {what}"), Unit::Rate, true));
                rows.push(loss.row(&format!("  loss, {what}"), Unit::Percent, false));
                rows.push(delivered.row(&format!("  records delivered, {what}"), Unit::Rate, true));
            }
        }
        Ok(Section {
            title: "1c. Flat out, unpinned and pinned".into(),
            about: format!(
                "One sender process flat out for {:.0} s with each receiver running: the rate \
                 the sender reached and the records lost. Unpinned, the scheduler places both; \
                 pinned, the receiver runs on CPU {RX_CPU} and the sender on CPU {TX_CPU}, where \
                 the receive softirq (veth, the XDP program, the packet taps) runs too. The \
                 higher the sender's rate, the less the receive path costs the sending core; \
                 but a receiver that cannot keep up costs it less too, as the kernel drops what \
                 overflows its socket early: records delivered (the sender's rate less the \
                 records lost) say what each receiver kept.",
                self.settings.flat.as_secs_f64()
            ),
            rows,
        })
    }

    fn flat_trial(&mut self, kind: Rx, senders: u32) -> Result<Trial> {
        let mut s = self.session(kind, Output::File, false)?;
        let t = self.trial(&mut s, &LoadSpec::flat(senders, self.settings.flat), false)?;
        s.rx.stop()?;
        Ok(t)
    }

    /// Scenario 3b: the latency of one record after a silence, every receiver. Each listens on
    /// its own port, so one record wakes one receiver, and the receivers take turns: each sees
    /// the full silence between its records while the scenario takes the silence × trials.
    pub fn lone_record(&mut self) -> Result<Section> {
        let mut sessions = Vec::new();
        for (kind, port) in self.settings.receivers.clone().into_iter().zip(PORT..) {
            let options = RxOptions {
                port,
                ..RxOptions::new(Output::Pipe)
            };
            let rx = Receiver::start(kind, self.topo, self.paths, options)?;
            sessions.push((kind, port, Session { rx, next_seq: 0 }));
        }
        let gap = self.settings.lone_silence / u32::try_from(sessions.len()).unwrap_or(1);
        let mut latencies: BTreeMap<Rx, Vec<u64>> = BTreeMap::new();
        let mut lost = Values::default();
        for kind in self.settings.receivers.clone() {
            lost.push(kind, 0.0);
        }
        for trial in 0..self.settings.lone_trials {
            for (kind, port, s) in &mut sessions {
                std::thread::sleep(gap);
                match self.lone(s, *port)? {
                    Some(ns) => latencies.entry(*kind).or_default().push(ns),
                    None => {
                        if let Some(v) = lost.0.get_mut(kind) {
                            v[0] += 1.0;
                        }
                    }
                }
            }
            if (trial + 1) % 10 == 0 {
                log(&format!(
                    "lone record: {} of {} trials",
                    trial + 1,
                    self.settings.lone_trials
                ));
            }
        }
        for (_, _, s) in sessions {
            s.rx.stop()?;
        }
        let [mut p50, mut p99, mut max] = Values::several();
        for (kind, mut samples) in latencies {
            if let Some(l) = netcon_bench::verify::Latency::of(&mut samples) {
                log(&format!(
                    "lone record {}: p50 {:.0} µs, p99 {:.0} µs, max {:.0} µs",
                    kind.short(),
                    l.p50_us,
                    l.p99_us,
                    l.max_us
                ));
                p50.push(kind, l.p50_us);
                p99.push(kind, l.p99_us);
                max.push(kind, l.max_us);
            }
        }
        Ok(Section {
            title: format!(
                "3b. A lone record after {:.0} s of silence",
                self.settings.lone_silence.as_secs_f64()
            ),
            about: format!(
                "The last words of a dying kernel: one record after {:.0} s in which its \
                 receiver got nothing, {} times per receiver; from the send time stamped in the \
                 record to the moment the bench reads its line from the receiver's stdout pipe \
                 (tcpdump: `-U`, packet-buffered). Percentiles over the trials, not repeats. \
                 Each receiver listens on its own port ({PORT} and up) and they take turns.",
                self.settings.lone_silence.as_secs_f64(),
                self.settings.lone_trials
            ),
            rows: vec![
                p50.row("p50", Unit::Micros, true),
                p99.row("p99", Unit::Micros, true),
                max.row("max", Unit::Micros, true),
                lost.row("records not seen within 3 s", Unit::Count, false),
            ],
        })
    }

    /// One record to `port`; its latency in ns, or `None` if it did not come out in time.
    fn lone(&mut self, s: &mut Session, port: u16) -> Result<Option<u64>> {
        let run = self.next_run;
        self.next_run += 1;
        let verifier = Verifier::new(
            Expectation {
                run,
                senders: 1,
                seq_start: s.next_seq,
                records: 1,
                fragments: 1,
            },
            true,
        );
        let mut local = s.rx.begin(verifier)?;
        let spec = LoadSpec {
            count: Some(1),
            port,
            ..LoadSpec::flat(1, LONE_TIMEOUT)
        };
        procs::run_load(self.paths, self.topo, &spec, run, s.next_seq)?;
        s.next_seq += 1;
        let deadline = Instant::now() + LONE_TIMEOUT;
        while s.rx.poll(&mut local, Verifier::complete)? < 1 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        let mut verifier = s.rx.end(local)?;
        verifier.set_records(1);
        Ok(verifier
            .summary()
            .latency
            .map(|l| netcon_bench::f64_count(l.max_us * 1000.0)))
    }

    /// Scenario 1d: loss against offered rate for every receiver, one sender: paced at
    /// [`CURVE_STEPS`] of `ceiling`, then flat out. One run per point (the points are the
    /// repeats).
    pub fn loss_curve(&mut self, ceiling: f64) -> Result<(Section, Curves)> {
        let mut curves = Curves::new();
        let mut rows: Vec<(String, Values)> = CURVE_STEPS
            .iter()
            .map(|f| {
                (
                    format!("{:.0}% of the ceiling", f * 100.0),
                    Values::default(),
                )
            })
            .collect();
        rows.push(("flat out".into(), Values::default()));
        for kind in self.settings.receivers.clone() {
            let mut s = self.session(kind, Output::File, false)?;
            let rates = CURVE_STEPS.iter().map(|f| Some(f * ceiling)).chain([None]);
            for ((_, values), rate) in rows.iter_mut().zip(rates) {
                let spec = LoadSpec {
                    rate,
                    ..LoadSpec::flat(1, self.settings.curve)
                };
                let t = self.trial(&mut s, &spec, false)?;
                log(&format!(
                    "loss curve {}: offered {} sent {:.0}/s, loss {:.3}%",
                    kind.short(),
                    rate.map_or("flat out".into(), |r| format!("{r:.0}/s")),
                    t.load.rate(),
                    t.loss() * 100.0
                ));
                curves
                    .entry(kind)
                    .or_default()
                    .push((t.load.rate(), t.loss() * 100.0));
                values.push(kind, t.loss() * 100.0);
            }
            s.rx.stop()?;
        }
        for points in curves.values_mut() {
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
        }
        Ok((
            Section {
                title: "1d. Loss against offered rate, 1 sender".into(),
                about: format!(
                    "Records lost (%) with the sender paced at a share of its ceiling ({}), \
                     then flat out; {:.1} s per point, one run each. The picture: \
                     [loss against rate](BENCHMARKS-loss.svg).",
                    Unit::Rate.format(ceiling),
                    self.settings.curve.as_secs_f64()
                ),
                rows: rows
                    .into_iter()
                    .map(|(name, values)| values.row(&name, Unit::Percent, false))
                    .collect(),
            },
            curves,
        ))
    }
}

/// What scenario 5 measures and how.
fn xdp_cost_about() -> String {
    format!(
        "run_time_ns / run_cnt of netcon's XDP program (run-time stats on: the \
         kernel.bpf_stats_enabled switch, taken through BPF_ENABLE_STATS; read \
         from /proc/PID/fdinfo of netcon-sniff), from 1,000 senders: to port 6666 \
         (parsed, copied to the ring buffer) at {COST_RATE:.0} packets/s and flat out \
         with netcon-sniff's default receive times (stamped by the reader), once more at \
         {COST_RATE:.0} packets/s with the program stamping each frame (`--xdp-timestamps \
         kernel`, a clock read), and to port {OTHER_PORT} at {COST_RATE:.0} packets/s (parsed, passed on: what \
         every other packet of the host pays). IRQ-work interrupts (the `IWI` line of \
         /proc/interrupts, machine-wide, so other work on the machine adds to it) per \
         packet count the ring buffer's wake-ups of the reader: a self-IPI each, which \
         a virtual machine pays as an exit; reader wake-ups per packet are the \
         program's own count of the records it woke the reader for (`wakeups=`). The \
         empty program, attached the same way (generic mode, bpf_link) and measured the \
         same way, is the floor: dispatch plus the clock reads of the accounting."
    )
}

/// Rate of the hostile scenario's victim, records/s.
pub const VICTIM_RATE: f64 = 1000.0;
/// Spoofed senders of the continuation-chain attack.
const CHAIN_ATTACKERS: u32 = 1000;
/// Spoofed senders of the fragment-start attack (each opens a 4-fragment record).
const FRAGMENT_ATTACKERS: u32 = 60_000;

/// The hostile scenario's two floods, flat out for `length`, from spoofed IPv6 sources.
fn floods(length: Duration) -> [LoadSpec; 2] {
    [
        LoadSpec {
            ipv6: true,
            continuation: true,
            size: 1000,
            ..LoadSpec::flat(CHAIN_ATTACKERS, length)
        },
        LoadSpec {
            ipv6: true,
            fragments: 4,
            first_fragment_only: true,
            // Apart from the chains' sources (`fd00:N::1:0` on).
            src_base: Some(std::net::IpAddr::V6(std::net::Ipv6Addr::new(
                0xfd00,
                u16::from(super::topo::SUBNET),
                0,
                0,
                0,
                2,
                0,
                0,
            ))),
            ..LoadSpec::flat(FRAGMENT_ATTACKERS, length)
        },
    ]
}

impl Bench<'_> {
    /// Scenario 7: one victim sender at [`VICTIM_RATE`] while two attackers flood flat out from
    /// spoofed IPv6 sources: continuation chains (`c`-flagged records of ~500 empty dictionary
    /// lines, [`CHAIN_ATTACKERS`] sources) and fragment starts (the first of 4 ncfrag fragments,
    /// [`FRAGMENT_ATTACKERS`] sources). Victim records lost, peak RSS and CPU, for the two
    /// netcon backends (socat keeps no state to attack).
    pub fn hostile(&mut self) -> Result<Section> {
        let [
            mut lost,
            mut counted,
            mut sent,
            mut rss,
            mut cpu,
            mut attack,
        ] = Values::several();
        let length = self.settings.hostile;
        for rep in 0..self.settings.repeats {
            for kind in [Rx::Xdp, Rx::Raw] {
                let mut s = self.session(kind, Output::File, false)?;
                let attackers = floods(length + QUIET);
                let victim = LoadSpec {
                    rate: Some(VICTIM_RATE),
                    ..LoadSpec::flat(1, length)
                };
                let cpu_before = s.rx.cpu_seconds()?;
                let started = Instant::now();
                let (paths, topo) = (self.paths, self.topo);
                let first_run = self.next_run;
                self.next_run += 2;
                let (trial, reports) = std::thread::scope(|scope| {
                    let floods: Vec<_> = attackers
                        .iter()
                        .zip(first_run..)
                        .map(|(spec, run)| {
                            scope.spawn(move || procs::run_load(paths, topo, spec, run, 0))
                        })
                        .collect();
                    // The floods get going before the victim starts.
                    std::thread::sleep(Duration::from_millis(200));
                    let trial = self.trial(&mut s, &victim, false);
                    let reports: Vec<Result<LoadReport>> = floods
                        .into_iter()
                        .map(|f| {
                            f.join()
                                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                        })
                        .collect();
                    (trial, reports)
                });
                let trial = trial?;
                let wall = started.elapsed().as_secs_f64();
                let busy = s.rx.cpu_seconds()? - cpu_before;
                let peak = count_f64(s.rx.peak_rss_kib()?) / 1024.0;
                let mut frames = 0;
                for report in reports {
                    frames += report?.frames;
                }
                s.rx.stop()?;
                log(&format!(
                    "hostile rep {} {}: victim lost {} of {}, receiver counted {} lost, peak RSS \
                     {peak:.1} MiB, CPU {:.0}%, attack {:.0} frames/s",
                    rep + 1,
                    kind.short(),
                    trial.lost(),
                    trial.load.records,
                    trial.rx_drops,
                    busy / wall * 100.0,
                    count_f64(frames) / wall
                ));
                lost.push(kind, count_f64(trial.lost()));
                counted.push(kind, count_f64(trial.rx_drops));
                sent.push(kind, count_f64(trial.load.records));
                rss.push(kind, peak);
                cpu.push(kind, busy / wall * 100.0);
                attack.push(kind, count_f64(frames) / wall);
            }
        }
        Ok(Section {
            title: format!(
                "7. Hostile segment: a victim at {VICTIM_RATE:.0} records/s under attack"
            ),
            about: format!(
                "One victim sender (IPv4, extended records, {VICTIM_RATE:.0}/s) while two \
                 attackers flood flat out from spoofed IPv6 sources: continuation chains \
                 ({CHAIN_ATTACKERS} sources, `c`-flagged records of ~500 empty dictionary lines \
                 each) and fragment starts ({FRAGMENT_ATTACKERS} sources, the first of 4 ncfrag \
                 fragments, never completed). Victim records lost: missing or incomplete in the \
                 receiver's output (goal 0). Peak RSS: VmHWM after the run (goal under 64 MiB). \
                 CPU: the receiver's user and system time over the run's wall time (100% is one \
                 core). Both machines share two cores with the attackers, so the attack rate is \
                 what the sender managed next to the receiver."
            ),
            rows: vec![
                lost.row("victim records lost", Unit::Count, false),
                sent.row("  victim records sent", Unit::Count, false),
                counted.row(
                    "frames the receiver counted as lost (all senders)",
                    Unit::Count,
                    false,
                ),
                rss.row("peak RSS", Unit::MiB, true),
                cpu.row("receiver CPU", Unit::Percent, false),
                attack.row("attack frames sent", Unit::Rate, false),
            ],
        })
    }
}

/// IRQ-work interrupts so far, all CPUs (`IWI:` in /proc/interrupts).
fn irq_work_interrupts() -> u64 {
    std::fs::read_to_string("/proc/interrupts")
        .ok()
        .and_then(|t| {
            let line = t.lines().find(|l| l.trim_start().starts_with("IWI:"))?;
            Some(
                line.split_whitespace()
                    .skip(1)
                    .map_while(|w| w.parse::<u64>().ok())
                    .sum(),
            )
        })
        .unwrap_or(0)
}

fn per_packet(before: (u64, u64), after: (u64, u64)) -> f64 {
    let time = count_f64(after.0.saturating_sub(before.0));
    let count = after.1.saturating_sub(before.1);
    if count == 0 {
        0.0
    } else {
        time / count_f64(count)
    }
}
