//! `cargo xtask bench`: the decoder micro-benchmarks, then netcon-sniff (XDP and raw backends)
//! against the plain-socket baseline (`socat -u UDP-RECV:6666 -`) on the same load in network
//! namespaces, side by side; writes BENCHMARKS.md.
//!
//! The release binaries (netcon-sniff, netcon-load) are built into the target directory in
//! effect (`CARGO_TARGET_DIR`, else `target/`), the one `cargo metadata` reports.

mod calibrate;
mod criterion;
mod page_reporting;
mod plot;
mod procs;
mod report;
mod scenarios;
mod topo;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context as _, Result, ensure};

use procs::Paths;
use report::{Machine, Results, Section};
use scenarios::{Bench, SENDER_COUNTS, Settings};
use topo::Topology;

/// Benchmark netcon against the socket baseline; writes BENCHMARKS.md. Needs root.
///
/// Scenarios: the sender's own ceiling; the zero-loss rate (under 0.1% loss over 10 s) for 1
/// and 1,000 senders; every receiver flat out, unpinned and pinned; loss against offered rate
/// (drawn as SVG beside the report); a 5,000-record start-up burst; latency at 10,000
/// records/s and of a lone record after a silence; 4-fragment records; the XDP program's cost
/// per packet; peak RSS with 10,000 and 100,000 senders and 10,000 pending fragmented records;
/// a victim sender's losses, peak RSS and CPU under a flood of continuation chains and fragment
/// starts from spoofed sources; NATS forwarding. Every figure 3 times (min/median/max).
/// About 55 minutes on 2 cores (3 repeats); --quick (one short repeat) about 2. Release
/// binaries are built into the target directory in effect (`CARGO_TARGET_DIR`, else
/// `target/`).
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Short runs, one repeat: for development, not for figures to keep.
    #[arg(long)]
    quick: bool,
    /// Where to write the report (default: BENCHMARKS.md at the workspace root; with --quick,
    /// target directory's bench-quick.md, so a quick run never replaces the real figures).
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Skip the criterion decoder benchmarks.
    #[arg(long)]
    no_criterion: bool,
    /// Run only these scenarios (comma-separated: ceiling, zero-loss, flat-out, loss-curve,
    /// burst, latency, lone-record, fragmented, xdp-cost, memory, hostile, nats).
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    only: Vec<String>,
    /// Run only these receivers (comma-separated: xdp, raw, tcpdump, socat; default all). Their
    /// columns alone are filled in; for a ratio, keep socat in the list.
    #[arg(long, value_enum, value_delimiter = ',', value_name = "LIST")]
    receivers: Vec<procs::Rx>,
    /// Repeats of every figure (default 3; --quick 1).
    #[arg(long, value_name = "N")]
    repeats: Option<usize>,
    /// Trials of the lone-record latency scenario, per receiver (default 50; --quick 5).
    #[arg(long, value_name = "N")]
    lone_trials: Option<usize>,
    /// Silence before each lone record, seconds (default 10; --quick 1).
    #[arg(long, value_name = "SECONDS")]
    lone_silence: Option<f64>,
    /// Leave the virtio balloon's free page reporting as it is. By default the bench holds it
    /// off for the run and restores it after: in a VM with it, the first write to a page the
    /// host took back traps to the host, so each trial's figures would depend on how long the
    /// machine sat idle before it.
    #[arg(long)]
    keep_page_reporting: bool,
}

const SCENARIOS: [&str; 12] = [
    "ceiling",
    "zero-loss",
    "flat-out",
    "loss-curve",
    "burst",
    "latency",
    "lone-record",
    "fragmented",
    "xdp-cost",
    "memory",
    "hostile",
    "nats",
];

pub fn run(root: &Path, args: &BenchArgs) -> Result<()> {
    ensure!(
        nix::unistd::geteuid().is_root(),
        "cargo xtask bench needs root (network namespaces, XDP, AF_PACKET)"
    );
    for s in &args.only {
        ensure!(
            SCENARIOS.contains(&s.as_str()),
            "unknown scenario {s:?}; known: {}",
            SCENARIOS.join(", ")
        );
    }
    let wanted = |name: &str| args.only.is_empty() || args.only.iter().any(|s| s == name);
    let started = Instant::now();
    crate::apt_install(&["socat", "tcpdump"])?;
    if wanted("nats") {
        crate::apt_install(&["nats-server"])?;
    }
    let target = target_dir(root)?;
    eprintln!(
        "xtask bench: building release binaries into {}",
        target.display()
    );
    crate::cargo(&[
        "build",
        "--release",
        "-p",
        "netcon-user",
        "-p",
        "netcon-bench",
    ])?;
    let release = target.join("release");
    let work = scratch_dir()?;
    let paths = Paths {
        sniff: release.join("netcon-sniff"),
        load: release.join("netcon-load"),
        work: work.path.clone(),
    };
    let mut machine = Machine::probe(root);
    let criterion = if args.no_criterion {
        Vec::new()
    } else {
        criterion::run(root, args.quick)?
    };

    let settings = settings(args)?;
    let repeats = settings.repeats;
    let page_reporting = page_reporting::PageReporting::hold_off(args.keep_page_reporting);
    machine.page_reporting.clone_from(&page_reporting.state);
    let topo = Topology::new()?;
    let mut bench = Bench::new(&topo, &paths, settings);
    let ceiling = if wanted("ceiling") || wanted("zero-loss") || wanted("loss-curve") {
        bench.ceiling()?
    } else {
        BTreeMap::new()
    };
    let (sections, curves) = scenarios(&mut bench, &ceiling, &wanted)?;
    drop(topo);
    drop(page_reporting);

    machine.load_after = report::uptime();
    let results = Results {
        machine,
        flags: std::env::args()
            .skip_while(|a| a != "bench")
            .skip(1)
            .fold(String::new(), |flags, a| flags + " " + &a),
        repeats,
        criterion,
        ceiling,
        sections,
        minutes: started.elapsed().as_secs_f64() / 60.0,
    };
    let out = match &args.out {
        Some(p) => p.clone(),
        None if args.quick => target.join("bench-quick.md"),
        None => root.join("BENCHMARKS.md"),
    };
    if !curves.is_empty() {
        // Beside the report, named as the report links it.
        let svg = out.with_file_name(format!(
            "{}-loss.svg",
            out.file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("BENCHMARKS")
        ));
        plot::loss_curves(&curves, &svg)?;
        eprintln!("xtask bench: wrote {}", svg.display());
    }
    std::fs::write(&out, report::render(&results))
        .with_context(|| format!("writing {}", out.display()))?;
    eprintln!(
        "xtask bench: wrote {} ({:.1} min)",
        out.display(),
        results.minutes
    );
    Ok(())
}

/// The bench's settings: `--quick`'s or the full ones, with the command line's overrides.
fn settings(args: &BenchArgs) -> Result<Settings> {
    let mut settings = Settings::new(args.quick);
    if let Some(n) = args.repeats {
        settings.repeats = n.max(1);
    }
    if let Some(n) = args.lone_trials {
        settings.lone_trials = n.max(1);
    }
    if let Some(secs) = args.lone_silence {
        settings.lone_silence = std::time::Duration::try_from_secs_f64(secs)
            .context("--lone-silence: a number of seconds")?;
    }
    if !args.receivers.is_empty() {
        settings.receivers.clone_from(&args.receivers);
    }
    Ok(settings)
}

/// The scenarios `wanted`, in the order of [`SCENARIOS`] (the report's), and the loss curves if
/// that one is.
fn scenarios(
    bench: &mut Bench<'_>,
    ceiling: &BTreeMap<u32, Vec<f64>>,
    wanted: &dyn Fn(&str) -> bool,
) -> Result<(Vec<Section>, scenarios::Curves)> {
    let mut sections = Vec::new();
    let mut curves = scenarios::Curves::new();
    for name in SCENARIOS.into_iter().filter(|name| wanted(name)) {
        match name {
            "zero-loss" => {
                for (label, h) in [("1a", SENDER_COUNTS[0]), ("1b", SENDER_COUNTS[1])] {
                    let title = format!(
                        "{label}. Zero-loss rate, {h} sender{}, 200-byte records",
                        if h == 1 { "" } else { "s" }
                    );
                    let about = "The highest rate sent with under 0.1% of records lost over the \
                                 confirming run (10 s): flat out first; if that loses, a \
                                 bisection below the flat-out rate with 0.5 s probes, then the \
                                 confirming run (stepping down 15% if it loses). The figure is \
                                 the rate the sender achieved in the confirming run.";
                    let c = ceiling.get(&h).and_then(|v| report::median(v));
                    sections.push(bench.zero_loss_section(&title, about, h, 1, c)?);
                }
            }
            "loss-curve" => {
                let c = ceiling
                    .get(&SENDER_COUNTS[0])
                    .and_then(|v| report::median(v))
                    .context("the loss curve needs the sender's ceiling")?;
                let (section, c) = bench.loss_curve(c)?;
                sections.push(section);
                curves = c;
            }
            "fragmented" => {
                let about = "Records of ~3 KB sent as 4 ncfrag fragments (three full 1000-byte \
                             payloads and a 200-byte one, the header repeated, as drivers/net/\
                             netconsole.c cuts them), one sender; the same search as scenario \
                             1. A record counts only when all four fragments are in the output \
                             (netcon reassembles them into one line; socat writes the four \
                             payloads out).";
                sections.push(bench.zero_loss_section(
                    "4. Fragmented load: 4-fragment records, one sender",
                    about,
                    1,
                    4,
                    None,
                )?);
            }
            "flat-out" => sections.push(bench.flat_out()?),
            "burst" => sections.push(bench.burst()?),
            "latency" => sections.push(bench.latency()?),
            "lone-record" => sections.push(bench.lone_record()?),
            "xdp-cost" => sections.push(bench.xdp_cost()?),
            "memory" => sections.push(bench.memory()?),
            "hostile" => sections.push(bench.hostile()?),
            "nats" => sections.push(bench.nats()?),
            // The ceiling is measured before the others, which need it, and has no section.
            _ => {}
        }
    }
    Ok((sections, curves))
}

/// The target directory cargo uses here (honours `CARGO_TARGET_DIR`).
fn target_dir(root: &Path) -> Result<PathBuf> {
    let out =
        std::process::Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .current_dir(root)
            .args(["metadata", "--format-version", "1", "--no-deps"])
            .output()
            .context("running cargo metadata")?;
    ensure!(out.status.success(), "cargo metadata failed");
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("parsing cargo metadata")?;
    v.get("target_directory")
        .and_then(serde_json::Value::as_str)
        .map(PathBuf::from)
        .context("cargo metadata has no target_directory")
}

/// A directory on tmpfs for receiver output, removed on drop.
struct Scratch {
    path: PathBuf,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

fn scratch_dir() -> Result<Scratch> {
    let base = if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let path = base.join(format!("netcon-bench-{}", std::process::id()));
    std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
    Ok(Scratch { path })
}
