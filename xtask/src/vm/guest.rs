//! One boot of a guest kernel under qemu, its NIC on the collector namespace's tap.

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use nix::sys::signal::Signal;

use super::{
    host::Accel,
    netns::{Guarded, Netns},
};

/// What to boot.
pub struct Boot<'a> {
    pub image: &'a Path,
    pub initramfs: &'a Path,
    /// The guest NIC's MAC address.
    pub mac: &'a str,
    /// `key=value` parameters for the guest's /init (`vm/init.sh`).
    pub init_env: Vec<(&'static str, String)>,
    pub accel: Accel,
    pub timeout: Duration,
    /// Where the serial console goes.
    pub console: PathBuf,
}

/// What the guest's /init reported on the console.
#[derive(Debug, Default)]
pub struct Outcome {
    pub elapsed: Duration,
    /// Record files whose write to /dev/kmsg failed (`NCT-REJECTED 0012`).
    pub rejected: Vec<String>,
    pub written: usize,
    /// /init set kernel.panic and crashed the kernel (`NCT-CRASH`).
    pub crashed: bool,
}

/// Kills the guest, which `what` (e.g. "did not power off") within its timeout: the error to
/// return, with the end of the console (or why it could not be killed).
fn kill_overdue(guard: &mut Guarded, boot: &Boot<'_>, what: &str) -> anyhow::Error {
    if let Err(error) = guard.stop(Signal::SIGKILL, Duration::from_secs(5)) {
        return error;
    }
    anyhow!(
        "the guest {what} within {:?}: killed (console: {})\n{}",
        boot.timeout,
        boot.console.display(),
        tail(&boot.console)
    )
}

/// Boots `boot` in `ns` and waits for the guest to power off (killing it at the deadline).
pub fn run(ns: &Netns, boot: &Boot<'_>) -> Result<Outcome> {
    let (mut guard, started) = spawn(ns, boot, &[])?;
    let Some(status) = guard.wait_until(started + boot.timeout)? else {
        return Err(kill_overdue(&mut guard, boot, "did not power off"));
    };
    let elapsed = started.elapsed();
    let output = fs::read_to_string(boot.console.with_extension("qemu.log")).unwrap_or_default();
    ensure!(
        status.success(),
        "qemu failed ({status}): {}\n{}",
        output.trim(),
        tail(&boot.console)
    );
    let console =
        fs::read(&boot.console).with_context(|| format!("reading {}", boot.console.display()))?;
    parse_console(&String::from_utf8_lossy(&console), elapsed, &boot.console)
}

/// Starts qemu for `boot` in `ns`, with `extra` qemu arguments (devices), without waiting;
/// the guest is killed when the guard drops. Returns the guard and when it started.
pub fn spawn(ns: &Netns, boot: &Boot<'_>, extra: &[String]) -> Result<(Guarded, Instant)> {
    let mut cmdline = String::from(
        // ignore_loglevel: netconsole is a console and, like every console, would drop records
        // above the console loglevel (LEVEL7). printk.devkmsg=on: /dev/kmsg would otherwise
        // rate-limit the burst to 10 lines per 5 s. panic=-1 with -no-reboot: a panic ends qemu.
        // cryptomgr.notests: the crypto self-tests cost boot time under TCG.
        "console=ttyS0,115200 ignore_loglevel printk.devkmsg=on ipv6.disable=1 panic=-1 \
         mitigations=off cryptomgr.notests rdinit=/init",
    );
    for (key, value) in &boot.init_env {
        let _ = write!(cmdline, " {key}={value}");
    }
    let log_path = boot.console.with_extension("qemu.log");
    let qemu_log =
        fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let mut qemu = ns.command("qemu-system-x86_64");
    qemu.args(["-nodefaults", "-no-user-config", "-display", "none"])
        .args(["-machine", "q35", "-m", "512", "-smp", "1", "-no-reboot"]);
    match boot.accel {
        Accel::Kvm => qemu.args(["-accel", "kvm", "-cpu", "host"]),
        Accel::Tcg | Accel::Auto => qemu.args(["-accel", "tcg"]),
    };
    qemu.arg("-kernel")
        .arg(boot.image)
        .arg("-initrd")
        .arg(boot.initramfs)
        .args(["-append", &cmdline])
        .arg("-serial")
        .arg(format!("file:{}", boot.console.display()))
        .args([
            "-netdev",
            &format!("tap,id=n0,ifname={},script=no,downscript=no", ns.tap),
            "-device",
            &format!("virtio-net-pci,netdev=n0,mac={}", boot.mac),
        ])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(qemu_log.try_clone()?)
        .stderr(qemu_log);
    let started = Instant::now();
    let child = qemu.spawn().context("starting qemu-system-x86_64")?;
    Ok((Guarded::new(child, "qemu"), started))
}

/// What /init printed (`NCT-` lines) on the console of a guest that powered off.
fn parse_console(console: &str, elapsed: Duration, path: &Path) -> Result<Outcome> {
    let mut outcome = Outcome {
        elapsed,
        ..Outcome::default()
    };
    let done = read_markers(console, &mut outcome, path)?;
    ensure!(
        done,
        "the guest powered off before its /init finished (console: {})\n{}",
        path.display(),
        tail(path)
    );
    Ok(outcome)
}

/// Reads /init's `NCT-` lines into `outcome`; whether it said `NCT-DONE`. `NCT-FAIL` is an error.
fn read_markers(console: &str, outcome: &mut Outcome, path: &Path) -> Result<bool> {
    let mut done = false;
    for line in console.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(reason) = line.strip_prefix("NCT-FAIL ") {
            bail!(
                "the guest's /init failed: {reason} (console: {})",
                path.display()
            );
        } else if let Some(file) = line.strip_prefix("NCT-REJECTED ") {
            outcome.rejected.push(file.trim().to_owned());
        } else if let Some(n) = line.strip_prefix("NCT-WRITTEN ") {
            outcome.written = n.trim().parse().unwrap_or_default();
        } else if line == "NCT-DONE" {
            done = true;
        } else if line.starts_with("NCT-CRASH ") {
            outcome.crashed = true;
        }
    }
    Ok(done)
}

/// How a boot that crashes on purpose ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashEnd {
    /// The kernel reset the machine (`kernel.panic` other than 0): qemu (`-no-reboot`) exited.
    Reset,
    /// The kernel halted (`kernel.panic=0`): it printed `---[ end Kernel panic` and never powers
    /// off, so qemu was killed after [`HALT_GRACE`].
    Halted,
}

/// After a halting kernel printed the end of its report on the serial console, how long its
/// netconsole gets to send the rest (7.x sends the whole report only after that line, in the
/// final flush of `panic()`, `kernel/panic.c`).
pub const HALT_GRACE: Duration = Duration::from_secs(3);

/// The serial console's last panic line, which a halting kernel prints just before it stops.
pub const END_OF_PANIC: &str = "---[ end Kernel panic";

/// Boots `boot`, which crashes on purpose (`nct_panic`), and waits until the kernel has reset
/// the machine or halted, bounded by `boot.timeout`: a halted kernel never powers off.
pub fn run_crash(ns: &Netns, boot: &Boot<'_>) -> Result<(Outcome, CrashEnd)> {
    let (mut guard, started) = spawn(ns, boot, &[])?;
    let deadline = started + boot.timeout;
    let log_path = boot.console.with_extension("qemu.log");
    let end = loop {
        if let Some(status) = guard.try_wait()? {
            ensure!(
                status.success(),
                "qemu failed ({status}): {}\n{}",
                fs::read_to_string(&log_path).unwrap_or_default().trim(),
                tail(&boot.console)
            );
            break CrashEnd::Reset;
        }
        let console = fs::read(&boot.console).unwrap_or_default();
        if String::from_utf8_lossy(&console).contains(END_OF_PANIC) {
            std::thread::sleep(HALT_GRACE);
            guard.stop(Signal::SIGKILL, Duration::from_secs(5))?;
            break CrashEnd::Halted;
        }
        if Instant::now() >= deadline {
            return Err(kill_overdue(&mut guard, boot, "neither reset nor halted"));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let console =
        fs::read(&boot.console).with_context(|| format!("reading {}", boot.console.display()))?;
    let mut outcome = Outcome {
        elapsed: started.elapsed(),
        ..Outcome::default()
    };
    read_markers(
        &String::from_utf8_lossy(&console),
        &mut outcome,
        &boot.console,
    )?;
    ensure!(
        outcome.crashed,
        "the guest's /init never reached the crash (console: {})\n{}",
        boot.console.display(),
        tail(&boot.console)
    );
    Ok((outcome, end))
}

/// The console's last lines, for error messages.
pub fn tail(path: &Path) -> String {
    let text = fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(15);
    lines[start..].join("\n")
}
