//! The collector network namespace and the processes run in it, each removed or ended on drop,
//! also when the test fails.

use std::{
    net::Ipv4Addr,
    process::{Child, Command, ExitStatus},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use netcon_testkit::frame::parse_mac;
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

/// A network namespace (`netcon_testkit`'s guard) holding one tap device with the collector's
/// address.
pub struct Netns {
    /// The tap device qemu opens by name: `nct<net>`.
    pub tap: String,
    netns: netcon_testkit::Netns,
}

impl Netns {
    /// Creates a namespace with a persistent tap `nct<net>` (MAC `mac`, address `addr/24`) that
    /// qemu opens by name. Nothing outside the namespace is touched.
    pub fn create(net: u8, mac: &str, addr: &str) -> Result<Self> {
        let mac = parse_mac(mac).map_err(anyhow::Error::msg)?;
        let addr: Ipv4Addr = addr
            .parse()
            .with_context(|| format!("collector address {addr:?}"))?;
        let ns = Self {
            tap: format!("nct{net}"),
            netns: netcon_testkit::Netns::create(&format!("vm{net}"))
                .context("creating a network namespace (needs root)")?,
        };
        ns.netns.add_tap(&ns.tap, mac)?;
        ns.netns.add_addresses(&ns.tap, (addr, 24), None)?;
        Ok(ns)
    }

    /// The namespace itself, for what runs inside it.
    pub fn netns(&self) -> &netcon_testkit::Netns {
        &self.netns
    }

    /// `program` run inside the namespace (`ip netns exec` execs it: its pid is the program's).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        self.netns.command(program)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // The tap first, explicitly: a namespace outlives `ip netns del` while a process
        // (a qemu that failed to die) is still in it, and with it the device.
        let _ = self.netns.try_ip(&["link", "del", &self.tap]);
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
