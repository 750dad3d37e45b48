//! Crashes: each kernel crashes on purpose (`echo c > /proc/sysrq-trigger`) after writing its
//! records, while netcon-sniff (with `--on-panic`) listens beside the guest.
//!
//! | kernel | netconsole target | `kernel.panic` per boot |
//! |---|---|---|
//! | 6.1 | plain, module parameter | 1 (resets after 1 s), then 0 (halts) |
//! | 6.12 | extended, module parameter | -1 (resets at once) |
//! | unstable (7.x) | extended, configfs, userdata and every sysdata | 3, then 0 |
//!
//! A reset ends qemu (`-no-reboot`); the next boot is a new qemu on the same tap, MAC and
//! address, which is how the collector sees a machine that reboots after a panic. A configfs
//! target replays nothing, so its next boot starts netconsole when its clock is
//! [`NEXT_BOOT_BELOW_S`] below the last boot's last record: the new boot's first records then
//! have lower sequence numbers and slightly lower timestamps, like late records of the old boot
//! (the hard case for reboot detection). A halted
//! kernel never powers off: the boot ends once the serial console shows the end of the panic
//! and the netconsole has had [`guest::HALT_GRACE`] to send the rest.
//!
//! What the crash report on the serial console (the kernel's lines from `Trigger a crash` on)
//! has to do with the wire, per kernel (`kernel/panic.c`, `kernel/printk/`,
//! `drivers/net/netconsole.c`):
//! - up to 6.x netconsole is a legacy console, written synchronously by `printk()` and by
//!   `console_flush_on_panic()` as `panic()` runs: every line of the report is on the wire
//!   before the machine resets, whatever `kernel.panic` is; but with -1 the reset comes the
//!   instant the report is written, and its last datagrams can still be in the NIC's transmit
//!   queue, which the reset drops (6.12: the last 7 to 10 lines, in 2 runs of 5): the wire
//!   then holds the report's beginning, through the panic line at least;
//! - from 7.0 on it is an nbcon console flagged `CON_NBCON_ATOMIC_UNSAFE`: in a panic its
//!   `write_atomic()` runs only in `nbcon_atomic_flush_unsafe()`, which `panic()` calls only
//!   after the `emergency_restart()` that any `kernel.panic` other than 0 leads to (the countdown
//!   of N > 0 only waits, it flushes nothing). So with -1 or N > 0 nothing of the report from
//!   the panic line on leaves the machine; with 0 all of it does, in one burst after
//!   `---[ end Kernel panic`. The lines before the panic line (sysrq's `Trigger a crash`) are
//!   printed before `panic()` runs, by the console's printer thread: when that thread gets a
//!   CPU before `panic()` stops the others, they are on the wire (seen twice in 7.2 guests
//!   under TCG: the one sysrq line, with kernel.panic=3).
//!
//! The checks, per boot, on netcon's JSON output (the wire itself is the same capture replayed
//! through `--format raw` and this test's reference decoder): every report line that the
//! kernel put on the wire is printed once and in order; the `Kernel panic - not syncing` record
//! begins a crash report (`flags.panic.begins`, level emerg when extended) and the report's
//! later lines carry the same `flags.panic.event`; the `--on-panic` hook ran once per crash
//! whose panic line arrived; `rebooted` comes right before the new boot's first record; which
//! lines are on the wire is what the kernel's console type and `kernel.panic` say above.

use std::{
    fmt::Write as _, fs, os::unix::fs::PermissionsExt as _, path::Path, thread, time::Duration,
};

use anyhow::{Context as _, Result, ensure};
use serde_json::{Value, json};

use super::{
    Case, ConfigName, Env, SETTLE,
    guest::{self, CrashEnd},
    kernel::Series,
    observe::{self, Item, Observed, Rec},
    sniff::{self, Output, Receiver},
};

/// What one kernel's crash scenario does.
pub struct Scenario {
    /// `configfs`, `plain`, `extended`: for names and logs.
    pub target: &'static str,
    /// The netconsole target's configuration (its option string also feeds configfs).
    pub config: ConfigName,
    /// Set the target up through configfs, with userdata `run=<runid>` and every sysdata.
    pub configfs: bool,
    /// `kernel.panic` of each boot, in order.
    pub panics: &'static [i32],
}

impl Series {
    /// The crash scenario of this kernel (5.10 has none: 6.1 covers the legacy console).
    pub fn crash_scenario(self) -> Option<Scenario> {
        Some(match self {
            Self::V5_10 => return None,
            Self::V6_1 => Scenario {
                target: "plain",
                config: ConfigName::Plain,
                configfs: false,
                panics: &[1, 0],
            },
            Self::V6_12 => Scenario {
                target: "extended",
                config: ConfigName::Extended,
                configfs: false,
                panics: &[-1],
            },
            Self::Unstable => Scenario {
                target: "configfs",
                config: ConfigName::Extended,
                configfs: true,
                panics: &[3, 0],
            },
        })
    }

    /// netconsole is an nbcon console (7.0 and later): a panic sends its report only when
    /// `kernel.panic` is 0.
    pub fn nbcon_netconsole(self) -> bool {
        self == Self::Unstable
    }
}

/// How far below the previous boot's last kernel timestamp a configfs target's next boot
/// starts sending, in seconds: well inside the 1 s that a late record may lag, so that only
/// the implied boot time (or msgid 1) can tell the reboot.
const NEXT_BOOT_BELOW_S: f64 = 0.5;

/// One crashing boot, as the guest ran it.
struct CrashBoot {
    runid: String,
    panic: i32,
    end: CrashEnd,
    /// The crash report as the serial console shows it.
    report: Vec<String>,
    /// Kernel timestamp of the last record the guest wrote (`NCT-<run> END`), in seconds.
    last_record_s: Option<f64>,
}

/// Runs `env.kernel`'s crash scenario on network `net`; the boots' durations.
pub fn run(env: &Env<'_>, net: u8) -> Result<Vec<Duration>> {
    let Some(scenario) = env.kernel.series.crash_scenario() else {
        return Ok(Vec::new());
    };
    let case = Case {
        config: scenario.config,
        net,
        boots: scenario.panics.len(),
    };
    fs::create_dir_all(&env.dir)?;
    ensure!(
        env.sniff.json && env.sniff.write_pcap,
        "{} has no `--format json` or `-w`: the crash checks need both",
        env.sniff.path.display()
    );
    // Dropped last: the receivers and qemu end before the namespace goes.
    let ns = super::netns::Netns::create(case.net, &case.collector_mac(), &case.collector_ip())?;
    let live: Vec<Receiver> = env
        .receivers
        .iter()
        .filter(|r| !r.replay && r.output == Output::Json)
        .copied()
        .collect();
    ensure!(!live.is_empty(), "no live JSON receiver to check");
    let mut running = Vec::new();
    for receiver in &live {
        let hook = write_hook(&env.dir, receiver.backend.as_str())?;
        running.push(sniff::start_with(
            env.sniff,
            &ns,
            *receiver,
            Some(&pcap(&env.dir, *receiver)),
            &[
                "--on-panic".to_owned(),
                hook.display().to_string(),
                "--on-panic-interval".to_owned(),
                "0".to_owned(),
            ],
        )?);
    }
    let mut boots: Vec<CrashBoot> = Vec::new();
    let mut times = Vec::new();
    for (i, &panic) in scenario.panics.iter().enumerate() {
        let b = i + 1;
        // A configfs target replays nothing: start the next boot's netconsole when its clock
        // is just below the last boot's last record, where a reboot looks most like a late
        // record of the old boot.
        let start_at = boots
            .last()
            .filter(|_| scenario.configfs)
            .and_then(|last| last.last_record_s)
            .map(|t| t - NEXT_BOOT_BELOW_S);
        let boot = crash_boot(env, &case, &scenario, &ns, (b, panic), start_at)
            .with_context(|| format!("boot {b} (kernel.panic={panic})"))?;
        times.push(boot.0);
        boots.push(boot.1);
    }
    thread::sleep(SETTLE);
    let mut failed = Vec::new();
    for r in running {
        let receiver = r.receiver;
        let captured = r.stop(&env.dir)?;
        let wire = sniff::replay(
            env.sniff,
            Receiver {
                output: Output::Raw,
                replay: true,
                ..receiver
            },
            &pcap(&env.dir, receiver),
            &env.dir,
        )?;
        let hooks =
            fs::read_to_string(hook_log(&env.dir, receiver.backend.as_str())).unwrap_or_default();
        let result = observe::from_raw(&wire.stdout)
            .and_then(|w| Ok((w, observe::from_json(&captured.stdout)?)))
            .map_err(|e| format!("{e:#}"))
            .and_then(|(wire_seen, netcon_seen)| {
                check(
                    env.kernel.series,
                    &boots,
                    &wire_seen,
                    &netcon_seen,
                    &captured.stdout,
                    &hooks,
                )
            });
        match result {
            Ok(summary) => eprintln!("vm-test: {}: {receiver}: ok: {summary}", env.name),
            Err(error) => failed.push(format!(
                "{receiver} ({}):\n{error}\nnetcon-sniff stderr:\n{}",
                captured.stdout_path.display(),
                captured.stderr.trim()
            )),
        }
    }
    ensure!(failed.is_empty(), "{}", failed.join("\n"));
    Ok(times)
}

fn pcap(dir: &Path, receiver: Receiver) -> std::path::PathBuf {
    dir.join(format!("{}.pcap", receiver.backend.as_str()))
}

fn hook_log(dir: &Path, backend: &str) -> std::path::PathBuf {
    dir.join(format!("hooks-{backend}.log"))
}

/// The `--on-panic` command: appends one line per run (the time it started, its kind, the
/// record's receive time) to `hooks-<backend>.log`.
fn write_hook(dir: &Path, backend: &str) -> Result<std::path::PathBuf> {
    let path = dir.join(format!("hook-{backend}.sh"));
    let log = hook_log(dir, backend);
    let _ = fs::remove_file(&log);
    fs::write(
        &path,
        format!(
            "#!/bin/sh\necho \"$(date -u +%H:%M:%S.%N) $NETCON_KIND $NETCON_SENDER $NETCON_TIME\" >> '{}'\n",
            log.display()
        ),
    )
    .with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
    Ok(path)
}

/// Boot `b`: writes the records, crashes with `kernel.panic=panic`, waits for the reset or the
/// halt.
fn crash_boot(
    env: &Env<'_>,
    case: &Case,
    scenario: &Scenario,
    ns: &super::netns::Netns,
    (b, panic): (usize, i32),
    start_at: Option<f64>,
) -> Result<(Duration, CrashBoot)> {
    let prepared = super::prepare_boot(env, case, b)?;
    let mut init_env = prepared.init_env(case);
    init_env.push(("nct_panic", panic.to_string()));
    if scenario.configfs {
        init_env.push(("nct_cfs", format!("run={}", prepared.runid)));
    }
    if let Some(t) = start_at {
        init_env.push(("nct_start_at", format!("{t:.3}")));
    }
    let (outcome, end) = guest::run_crash(ns, &prepared.boot(env, init_env))?;
    prepared.write_expected(
        env,
        &json!({
            "kernel": env.kernel.release,
            "config": scenario.target,
            "netconsole": case.netconsole(),
            "configfs": scenario.configfs,
            "kernel.panic": panic,
            "rejected": outcome.rejected,
        }),
    )?;
    let super::PreparedBoot {
        runid,
        records,
        console,
        ..
    } = prepared;
    ensure!(
        outcome.written == records.len(),
        "the guest wrote {} records of {}",
        outcome.written,
        records.len()
    );
    let wanted = if panic == 0 {
        CrashEnd::Halted
    } else {
        CrashEnd::Reset
    };
    ensure!(
        end == wanted,
        "kernel.panic={panic}, yet the kernel {}",
        if end == CrashEnd::Reset {
            "reset the machine"
        } else {
            "halted"
        }
    );
    let text = String::from_utf8_lossy(&fs::read(&console)?).into_owned();
    let report = console_report(&text);
    let last_record_s = kernel_time_of(&text, &format!("NCT-{runid} END"));
    ensure!(
        report.iter().any(|l| l.starts_with(PANIC_LINE)),
        "no `{PANIC_LINE}` on the serial console ({})",
        console.display()
    );
    eprintln!(
        "vm-test: {}: boot {b} (run {runid}, kernel.panic={panic}) {} after {:.1} s; {} report lines on the serial console",
        env.name,
        if end == CrashEnd::Reset {
            "crashed and reset"
        } else {
            "crashed and halted"
        },
        outcome.elapsed.as_secs_f64(),
        report.len()
    );
    Ok((
        outcome.elapsed,
        CrashBoot {
            runid,
            panic,
            end,
            report,
            last_record_s,
        },
    ))
}

/// The kernel timestamp, in seconds, of the serial console's first line whose text starts with
/// `text` (`[   11.525813] NCT-2b1bad END ...`).
fn kernel_time_of(console: &str, text: &str) -> Option<f64> {
    console.lines().find_map(|line| {
        let (stamp, rest) = line.strip_prefix('[')?.split_once(']')?;
        rest.trim_start()
            .starts_with(text)
            .then(|| stamp.trim().parse().ok())?
    })
}

/// The first line of the panic (`kernel/panic.c`).
const PANIC_LINE: &str = "Kernel panic - not syncing";

/// The report on the serial console: the kernel's lines from sysrq's `Trigger a crash`
/// (`drivers/tty/sysrq.c`) to the end, their `[    5.123456] ` prefixes removed. Lines without
/// the prefix are /init's.
pub fn console_report(console: &str) -> Vec<String> {
    let lines = console.lines().filter_map(|line| {
        let line = line.trim_end_matches('\r');
        let rest = line.strip_prefix('[')?;
        let (stamp, text) = rest.split_once(']')?;
        stamp
            .trim()
            .split_once('.')
            .is_some_and(|(s, us)| {
                s.bytes().all(|b| b.is_ascii_digit()) && us.bytes().all(|b| b.is_ascii_digit())
            })
            .then(|| text.strip_prefix(' ').unwrap_or(text).to_owned())
    });
    lines
        .skip_while(|l| !l.contains("Trigger a crash"))
        .collect()
}

/// Whether `r` is the first record of a boot: the first of the log buffer's replay (module
/// parameter targets: `Linux version`, or sequence number 0) or the target's first message
/// (sysdata `msgid` 1; a configfs target replays nothing).
fn starts_boot(r: &Rec) -> bool {
    r.seq == Some(0) || r.msgid == Some(1) || r.text.starts_with(b"Linux version ")
}

/// Records split into boots at [`starts_boot`]; with each boot, whether the item just before
/// its first record is a `rebooted` event.
fn boots(observed: &Observed) -> Vec<(Vec<&Rec>, bool)> {
    let mut out: Vec<(Vec<&Rec>, bool)> = Vec::new();
    let mut previous_was_reboot = false;
    for item in &observed.items {
        match item {
            Item::Record(r) => {
                if out.is_empty() || starts_boot(r) {
                    out.push((Vec::new(), previous_was_reboot));
                }
                if let Some(last) = out.last_mut() {
                    last.0.push(r);
                }
                previous_was_reboot = false;
            }
            Item::Rebooted { .. } => previous_was_reboot = true,
            _ => {}
        }
    }
    out
}

/// The report lines of one boot's records, in order: every line of the records after the
/// boot's last `NCT-<runid>` record that the serial console's report holds.
fn report_lines<'a>(records: &[&'a Rec], boot: &CrashBoot) -> Vec<(String, &'a Rec)> {
    let tag = format!("NCT-{} ", boot.runid);
    let start = records
        .iter()
        .rposition(|r| r.text.starts_with(tag.as_bytes()))
        .map_or(0, |i| i + 1);
    let mut out = Vec::new();
    for &r in &records[start..] {
        for line in String::from_utf8_lossy(&r.text).split('\n') {
            if boot.report.iter().any(|l| l == line) {
                out.push((line.to_owned(), r));
            }
        }
    }
    out
}

/// Checks one receiver: `wire` (the capture, decoded by the reference decoder) against the
/// kernels' console and behaviour, `netcon` (its JSON) against `wire`, and the hook's log.
/// A summary, or every failure.
fn check(
    series: Series,
    crash_boots: &[CrashBoot],
    wire: &Observed,
    netcon: &Observed,
    json_text: &str,
    hooks: &str,
) -> Result<String, String> {
    let mut failures = Vec::new();
    let mut summary = String::new();
    let wire_boots = boots(wire);
    let netcon_boots = boots(netcon);
    for (what, seen) in [
        ("the wire", &wire_boots),
        ("netcon's output", &netcon_boots),
    ] {
        if seen.len() != crash_boots.len() {
            failures.push(format!(
                "{} boots on {what} (split at `Linux version`, seq 0 or msgid 1), {} made",
                seen.len(),
                crash_boots.len()
            ));
        }
    }
    let reboot_events = netcon
        .items
        .iter()
        .filter(|i| matches!(i, Item::Rebooted { .. }))
        .count();
    if reboot_events + 1 != crash_boots.len() {
        failures.push(format!(
            "{reboot_events} `rebooted` events, expected {}",
            crash_boots.len() - 1
        ));
    }
    let mut panics_on_wire = 0;
    for (i, boot) in crash_boots.iter().enumerate() {
        let n = i + 1;
        let (Some((wire_records, _)), Some((netcon_records, after_reboot))) =
            (wire_boots.get(i), netcon_boots.get(i))
        else {
            break;
        };
        if i > 0 && !after_reboot {
            failures.push(format!(
                "boot {n}: no `rebooted` event right before its first record ({})",
                netcon_records
                    .first()
                    .map(|r| show(&r.text))
                    .unwrap_or_default()
            ));
        }
        let on_wire: Vec<String> = report_lines(wire_records, boot)
            .into_iter()
            .map(|(l, _)| l)
            .collect();
        check_wire(n, series, boot, &on_wire, &mut failures);
        let printed = report_lines(netcon_records, boot);
        let printed_lines: Vec<&String> = printed.iter().map(|(l, _)| l).collect();
        if printed_lines != on_wire.iter().collect::<Vec<_>>() {
            failures.push(format!(
                "boot {n}: netcon printed {} report lines, the wire had {}: printed {:?}, wire {:?}",
                printed.len(),
                on_wire.len(),
                abbreviate(&printed_lines),
                abbreviate(&on_wire.iter().collect::<Vec<_>>())
            ));
        }
        check_grouping(n, &printed, &mut failures);
        if printed.iter().any(|(l, _)| l.starts_with(PANIC_LINE)) {
            panics_on_wire += 1;
        }
        let _ = write!(
            summary,
            "boot {n} (kernel.panic={}, {}): {} of {} report lines on the wire, all printed once in order; ",
            boot.panic,
            if boot.end == CrashEnd::Reset {
                "reset"
            } else {
                "halted"
            },
            on_wire.len(),
            boot.report.len()
        );
    }
    let runs: Vec<&str> = hooks.lines().filter(|l| !l.trim().is_empty()).collect();
    if runs.len() != panics_on_wire {
        failures.push(format!(
            "--on-panic ran {} times, for {panics_on_wire} crashes whose panic line arrived:\n{}",
            runs.len(),
            runs.join("\n")
        ));
    }
    let _ = write!(
        summary,
        "{reboot_events} rebooted; --on-panic ran {} times{}",
        runs.len(),
        hook_latencies(&runs, json_text)
    );
    if failures.is_empty() {
        Ok(summary)
    } else {
        Err(failures.join("\n"))
    }
}

/// Which report lines reached the wire is what the console type and `kernel.panic` say (see
/// the module documentation).
fn check_wire(
    n: usize,
    series: Series,
    boot: &CrashBoot,
    on_wire: &[String],
    failures: &mut Vec<String>,
) {
    let everything = !(series.nbcon_netconsole() && boot.panic != 0);
    // kernel.panic < 0 resets the instant the report is written: its last datagrams can still
    // be in the NIC's transmit queue, which the reset drops (seen on 6.12). What arrived must
    // then be the report's beginning, from its first line through the panic line at least.
    let cut_allowed = boot.panic < 0
        && on_wire.len() < boot.report.len()
        && boot.report.starts_with(on_wire)
        && on_wire.iter().any(|l| l.starts_with(PANIC_LINE));
    if cut_allowed {
        eprintln!(
            "vm-test: note: boot {n} (kernel.panic={}): only the first {} of {} report lines \
             reached the wire: the reset dropped the rest from the NIC's queue",
            boot.panic,
            on_wire.len(),
            boot.report.len()
        );
    }
    if everything && !cut_allowed && on_wire != boot.report {
        let missing: Vec<String> = boot
            .report
            .iter()
            .filter(|l| !on_wire.contains(l))
            .take(5)
            .map(|l| format!("`{l}`"))
            .collect();
        failures.push(format!(
            "boot {n} (kernel.panic={}): {} of the {} report lines on the serial console reached \
             the wire{}; missing: {}",
            boot.panic,
            on_wire.len(),
            boot.report.len(),
            if missing.is_empty() {
                " (out of order or twice)"
            } else {
                ""
            },
            missing.join(", ")
        ));
    }
    // Only lines printed before panic() ran may have left, by the printer thread: a beginning
    // of the report that stops before the panic line.
    let before_panic =
        boot.report.starts_with(on_wire) && !on_wire.iter().any(|l| l.starts_with(PANIC_LINE));
    if !everything && !before_panic {
        failures.push(format!(
            "boot {n}: kernel.panic={} on an nbcon netconsole sent {} report lines, the panic \
             line or later among them, where panic() reboots before it flushes nbcon consoles: \
             the kernel changed; update crash.rs, the sender-config warning and the README",
            boot.panic,
            on_wire.len()
        ));
    }
}

/// The panic record begins a report (level emerg when the record has one), and every report
/// line after it carries the same event.
fn check_grouping(n: usize, printed: &[(String, &Rec)], failures: &mut Vec<String>) {
    let Some(start) = printed.iter().position(|(l, _)| l.starts_with(PANIC_LINE)) else {
        return;
    };
    let panic = printed[start].1;
    let Some((event, true)) = panic.panic else {
        failures.push(format!(
            "boot {n}: `{}` is not flagged as beginning a crash report (flags.panic {:?})",
            printed[start].0, panic.panic
        ));
        return;
    };
    if panic.extended && panic.level != Some(0) {
        failures.push(format!(
            "boot {n}: the panic record has level {:?}, not emerg",
            panic.level
        ));
    }
    for (line, r) in &printed[start + 1..] {
        if std::ptr::eq(*r, panic) {
            continue;
        }
        if r.panic != Some((event, false)) {
            failures.push(format!(
                "boot {n}: `{line}` is not grouped under the panic (event {event}): flags.panic {:?}",
                r.panic
            ));
        }
    }
}

/// `; hook started 2.1 ms after the panic record arrived` (from the hook's own clock and the
/// record's `received`), for the summary.
fn hook_latencies(runs: &[&str], json_text: &str) -> String {
    let received: Vec<f64> = json_text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| {
            v.get("text")
                .and_then(Value::as_str)
                .is_some_and(|t| t.starts_with(PANIC_LINE))
        })
        .filter_map(|v| {
            // `2026-12-01T15:22:29.123456Z`
            let (_, time) = v.get("received")?.as_str()?.split_once('T')?;
            seconds_of_day(time.trim_end_matches('Z'))
        })
        .collect();
    let started: Vec<f64> = runs
        .iter()
        .filter_map(|l| seconds_of_day(l.split_whitespace().next()?))
        .collect();
    let lags: Vec<String> = started
        .iter()
        .zip(&received)
        .map(|(s, r)| format!("{:.1} ms", (s - r) * 1e3))
        .collect();
    if lags.is_empty() {
        String::new()
    } else {
        format!(
            " (started {} after the panic record arrived)",
            lags.join(", ")
        )
    }
}

/// `15:22:29.123456789` as seconds since midnight (UTC on both sides).
fn seconds_of_day(time: &str) -> Option<f64> {
    let mut parts = time.splitn(3, ':');
    let hours: f64 = parts.next()?.parse().ok()?;
    let minutes: f64 = parts.next()?.parse().ok()?;
    let seconds: f64 = parts.next()?.parse().ok()?;
    Some(hours * 3600.0 + minutes * 60.0 + seconds)
}

fn show(text: &[u8]) -> String {
    let s = text.escape_ascii().to_string();
    if s.len() > 100 {
        format!("{}...", &s[..97])
    } else {
        s
    }
}

fn abbreviate(lines: &[&String]) -> Vec<String> {
    if lines.len() <= 8 {
        lines.iter().map(|l| (*l).clone()).collect()
    } else {
        let mut v: Vec<String> = lines[..4].iter().map(|l| (*l).clone()).collect();
        v.push(format!("... {} more ...", lines.len() - 6));
        v.extend(lines[lines.len() - 2..].iter().map(|l| (*l).clone()));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONSOLE: &str = "\
NCT-WRITTEN 215\r
[    4.100000] NCT-abc123 END\r
NCT-CRASH kernel.panic=1\r
[    5.512345] sysrq: Trigger a crash\r
[    5.512400] Kernel panic - not syncing: sysrq triggered crash\r
[    5.512500] CPU: 0 PID: 97 Comm: sh Not tainted 6.1.0-56-amd64 #1  Debian 6.1.192-2\r
[    5.512600] Call Trace:\r
[    5.512700]  <TASK>\r
[    5.513000] Kernel Offset: disabled\r
[    5.513100] Rebooting in 1 seconds..\r
";

    /// [`check`] of one boot with `kernel.panic` at `panic`, and no JSON output.
    fn check_one(
        series: Series,
        panic: i32,
        wire: &Observed,
        netcon: &Observed,
        hooks: &str,
    ) -> Result<String, String> {
        check(series, &[boot(panic)], wire, netcon, "", hooks)
    }

    fn boot(panic: i32) -> CrashBoot {
        CrashBoot {
            runid: "abc123".into(),
            panic,
            end: if panic == 0 {
                CrashEnd::Halted
            } else {
                CrashEnd::Reset
            },
            report: console_report(CONSOLE),
            last_record_s: kernel_time_of(CONSOLE, "NCT-abc123 END"),
        }
    }

    #[test]
    fn the_report_starts_at_the_trigger_and_keeps_indentation() {
        let report = console_report(CONSOLE);
        assert_eq!(report.len(), 7);
        assert_eq!(report[0], "sysrq: Trigger a crash");
        assert_eq!(report[4], " <TASK>");
        assert_eq!(report[6], "Rebooting in 1 seconds..");
        assert_eq!(kernel_time_of(CONSOLE, "NCT-abc123 END"), Some(4.1));
        assert_eq!(kernel_time_of(CONSOLE, "NCT-ffffff END"), None);
    }

    fn rec(text: &str, seq: u64, panic: Option<(u64, bool)>) -> Item {
        Item::Record(Rec {
            sender: "10.0.0.10:6665".into(),
            extended: true,
            seq: Some(seq),
            level: Some(if text.starts_with(PANIC_LINE) { 0 } else { 6 }),
            text: text.as_bytes().to_vec(),
            panic,
            ..Rec::default()
        })
    }

    /// One boot as netcon prints it (`grouped`: with the panic marks) or as the wire has it.
    fn observed(grouped: bool, skip: Option<usize>) -> Observed {
        let mut o = Observed::default();
        o.items.push(rec("Linux version 6.1", 0, None));
        o.items.push(rec("NCT-abc123 END", 1, None));
        for (i, line) in console_report(CONSOLE).iter().enumerate() {
            if Some(i) == skip {
                continue;
            }
            let mark = (grouped && i >= 1).then_some((0, i == 1));
            o.items.push(rec(line, 2 + i as u64, mark));
        }
        o
    }

    #[test]
    fn a_whole_grouped_report_passes() {
        let hooks = "1.0 panic 10.0.0.10:6665 t\n";
        let s = check_one(
            Series::V6_1,
            1,
            &observed(false, None),
            &observed(true, None),
            hooks,
        )
        .unwrap();
        assert!(s.contains("7 of 7 report lines"), "{s}");
    }

    #[test]
    fn loss_ungrouped_lines_and_a_missing_hook_fail() {
        let mut netcon = observed(true, Some(3));
        if let Some(Item::Record(r)) = netcon.items.get_mut(6) {
            r.panic = None;
        }
        let e = check_one(Series::V6_1, 1, &observed(false, None), &netcon, "").unwrap_err();
        assert!(
            e.contains("netcon printed 6 report lines, the wire had 7"),
            "{e}"
        );
        assert!(e.contains("is not grouped under the panic"), "{e}");
        assert!(e.contains("--on-panic ran 0 times, for 1 crashes"), "{e}");
    }

    #[test]
    fn what_reaches_the_wire_follows_the_console_type() {
        // A legacy console that lost a line fails; an nbcon one with kernel.panic != 0 must
        // send nothing, and one that sends is a kernel change to notice.
        let e = check_one(
            Series::V6_12,
            -1,
            &observed(false, Some(2)),
            &observed(true, Some(2)),
            "x\n",
        )
        .unwrap_err();
        assert!(e.contains("6 of the 7 report lines"), "{e}");
        // Only the end cut off by an immediate reset is allowed, and only with kernel.panic < 0.
        let mut wire = observed(false, None);
        let mut netcon = observed(true, None);
        wire.items.pop();
        netcon.items.pop();
        check_one(Series::V6_12, -1, &wire, &netcon, "x\n").unwrap();
        let e = check_one(Series::V6_1, 1, &wire, &netcon, "x\n").unwrap_err();
        assert!(e.contains("6 of the 7 report lines"), "{e}");
        let e = check_one(
            Series::Unstable,
            3,
            &observed(false, None),
            &observed(true, None),
            "x\n",
        )
        .unwrap_err();
        assert!(e.contains("the kernel changed"), "{e}");
        // The sysrq line, printed before panic() ran, may have left by the printer thread.
        let mut wire = observed(false, None);
        let mut netcon = observed(true, None);
        wire.items.truncate(3);
        netcon.items.truncate(3);
        check_one(Series::Unstable, 3, &wire, &netcon, "").unwrap();
    }

    #[test]
    fn a_second_boot_needs_rebooted_right_before_its_first_record() {
        let mut wire = observed(false, None);
        wire.items.extend(observed(false, None).items);
        let mut netcon = observed(true, None);
        let second = observed(true, None);
        netcon.items.push(Item::Rebooted {
            sender: "10.0.0.10:6665".into(),
        });
        netcon.items.extend(second.items.clone());
        let boots = [boot(1), boot(0)];
        let hooks = "1 a\n2 b\n";
        check(Series::V6_1, &boots, &wire, &netcon, "", hooks).unwrap();
        // The event one record late.
        let mut late = observed(true, None);
        late.items.push(second.items[0].clone());
        late.items.push(Item::Rebooted {
            sender: "10.0.0.10:6665".into(),
        });
        late.items.extend(second.items[1..].iter().cloned());
        let e = check(Series::V6_1, &boots, &wire, &late, "", hooks).unwrap_err();
        assert!(
            e.contains("boot 2: no `rebooted` event right before"),
            "{e}"
        );
    }
}
