//! The real `netcon-sniff`, run in the collector namespace on the tap.

use std::{
    fmt, fs,
    io::{BufRead as _, BufReader, Read as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use nix::sys::signal::Signal;

use super::{
    host::Sniff,
    netns::{Guarded, Netns},
};

/// How long netcon-sniff may take to load its program and attach.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

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
    process: Guarded,
    stdout: Option<JoinHandle<Vec<u8>>>,
    stderr: Option<JoinHandle<String>>,
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
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", sniff.path.display()))?;
    let mut out = child.stdout.take().context("stdout")?;
    let err = child.stderr.take().context("stderr")?;
    let process = Guarded::new(child, format!("netcon-sniff ({receiver})"));
    let stdout = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out.read_to_end(&mut buf);
        buf
    });
    let (tx, rx) = mpsc::channel::<String>();
    let stderr = thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx.send(line.clone());
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let mut running = Running {
        receiver,
        process,
        stdout: Some(stdout),
        stderr: Some(stderr),
    };
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) if line.contains("listening on") => return Ok(running),
            Ok(_) | Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let stderr = running.finish_stderr();
                bail!("netcon-sniff ({receiver}) exited before listening:\n{stderr}");
            }
        }
        if Instant::now() >= deadline {
            let _ = running
                .process
                .stop(Signal::SIGKILL, Duration::from_secs(5));
            let stderr = running.finish_stderr();
            bail!(
                "netcon-sniff ({receiver}) did not say `listening on` within {READY_TIMEOUT:?}:\n{stderr}"
            );
        }
    }
}

/// Runs `receiver` (a replay) over `pcap`, the live receiver's capture, saving its output
/// under `dir`.
pub fn replay(sniff: &Sniff, receiver: Receiver, pcap: &Path, dir: &Path) -> Result<Captured> {
    let out = Command::new(&sniff.path)
        .arg("-r")
        .arg(pcap)
        .args(["-p", "6666", "--format", receiver.output.as_str()])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("starting {}", sniff.path.display()))?;
    save(
        receiver,
        dir,
        &out.stdout,
        &String::from_utf8_lossy(&out.stderr),
    )
    .and_then(|c| {
        ensure!(
            out.status.success(),
            "netcon-sniff ({receiver}) exited with {}:\n{}",
            out.status,
            c.stderr
        );
        Ok(c)
    })
}

/// Saves what a receiver printed under `dir`.
fn save(receiver: Receiver, dir: &Path, stdout: &[u8], stderr: &str) -> Result<Captured> {
    let name = format!(
        "{}-{}{}",
        receiver.backend.as_str(),
        receiver.output.as_str(),
        if receiver.replay { "-replay" } else { "" }
    );
    let stdout_path = dir.join(format!("sniff-{name}.out"));
    fs::write(&stdout_path, stdout)?;
    fs::write(dir.join(format!("sniff-{name}.err")), stderr)?;
    Ok(Captured {
        receiver,
        stdout: String::from_utf8(stdout.to_vec()).context("netcon-sniff printed invalid UTF-8")?,
        stderr: stderr.to_owned(),
        stdout_path,
    })
}

impl Running {
    fn finish_stderr(&mut self) -> String {
        let _ = self.process.try_wait();
        self.stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }

    /// Stops it the way a person would (SIGINT), and saves what it printed under `dir`.
    pub fn stop(mut self, dir: &Path) -> Result<Captured> {
        let status = self.process.stop(Signal::SIGINT, Duration::from_secs(10))?;
        let stdout = self
            .stdout
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        let stderr = self.finish_stderr();
        let captured = save(self.receiver, dir, &stdout, &stderr)?;
        ensure!(
            status.success(),
            "netcon-sniff ({}) exited with {status}:\n{stderr}",
            self.receiver
        );
        Ok(captured)
    }
}
