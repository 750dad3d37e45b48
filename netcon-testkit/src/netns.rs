//! Network namespaces and veth pairs that remove themselves on drop, also when a test panics.
//!
//! Everything goes through `ip` (iproute2): simple, and its error messages are what a person
//! debugging a failed setup wants to see. Namespaces are named `nct-<pid>-<counter>-<role>`, so
//! parallel tests in one run and concurrent runs never clash, and namespaces left behind by a run
//! that was killed (no destructor ran) can be recognised and removed by the next run.
//!
//! Two flavours of every call: the plain one panics with the error (what a test wants), the
//! `try_`/`create` one returns a [`NetnsError`] (what xtask's bench and vm-test want, so that a
//! failed setup is an error with a hint rather than a panic).

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, Once, PoisonError};
use std::time::Duration;

use nix::sched::CloneFlags;

use crate::files::wait_until;
use crate::sender::FrameSender;

/// Prefix of every namespace this harness creates.
pub const NETNS_PREFIX: &str = "nct-";

static COUNTER: AtomicU32 = AtomicU32::new(0);
/// `ip netns add` mounts `/run/netns` on first use; serialise creation so that parallel tests in
/// one process never race on that.
static CREATE_LOCK: Mutex<()> = Mutex::new(());
static STALE_CLEANUP: Once = Once::new();

/// Why a namespace could not be set up or used.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// `ip` could not be started.
    #[error("cannot run `ip {args}`: {source} (is iproute2 installed?)")]
    Spawn {
        /// The arguments, space-separated.
        args: String,
        /// The OS error.
        source: io::Error,
    },
    /// `ip` ran and failed.
    #[error("`ip {args}` failed ({status}): {stderr}{}", root_hint(stderr))]
    Failed {
        /// The arguments, space-separated.
        args: String,
        /// Its exit status.
        status: ExitStatus,
        /// What it printed on stderr.
        stderr: String,
    },
    /// The namespace could not be entered (`setns`) or a file in it not read or written.
    #[error("{what} in namespace {netns}: {source}{}", errno_hint(source))]
    Io {
        /// What was done.
        what: String,
        /// The namespace's name.
        netns: String,
        /// The OS error.
        source: io::Error,
    },
}

fn root_hint(stderr: &str) -> &'static str {
    if stderr.contains("Operation not permitted") || stderr.contains("Permission denied") {
        " (network namespaces need root)"
    } else {
        ""
    }
}

fn errno_hint(error: &io::Error) -> &'static str {
    match error.raw_os_error() {
        Some(libc::EPERM | libc::EACCES) => " (needs root)",
        _ => "",
    }
}

/// Panics unless the process runs as root, with a message saying why root is needed.
///
/// # Panics
/// If not root.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "end-to-end tests need root (network namespaces, XDP)"
    );
}

/// Runs `ip ARGS...`, panicking with its stderr if it fails; returns its stdout.
///
/// # Panics
/// If `ip` cannot be started or exits non-zero.
#[must_use]
pub fn ip(args: &[&str]) -> String {
    try_ip(args).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs `ip ARGS...`; returns its stdout.
///
/// # Errors
/// [`NetnsError::Spawn`] or [`NetnsError::Failed`], with `ip`'s stderr.
pub fn try_ip(args: &[&str]) -> Result<String, NetnsError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|source| NetnsError::Spawn {
            args: args.join(" "),
            source,
        })?;
    if !out.status.success() {
        return Err(NetnsError::Failed {
            args: args.join(" "),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Names of all network namespaces (`ip netns list`), without the `(id: N)` suffix.
#[must_use]
pub fn netns_list() -> Vec<String> {
    ip(&["netns", "list"])
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// Removes `nct-<pid>-...` namespaces whose process no longer exists: left behind by a run
/// that was killed before its destructors ran. Namespaces of live processes are never touched.
fn remove_stale_namespaces() {
    let Ok(list) = try_ip(&["netns", "list"]) else {
        return;
    };
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(pid) = name
            .strip_prefix(NETNS_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!(
                "netcon-testkit: removing stale namespace {name} (its process {pid} is gone)"
            );
            let _ = try_ip(&["netns", "del", name]);
        }
    }
}

/// A network namespace, deleted on drop. Deleting it also deletes the veth ends inside it (and
/// with them their peers).
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates a namespace named `nct-<pid>-<counter>-<role>` with `lo` up.
    ///
    /// # Panics
    /// If not root or if `ip` fails.
    #[must_use]
    pub fn new(role: &str) -> Netns {
        require_root();
        Netns::create(role).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Creates a namespace named `nct-<pid>-<counter>-<role>` with `lo` up. The first call of a
    /// process also removes namespaces that runs killed before their clean-up left behind.
    ///
    /// # Errors
    /// When `ip` fails (not root, no iproute2).
    pub fn create(role: &str) -> Result<Netns, NetnsError> {
        STALE_CLEANUP.call_once(remove_stale_namespaces);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{NETNS_PREFIX}{}-{n}-{role}", std::process::id());
        {
            let _guard = CREATE_LOCK.lock().unwrap_or_else(PoisonError::into_inner);
            try_ip(&["netns", "add", &name])?;
        }
        // From here on the guard owns the namespace: an error or a panic below still removes it.
        let ns = Netns { name };
        ns.try_ip(&["link", "set", "dev", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name (as `ip netns` knows it).
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n NAME ARGS...` in this namespace, panicking with stderr on failure.
    ///
    /// # Panics
    /// If `ip` fails.
    #[expect(
        clippy::must_use_candidate,
        reason = "most callers run `ip` for its effect"
    )]
    pub fn ip(&self, args: &[&str]) -> String {
        self.try_ip(args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Runs `ip -n NAME ARGS...` in this namespace; returns its stdout.
    ///
    /// # Errors
    /// As [`try_ip`].
    pub fn try_ip(&self, args: &[&str]) -> Result<String, NetnsError> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        try_ip(&all)
    }

    /// `program` to be run inside this namespace (`ip netns exec NAME program`, which execs it:
    /// the child's pid is the program's).
    #[must_use]
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).arg(program);
        command
    }

    /// An open handle on the namespace (`/run/netns/NAME`), for `setns`.
    ///
    /// # Errors
    /// [`NetnsError::Io`] when it cannot be opened.
    pub fn file(&self) -> Result<File, NetnsError> {
        let path = format!("/run/netns/{}", self.name);
        File::open(&path).map_err(|source| self.io_error(format!("opening {path}"), source))
    }

    /// Runs `f` on a new thread that has entered this namespace, and returns its result.
    /// Sockets created in `f` stay in this namespace for their whole life, wherever they are
    /// used afterwards. A panic in `f` is propagated.
    ///
    /// # Panics
    /// If the namespace cannot be entered, or if `f` panics.
    pub fn run_in<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.try_run_in(f).unwrap_or_else(|e| panic!("{e}"))
    }

    /// As [`Netns::run_in`], with an error when the namespace cannot be entered.
    ///
    /// # Errors
    /// [`NetnsError::Io`] when the namespace cannot be opened or entered.
    pub fn try_run_in<R: Send>(&self, f: impl FnOnce() -> R + Send) -> Result<R, NetnsError> {
        let file = self.file()?;
        std::thread::scope(|s| {
            s.spawn(|| {
                nix::sched::setns(&file, CloneFlags::CLONE_NEWNET)
                    .map_err(|e| self.io_error("setns".to_owned(), e.into()))?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|payload| std::panic::resume_unwind(payload))
        })
    }

    /// A file of `/proc/net` (`snmp`, `udp6`, `packet`, ...) as this namespace sees it.
    ///
    /// # Errors
    /// [`NetnsError::Io`] when the namespace cannot be entered or the file read.
    pub fn proc_net(&self, file: &str) -> Result<String, NetnsError> {
        let path = format!("/proc/thread-self/net/{file}");
        self.try_run_in(|| std::fs::read_to_string(&path))?
            .map_err(|source| self.io_error(format!("reading {path}"), source))
    }

    /// Sets the sysctl `key` (dotted, as `sysctl` takes it) to `value` in this namespace: its
    /// file under `/proc/sys`, written from a thread inside (`net.*` ones are per namespace).
    ///
    /// # Errors
    /// [`NetnsError::Io`] when the namespace cannot be entered or the file written.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<(), NetnsError> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        self.try_run_in(|| std::fs::write(&path, value))?
            .map_err(|source| self.io_error(format!("setting {key}={value}"), source))
    }

    /// Creates a veth pair: `name` with `mac` here, `peer_name` with `peer_mac` in `peer`; both
    /// ends down and without addresses.
    ///
    /// # Errors
    /// When `ip` fails.
    pub fn add_veth(
        &self,
        (name, mac): (&str, Mac),
        peer: &Netns,
        (peer_name, peer_mac): (&str, Mac),
    ) -> Result<(), NetnsError> {
        self.try_ip(&[
            "link",
            "add",
            "name",
            name,
            "address",
            &mac_to_string(mac),
            "type",
            "veth",
            "peer",
            "name",
            peer_name,
            "address",
            &mac_to_string(peer_mac),
            "netns",
            peer.name(),
        ])
        .map(drop)
    }

    /// Creates a persistent tap device `name` with `mac` (one that qemu opens by name), down
    /// and without addresses.
    ///
    /// # Errors
    /// When `ip` fails.
    pub fn add_tap(&self, name: &str, mac: Mac) -> Result<(), NetnsError> {
        self.try_ip(&["tuntap", "add", "dev", name, "mode", "tap"])?;
        self.try_ip(&["link", "set", "dev", name, "address", &mac_to_string(mac)])
            .map(drop)
    }

    /// Gives `dev` the IPv4 address `v4/v4_prefix` and, if any, the IPv6 address `v6/64`
    /// (without duplicate address detection, so it is usable at once), and sets it up.
    ///
    /// # Errors
    /// When `ip` fails.
    pub fn add_addresses(
        &self,
        dev: &str,
        (v4, v4_prefix): (Ipv4Addr, u8),
        v6: Option<Ipv6Addr>,
    ) -> Result<(), NetnsError> {
        self.try_ip(&["addr", "add", &format!("{v4}/{v4_prefix}"), "dev", dev])?;
        if let Some(v6) = v6 {
            self.try_ip(&["addr", "add", &format!("{v6}/64"), "dev", dev, "nodad"])?;
        }
        self.try_ip(&["link", "set", "dev", dev, "up"]).map(drop)
    }

    fn io_error(&self, what: String, source: io::Error) -> NetnsError {
        NetnsError::Io {
            what,
            netns: self.name.clone(),
            source,
        }
    }

    /// `ip -d link show dev DEV` in this namespace.
    #[must_use]
    pub fn link_details(&self, dev: &str) -> String {
        self.ip(&["-d", "link", "show", "dev", dev])
    }

    /// The XDP attachment `ip` reports for `dev`: `Some("xdp")` (native/driver), `Some("xdpgeneric")`
    /// (SKB mode), `Some("xdpoffload")`, `Some("xdpmulti")`, or `None` when nothing is attached.
    #[must_use]
    pub fn xdp_attachment(&self, dev: &str) -> Option<String> {
        xdp_attachment_in(&self.link_summary(dev))
    }

    /// `ip link show dev DEV` in this namespace (without `-d`: only this form names the XDP mode).
    #[must_use]
    pub fn link_summary(&self, dev: &str) -> String {
        self.ip(&["link", "show", "dev", dev])
    }

    /// Whether any XDP program is attached to `dev`.
    #[must_use]
    pub fn xdp_attached(&self, dev: &str) -> bool {
        self.xdp_attachment(dev).is_some()
    }

    /// Polls until no XDP program is attached to `dev`, or panics with the link details after
    /// `timeout` (the kernel releases a `bpf_link` as the owning process's descriptors close).
    ///
    /// # Panics
    /// If a program is still attached at the deadline.
    pub fn wait_xdp_detached(&self, dev: &str, timeout: Duration) {
        wait_until(timeout, Duration::from_millis(50), || {
            let details = self.link_summary(dev);
            xdp_attachment_in(&details).map(|_| {
                format!(
                    "an XDP program is still attached to {dev} in {}:\n{details}",
                    self.name
                )
            })
        });
    }

    /// The interface index of `dev` in this namespace.
    ///
    /// # Panics
    /// If `ip` fails or prints no index.
    #[must_use]
    pub fn ifindex(&self, dev: &str) -> u32 {
        let line = self.ip(&["-o", "link", "show", "dev", dev]);
        line.split_once(':')
            .and_then(|(n, _)| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no interface index for {dev} in {line:?}"))
    }

    /// How many packet (`AF_PACKET`) sockets in this namespace are bound to `dev`, from
    /// `/proc/net/packet` as seen from inside the namespace.
    ///
    /// # Panics
    /// If the table cannot be read or parsed.
    #[must_use]
    pub fn packet_sockets_on(&self, dev: &str) -> usize {
        let ifindex = self.ifindex(dev);
        let table = self.proc_net("packet").unwrap_or_else(|e| panic!("{e}"));
        packet_sockets_in(&table)
            .unwrap_or_else(|| panic!("cannot parse /proc/net/packet:\n{table}"))
            .into_iter()
            .filter(|i| *i == ifindex)
            .count()
    }

    /// Polls until no packet socket is bound to `dev`, or panics after `timeout` (the kernel
    /// releases a socket as the owning process's descriptors close).
    ///
    /// # Panics
    /// If one is still bound at the deadline.
    pub fn wait_no_packet_sockets(&self, dev: &str, timeout: Duration) {
        wait_until(timeout, Duration::from_millis(50), || {
            let n = self.packet_sockets_on(dev);
            (n > 0).then(|| format!("{n} packet sockets still bound to {dev} in {}", self.name))
        });
    }

    /// The interface's promiscuity counter (`promiscuity N` in `ip -d link show`).
    ///
    /// # Panics
    /// If `ip` does not report it.
    #[must_use]
    pub fn promiscuity(&self, dev: &str) -> u32 {
        let details = self.link_details(dev);
        promiscuity_in(&details).unwrap_or_else(|| {
            panic!("no `promiscuity N` in `ip -d link show dev {dev}`:\n{details}")
        })
    }

    /// Polls until the promiscuity counter of `dev` equals `want`, or panics after `timeout`.
    ///
    /// # Panics
    /// If it does not get there in time.
    pub fn wait_promiscuity(&self, dev: &str, want: u32, timeout: Duration) {
        wait_until(timeout, Duration::from_millis(50), || {
            let got = self.promiscuity(dev);
            (got != want).then(|| format!("promiscuity of {dev} is {got}, expected {want}"))
        });
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Never panic here: this also runs while unwinding from a failed assertion.
        if let Err(e) = try_ip(&["netns", "del", &self.name]) {
            eprintln!("netcon-testkit: {e}");
        }
    }
}

fn xdp_attachment_in(details: &str) -> Option<String> {
    // `ip link show` names the mode as a word on the first line (`... mtu 1500 xdpgeneric qdisc
    // ...`); `ip -d link show` omits that word and prints `prog/xdp id N` instead
    // (iproute2 ip/iplink_xdp.c, xdp_dump). Either is enough to tell that something is attached.
    for word in details.split_whitespace() {
        if matches!(
            word,
            "xdp" | "xdpgeneric" | "xdpdrv" | "xdpoffload" | "xdpmulti"
        ) {
            return Some(word.to_owned());
        }
    }
    details
        .split_whitespace()
        .find(|w| w.starts_with("prog/xdp"))
        .map(|w| w.trim_start_matches("prog/").to_owned())
}

/// The interface index column of every socket in `/proc/net/packet`
/// (`sk RefCnt Type Proto Iface R Rmem User Inode`, `net/packet/af_packet.c`, `packet_seq_show`).
fn packet_sockets_in(table: &str) -> Option<Vec<u32>> {
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next()?.split_whitespace().collect();
    let column = header.iter().position(|h| *h == "Iface")?;
    lines
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split_whitespace().nth(column)?.parse().ok())
        .collect()
}

fn promiscuity_in(details: &str) -> Option<u32> {
    let mut words = details.split_whitespace();
    while let Some(w) = words.next() {
        if w == "promiscuity" {
            return words.next()?.parse().ok();
        }
    }
    None
}

/// A MAC address.
pub type Mac = [u8; 6];

/// Ethernet broadcast.
pub const BROADCAST_MAC: Mac = [0xff; 6];
/// The IPv6 all-nodes multicast MAC (`33:33:00:00:00:01`).
pub const ALL_NODES_MAC: Mac = [0x33, 0x33, 0, 0, 0, 1];

/// Formats a MAC as `aa:bb:cc:dd:ee:ff`.
#[must_use]
pub fn mac_to_string(mac: Mac) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// One veth pair between a sender namespace and the collector namespace, on subnet N:
/// `10.N.0.0/24` and `fd00:N::/64`, sender `.10`/`::10`, collector `.1`/`::1`.
#[derive(Debug, Clone)]
pub struct Link {
    /// N in `10.N.0.0/24` and `fd00:N::/64` (1-based).
    pub subnet: u8,
    /// Index of the sender namespace in [`Topology::senders`].
    pub sender: usize,
    /// Interface name on the sender side (`veth-sN`).
    pub sender_if: String,
    /// Interface name on the collector side (`veth-cN`).
    pub collector_if: String,
    /// `02:00:00:00:N:10`.
    pub sender_mac: Mac,
    /// `02:00:00:00:N:01`.
    pub collector_mac: Mac,
    /// `10.N.0.10`
    pub sender_v4: Ipv4Addr,
    /// `10.N.0.1`
    pub collector_v4: Ipv4Addr,
    /// `fd00:N::10`
    pub sender_v6: Ipv6Addr,
    /// `fd00:N::1`
    pub collector_v6: Ipv6Addr,
}

impl Link {
    /// The addresses of subnet N, the link of sender namespace `sender`.
    pub(crate) fn new(subnet: u8, sender: usize) -> Link {
        let n = subnet;
        let hextet = u16::from(n);
        Link {
            subnet,
            sender,
            sender_if: format!("veth-s{n}"),
            collector_if: format!("veth-c{n}"),
            sender_mac: [0x02, 0, 0, 0, n, 0x10],
            collector_mac: [0x02, 0, 0, 0, n, 0x01],
            sender_v4: Ipv4Addr::new(10, n, 0, 10),
            collector_v4: Ipv4Addr::new(10, n, 0, 1),
            sender_v6: Ipv6Addr::new(0xfd00, hextet, 0, 0, 0, 0, 0, 0x10),
            collector_v6: Ipv6Addr::new(0xfd00, hextet, 0, 0, 0, 0, 0, 0x1),
        }
    }

    /// An address on the link's subnet that no namespace owns: `10.N.0.99`.
    #[must_use]
    pub fn foreign_v4(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.subnet, 0, 99)
    }

    /// An address on the link's subnet that no namespace owns: `fd00:N::99`.
    #[must_use]
    pub fn foreign_v6(&self) -> Ipv6Addr {
        Ipv6Addr::new(0xfd00, u16::from(self.subnet), 0, 0, 0, 0, 0, 0x99)
    }

    /// A unicast MAC that no interface has: `02:00:00:00:N:99` (a mirror port's view).
    #[must_use]
    pub fn foreign_mac(&self) -> Mac {
        [0x02, 0, 0, 0, self.subnet, 0x99]
    }
}

/// A collector namespace `c0` linked by veth pairs to one or more sender namespaces `sK`.
/// Dropping it removes every namespace (and so every veth).
#[derive(Debug)]
pub struct Topology {
    /// Where `netcon-sniff` runs.
    pub collector: Netns,
    /// Where frames are sent from, one namespace per link.
    pub senders: Vec<Netns>,
    /// The veth pairs; link `k` is on subnet `k + 1` and connects `senders[k]` to the collector.
    pub links: Vec<Link>,
}

impl Topology {
    /// One sender namespace linked to the collector (subnet 1).
    #[must_use]
    pub fn new() -> Topology {
        Topology::with_links(1)
    }

    /// `n` sender namespaces, each with its own veth pair to the collector, so the collector has
    /// `n` interfaces (`veth-c1` ... `veth-cN`).
    ///
    /// # Panics
    /// If `n` is 0 or above 200, or if any `ip` command fails (everything created so far is
    /// removed).
    #[must_use]
    pub fn with_links(n: usize) -> Topology {
        assert!(
            (1..=200).contains(&n),
            "Topology::with_links({n}): 1 to 200 links"
        );
        let mut topo = Topology {
            collector: Netns::new("c0"),
            senders: Vec::with_capacity(n),
            links: Vec::with_capacity(n),
        };
        for k in 0..n {
            let subnet = u8::try_from(k + 1).expect("at most 200 links");
            topo.senders.push(Netns::new(&format!("s{k}")));
            let link = Link::new(subnet, k);
            topo.add_link(&link);
            topo.links.push(link);
        }
        topo
    }

    /// One sender namespace linked to the collector on subnet `subnet` (10.N.0.0/24,
    /// `fd00:N::/64`; interfaces `veth-sN` and `veth-cN`), for test files that keep to a subnet
    /// range of their own.
    ///
    /// # Panics
    /// If an `ip` command fails (everything created so far is removed).
    #[must_use]
    pub fn on_subnet(subnet: u8) -> Topology {
        // The guard owns both namespaces before the link exists: a failure below removes them.
        let mut topo = Topology {
            collector: Netns::new("c0"),
            senders: vec![Netns::new("s0")],
            links: Vec::with_capacity(1),
        };
        let link = Link::new(subnet, 0);
        topo.add_link(&link);
        topo.links.push(link);
        topo
    }

    fn add_link(&self, link: &Link) {
        let c = &self.collector;
        let s = &self.senders[link.sender];
        c.add_veth(
            (&link.collector_if, link.collector_mac),
            s,
            (&link.sender_if, link.sender_mac),
        )
        .and_then(|()| {
            c.add_addresses(
                &link.collector_if,
                (link.collector_v4, 24),
                Some(link.collector_v6),
            )
        })
        .and_then(|()| s.add_addresses(&link.sender_if, (link.sender_v4, 24), Some(link.sender_v6)))
        .unwrap_or_else(|e| panic!("{e}"));
    }

    /// The single link of a one-link topology (or the first).
    #[must_use]
    pub fn link(&self) -> &Link {
        &self.links[0]
    }

    /// The sender namespace of `link`.
    #[must_use]
    pub fn sender_ns(&self, link: &Link) -> &Netns {
        &self.senders[link.sender]
    }

    /// A frame sender on the sender side of `link`.
    #[must_use]
    pub fn sender(&self, link: &Link) -> FrameSender {
        FrameSender::open(self.sender_ns(link), &link.sender_if)
    }

    /// Names of all namespaces of this topology.
    #[must_use]
    pub fn namespace_names(&self) -> Vec<String> {
        std::iter::once(&self.collector)
            .chain(&self.senders)
            .map(|ns| ns.name().to_owned())
            .collect()
    }
}

impl Default for Topology {
    fn default() -> Self {
        Topology::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_xdp_attachment() {
        let none = "3: veth-c1@if2: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue state UP\n    link/ether 02:00:00:00:01:01 brd ff:ff:ff:ff:ff:ff promiscuity 0 allmulti 0";
        assert_eq!(xdp_attachment_in(none), None);
        let generic = "3: veth-c1@if2: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 xdpgeneric qdisc noqueue\n    link/ether 02:00:00:00:01:01 brd ff:ff:ff:ff:ff:ff promiscuity 1\n    prog/xdp id 42 name netcon tag 0123456789abcdef jited";
        assert_eq!(xdp_attachment_in(generic).as_deref(), Some("xdpgeneric"));
        let native = "3: veth-c1@if2: <UP> mtu 1500 xdp qdisc noqueue\n    prog/xdp id 7";
        assert_eq!(xdp_attachment_in(native).as_deref(), Some("xdp"));
        assert_eq!(
            xdp_attachment_in("mtu 1500\n prog/xdp id 7").as_deref(),
            Some("xdp")
        );
    }

    #[test]
    fn parses_packet_sockets() {
        let table = "sk               RefCnt Type Proto  Iface R Rmem   User   Inode\n\
                     ffff8f0a4b0e6000 3      3    0003   2     1 0      0      123\n\
                     ffff8f0a4b0e7000 3      3    0000   7     0 0      0      124\n";
        assert_eq!(packet_sockets_in(table), Some(vec![2, 7]));
        assert_eq!(
            packet_sockets_in("sk RefCnt Type Proto Iface R Rmem User Inode\n"),
            Some(vec![])
        );
        assert_eq!(packet_sockets_in("sk RefCnt\nffff 3\n"), None);
    }

    #[test]
    fn parses_promiscuity() {
        assert_eq!(
            promiscuity_in("brd ff:ff:ff:ff:ff:ff promiscuity 2  allmulti 0"),
            Some(2)
        );
        assert_eq!(promiscuity_in("brd ff:ff:ff:ff:ff:ff"), None);
    }

    #[test]
    fn link_addresses() {
        let l = Link::new(3, 0);
        assert_eq!(l.collector_v4.to_string(), "10.3.0.1");
        assert_eq!(l.sender_v6.to_string(), "fd00:3::10");
        assert_eq!(l.foreign_v6().to_string(), "fd00:3::99");
        assert_eq!(mac_to_string(l.collector_mac), "02:00:00:00:03:01");
    }
}
