//! The real `netcon-sniff`, run in the collector namespace on the tap, by the test kit's
//! runner.

use std::{
    fmt, fs,
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow, ensure};
use netcon_testkit::{Sniffer, StdoutTo};
use nix::sys::signal::Signal;

use super::{host::Sniff, netns::Netns};

/// How long netcon-sniff may take to load its program and attach.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a replay of a capture may take.
const REPLAY_TIMEOUT: Duration = Duration::from_mins(1);

/// Capture backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Xdp,
    Raw,
}

/// What netcon-sniff prints on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// `--format raw`: one line per datagram; this test decodes the payloads itself.
    Raw,
    /// `--format json`: netcon's own decoded records and events.
    Json,
}

/// One receiver: a backend and an output format. Only one XDP program can be attached to an
/// interface, so each backend runs live once, saving its frames (`-w`); its other outputs come
/// from replaying that capture (`-r`) through netcon-sniff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receiver {
    pub backend: Backend,
    pub output: Output,
    /// From the live receiver's pcap rather than live.
    pub replay: bool,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Xdp => "xdp",
            Self::Raw => "raw",
        }
    }
}

impl Output {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Raw => "raw",
            Self::Json => "json",
        }
    }
}

impl fmt::Display for Receiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.backend.as_str(), self.output.as_str())?;
        if self.replay {
            f.write_str(" (pcap replay)")?;
        }
        Ok(())
    }
}

/// A running netcon-sniff.
pub struct Running {
    pub receiver: Receiver,
    process: Sniffer,
}

/// What a stopped netcon-sniff printed.
pub struct Captured {
    pub receiver: Receiver,
    pub stdout: String,
    pub stderr: String,
    pub stdout_path: PathBuf,
}

/// Starts netcon-sniff on `ns`' tap and waits until it says it is listening. `pcap`: also save
/// the frames there (when the binary has `-w`).
pub fn start(
    sniff: &Sniff,
    ns: &Netns,
    receiver: Receiver,
    pcap: Option<&Path>,
) -> Result<Running> {
    start_with(sniff, ns, receiver, pcap, &[])
}

/// [`start`], with `extra` options on netcon-sniff's command line (`--on-panic CMD`).
pub fn start_with(
    sniff: &Sniff,
    ns: &Netns,
    receiver: Receiver,
    pcap: Option<&Path>,
    extra: &[String],
) -> Result<Running> {
    let mut command = ns.command(&sniff.path);
    command.args(["-i", &ns.tap, "-p", "6666"]).args(extra);
    if sniff.backends {
        command.args(["--backend", receiver.backend.as_str()]);
    }
    if receiver.backend == Backend::Xdp {
        command.args(["--xdp-mode", "auto"]);
    }
    command.args(["--format", receiver.output.as_str()]);
    if let (Some(pcap), true) = (pcap, sniff.write_pcap) {
        command.arg("-w").arg(pcap);
    }
    command.stdin(Stdio::null());
    let mut process = Sniffer::spawn_command(command, StdoutTo::Lines)
        .with_context(|| format!("starting {}", sniff.path.display()))?;
    process
        .try_wait_ready(READY_TIMEOUT)
        .map_err(|e| anyhow!("netcon-sniff ({receiver}): {e}"))?;
    Ok(Running { receiver, process })
}

/// Runs `receiver` (a replay) over `pcap`, the live receiver's capture, saving its output
/// under `dir`.
pub fn replay(sniff: &Sniff, receiver: Receiver, pcap: &Path, dir: &Path) -> Result<Captured> {
    let mut command = Command::new(&sniff.path);
    command
        .arg("-r")
        .arg(pcap)
        .args(["-p", "6666", "--format", receiver.output.as_str()])
        .stdin(Stdio::null());
    let mut process = Sniffer::spawn_command(command, StdoutTo::Lines)
        .with_context(|| format!("starting {}", sniff.path.display()))?;
    let status = process
        .try_wait(REPLAY_TIMEOUT)
        .map_err(|e| anyhow!("netcon-sniff ({receiver}): {e}"))?;
    finish(receiver, dir, &process, status)
}

/// Saves what a receiver printed under `dir`, and checks that it exited 0.
fn finish(
    receiver: Receiver,
    dir: &Path,
    process: &Sniffer,
    status: ExitStatus,
) -> Result<Captured> {
    let name = format!(
        "{}-{}{}",
        receiver.backend.as_str(),
        receiver.output.as_str(),
        if receiver.replay { "-replay" } else { "" }
    );
    let mut stdout = process.stdout_lines().join("\n");
    if !stdout.is_empty() {
        stdout.push('\n');
    }
    let stderr = process.stderr_text();
    let stdout_path = dir.join(format!("sniff-{name}.out"));
    fs::write(&stdout_path, &stdout)?;
    fs::write(dir.join(format!("sniff-{name}.err")), &stderr)?;
    ensure!(
        status.success(),
        "netcon-sniff ({receiver}) exited with {status}:\n{stderr}"
    );
    Ok(Captured {
        receiver,
        stdout,
        stderr,
        stdout_path,
    })
}

impl Running {
    /// Stops it the way a person would (SIGINT), and saves what it printed under `dir`.
    pub fn stop(mut self, dir: &Path) -> Result<Captured> {
        let status = self
            .process
            .try_stop(Signal::SIGINT, Duration::from_secs(10))
            .map_err(|e| anyhow!("netcon-sniff ({}): {e}", self.receiver))?;
        finish(self.receiver, dir, &self.process, status)
    }
}
