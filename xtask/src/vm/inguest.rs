//! netcon-sniff run **inside** each guest kernel, on the guest's NIC, the way a user of that
//! kernel would run it, with every backend:
//!
//! 1. the initramfs holds netcon-sniff (debug info stripped), its shared libraries and loader
//!    (from `ldd`), a passwd with `nobody`, and one file per scenario; `/init` is
//!    `vm/sniff-init.sh`;
//! 2. for each scenario the guest starts netcon-sniff on eth0 and says `NCT-SNIFF-READY` on the
//!    console once it listens (or `NCT-SNIFF-EXITED` when it gave up);
//! 3. from the host side of the guest's tap, this test sends a real kernel capture
//!    (`netcon-user/tests/data/ext.pcap`, extended netconsole with fragments) and then a
//!    sentinel datagram from another sender; the guest stops netcon-sniff (SIGTERM) once the
//!    sentinel is in its output, so everything before it was printed;
//! 4. the guest copies each scenario's stdout, stderr and exit status to a virtio serial port
//!    (a file on the host), and powers off;
//! 5. each scenario is checked: the records of the capture whole (`check.rs`, on netcon's JSON
//!    output), the exit status, the first stderr line (fallback notice, refusal), stderr within
//!    a few lines, and for `--user nobody --stats 1` periodic stats until the end.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use netcon_testkit::{FrameSender, PcapFile, Stats};
use nix::sys::signal::Signal;
use serde_json::Value;

use super::{
    check, cmd_output, guest,
    host::Accel,
    initramfs,
    kernel::{Kernel, Series},
    netns::Netns,
    observe,
    records::{Kind, Record},
};

/// The capture sent into the guests, and the records its sender wrote.
const CAPTURE: &str = "netcon-user/tests/data/ext.pcap";
const CAPTURE_EXPECTED: &str = "netcon-user/tests/data/ext.expected.json";
/// The capture's addresses: sender 10.77.0.10:6665, target 10.77.0.1:6666 (broadcast MAC). The
/// collector namespace uses the same /24, so nothing else on the host is touched.
const NET: u8 = 77;
/// The sentinel's sender, which no record of the capture comes from.
const SENTINEL_SENDER: [u8; 4] = [10, 77, 0, 99];
/// Time between two frames sent into the guest: a TCG guest runs the program and netcon-sniff
/// far slower than the host sends, and the tap queue is finite. Unit: time; 400 µs.
const FRAME_INTERVAL: Duration = Duration::from_micros(400);
/// Modules the guest loads: the NIC and the virtio port the results go out on (built into
/// some kernels, then skipped).
const MODULES: &[&str] = &["virtio_pci", "virtio_net", "virtio_console"];
/// stderr may have this many lines besides the counters (`--stats-format json`: the periodic
/// stats and the exit summary): a notice or two, `listening on`, a warning.
const MAX_STDERR_LINES: usize = 6;
/// No stderr line other than the counters may be longer: a verifier log or a wrapped error
/// must not end up there.
const MAX_STDERR_LINE: usize = 300;
/// How long one scenario may take in the guest, on top of the boot (TCG).
const PER_SCENARIO: Duration = Duration::from_secs(90);

/// One run of netcon-sniff in the guest.
#[derive(Debug, Clone)]
struct Scenario {
    /// `auto`, `xdp`, `raw`, `xdp-nobody-stats`.
    name: &'static str,
    /// netcon-sniff's arguments after `-i eth0 -p 6666 --format json --stats-format json`.
    args: &'static str,
    expect: Expect,
}

#[derive(Debug, Clone, Copy)]
enum Expect {
    /// Every record of the capture arrives whole, through `backend` (`xdp`, `raw`); with
    /// `fallback`, stderr starts with the one-line notice that XDP is unavailable.
    Captures {
        backend: &'static str,
        fallback: bool,
        stats: bool,
    },
    /// Exit 2 with one line on stderr that contains this.
    Refuses(&'static str),
}

/// The scenarios for a kernel: every backend; `--user nobody --stats 1` with XDP on 6.1 (whose
/// bpf(2) refuses an unprivileged process any map access) and on the newest kernel.
fn scenarios(series: Series) -> Vec<Scenario> {
    let xdp_loads = series >= Series::V6_1;
    let mut list = vec![
        Scenario {
            name: "auto",
            args: "--backend auto",
            expect: Expect::Captures {
                backend: if xdp_loads { "xdp" } else { "raw" },
                fallback: !xdp_loads,
                stats: false,
            },
        },
        Scenario {
            name: "xdp",
            args: "--backend xdp",
            expect: if xdp_loads {
                Expect::Captures {
                    backend: "xdp",
                    fallback: false,
                    stats: false,
                }
            } else {
                Expect::Refuses("too old for the XDP backend")
            },
        },
        Scenario {
            name: "raw",
            args: "--backend raw",
            expect: Expect::Captures {
                backend: "raw",
                fallback: false,
                stats: false,
            },
        },
    ];
    if matches!(series, Series::V6_1 | Series::Unstable) {
        list.push(Scenario {
            name: "xdp-nobody-stats",
            args: "--backend xdp --user nobody --stats 1",
            expect: Expect::Captures {
                backend: "xdp",
                fallback: false,
                stats: true,
            },
        });
    }
    list
}

/// What a scenario did, for the summary.
pub struct Outcome {
    pub name: String,
    pub first_stderr_line: String,
    /// From `NCT-SNIFF-START` to `NCT-SNIFF-STOPPED` on the console.
    pub elapsed: Duration,
    pub result: Result<String, String>,
}

/// What every kernel shares.
pub struct Env<'a> {
    pub root: &'a Path,
    pub sniff: &'a Path,
    pub accel: Accel,
    pub boot_timeout: Duration,
    pub bzimage: bool,
}

/// Runs the in-guest scenarios on every kernel, reporting each as it ends; (passed, failed
/// case names, boot durations).
pub fn run_all(
    env: &Env<'_>,
    kernels: &[Kernel],
    work: &Path,
) -> (usize, Vec<String>, Vec<Duration>) {
    let (mut passed, mut failures, mut boots) = (0, Vec::new(), Vec::new());
    for kernel in kernels {
        let name = format!("{} in-guest", kernel.series.as_str());
        let dir = work.join(name.replace(' ', "-"));
        match run(env, kernel, &dir) {
            Ok((outcomes, elapsed)) => {
                boots.push(elapsed);
                eprintln!(
                    "vm-test: {name}: {} ({}) powered off after {:.1} s",
                    kernel.release,
                    if env.accel == Accel::Kvm {
                        "kvm"
                    } else {
                        "tcg"
                    },
                    elapsed.as_secs_f64()
                );
                for outcome in outcomes {
                    let case = format!("{name} {}", outcome.name);
                    match outcome.result {
                        Ok(summary) => {
                            passed += 1;
                            eprintln!(
                                "vm-test: {case}: ok in {:.1} s: {summary}; first stderr line: {}",
                                outcome.elapsed.as_secs_f64(),
                                outcome.first_stderr_line
                            );
                        }
                        Err(error) => {
                            eprintln!("vm-test: {case}: FAILED: {error}");
                            failures.push(case);
                        }
                    }
                }
            }
            Err(error) => {
                eprintln!("vm-test: {name}: FAILED: {error:#}");
                failures.push(name);
            }
        }
    }
    (passed, failures, boots)
}

/// Boots `kernel` once and runs every scenario in it; the outcome of each and the boot's
/// duration. `Err` when the guest could not be run at all.
fn run(env: &Env<'_>, kernel: &Kernel, dir: &Path) -> Result<(Vec<Outcome>, Duration)> {
    fs::create_dir_all(dir)?;
    let scenarios = scenarios(kernel.series);
    let capture = PcapFile::parse(
        &fs::read(env.root.join(CAPTURE)).with_context(|| format!("reading {CAPTURE}"))?,
    )
    .map_err(|e| anyhow::anyhow!("{CAPTURE}: {e}"))?;
    let (runid, records) = expected_records(&env.root.join(CAPTURE_EXPECTED))?;
    let initramfs = build_initramfs(env, kernel, &scenarios, dir)?;

    let ns = Netns::create(NET, "02:00:00:77:00:01", &format!("10.{NET}.0.1"))?;
    let console = dir.join("boot.console");
    let port = dir.join("port.out");
    let image = if env.bzimage || !kernel.vmlinux().is_file() {
        kernel.bzimage()
    } else {
        kernel.vmlinux()
    };
    let boot = guest::Boot {
        image: &image,
        initramfs: &initramfs,
        mac: "52:54:00:77:00:10",
        init_env: Vec::new(),
        accel: env.accel,
        timeout: env.boot_timeout + PER_SCENARIO * u32::try_from(scenarios.len()).unwrap_or(4),
        console: console.clone(),
    };
    let (timings, elapsed) = boot_and_send(&ns, &boot, &port, &capture)?;
    let console_text = String::from_utf8_lossy(&fs::read(&console)?).into_owned();
    ensure!(
        console_text.lines().any(|l| l.trim_end() == "NCT-DONE"),
        "the guest powered off before its /init finished (console: {})\n{}",
        console.display(),
        guest::tail(&console)
    );
    let results =
        read_port(&fs::read(&port).with_context(|| format!("reading {}", port.display()))?)?;

    let expectation = check::Expectation {
        extended: true,
        release: None,
        sender: format!("10.{NET}.0.10:6665"),
        destination: format!("10.{NET}.0.1:6666"),
        boots: vec![check::BootRecords { runid, records }],
    };
    let mut outcomes = Vec::new();
    for (i, scenario) in scenarios.iter().enumerate() {
        let nn = format!("{i:02}");
        let files = results.get(&nn);
        let text = |kind: &str| {
            files
                .and_then(|f| f.get(kind))
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default()
        };
        let (stdout, stderr) = (text("out"), text("err"));
        let _ = fs::write(dir.join(format!("{}.out", scenario.name)), &stdout);
        let _ = fs::write(dir.join(format!("{}.err", scenario.name)), &stderr);
        let run = Run {
            rc: text("rc").trim().parse().ok(),
            stdout: &stdout,
            stderr: &stderr,
            console: &console_text,
            nn: &nn,
        };
        let result = match files {
            None => Err("the guest reported nothing for it".to_owned()),
            Some(_) => evaluate(scenario, &run, &expectation),
        };
        outcomes.push(Outcome {
            name: scenario.name.to_owned(),
            first_stderr_line: stderr.lines().next().unwrap_or_default().to_owned(),
            elapsed: timings.get(&nn).copied().unwrap_or_default(),
            result,
        });
    }
    Ok((outcomes, elapsed))
}

/// The initramfs: netcon-sniff and what it needs, one file per scenario.
fn build_initramfs(
    env: &Env<'_>,
    kernel: &Kernel,
    scenarios: &[Scenario],
    dir: &Path,
) -> Result<PathBuf> {
    let initramfs = dir.join("boot.cpio");
    let init = fs::read(env.root.join("vm/sniff-init.sh")).context("reading vm/sniff-init.sh")?;
    let mut files = sniff_files(env.sniff, dir)?;
    for (i, s) in scenarios.iter().enumerate() {
        files.push(initramfs::File {
            path: format!("scenarios/{i:02}"),
            mode: 0o644,
            bytes: format!(
                "{} -i eth0 -p 6666 --format json --stats-format json {}\n",
                s.name, s.args
            )
            .into_bytes(),
        });
    }
    initramfs::build_with(kernel, &init, MODULES, &files, &initramfs)?;
    Ok(initramfs)
}

/// Boots the guest with its results port on `port`, follows its console and sends the capture
/// into its NIC whenever a scenario listens, until it powers off (bounded by the boot's
/// timeout). How long each scenario took, by number, and how long the guest ran.
fn boot_and_send(
    ns: &Netns,
    boot: &guest::Boot<'_>,
    port: &Path,
    capture: &PcapFile,
) -> Result<(BTreeMap<String, Duration>, Duration)> {
    let extra = [
        "-device".to_owned(),
        "virtio-serial-pci".to_owned(),
        "-chardev".to_owned(),
        format!("file,id=nctout,path={}", port.display()),
        "-device".to_owned(),
        "virtserialport,chardev=nctout,name=netcon.out".to_owned(),
    ];
    let console = &boot.console;
    let (mut qemu, started) = guest::spawn(ns, boot, &extra)?;
    let mut sender = FrameSender::try_open(ns.netns(), &ns.tap)?;
    let mut seen_lines = 0;
    let mut starts: BTreeMap<String, Instant> = BTreeMap::new();
    let mut timings = BTreeMap::new();
    let status = loop {
        // Looked at before the console is read: once qemu has exited, its last lines are in.
        let exited = qemu.try_wait()?;
        if exited.is_none() && started.elapsed() > boot.timeout {
            qemu.stop(Signal::SIGKILL, Duration::from_secs(5))?;
            bail!(
                "the guest did not power off within {:?}: killed (console: {})\n{}",
                boot.timeout,
                console.display(),
                guest::tail(console)
            );
        }
        let text = String::from_utf8_lossy(&fs::read(console).unwrap_or_default()).into_owned();
        // Only whole lines: the last one may still be being written.
        let lines: Vec<&str> = text
            .split_inclusive('\n')
            .filter(|l| l.ends_with('\n'))
            .collect();
        for line in &lines[seen_lines.min(lines.len())..] {
            let (tag, nn) = line.trim_end().split_once(' ').unwrap_or_default();
            let nn = nn.split_whitespace().next().unwrap_or_default();
            match tag {
                "NCT-SNIFF-START" => {
                    starts.insert(nn.to_owned(), Instant::now());
                }
                "NCT-SNIFF-READY" => send_capture(&mut sender, capture, nn)?,
                "NCT-SNIFF-STOPPED" => {
                    if let Some(start) = starts.get(nn) {
                        timings.insert(nn.to_owned(), start.elapsed());
                    }
                }
                "NCT-FAIL" => bail!(
                    "the guest's /init failed: {} (console: {})",
                    line.trim_end(),
                    console.display()
                ),
                _ => {}
            }
        }
        seen_lines = lines.len();
        if let Some(status) = exited {
            break status;
        }
        thread::sleep(Duration::from_millis(50));
    };
    ensure!(
        status.success(),
        "qemu failed ({status}): {}\n{}",
        fs::read_to_string(console.with_extension("qemu.log"))
            .unwrap_or_default()
            .trim(),
        guest::tail(console)
    );
    Ok((timings, started.elapsed()))
}

/// Sends every frame of `capture`, paced, then the sentinel of scenario `nn`.
fn send_capture(sender: &mut FrameSender, capture: &PcapFile, nn: &str) -> Result<()> {
    let start = Instant::now();
    let mut due = start;
    for record in &capture.records {
        let now = Instant::now();
        if due > now {
            thread::sleep(due - now);
        }
        sender
            .try_send(&record.data)
            .context("sending a frame into the guest")?;
        due += FRAME_INTERVAL;
    }
    sender
        .try_send(&sentinel(nn)?)
        .context("sending the sentinel into the guest")?;
    Ok(())
}

/// A plain netconsole datagram `NCT-SENTINEL-<nn>` from [`SENTINEL_SENDER`] to the capture's
/// target, to the broadcast MAC as netconsole sends by default.
fn sentinel(nn: &str) -> Result<Vec<u8>> {
    let payload = format!("NCT-SENTINEL-{nn}\n");
    let builder = etherparse::PacketBuilder::ethernet2([0x52, 0x54, 0, NET, 0, 0x99], [0xff; 6])
        .ipv4(SENTINEL_SENDER, [10, NET, 0, 1], 64)
        .udp(6665, 6666);
    let mut frame = Vec::with_capacity(builder.size(payload.len()));
    builder
        .write(&mut frame, payload.as_bytes())
        .context("building the sentinel frame")?;
    Ok(frame)
}

/// What one scenario left behind.
struct Run<'a> {
    rc: Option<i32>,
    stdout: &'a str,
    stderr: &'a str,
    console: &'a str,
    /// Its number, `00`.
    nn: &'a str,
}

/// Checks one scenario; `Ok` says what passed.
fn evaluate(
    scenario: &Scenario,
    run: &Run<'_>,
    expectation: &check::Expectation<'_>,
) -> Result<String, String> {
    let lines: Vec<&str> = run.stderr.lines().collect();
    let is_stats = |l: &str| Stats::from_line(l).is_some();
    let other = lines.iter().filter(|l| !is_stats(l)).count();
    let mut failures = Vec::new();
    if other > MAX_STDERR_LINES {
        failures.push(format!(
            "{other} stderr lines (besides stats), at most {MAX_STDERR_LINES} expected"
        ));
    }
    if let Some(long) = lines
        .iter()
        .find(|l| !is_stats(l) && l.len() > MAX_STDERR_LINE)
    {
        failures.push(format!(
            "a {}-character stderr line: {}...",
            long.len(),
            &long[..long.floor_char_boundary(120)]
        ));
    }
    for marker in ["NO-SENTINEL", "KILLED"] {
        let line = format!("NCT-SNIFF-{marker} {}", run.nn);
        if run.console.lines().any(|l| l.trim_end() == line) {
            failures.push(format!("the guest says {line}"));
        }
    }
    let summary = match scenario.expect {
        Expect::Refuses(says) => {
            if run.rc != Some(2) {
                failures.push(format!("exit status {:?}, expected 2", run.rc));
            }
            if lines.len() != 1 || !lines[0].contains(says) {
                failures.push(format!("stderr is not one line saying `{says}`"));
            }
            "refused in one line".to_owned()
        }
        Expect::Captures {
            backend,
            fallback,
            stats,
        } => check_captured(run, &lines, (backend, fallback, stats), expectation).unwrap_or_else(
            |e| {
                failures.extend(e);
                String::new()
            },
        ),
    };
    if failures.is_empty() {
        Ok(summary)
    } else {
        let mut text = failures.join("\n");
        let _ = write!(text, "\nnetcon-sniff stderr:\n{}", run.stderr.trim_end());
        Err(text)
    }
}

/// The checks of a scenario that must capture: exit 0, the backend it listens with, the
/// fallback notice exactly where expected, periodic stats, every record of the capture whole.
fn check_captured(
    run: &Run<'_>,
    lines: &[&str],
    (backend, fallback, stats): (&str, bool, bool),
    expectation: &check::Expectation<'_>,
) -> Result<String, Vec<String>> {
    const NOTICE: &str = "netcon-sniff: XDP unavailable: ";
    let mut failures = Vec::new();
    if run.rc != Some(0) {
        failures.push(format!("exit status {:?}, expected 0", run.rc));
    }
    let listening = format!("listening on eth0 ({backend}");
    if !lines.iter().any(|l| l.starts_with(&listening)) {
        failures.push(format!("no `{listening}...` on stderr"));
    }
    let notices = lines.iter().filter(|l| l.starts_with(NOTICE)).count();
    if fallback && !(notices == 1 && lines.first().is_some_and(|l| l.starts_with(NOTICE))) {
        failures.push(format!("stderr does not start with one `{NOTICE}...` line"));
    }
    if !fallback && notices > 0 {
        failures.push(format!("`{NOTICE}...` where XDP should load"));
    }
    let stats_lines = Stats::all(lines.iter().copied()).len();
    // `--stats 1` for 2.5 s or more after the capture, plus the summary at exit.
    if stats && stats_lines < 3 {
        failures.push(format!(
            "{stats_lines} stats lines: periodic stats stopped (or never came)"
        ));
    }
    let sentinel_sender = format!("\"{}:6665\"", std::net::Ipv4Addr::from(SENTINEL_SENDER));
    let observed = run
        .stdout
        .lines()
        .filter(|l| !l.contains(&sentinel_sender))
        .collect::<Vec<_>>()
        .join("\n");
    let report = observe::from_json(&observed)
        .map_err(|e| format!("{e:#}"))
        .and_then(|o| check::check(&o, expectation));
    match report {
        Ok(report) if failures.is_empty() => Ok(format!(
            "{} records, {} of the sender's matched, {} fragmented, seq {}, {stats_lines} stats lines",
            report.records,
            report.matched,
            report.fragmented,
            report.seq_summary()
        )),
        Ok(_) => Err(failures),
        Err(e) => {
            failures.push(e);
            Err(failures)
        }
    }
}

/// The records of `<capture>.expected.json` (`netcon-user/tests/data/README.md`) that the
/// sender's kernel took (`/dev/kmsg` refused `LONG3K`: `"rejected"`), and its run id.
fn expected_records(path: &Path) -> Result<(String, Vec<Record>)> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let v: Value = serde_json::from_str(&text).with_context(|| format!("{}", path.display()))?;
    let runid = v["runid"].as_str().context("no runid")?.to_owned();
    let records = v["records"]
        .as_array()
        .context("no records")?
        .iter()
        .filter(|r| r.get("rejected").is_none())
        .map(|r| {
            let hex = r["text_hex"].as_str().context("no text_hex")?;
            let text = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(hex.get(i..i + 2).unwrap_or("zz"), 16))
                .collect::<Result<Vec<u8>, _>>()
                .context("bad text_hex")?;
            Ok(Record {
                name: r["name"].as_str().context("no name")?.to_owned(),
                prio: u8::try_from(r["prio"].as_u64().context("no prio")?)?,
                kind: match r["kind"].as_str() {
                    Some("burst") => Kind::Burst,
                    Some("long") => Kind::Long,
                    _ => Kind::Marker,
                },
                text,
            })
        })
        .collect::<Result<_>>()?;
    Ok((runid, records))
}

/// netcon-sniff without its debug info, and every shared library `ldd` names, at the paths the
/// binary asks for them.
pub(super) fn sniff_files(sniff: &Path, dir: &Path) -> Result<Vec<initramfs::File>> {
    let stripped = dir.join("netcon-sniff");
    let strip = Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(&stripped)
        .arg(sniff)
        .status();
    if !strip.is_ok_and(|s| s.success()) {
        fs::copy(sniff, &stripped).with_context(|| format!("copying {}", sniff.display()))?;
    }
    let mut files = vec![initramfs::File {
        path: "bin/netcon-sniff".to_owned(),
        mode: 0o755,
        bytes: fs::read(&stripped)?,
    }];
    let ldd = cmd_output(Command::new("ldd").arg(sniff))?;
    // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)`, `/lib64/ld-linux-x86-64.so.2 (0x...)`
    let mut paths: Vec<PathBuf> = ldd
        .lines()
        .filter_map(|line| {
            let path = line.split("=>").last()?.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect();
    // glibc looks users up through NSS (`--user`); from 2.34 on `files` is inside libc, before
    // that a module of its own.
    if let Some(libc) = paths.iter().find(|p| p.ends_with("libc.so.6")).cloned() {
        let nss = libc.with_file_name("libnss_files.so.2");
        if nss.is_file() {
            paths.push(nss);
        }
    }
    ensure!(
        !paths.is_empty(),
        "ldd {} named no libraries",
        sniff.display()
    );
    for path in paths {
        files.push(initramfs::File {
            path: path
                .to_str()
                .context("library path")?
                .trim_start_matches('/')
                .to_owned(),
            mode: 0o755,
            bytes: fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
        });
    }
    for (path, text) in [
        (
            "etc/passwd",
            "root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        ),
        ("etc/group", "root:x:0:\nnogroup:x:65534:\n"),
        ("etc/nsswitch.conf", "passwd: files\ngroup: files\n"),
    ] {
        files.push(initramfs::File {
            path: path.to_owned(),
            mode: 0o644,
            bytes: text.as_bytes().to_vec(),
        });
    }
    Ok(files)
}

/// The port's contents: `NCT-FILE <nn> <kind> <bytes>\n` then the bytes, for each file.
fn read_port(bytes: &[u8]) -> Result<BTreeMap<String, BTreeMap<String, Vec<u8>>>> {
    let mut out: BTreeMap<String, BTreeMap<String, Vec<u8>>> = BTreeMap::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .context("a header without its end on the port")?;
        let header = std::str::from_utf8(&rest[..end]).context("port header")?;
        let mut fields = header.split_whitespace();
        let (Some("NCT-FILE"), Some(nn), Some(kind), Some(len)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            bail!("unexpected header on the port: {header}");
        };
        let len: usize = len.parse().context("port header length")?;
        let body = rest
            .get(end + 1..end + 1 + len)
            .with_context(|| format!("the port ends inside {nn} {kind}"))?;
        out.entry(nn.to_owned())
            .or_default()
            .insert(kind.to_owned(), body.to_vec());
        rest = &rest[end + 1 + len..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_files_are_split_by_their_headers() {
        let port = b"NCT-FILE 00 out 3\nab\nNCT-FILE 00 err 0\nNCT-FILE 01 rc 2\n0\n";
        let files = read_port(port).unwrap();
        assert_eq!(files["00"]["out"], b"ab\n");
        assert_eq!(files["00"]["err"], b"");
        assert_eq!(files["01"]["rc"], b"0\n");
        assert!(read_port(b"NCT-FILE 00 out 9\nab").is_err());
    }

    #[test]
    fn every_kernel_runs_every_backend() {
        for series in Series::ALL {
            let names: Vec<_> = scenarios(series).iter().map(|s| s.name).collect();
            assert_eq!(&names[..3], ["auto", "xdp", "raw"]);
        }
        assert!(matches!(
            scenarios(Series::V5_10)[1].expect,
            Expect::Refuses(_)
        ));
        assert_eq!(scenarios(Series::V6_1).len(), 4);
        assert_eq!(scenarios(Series::V6_12).len(), 3);
    }

    #[test]
    fn sentinel_is_a_netconsole_datagram() {
        let frame = sentinel("03").unwrap();
        let parsed = etherparse::SlicedPacket::from_ethernet(&frame).unwrap();
        let Some(etherparse::TransportSlice::Udp(udp)) = parsed.transport else {
            panic!("not UDP");
        };
        assert_eq!((udp.source_port(), udp.destination_port()), (6665, 6666));
        assert_eq!(udp.payload(), b"NCT-SENTINEL-03\n");
    }
}
