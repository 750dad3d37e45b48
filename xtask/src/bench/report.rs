//! BENCHMARKS.md: the machine, the commit, every figure as min / median / max of its repeats,
//! ratios against the baseline measured in the same run, the goals, and a reading.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use super::criterion::Throughput;
use super::procs::Rx;

/// How a figure is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Records (or datagrams) per second.
    Rate,
    /// Percent.
    Percent,
    /// A count.
    Count,
    /// Microseconds.
    Micros,
    /// Nanoseconds.
    Nanos,
    /// MiB.
    MiB,
    /// A plain ratio.
    Ratio,
}

impl Unit {
    pub fn format(self, v: f64) -> String {
        match self {
            Unit::Rate => {
                if v >= 1e6 {
                    format!("{:.2}M/s", v / 1e6)
                } else if v >= 1e4 {
                    format!("{:.0}k/s", v / 1e3)
                } else {
                    format!("{v:.0}/s")
                }
            }
            Unit::Percent => {
                if v == 0.0 {
                    "0%".into()
                } else if v < 0.01 {
                    format!("{v:.4}%")
                } else {
                    format!("{v:.2}%")
                }
            }
            Unit::Count => format!("{v:.0}"),
            Unit::Micros => {
                if v >= 10_000.0 {
                    format!("{:.1} ms", v / 1000.0)
                } else {
                    format!("{v:.0} µs")
                }
            }
            Unit::Nanos => format!("{v:.1} ns"),
            Unit::MiB => format!("{v:.1} MiB"),
            Unit::Ratio => {
                if v > 0.0 && v < 0.01 {
                    format!("{v:.4}")
                } else {
                    format!("{v:.2}")
                }
            }
        }
    }
}

/// One figure, per receiver.
#[derive(Debug, Clone)]
pub struct Row {
    /// What it is.
    pub name: String,
    /// Its unit.
    pub unit: Unit,
    /// Each repeat's value, per receiver.
    pub values: BTreeMap<Rx, Vec<f64>>,
    /// Whether a ratio against the baseline means something here.
    pub ratio: bool,
}

impl Row {
    /// The median of `rx`'s repeats.
    pub fn median(&self, rx: Rx) -> Option<f64> {
        self.values.get(&rx).and_then(|v| median(v))
    }

    /// The largest of `rx`'s repeats.
    pub fn max(&self, rx: Rx) -> Option<f64> {
        self.values
            .get(&rx)
            .and_then(|v| v.iter().copied().reduce(f64::max))
    }

    fn cell(&self, rx: Rx) -> String {
        let Some(v) = self.values.get(&rx).filter(|v| !v.is_empty()) else {
            return "—".into();
        };
        let min = v.iter().copied().fold(f64::INFINITY, f64::min);
        let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let med = median(v).unwrap_or(min);
        if v.len() == 1 {
            self.unit.format(med)
        } else {
            format!(
                "{} / **{}** / {}",
                self.unit.format(min),
                self.unit.format(med),
                self.unit.format(max)
            )
        }
    }

    /// The median of `rx` over the median of `base`, if a ratio means something here.
    fn ratio(&self, rx: Rx, base: Rx) -> String {
        match (self.ratio, self.median(rx), self.median(base)) {
            (true, Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
            _ => "—".into(),
        }
    }
}

/// The median of `values` (mean of the middle two for an even count).
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        f64::midpoint(v[n / 2 - 1], v[n / 2])
    })
}

/// A scenario's table.
#[derive(Debug, Clone)]
pub struct Section {
    /// Heading.
    pub title: String,
    /// What it measures and how.
    pub about: String,
    /// Figures.
    pub rows: Vec<Row>,
}

/// Where and when the figures were taken.
#[derive(Debug, Clone)]
pub struct Machine {
    /// `nproc`.
    pub cores: usize,
    /// `uname -r`.
    pub kernel: String,
    /// `/proc/cpuinfo`'s model name.
    pub cpu: String,
    /// `git rev-parse --short HEAD`, `-dirty` when the tree has changes.
    pub commit: String,
    /// UTC time of the start.
    pub date: String,
    /// `uptime` at the start.
    pub load_before: String,
    /// `uptime` at the end.
    pub load_after: String,
    /// The virtio balloon's free page reporting during the run (see `page_reporting`).
    pub page_reporting: String,
}

fn command_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or_else(
            || "?".into(),
            |o| String::from_utf8_lossy(&o.stdout).trim().to_owned(),
        )
}

/// `uptime`'s line.
pub fn uptime() -> String {
    command_line("uptime", &[])
}

impl Machine {
    /// Reads the machine and the commit of `root`.
    pub fn probe(root: &Path) -> Self {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("model name"))
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_owned())
            })
            .unwrap_or_else(|| "?".into());
        let root = root.to_string_lossy();
        let mut commit = command_line("git", &["-C", &root, "rev-parse", "--short", "HEAD"]);
        if !command_line("git", &["-C", &root, "status", "--porcelain"]).is_empty() {
            commit += "-dirty";
        }
        Self {
            cores: std::thread::available_parallelism().map_or(0, usize::from),
            kernel: command_line("uname", &["-r"]),
            cpu,
            commit,
            date: command_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
            load_before: uptime(),
            load_after: String::new(),
            page_reporting: String::new(),
        }
    }
}

/// Everything a run measured.
#[derive(Debug, Clone)]
pub struct Results {
    /// Machine and commit.
    pub machine: Machine,
    /// The command line's options after `bench` (with a leading space), as run.
    pub flags: String,
    /// Repeats per figure.
    pub repeats: usize,
    /// Criterion's decoder figures.
    pub criterion: Vec<Throughput>,
    /// The sender's ceiling per sender count, records/s per repeat.
    pub ceiling: BTreeMap<u32, Vec<f64>>,
    /// Scenario tables, in order.
    pub sections: Vec<Section>,
    /// Minutes the run took.
    pub minutes: f64,
}

impl Results {
    /// The XDP program's median cost per matching packet at the paced rate of scenario 5.
    fn paced_matching_cost(&self) -> Option<f64> {
        let name = format!("matching packet, {:.0}/s", super::scenarios::COST_RATE);
        self.median_of("5.", &name, Rx::Xdp)
    }

    /// The median of `rx`'s repeats in row `name` of the section `section_prefix`.
    fn median_of(&self, section_prefix: &str, name: &str, rx: Rx) -> Option<f64> {
        self.row(section_prefix, name)
            .and_then(|row| row.median(rx))
    }

    fn row(&self, section_prefix: &str, name: &str) -> Option<&Row> {
        self.sections
            .iter()
            .filter(|s| s.title.starts_with(section_prefix))
            .flat_map(|s| &s.rows)
            .find(|r| r.name.trim() == name)
    }
}

/// `a` as a whole percentage of `b`, or `?`.
fn percent_of(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.0}%", a / b * 100.0),
        _ => "?".into(),
    }
}

fn fmt_or(v: Option<f64>, unit: Unit) -> String {
    v.map_or_else(|| "—".into(), |v| unit.format(v))
}

/// Renders BENCHMARKS.md.
pub fn render(r: &Results) -> String {
    let mut md = String::new();
    let m = &r.machine;
    let _ = writeln!(md, "# Benchmarks\n");
    let _ = writeln!(
        md,
        "Written by `cargo xtask bench{}`; do not edit by hand, run it again. Every figure \
         is min / **median** / max of {} repeat{} unless it says otherwise; ratios are \
         netcon xdp's median over another receiver's median measured in the same run.\n",
        r.flags,
        r.repeats,
        if r.repeats == 1 { "" } else { "s" }
    );
    let _ = writeln!(md, "| | |\n|---|---|");
    let _ = writeln!(md, "| date | {} |", m.date);
    let _ = writeln!(md, "| commit | `{}` |", m.commit);
    let _ = writeln!(md, "| CPU | {} × {} |", m.cores, m.cpu);
    let _ = writeln!(md, "| kernel | {} |", m.kernel);
    let _ = writeln!(md, "| load before | `{}` |", m.load_before);
    let _ = writeln!(md, "| load after | `{}` |", m.load_after);
    let _ = writeln!(md, "| free page reporting | {} |", m.page_reporting);
    let _ = writeln!(md, "| run time | {:.1} min |\n", r.minutes);
    let _ = writeln!(
        md,
        "Setup: two network namespaces joined by one veth pair (`10.91.0.0/16`, `fd00:91::/64`). \
         `netcon-load` sends raw frames (AF_PACKET, `sendmmsg` batches of 64) from H simulated \
         senders with distinct source addresses (`10.91.1.0` + k) to the receiver's MAC and \
         address, UDP port 6666, extended-format records of 200 bytes unless said otherwise; \
         every record carries its sender, sequence number and send time. The receivers: \
         `netcon-sniff --backend xdp` (XDP on the veth, in generic mode: what `--xdp-mode \
         auto` picks there), `netcon-sniff --backend raw`, `tcpdump -w -` (capture only: the \
         AF_PACKET ring written out undecoded, flushed on SIGUSR2 when the bench reads) and \
         `socat -u UDP-RECV:6666 -`, each writing to a file on tmpfs (a pipe read live for \
         latency). The verifier counts every record in the output; a record lost is one \
         missing or incomplete there. Sender and receiver share the machine's {} cores: the sender's \
         core also runs the receive softirq (veth, XDP program). In a virtual machine, the \
         balloon's free page reporting is held off for the run (`--keep-page-reporting` \
         leaves it): with it, the host takes back memory freed by one trial, the next trial's \
         first writes to tmpfs trap to the host to get pages again (~10 µs a 4 KiB page on \
         this project's VM), and a trial's figures would depend on how long the machine sat \
         idle before it.\n",
        m.cores
    );

    md += "## Goals\n\n| goal | measured (median) | met |\n|---|---|---|\n";
    for (goal, measured, met) in goals(r) {
        let _ = writeln!(
            md,
            "| {goal} | {measured} | {} |",
            match met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "—",
            }
        );
    }
    md.push('\n');

    md += "## Decoder alone (criterion, one core)\n\n";
    md += "`cargo bench -p netcon-user --bench decode`: records decoded per second by \
           `netcon::netconsole::Decoder`, no I/O; `reader/` rows are the steps around it on \
           the reader's path, per second: a frame parsed to its UDP datagram, a record written \
           as a text line. Criterion's confidence interval (low / **estimate** / high), not \
           repeats.\n\n| benchmark | per second |\n|---|---|\n";
    for t in &r.criterion {
        let _ = writeln!(
            md,
            "| `{}` | {} / **{}** / {} |",
            t.name,
            Unit::Rate.format(t.low),
            Unit::Rate.format(t.estimate),
            Unit::Rate.format(t.high)
        );
    }
    md.push('\n');

    md += "## Sender ceiling (no receiver)\n\n\
           `netcon-load` flat out with nothing listening: what this machine can offer. Every \
           rate below reads as a fraction of it.\n\n| senders | records/s |\n|---|---|\n";
    for (h, v) in &r.ceiling {
        let row = Row {
            name: String::new(),
            unit: Unit::Rate,
            values: BTreeMap::from([(Rx::Xdp, v.clone())]),
            ratio: false,
        };
        let _ = writeln!(md, "| {h} | {} |", row.cell(Rx::Xdp));
    }
    md.push('\n');

    for s in &r.sections {
        let _ = writeln!(md, "## {}\n\n{}\n", s.title, s.about);
        if s.rows.iter().any(|r| r.values.contains_key(&Rx::XdpNats)) {
            render_nats(s, &mut md);
        } else {
            section_table(s, &mut md);
        }
    }

    md += "## Reading\n\n";
    md += &reading(r);
    md
}

/// One scenario's table (after its title): a column per receiver, then xdp's ratios to the others.
fn section_table(s: &Section, md: &mut String) {
    *md += "| figure |";
    for rx in Rx::ALL {
        let _ = write!(md, " {} |", rx.label());
    }
    *md += " xdp ÷ raw | xdp ÷ tcpdump | xdp ÷ socat |\n|---|---|---|---|---|---|---|---|\n";
    for row in &s.rows {
        let _ = write!(md, "| {} |", row.name.replace("  ", "&nbsp;&nbsp;"));
        for rx in Rx::ALL {
            let _ = write!(md, " {} |", row.cell(rx));
        }
        let _ = writeln!(
            md,
            " {} | {} | {} |",
            row.ratio(Rx::Xdp, Rx::Raw),
            row.ratio(Rx::Xdp, Rx::Tcpdump),
            row.ratio(Rx::Xdp, Rx::Socat)
        );
    }
    md.push('\n');
}

/// The NATS section: netcon xdp without and with forwarding, and their ratio.
fn render_nats(s: &Section, md: &mut String) {
    let _ = writeln!(
        md,
        "| figure | {} | {} | with ÷ without |\n|---|---|---|---|",
        Rx::Xdp.label(),
        Rx::XdpNats.label()
    );
    for row in &s.rows {
        let ratio = match (
            row.name.as_str(),
            row.median(Rx::XdpNats),
            row.median(Rx::Xdp),
        ) {
            ("zero-loss rate", Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
            _ => "—".into(),
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {ratio} |",
            row.name.replace("  ", "&nbsp;&nbsp;"),
            row.cell(Rx::Xdp),
            row.cell(Rx::XdpNats)
        );
    }
    md.push('\n');
}

type Goal = (String, String, Option<bool>);

fn goals(r: &Results) -> Vec<Goal> {
    let mut out: Vec<Goal> = Vec::new();
    for h in super::scenarios::SENDER_COUNTS {
        let prefix = format!("1{}", if h == 1 { "a" } else { "b" });
        let flat = r.median_of(&prefix, "loss flat out", Rx::Xdp);
        let flat_rate = r.median_of(
            &prefix,
            "sender's rate flat out, this receiver running",
            Rx::Xdp,
        );
        let ceiling = r.ceiling.get(&h).and_then(|v| median(v));
        out.push((
            format!(
                "xdp loses < 0.1% flat out, {h} sender{}",
                if h == 1 { "" } else { "s" }
            ),
            format!(
                "{} lost at {} ({} of the ceiling {})",
                fmt_or(flat, Unit::Percent),
                fmt_or(flat_rate, Unit::Rate),
                percent_of(flat_rate, ceiling),
                fmt_or(ceiling, Unit::Rate)
            ),
            flat.map(|l| l < 0.1),
        ));
        let rate = r.row(&prefix, "zero-loss rate");
        let ratio = rate.and_then(|row| Some(row.median(Rx::Xdp)? / row.median(Rx::Socat)?));
        out.push((
            format!(
                "xdp zero-loss rate ≥ 3× socat's, {h} sender{}",
                if h == 1 { "" } else { "s" }
            ),
            ratio.map_or_else(|| "—".into(), |x| format!("{x:.2}×")),
            ratio.map(|x| x >= 3.0),
        ));
    }
    let burst = r.row("2.", "records lost");
    out.push((
        format!(
            "{}-record burst with zero loss (xdp)",
            super::scenarios::BURST
        ),
        format!(
            "{} lost (worst repeat {})",
            fmt_or(burst.and_then(|b| b.median(Rx::Xdp)), Unit::Count),
            fmt_or(burst.and_then(|b| b.max(Rx::Xdp)), Unit::Count)
        ),
        burst.and_then(|b| b.max(Rx::Xdp)).map(|v| v == 0.0),
    ));
    let p99 = r.median_of("3.", "p99", Rx::Xdp);
    out.push((
        "p99 latency < 1 ms (xdp)".into(),
        fmt_or(p99, Unit::Micros),
        p99.map(|v| v < 1000.0),
    ));
    let cost = r.median_of("5.", "non-matching packet (another port)", Rx::Xdp);
    let floor = r.median_of(
        "5.",
        "an empty XDP program (`return XDP_PASS`), for scale",
        Rx::Xdp,
    );
    out.push((
        "XDP cost < 50 ns per non-matching packet".into(),
        format!(
            "{} (an empty program: {})",
            fmt_or(cost, Unit::Nanos),
            fmt_or(floor, Unit::Nanos)
        ),
        cost.map(|v| v < 50.0),
    ));
    fastpath_goals(r, &mut out);
    let rss = r.median_of("6.", "10,000 senders (5 records each)", Rx::Xdp);
    out.push((
        "RSS < 64 MiB with 10,000 senders (xdp)".into(),
        fmt_or(rss, Unit::MiB),
        rss.map(|v| v < 64.0),
    ));
    let nats = r.row("7.", "zero-loss rate");
    let (with, without) = (
        nats.and_then(|row| row.median(Rx::XdpNats)),
        nats.and_then(|row| row.median(Rx::Xdp)),
    );
    let at_goal = r
        .row("7.", "loss at 100k records/s offered")
        .and_then(|row| row.max(Rx::XdpNats));
    out.push((
        "forwarding to NATS JetStream costs capture nothing at 100k records/s".into(),
        format!(
            "loss at 100k/s with forwarding {} (worst repeat); zero-loss rate {} with, {} without",
            fmt_or(at_goal, Unit::Percent),
            fmt_or(with, Unit::Rate),
            fmt_or(without, Unit::Rate)
        ),
        at_goal.map(|v| v < LOSS_LIMIT_PERCENT),
    ));
    out
}

/// The goals of making XDP the fast path: the program's cost per packet, the sender's flat-out
/// rate against raw and tcpdump, the latencies.
fn fastpath_goals(r: &Results, out: &mut Vec<Goal>) {
    let cost = |name: &str| r.median_of("5.", name, Rx::Xdp);
    let paced = r.paced_matching_cost();
    for (what, v) in [
        (format!("{:.0}/s", super::scenarios::COST_RATE), paced),
        ("flat out".into(), cost("matching packet, flat out")),
    ] {
        out.push((
            format!("matching packet ≤ 300 ns in the XDP program, {what}"),
            fmt_or(v, Unit::Nanos),
            v.map(|v| v <= 300.0),
        ));
    }
    let other = cost("non-matching packet (another port)");
    let floor = cost("an empty XDP program (`return XDP_PASS`), for scale");
    out.push((
        "non-matching packet within 15 ns of an empty program".into(),
        match (other, floor) {
            (Some(o), Some(f)) => format!("{} more", Unit::Nanos.format(o - f)),
            _ => "—".into(),
        },
        other.zip(floor).map(|(o, f)| o - f <= 15.0),
    ));
    for pinned in ["unpinned", "pinned"] {
        for h in super::scenarios::SENDER_COUNTS {
            let what = format!("{h} sender{}, {pinned}", if h == 1 { "" } else { "s" });
            let Some(rate) = r.row("1c.", &format!("sender's rate, {what}")) else {
                continue;
            };
            let loss = r
                .row("1c.", &format!("loss, {what}"))
                .and_then(|l| l.max(Rx::Xdp));
            // Against raw, what each delivered: raw's sender goes faster the more raw drops.
            let delivered = r.row("1c.", &format!("records delivered, {what}"));
            let (xdp, tcpdump) = (rate.median(Rx::Xdp), rate.median(Rx::Tcpdump));
            let (xdp_kept, raw_kept) = (
                delivered.and_then(|d| d.median(Rx::Xdp)),
                delivered.and_then(|d| d.median(Rx::Raw)),
            );
            let met = match (xdp, tcpdump, xdp_kept, raw_kept, loss) {
                (Some(x), Some(t), Some(xk), Some(rk), Some(l)) => {
                    Some(xk >= rk && x >= 0.9 * t && l < LOSS_LIMIT_PERCENT)
                }
                _ => None,
            };
            out.push((
                format!(
                    "flat out with xdp: records delivered ≥ raw's, sender's rate ≥ 90% of \
                     tcpdump's, zero loss, {what}"
                ),
                format!(
                    "{} delivered (raw {}); sender's rate {} (tcpdump {}: {}); worst loss {}",
                    fmt_or(xdp_kept, Unit::Rate),
                    fmt_or(raw_kept, Unit::Rate),
                    fmt_or(xdp, Unit::Rate),
                    fmt_or(tcpdump, Unit::Rate),
                    percent_of(xdp, tcpdump),
                    fmt_or(loss, Unit::Percent)
                ),
                met,
            ));
        }
    }
    let p99 = r.median_of("3.", "p99", Rx::Xdp);
    out.push((
        "p99 latency at 10,000 records/s ≤ 2 ms (xdp)".into(),
        fmt_or(p99, Unit::Micros),
        p99.map(|v| v <= 2000.0),
    ));
    let lone = r.row("3b.", "p99");
    let lost = r
        .row("3b.", "records not seen within 3 s")
        .and_then(|row| row.max(Rx::Xdp));
    let lone_p99 = lone.and_then(|row| row.median(Rx::Xdp));
    out.push((
        "a lone record after the silence: p99 < 1 ms (xdp)".into(),
        format!(
            "{}, {} not seen",
            fmt_or(lone_p99, Unit::Micros),
            fmt_or(lost, Unit::Count)
        ),
        lone_p99.map(|v| v < 1000.0 && lost.unwrap_or(0.0) == 0.0),
    ));
}

/// [`super::scenarios::LOSS_LIMIT`] in percent.
const LOSS_LIMIT_PERCENT: f64 = super::scenarios::LOSS_LIMIT * 100.0;

/// A short reading of the figures, from the figures.
fn reading(r: &Results) -> String {
    let mut out = String::new();
    let ceiling1 = r.ceiling.get(&1).and_then(|v| median(v));
    rate_reading(r, &mut out);
    fastpath_reading(r, &mut out);
    if let Some(frag) = r.row("4.", "zero-loss rate") {
        let _ = writeln!(
            out,
            "- **Fragmented records** (4 datagrams each): {} (xdp), {} (raw) against {} \
             (socat, which only writes the fragments out, reassembling nothing). Criterion puts \
             netcon's decoder alone at {} for this shape.",
            fmt_or(frag.median(Rx::Xdp), Unit::Rate),
            fmt_or(frag.median(Rx::Raw), Unit::Rate),
            fmt_or(frag.median(Rx::Socat), Unit::Rate),
            r.criterion
                .iter()
                .find(|t| t.name.contains("fragment"))
                .map_or_else(|| "—".into(), |t| Unit::Rate.format(t.estimate)),
        );
    }
    if let Some(burst) = r.row("2.", "records lost") {
        let _ = writeln!(
            out,
            "- **Burst** of {}: {} lost (xdp), {} (raw), {} (socat, whose socket buffer is the \
             kernel's default `rmem_default`).",
            super::scenarios::BURST,
            fmt_or(burst.median(Rx::Xdp), Unit::Count),
            fmt_or(burst.median(Rx::Raw), Unit::Count),
            fmt_or(burst.median(Rx::Socat), Unit::Count),
        );
    }
    if let (Some(m10k), Some(m100k), Some(frag)) = (
        r.row("6.", "10,000 senders (5 records each)"),
        r.row("6.", "100,000 senders, IPv6 (2 records each)"),
        r.row(
            "6.",
            "10,000 pending 4-fragment records (first fragments only)",
        ),
    ) {
        let _ = writeln!(
            out,
            "- **Memory** (xdp): {} with 10,000 senders, {} with 100,000 (the decoder keeps \
             at most 10,000 and evicts the least recently heard), {} with 10,000 pending \
             fragmented records (at most 256 kept); the raw backend {} / {} / {}.",
            fmt_or(m10k.median(Rx::Xdp), Unit::MiB),
            fmt_or(m100k.median(Rx::Xdp), Unit::MiB),
            fmt_or(frag.median(Rx::Xdp), Unit::MiB),
            fmt_or(m10k.median(Rx::Raw), Unit::MiB),
            fmt_or(m100k.median(Rx::Raw), Unit::MiB),
            fmt_or(frag.median(Rx::Raw), Unit::MiB),
        );
    }
    if let Some(p99) = r.row("3.", "p99") {
        let _ = writeln!(
            out,
            "- **Latency** p99: {} (xdp), {} (raw), {} (socat). socat's figure, one read and \
             one write per datagram, shows what scheduling on this shared 2-core machine adds \
             by itself; the max is scheduling alone.",
            fmt_or(p99.median(Rx::Xdp), Unit::Micros),
            fmt_or(p99.median(Rx::Raw), Unit::Micros),
            fmt_or(p99.median(Rx::Socat), Unit::Micros),
        );
    }
    xdp_reading(r, &mut out);
    if let Some(c) = ceiling1 {
        let _ = writeln!(
            out,
            "- The machine is shared with other work (the load before and after is in the \
             table above); the sender alone reached a median of {} with one sender in this \
             run. Rates move with that load from run to run; the ratios measured in one run \
             are the figures to compare.",
            Unit::Rate.format(c)
        );
    }
    out
}

/// The zero-loss part of the reading.
fn rate_reading(r: &Results, out: &mut String) {
    for (prefix, h) in [("1a", 1), ("1b", 1000)] {
        let Some(rate) = r.row(prefix, "zero-loss rate") else {
            continue;
        };
        let flat = r.row(prefix, "sender's rate flat out, this receiver running");
        let flat_loss = r.row(prefix, "loss flat out");
        let _ = write!(
            out,
            "- **{h} sender{}**: zero-loss at {} (xdp), {} (raw), {} (socat); socat loses {} \
             flat out.",
            if h == 1 { "" } else { "s" },
            fmt_or(rate.median(Rx::Xdp), Unit::Rate),
            fmt_or(rate.median(Rx::Raw), Unit::Rate),
            fmt_or(rate.median(Rx::Socat), Unit::Rate),
            fmt_or(flat_loss.and_then(|f| f.median(Rx::Socat)), Unit::Percent),
        );
        for rx in [Rx::Xdp, Rx::Raw] {
            if flat_loss
                .and_then(|f| f.max(rx))
                .is_some_and(|l| l < LOSS_LIMIT_PERCENT)
            {
                let _ = write!(
                    out,
                    " {} lost nothing even flat out: its figure is what the sender could offer \
                     with it running ({} against {} with no receiver), not a loss limit.",
                    rx.label(),
                    fmt_or(flat.and_then(|f| f.median(rx)), Unit::Rate),
                    fmt_or(r.ceiling.get(&h).and_then(|v| median(v)), Unit::Rate),
                );
            }
        }
        out.push('\n');
    }
    let matching = r.paced_matching_cost();
    let xdp_lossless = ["1a", "1b"].iter().all(|prefix| {
        r.row(prefix, "loss flat out")
            .and_then(|f| f.max(Rx::Xdp))
            .is_some_and(|l| l < LOSS_LIMIT_PERCENT)
    });
    if let Some(m) = matching.filter(|_| xdp_lossless) {
        let _ = writeln!(
            out,
            "- What holds the sender back: the receive path runs in the sender's softirq, on \
             the sender's core (veth delivers on the CPU that transmits). With the XDP program \
             attached every matching packet costs {} there (scenario 5). Before the program \
             runs, generic XDP gives every packet the 256 bytes of headroom that the local \
             stack's packets lack, copying its head (net/core/dev.c, \
             `netif_receive_generic_xdp`): a cost any XDP program pays on veth, and none pays \
             on a NIC's own receive buffers. Native XDP on veth pays more (every packet copied \
             into a page-pool page and passed through NAPI and GRO, drivers/net/veth.c \
             `veth_convert_skb_to_xdp_buff`), which is why `--xdp-mode auto` attaches in \
             generic mode there. netcon-sniff itself is not the limit: it lost nothing.",
            Unit::Nanos.format(m)
        );
    }
}

/// The flat-out, loss-curve and lone-record part of the reading.
fn fastpath_reading(r: &Results, out: &mut String) {
    for pinned in ["unpinned", "pinned"] {
        for h in super::scenarios::SENDER_COUNTS {
            let what = format!("{h} sender{}, {pinned}", if h == 1 { "" } else { "s" });
            let (Some(rate), Some(loss)) = (
                r.row("1c.", &format!("sender's rate, {what}")),
                r.row("1c.", &format!("loss, {what}")),
            ) else {
                continue;
            };
            let _ = write!(out, "- **Flat out, {what}**: the sender reached");
            for rx in Rx::ALL {
                let _ = write!(
                    out,
                    " {} with {} ({} lost){}",
                    fmt_or(rate.median(rx), Unit::Rate),
                    rx.label(),
                    fmt_or(loss.median(rx), Unit::Percent),
                    if rx == Rx::Socat { "." } else { "," }
                );
            }
            out.push('\n');
        }
    }
    if let Some(lone) = r.row("3b.", "p99") {
        let p50 = r.row("3b.", "p50");
        let _ = write!(out, "- **A lone record** after the silence, p50 / p99:");
        for rx in Rx::ALL {
            let _ = write!(
                out,
                " {} / {} ({}){}",
                fmt_or(p50.and_then(|p| p.median(rx)), Unit::Micros),
                fmt_or(lone.median(rx), Unit::Micros),
                rx.label(),
                if rx == Rx::Socat { "." } else { ";" }
            );
        }
        let _ = writeln!(
            out,
            " netcon xdp's reader is parked then, and the program wakes it for the record; \
             tcpdump holds packets until its capture buffer's timeout (1 s, no \
             `--immediate-mode`) and then writes them."
        );
    }
}

/// The XDP cost part of the reading.
fn xdp_reading(r: &Results, out: &mut String) {
    let cost = |name: &str| r.median_of("5.", name, Rx::Xdp);
    if let (Some(other), Some(floor)) = (
        cost("non-matching packet (another port)"),
        cost("an empty XDP program (`return XDP_PASS`), for scale"),
    ) {
        let _ = writeln!(
            out,
            "- **XDP cost**: a non-matching packet costs {} in netcon's program, of which {} is \
             what an empty program costs here (dispatch and the accounting's clock reads in \
             this VM): netcon's own parsing adds {}. A matching packet costs {} at {:.0}/s and \
             {} flat out: parsing, `bpf_xdp_load_bytes` into the per-CPU scratch buffer, and \
             `bpf_ringbuf_output` (an IRQ-saving spinlock, a second copy, the commit); with \
             the program stamping each frame (`--xdp-timestamps kernel`, as `-w` does) {} at \
             {:.0}/s, the clock read (`bpf_ktime_get_ns`, a serialising `rdtsc`) being the \
             dearest single step, so by default netcon-sniff stamps records as it reads them. The \
             reader is woken for {} of the packets at {:.0}/s and {} flat out (the program's \
             own count; the machine-wide IRQ-work interrupts, {} and {}, include other work): \
             records go out with `BPF_RB_NO_WAKEUP` while netcon-sniff drains the ring on its \
             500 µs timer, and only a parked reader or a ring a quarter full is woken.",
            Unit::Nanos.format(other),
            Unit::Nanos.format(floor),
            Unit::Nanos.format(other - floor),
            fmt_or(r.paced_matching_cost(), Unit::Nanos),
            super::scenarios::COST_RATE,
            fmt_or(cost("matching packet, flat out"), Unit::Nanos),
            fmt_or(
                cost(&format!(
                    "matching packet, {:.0}/s, stamped in the program (`--xdp-timestamps \
                     kernel`, as with `-w`)",
                    super::scenarios::COST_RATE
                )),
                Unit::Nanos
            ),
            super::scenarios::COST_RATE,
            fmt_or(nth_row(r, "reader wake-ups per packet", 0), Unit::Ratio),
            super::scenarios::COST_RATE,
            fmt_or(nth_row(r, "reader wake-ups per packet", 1), Unit::Ratio),
            fmt_or(nth_row(r, "IRQ-work interrupts per packet", 0), Unit::Ratio),
            fmt_or(nth_row(r, "IRQ-work interrupts per packet", 1), Unit::Ratio),
        );
    }
}

/// The xdp median of the `n`th row of scenario 5 named `name` (paced first, then flat out).
fn nth_row(r: &Results, name: &str, n: usize) -> Option<f64> {
    r.sections
        .iter()
        .filter(|s| s.title.starts_with("5."))
        .flat_map(|s| &s.rows)
        .filter(|row| row.name.trim() == name)
        .nth(n)
        .and_then(|row| row.median(Rx::Xdp))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_cells() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        let row = Row {
            name: "x".into(),
            unit: Unit::Rate,
            values: BTreeMap::from([
                (Rx::Xdp, vec![300_000.0, 310_000.0, 290_000.0]),
                (Rx::Socat, vec![100_000.0]),
            ]),
            ratio: true,
        };
        assert_eq!(row.cell(Rx::Xdp), "290k/s / **300k/s** / 310k/s");
        assert_eq!(row.cell(Rx::Socat), "100k/s");
        assert_eq!(row.cell(Rx::Raw), "—");
        assert_eq!(row.ratio(Rx::Xdp, Rx::Socat), "3.00×");
        assert_eq!(row.ratio(Rx::Raw, Rx::Socat), "—");
        assert_eq!(row.ratio(Rx::Xdp, Rx::Tcpdump), "—");
        assert_eq!(Unit::Micros.format(12_345.0), "12.3 ms");
        assert_eq!(Unit::Percent.format(0.0), "0%");
    }
}
