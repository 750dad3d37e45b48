//! The collector network namespace and the processes run in it, each removed or ended on drop,
//! also when the test fails.

use std::{
    fs,
    process::{Child, Command, ExitStatus},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use super::cmd_status;

/// Every namespace this test makes is named `netcon-vm-<pid>-<net>`.
const PREFIX: &str = "netcon-vm-";

/// A network namespace holding one tap device with the collector's address.
pub struct Netns {
    pub name: String,
    pub tap: String,
}

impl Netns {
    /// Creates `netcon-vm-<pid>-<net>` with a persistent tap `nct<net>` (MAC `mac`, address
    /// `addr/24`) that qemu opens by name. Nothing outside the namespace is touched.
    pub fn create(net: u8, mac: &str, addr: &str) -> Result<Self> {
        let name = format!("{PREFIX}{}-{net}", std::process::id());
        let tap = format!("nct{net}");
        cmd_status(Command::new("ip").args(["netns", "add", &name]))
            .context("creating a network namespace (needs root)")?;
        // From here on, drop removes it.
        let ns = Self { name, tap };
        for args in [
            vec!["link", "set", "lo", "up"],
            vec!["tuntap", "add", "dev", &ns.tap, "mode", "tap"],
            vec!["link", "set", &ns.tap, "address", mac],
            vec!["addr", "add", &format!("{addr}/24"), "dev", &ns.tap],
            vec!["link", "set", &ns.tap, "up"],
        ] {
            cmd_status(Command::new("ip").args(["-n", &ns.name]).args(&args))?;
        }
        Ok(ns)
    }

    /// `program` run inside the namespace (`ip netns exec` execs it: its pid is the program's).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Removes namespaces of earlier runs of this test whose process is gone (a run killed
    /// before its drop ran).
    pub fn remove_stale() {
        let Ok(entries) = fs::read_dir("/run/netns") else {
            return;
        };
        for entry in entries.filter_map(Result::ok) {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(pid) = name
                .strip_prefix(PREFIX)
                .and_then(|rest| rest.split('-').next())
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            if pid != std::process::id() && !fs::exists(format!("/proc/{pid}")).unwrap_or(true) {
                eprintln!("vm-test: removing stale namespace {name}");
                let _ = Command::new("ip").args(["netns", "del", &name]).status();
            }
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["-n", &self.name, "link", "del", &self.tap])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A child process that is killed (by its pid) if it is still running when dropped.
pub struct Guarded {
    child: Option<Child>,
    what: String,
}

impl Guarded {
    pub fn new(child: Child, what: impl Into<String>) -> Self {
        Self {
            child: Some(child),
            what: what.into(),
        }
    }

    pub fn pid(&self) -> Option<Pid> {
        self.child
            .as_ref()
            .and_then(|c| i32::try_from(c.id()).ok())
            .map(Pid::from_raw)
    }

    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        match &mut self.child {
            Some(c) => c
                .try_wait()
                .with_context(|| format!("waiting for {}", self.what)),
            None => Ok(None),
        }
    }

    /// Waits until the process exits or `deadline` passes; `None` on the deadline.
    pub fn wait_until(&mut self, deadline: Instant) -> Result<Option<ExitStatus>> {
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal`, then waits up to `grace` before killing it.
    pub fn stop(&mut self, signal: Signal, grace: Duration) -> Result<ExitStatus> {
        if let Some(pid) = self.pid() {
            let _ = kill(pid, signal);
        }
        if let Some(status) = self.wait_until(Instant::now() + grace)? {
            return Ok(status);
        }
        eprintln!(
            "vm-test: {} did not stop within {grace:?} of {signal}: killing it",
            self.what
        );
        self.kill_now()
    }

    fn kill_now(&mut self) -> Result<ExitStatus> {
        let child = self.child.as_mut().context("no child")?;
        let _ = child.kill();
        child
            .wait()
            .with_context(|| format!("waiting for {}", self.what))
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        if matches!(self.try_wait(), Ok(None)) {
            let _ = self.kill_now();
        }
    }
}
