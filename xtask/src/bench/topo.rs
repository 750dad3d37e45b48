//! The bench's network: a sender namespace and a receiver namespace joined by one veth pair,
//! removed on drop (also on an error or a panic). Addresses only inside them: `10.N.0.0/16`
//! and `fd00:N::/64` with N = [`SUBNET`].

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, Result, ensure};

/// N of `10.N.0.0/16` and `fd00:N::/64` (the bench owns 90 to 99).
pub const SUBNET: u8 = 91;
/// Prefix of every namespace the bench creates: `nb-<pid>-<role>`.
const PREFIX: &str = "nb-";

/// A network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    fn new(role: &str) -> Result<Self> {
        let name = format!("{PREFIX}{}-{role}", std::process::id());
        ip(&["netns", "add", &name])?;
        let ns = Self { name };
        ns.ip(&["link", "set", "dev", "lo", "up"])?;
        Ok(ns)
    }

    /// Its name under `/run/netns`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// An open handle, for `setns`.
    pub fn file(&self) -> Result<File> {
        let path = format!("/run/netns/{}", self.name);
        File::open(&path).with_context(|| format!("opening {path}"))
    }

    /// `ip -n NAME ARGS...`.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// Sets a sysctl inside the namespace (`net.*` ones are per namespace).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        self.run_in(|| std::fs::write(&path, value))?
            .with_context(|| format!("setting {key}={value} in {}", self.name))
    }

    /// Runs `f` on a thread inside the namespace.
    pub fn run_in<R: Send>(&self, f: impl FnOnce() -> R + Send) -> Result<R> {
        let file = self.file()?;
        std::thread::scope(|s| {
            s.spawn(|| {
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                    .with_context(|| format!("setns into {}", self.name))?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// A file of `/proc/net` as this namespace sees it.
    pub fn proc_net(&self, file: &str) -> Result<String> {
        let path = format!("/proc/thread-self/net/{file}");
        self.run_in(|| std::fs::read_to_string(&path))?
            .with_context(|| format!("reading {path} in {}", self.name))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("xtask bench: {e:#}");
        }
    }
}

fn ip(args: &[&str]) -> Result<String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .with_context(|| format!("running `ip {}` (is iproute2 installed?)", args.join(" ")))?;
    ensure!(
        out.status.success(),
        "`ip {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Removes `nb-<pid>-*` namespaces whose process is gone (a bench killed before its
/// destructors ran). Never touches a live run's.
fn remove_stale() {
    let Ok(list) = ip(&["netns", "list"]) else {
        return;
    };
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("xtask bench: removing stale namespace {name}");
            let _ = ip(&["netns", "del", name]);
        }
    }
}

/// Sender and receiver namespaces and the veth pair between them.
#[derive(Debug)]
pub struct Topology {
    /// Where netcon-load runs.
    pub sender: Netns,
    /// Where the receivers run.
    pub receiver: Netns,
}

/// Receiver-side interface.
pub const RX_IF: &str = "nbc0";
/// Sender-side interface.
pub const TX_IF: &str = "nbs0";
/// MAC of the receiver's interface.
pub const RX_MAC: &str = "02:00:00:00:91:01";
/// MAC of the sender's interface.
pub const TX_MAC: &str = "02:00:00:00:91:02";

impl Topology {
    /// Creates both namespaces and the link, with ICMP errors switched off in the receiver's
    /// namespace: frames to a port nobody listens on would otherwise make it answer (and look
    /// up neighbours for) thousands of simulated senders, work no real collector does for
    /// netconsole senders.
    pub fn new() -> Result<Self> {
        remove_stale();
        let topo = Self {
            sender: Netns::new("tx")?,
            receiver: Netns::new("rx")?,
        };
        topo.receiver.ip(&[
            "link",
            "add",
            RX_IF,
            "address",
            RX_MAC,
            "type",
            "veth",
            "peer",
            "name",
            TX_IF,
            "address",
            TX_MAC,
            "netns",
            topo.sender.name(),
        ])?;
        for (ns, dev, v4, v6) in [
            (&topo.receiver, RX_IF, Self::rx_v4(), Self::rx_v6()),
            (&topo.sender, TX_IF, Self::tx_v4(), Self::tx_v6()),
        ] {
            ns.ip(&["addr", "add", &format!("{v4}/16"), "dev", dev])?;
            ns.ip(&["addr", "add", &format!("{v6}/64"), "dev", dev, "nodad"])?;
            ns.ip(&["link", "set", "dev", dev, "up"])?;
        }
        topo.receiver.sysctl("net.ipv4.icmp_msgs_per_sec", "0")?;
        topo.receiver.sysctl("net.ipv4.icmp_msgs_burst", "0")?;
        Ok(topo)
    }

    /// The receiver's IPv4 address.
    pub fn rx_v4() -> Ipv4Addr {
        Ipv4Addr::new(10, SUBNET, 0, 1)
    }

    /// The receiver's IPv6 address.
    pub fn rx_v6() -> Ipv6Addr {
        Ipv6Addr::new(0xfd00, u16::from(SUBNET), 0, 0, 0, 0, 0, 1)
    }

    fn tx_v4() -> Ipv4Addr {
        Ipv4Addr::new(10, SUBNET, 0, 2)
    }

    fn tx_v6() -> Ipv6Addr {
        Ipv6Addr::new(0xfd00, u16::from(SUBNET), 0, 0, 0, 0, 0, 2)
    }

    /// Sender 0's address; sender k has this plus k: `10.N.1.0` (up to 64,000 senders) or
    /// `fd00:N::1:0`.
    pub fn src_base(ipv6: bool) -> IpAddr {
        if ipv6 {
            IpAddr::V6(Ipv6Addr::new(0xfd00, u16::from(SUBNET), 0, 0, 0, 0, 1, 0))
        } else {
            IpAddr::V4(Ipv4Addr::new(10, SUBNET, 1, 0))
        }
    }
}
