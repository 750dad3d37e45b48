//! `cargo xtask vm-test`: real Debian kernels, booted under qemu, whose netconsole sends to the
//! real `netcon-sniff`, and in which netcon-sniff itself runs (`inguest.rs`: every backend on the
//! guest's NIC, a real capture sent in from outside).
//!
//! For each kernel (bullseye's 5.10, bookworm's 6.1, bookworm-backports' 6.12, unstable's
//! newest) and each netconsole configuration
//! (plain; extended to the collector's MAC, booted twice; extended with the release, 6.12 only;
//! extended to the broadcast MAC and an address nobody owns):
//! 1. a collector network namespace `nct-<pid>-<k>-vm<N>` with a tap `nct<N>`, 10.N.0.1/24
//!    (N from 80 to 83), removed on drop;
//! 2. netcon-sniff on the tap, once per backend (XDP; raw sockets when the binary has
//!    `--backend`), printing the first output (`--format json` by default) and saving a pcap
//!    (`-w`) that is replayed (`-r`) for the other outputs (`--format raw`, read by this test's
//!    own reference decoder): only one XDP program can be attached to an interface;
//! 3. qemu (TCG unless /dev/kvm is real KVM) boots the kernel's uncompressed vmlinux through
//!    PVH, with an initramfs (`initramfs.rs`) whose /init (`vm/init.sh`) brings eth0 up as
//!    10.N.0.10, loads netconsole with the configuration, writes the records (`records.rs`) to
//!    /dev/kmsg and powers off;
//! 4. netcon-sniff is stopped and its output checked (`observe.rs` reads it, `check.rs` says
//!    what must hold).
//!
//! Packages: qemu and friends from the host's apt (installed when missing), kernels with
//! `apt-get download` through a private apt configuration, unpacked under
//! `~/.cache/netcon/vm/`. Everything of the last run (console logs, netcon-sniff output, the
//! records as JSON, a pcap) is kept in `target/vm-test/`.

mod check;
mod crash;
mod guest;
mod host;
mod inguest;
mod initramfs;
mod kernel;
mod netns;
mod observe;
mod records;
mod senderconf;
mod sniff;

use std::{
    env, fs,
    io::Read as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use serde_json::json;

use self::{
    host::Accel,
    kernel::{Kernel, Series},
    netns::Netns,
    sniff::{Backend, Output, Receiver},
};

/// Options of `vm-test`.
#[derive(Debug, clap::Args)]
pub struct VmTestArgs {
    /// Do not fail when qemu or the guest kernels cannot be installed (no Debian archive, no
    /// apt): say SKIPPED loudly and exit 0. Without it, that is a failure.
    #[arg(long)]
    pub skip_if_no_qemu: bool,

    /// Kernel to boot; repeat for several. Default: all.
    #[arg(long = "kernel", value_enum, value_name = "SERIES")]
    pub kernels: Vec<Series>,

    /// netconsole configuration to test; repeat for several. Default: all (those a kernel
    /// supports).
    #[arg(long = "config", value_enum, value_name = "CONFIG")]
    pub configs: Vec<ConfigName>,

    /// Where netcon-sniff runs; repeat for both. `host`: beside the guest, netconsole in the
    /// guest sending to it (every configuration). `guest`: inside the guest, on its NIC, every
    /// backend, with a real capture sent in from outside (`inguest.rs`). Default: both.
    #[arg(long = "sniff-in", value_enum, value_name = "WHERE")]
    pub sniff_in: Vec<SniffIn>,

    /// netcon-sniff output to check; repeat for several. `raw`: datagrams, decoded by this
    /// test's reference decoder. `json`: netcon's decoded records and events. The first runs
    /// live, the others replay its pcap. Default: json then raw (raw alone when netcon-sniff
    /// has no `--format json` or `-w`).
    #[arg(long = "output", value_enum, value_name = "OUTPUT")]
    pub outputs: Vec<Output>,

    /// qemu accelerator. `auto`: KVM when /dev/kvm is Intel's or AMD's KVM, else TCG (a
    /// PVM-backed /dev/kvm hangs stock kernels).
    #[arg(long, value_enum, default_value_t = Accel::Auto)]
    pub accel: Accel,

    /// Seconds after which a guest that has not powered off is killed (and the test fails).
    #[arg(long, default_value_t = 120, value_name = "SECONDS")]
    pub boot_timeout: u64,

    /// Boot the compressed bzImage instead of the uncompressed vmlinux through PVH (about
    /// 6 s slower per boot under TCG).
    #[arg(long)]
    pub bzimage: bool,

    /// Look for newer kernel packages even when kernels are cached.
    #[arg(long)]
    pub refresh_kernels: bool,

    /// The netcon-sniff binary to test (default: `$NETCON_SNIFF`, else the newer of
    /// `target/{debug,release}/netcon-sniff`).
    #[arg(long, value_name = "PATH")]
    pub sniff: Option<std::path::PathBuf>,
}

impl Default for VmTestArgs {
    fn default() -> Self {
        Self {
            skip_if_no_qemu: false,
            kernels: Vec::new(),
            configs: Vec::new(),
            sniff_in: Vec::new(),
            outputs: Vec::new(),
            accel: Accel::Auto,
            boot_timeout: 120,
            bzimage: false,
            refresh_kernels: false,
            sniff: None,
        }
    }
}

/// Where netcon-sniff runs in a case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SniffIn {
    /// In a namespace on the host, on the guest's tap.
    Host,
    /// Inside the guest kernel.
    Guest,
}

/// The netconsole configurations under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ConfigName {
    /// `6665@10.N.0.10/eth0,6666@10.N.0.1/`: plain text, broadcast MAC (none given).
    Plain,
    /// `+6665@.../eth0,6666@10.N.0.1/<collector MAC>`: extended, unicast; booted twice.
    Extended,
    /// `+r6665@...,6666@10.N.0.1/`: extended with the kernel release (6.6 and later).
    ExtendedRelease,
    /// `+6665@...,6666@10.N.0.99/ff:ff:ff:ff:ff:ff`: extended, to an address nobody owns.
    BroadcastUnowned,
    /// `netcon-sniff sender-config` in the guest, for the same segment, a VLAN and a bond, and
    /// netconsole loaded with the line it printed (`senderconf.rs`; 6.1 and newer).
    SenderConfig,
    /// The kernel crashes on purpose after its records (`crash.rs`): 6.1 plain (kernel.panic 1,
    /// then 0), 6.12 extended (-1), unstable configfs with userdata and sysdata (3, then 0).
    Crash,
}

impl ConfigName {
    const ALL: [Self; 4] = [
        Self::Plain,
        Self::Extended,
        Self::ExtendedRelease,
        Self::BroadcastUnowned,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Self::Plain => "plain",
            Self::Extended => "extended",
            Self::ExtendedRelease => "extended-release",
            Self::BroadcastUnowned => "broadcast-unowned",
            Self::Crash => "crash",
            Self::SenderConfig => "sender-config",
        }
    }
}

/// One configuration on one kernel, with its addresses.
struct Case {
    config: ConfigName,
    /// The third octet of 10.N.0.0/24, 80 to 89.
    net: u8,
    /// Boots of the same guest: the second should give a reboot event.
    boots: usize,
}

impl Case {
    fn guest_ip(&self) -> String {
        format!("10.{}.0.10", self.net)
    }
    fn collector_ip(&self) -> String {
        format!("10.{}.0.1", self.net)
    }
    fn guest_mac(&self) -> String {
        format!("52:54:00:{:02}:00:10", self.net)
    }
    fn collector_mac(&self) -> String {
        format!("02:00:00:{:02}:00:01", self.net)
    }
    fn extended(&self) -> bool {
        self.config != ConfigName::Plain
    }
    fn target_ip(&self) -> String {
        match self.config {
            ConfigName::BroadcastUnowned => format!("10.{}.0.99", self.net),
            _ => self.collector_ip(),
        }
    }
    /// netconsole's parameter (`Documentation/networking/netconsole.rst`).
    fn netconsole(&self) -> String {
        let flags = match self.config {
            ConfigName::Plain | ConfigName::Crash | ConfigName::SenderConfig => "",
            ConfigName::Extended | ConfigName::BroadcastUnowned => "+",
            ConfigName::ExtendedRelease => "+r",
        };
        let mac = match self.config {
            ConfigName::Plain
            | ConfigName::ExtendedRelease
            | ConfigName::Crash
            | ConfigName::SenderConfig => String::new(),
            ConfigName::Extended => self.collector_mac(),
            ConfigName::BroadcastUnowned => "ff:ff:ff:ff:ff:ff".to_owned(),
        };
        format!(
            "{flags}6665@{}/eth0,6666@{}/{mac}",
            self.guest_ip(),
            self.target_ip()
        )
    }
}

/// Wait after the last boot for the last datagrams to reach netcon-sniff's output.
const SETTLE: Duration = Duration::from_millis(700);

/// Runs every case, one VM at a time; fails when any case fails (each is reported as it ends).
pub fn run(root: &Path, args: &VmTestArgs) -> Result<()> {
    let started = Instant::now();
    ensure!(
        nix::unistd::geteuid().is_root(),
        "vm-test needs root (network namespaces, tap devices, XDP)"
    );
    let Some((kernels, fetch_time)) = prepare_kernels(args)? else {
        return Ok(());
    };
    let sniff = host::find_sniff(root, args.sniff.as_deref())?;
    let receivers = receivers(&sniff, args)?;
    let (accel, why) = host::resolve_accel(args.accel);
    eprintln!(
        "vm-test: netcon-sniff {}; receivers {}; qemu accel {} ({why})",
        sniff.path.display(),
        receivers
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        if accel == Accel::Kvm { "kvm" } else { "tcg" }
    );
    let work = env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| root.join("target"), PathBuf::from)
        .join("vm-test");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let init = fs::read(root.join("vm/init.sh")).context("reading vm/init.sh")?;

    let mut failures = Vec::new();
    let mut boots = Vec::new();
    let mut passed = 0;
    let wants = |place| args.sniff_in.is_empty() || args.sniff_in.contains(&place);
    if wants(SniffIn::Guest) {
        let env = inguest::Env {
            root,
            sniff: &sniff.path,
            accel,
            boot_timeout: Duration::from_secs(args.boot_timeout),
            bzimage: args.bzimage,
        };
        let (ok, failed, times) = inguest::run_all(&env, &kernels, &work);
        passed += ok;
        failures.extend(failed);
        boots.extend(times);
    }
    let env_of = |kernel, config| {
        env_for(
            root, kernel, config, accel, args, &init, &sniff, &receivers, &work,
        )
    };
    let mut tally = |name: &str, result: Result<Vec<Duration>>| match result {
        Ok(times) => {
            passed += 1;
            boots.extend(times);
        }
        Err(error) => {
            eprintln!("vm-test: {name}: FAILED: {error:#}");
            failures.push(name.to_owned());
        }
    };
    for kernel in kernels.iter().filter(|_| wants(SniffIn::Host)) {
        for (i, &config) in ConfigName::ALL.iter().enumerate() {
            if !(args.configs.is_empty() || args.configs.contains(&config))
                || (config == ConfigName::ExtendedRelease && !kernel.series.has_release_flag())
            {
                continue;
            }
            let case = Case {
                config,
                net: 80 + u8::try_from(i).expect("four configurations"),
                boots: if config == ConfigName::Extended { 2 } else { 1 },
            };
            let env = env_of(kernel, config);
            tally(&env.name, run_case(&env, &case));
        }
        for (config, applies, net, runner) in own_scenarios(kernel.series) {
            if applies && (args.configs.is_empty() || args.configs.contains(&config)) {
                let env = env_of(kernel, config);
                tally(&env.name, runner(&env, net));
            }
        }
    }
    let per_boot = boots.iter().sum::<Duration>() / u32::try_from(boots.len().max(1)).unwrap_or(1);
    eprintln!(
        "vm-test: {passed} passed, {} failed; {} boots (mean {:.1} s), kernels ready in {:.1} s, total {:.1} s; logs in {}",
        failures.len(),
        boots.len(),
        per_boot.as_secs_f64(),
        fetch_time.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        work.display()
    );
    ensure!(
        failures.is_empty(),
        "vm-test failed: {} (details above)",
        failures.join(", ")
    );
    Ok(())
}

/// A scenario that runs its own boots on network 10.N.0.0/24: the boots' durations.
type OwnRunner = fn(&Env<'_>, u8) -> Result<Vec<Duration>>;

/// The scenarios with a runner of their own: (config, whether `series` has it, N of
/// 10.N.0.0/24, the runner).
fn own_scenarios(series: Series) -> [(ConfigName, bool, u8, OwnRunner); 2] {
    let crash_net = 84 + u8::try_from(series as usize).expect("four kernels");
    [
        (
            ConfigName::Crash,
            series.crash_scenario().is_some(),
            crash_net,
            crash::run,
        ),
        (
            ConfigName::SenderConfig,
            series >= Series::V6_1,
            88,
            senderconf::run,
        ),
    ]
}

/// The [`Env`] of `config` on `kernel`, logging under `work/<kernel>-<config>`.
#[expect(clippy::too_many_arguments, reason = "one call site per kind of case")]
fn env_for<'a>(
    root: &'a Path,
    kernel: &'a Kernel,
    config: ConfigName,
    accel: Accel,
    args: &'a VmTestArgs,
    init: &'a [u8],
    sniff: &'a host::Sniff,
    receivers: &'a [Receiver],
    work: &Path,
) -> Env<'a> {
    let name = format!("{} {}", kernel.series.as_str(), config.as_str());
    Env {
        root,
        kernel,
        accel,
        args,
        init,
        sniff,
        receivers,
        dir: work.join(name.replace(' ', "-")),
        name,
    }
}

/// Installs qemu and friends and fetches the kernels; `None` when that failed and
/// `--skip-if-no-qemu` says to skip.
fn prepare_kernels(args: &VmTestArgs) -> Result<Option<(Vec<Kernel>, Duration)>> {
    let skip = |what: &str, error: anyhow::Error| -> Result<Option<_>> {
        if args.skip_if_no_qemu {
            eprintln!(
                "\nvm-test: SKIPPED: {what}: {error:#}\nvm-test: SKIPPED (--skip-if-no-qemu): no real kernel was tested\n"
            );
            Ok(None)
        } else {
            Err(error.context(format!(
                "{what}, so vm-test cannot run (pass --skip-if-no-qemu to skip it on machines without qemu)"
            )))
        }
    };
    if let Err(error) = host::ensure_packages() {
        return skip("qemu cannot be installed", error);
    }
    let started = Instant::now();
    let cache = kernel::Cache::new(crate::cache_dir()?.join("vm"));
    let series = if args.kernels.is_empty() {
        Series::ALL.to_vec()
    } else {
        args.kernels.clone()
    };
    let mut kernels = Vec::new();
    for s in series {
        match cache.kernel(s, args.refresh_kernels) {
            Ok(k) => kernels.push(k),
            Err(error) => return skip("the guest kernels cannot be fetched", error),
        }
    }
    Ok(Some((kernels, started.elapsed())))
}

/// Every backend the binary has, times every output asked for: the first output live, the
/// others replayed from the live receiver's pcap.
fn receivers(sniff: &host::Sniff, args: &VmTestArgs) -> Result<Vec<Receiver>> {
    let outputs = if !args.outputs.is_empty() {
        args.outputs.clone()
    } else if sniff.json && sniff.write_pcap {
        vec![Output::Json, Output::Raw]
    } else {
        vec![Output::Raw]
    };
    ensure!(
        outputs.len() == 1 || sniff.write_pcap,
        "{} cannot save a pcap (-w) to replay for a second output",
        sniff.path.display()
    );
    ensure!(
        sniff.json || !outputs.contains(&Output::Json),
        "{} has no `--format json` yet",
        sniff.path.display()
    );
    let backends: &[Backend] = if sniff.backends {
        &[Backend::Xdp, Backend::Raw]
    } else {
        &[Backend::Xdp]
    };
    Ok(backends
        .iter()
        .flat_map(|&backend| {
            outputs
                .iter()
                .enumerate()
                .map(move |(i, &output)| Receiver {
                    backend,
                    output,
                    replay: i > 0,
                })
        })
        .collect())
}

/// What every case shares.
struct Env<'a> {
    /// The repository (for `vm/*.sh`).
    root: &'a Path,
    kernel: &'a Kernel,
    accel: Accel,
    args: &'a VmTestArgs,
    init: &'a [u8],
    sniff: &'a host::Sniff,
    receivers: &'a [Receiver],
    dir: PathBuf,
    /// `6.1 plain`.
    name: String,
}

/// Boots `case` on `env.kernel` and checks every receiver; the boots' durations.
fn run_case(env: &Env<'_>, case: &Case) -> Result<Vec<Duration>> {
    fs::create_dir_all(&env.dir)?;
    // Dropped last: the receivers and qemu end before the namespace goes.
    let ns = Netns::create(case.net, &case.collector_mac(), &case.collector_ip())?;
    let pcap = |r: &Receiver| env.dir.join(format!("{}.pcap", r.backend.as_str()));
    let mut running = Vec::new();
    for receiver in env.receivers.iter().filter(|r| !r.replay) {
        running.push(sniff::start(
            env.sniff,
            &ns,
            *receiver,
            Some(&pcap(receiver)),
        )?);
    }
    let mut boots = Vec::new();
    let mut times = Vec::new();
    for b in 1..=case.boots {
        let (records, elapsed) = boot(env, case, &ns, b)?;
        times.push(elapsed);
        boots.push(records);
    }
    thread::sleep(SETTLE);
    let expectation = check::Expectation {
        extended: case.extended(),
        release: (case.config == ConfigName::ExtendedRelease)
            .then_some(env.kernel.release.as_str()),
        sender: format!("{}:6665", case.guest_ip()),
        destination: format!("{}:6666", case.target_ip()),
        boots,
    };
    let mut captures = Vec::new();
    for r in running {
        captures.push(r.stop(&env.dir)?);
    }
    for receiver in env.receivers.iter().filter(|r| r.replay) {
        captures.push(sniff::replay(
            env.sniff,
            *receiver,
            &pcap(receiver),
            &env.dir,
        )?);
    }
    let mut failed = Vec::new();
    for captured in captures {
        if let Err(error) = check_receiver(env, &captured, &expectation) {
            failed.push(format!(
                "{} ({}):\n{error}\nnetcon-sniff stderr:\n{}",
                captured.receiver,
                captured.stdout_path.display(),
                captured.stderr.trim()
            ));
        }
    }
    ensure!(failed.is_empty(), "{}", failed.join("\n"));
    Ok(times)
}

/// Boot `b` of `case`: its records (the guest wrote them all) and how long it ran.
fn boot(
    env: &Env<'_>,
    case: &Case,
    ns: &Netns,
    b: usize,
) -> Result<(check::BootRecords, Duration)> {
    let prepared = prepare_boot(env, case, b)?;
    let outcome = guest::run(ns, &prepared.boot(env, prepared.init_env(case)))
        .with_context(|| format!("boot {b}"))?;
    prepared.write_expected(
        env,
        &json!({
            "kernel": env.kernel.release,
            "config": case.config.as_str(),
            "netconsole": case.netconsole(),
            "rejected": outcome.rejected,
        }),
    )?;
    let PreparedBoot { runid, records, .. } = prepared;
    ensure!(
        outcome.rejected.is_empty(),
        "boot {b}: /dev/kmsg refused records {}",
        outcome.rejected.join(" ")
    );
    ensure!(
        outcome.written == records.len(),
        "boot {b}: the guest wrote {} records of {}",
        outcome.written,
        records.len()
    );
    eprintln!(
        "vm-test: {}: boot {b} (run {runid}) powered off after {:.1} s",
        env.name,
        outcome.elapsed.as_secs_f64()
    );
    Ok((check::BootRecords { runid, records }, outcome.elapsed))
}

/// Boot `b` of `case`, ready to start: a new run id, its records, and how the guest boots.
struct PreparedBoot {
    b: usize,
    runid: String,
    records: Vec<records::Record>,
    /// `boot<b>.cpio`, with the records.
    initramfs: PathBuf,
    image: PathBuf,
    guest_mac: String,
    /// `boot<b>.console`.
    console: PathBuf,
}

fn prepare_boot(env: &Env<'_>, case: &Case, b: usize) -> Result<PreparedBoot> {
    let runid = runid()?;
    let records = records::records(&runid);
    let initramfs = env.dir.join(format!("boot{b}.cpio"));
    initramfs::build(env.kernel, env.init, &records, &initramfs)?;
    Ok(PreparedBoot {
        b,
        runid,
        records,
        initramfs,
        image: env.image(),
        guest_mac: case.guest_mac(),
        console: env.dir.join(format!("boot{b}.console")),
    })
}

impl PreparedBoot {
    /// The parameters every boot of `case` gives /init: the guest's address, netconsole's
    /// line and the run id.
    fn init_env(&self, case: &Case) -> Vec<(&'static str, String)> {
        vec![
            ("nct_ip", case.guest_ip()),
            ("nct_nc", case.netconsole()),
            ("nct_run", self.runid.clone()),
        ]
    }

    /// The guest's boot, with `init_env` for /init.
    fn boot(&self, env: &Env<'_>, init_env: Vec<(&'static str, String)>) -> guest::Boot<'_> {
        guest::Boot {
            image: &self.image,
            initramfs: &self.initramfs,
            mac: &self.guest_mac,
            init_env,
            accel: env.accel,
            timeout: Duration::from_secs(env.args.boot_timeout),
            console: self.console.clone(),
        }
    }

    /// Writes `boot<b>.expected.json`: the records this boot writes, and `meta` describing it.
    fn write_expected(&self, env: &Env<'_>, meta: &serde_json::Value) -> Result<()> {
        let path = env.dir.join(format!("boot{}.expected.json", self.b));
        let json = records::expected_json(&self.runid, &self.records, meta);
        fs::write(&path, serde_json::to_string_pretty(&json)?)
            .with_context(|| format!("writing {}", path.display()))
    }
}

impl Env<'_> {
    /// The kernel image to boot: the uncompressed vmlinux unless `--bzimage` (or none was
    /// extracted).
    fn image(&self) -> PathBuf {
        let image = self.kernel.vmlinux();
        if self.args.bzimage || !image.is_file() {
            self.kernel.bzimage()
        } else {
            image
        }
    }
}

/// Reads one receiver's output and checks it; `Err` lists the failures.
fn check_receiver(
    env: &Env<'_>,
    captured: &sniff::Captured,
    expectation: &check::Expectation<'_>,
) -> Result<(), String> {
    let observed = match captured.receiver.output {
        Output::Raw => observe::from_raw(&captured.stdout),
        Output::Json => observe::from_json(&captured.stdout),
    }
    .map_err(|e| format!("{e:#}"))?;
    let report = check::check(&observed, expectation)?;
    eprintln!(
        "vm-test: {}: {}: ok: {} datagrams, {} records, {} of the guest's matched, {} fragmented, seq {}, {} reboot events",
        env.name,
        captured.receiver,
        report.datagrams,
        report.records,
        report.matched,
        report.fragmented,
        report.seq_summary(),
        report.reboot_events
    );
    Ok(())
}

/// Six hex digits from /dev/urandom: tells the records of each boot apart.
fn runid() -> Result<String> {
    let mut bytes = [0u8; 3];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom")?;
    Ok(format!("{:02x}{:02x}{:02x}", bytes[0], bytes[1], bytes[2]))
}

/// Runs `command`, its output captured; an error quotes its stderr.
fn cmd_status(command: &mut Command) -> Result<()> {
    cmd_output(command).map(drop)
}

/// Runs `command` and returns its stdout; an error quotes its stderr.
fn cmd_output(command: &mut Command) -> Result<String> {
    let out = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("starting {command:?}"))?;
    ensure!(
        out.status.success(),
        "{command:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
