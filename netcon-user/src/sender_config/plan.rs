//! The decision, without I/O: from what the kernel said about the route, the links and the next
//! hop's neighbour entry to a netconsole target and the warnings that go with it.
//!
//! Kernel facts this relies on:
//! - netconsole builds Ethernet frames itself and never resolves a MAC: it sends to the
//!   configured `remote_mac`, broadcast `ff:ff:ff:ff:ff:ff` when none is given
//!   (`Documentation/networking/netconsole.rst`). Behind a router that MAC is the gateway's.
//! - netpoll refuses a device that has a master (`netpoll_setup()` in `net/core/netpoll.c`:
//!   "%s is a slave device, aborting"), so a bond, bridge or team is named itself; it then
//!   sends through its ports, which must all support netpoll.
//! - A boot-time target (the kernel command line) is set up before userspace has created any
//!   bond, bridge, team or VLAN device, so it can only name a device the kernel finds by itself.
//! - `r` (prepend the release) is accepted only after `+` (`drivers/net/netconsole.c`), and
//!   only by kernels 6.6 and later.
//! - From 7.0 on netconsole is an nbcon console (`drivers/net/netconsole.c`: `CON_NBCON |
//!   CON_NBCON_ATOMIC_UNSAFE`). During a panic such a console is written only by
//!   `nbcon_atomic_flush_unsafe()` (`kernel/printk/nbcon.c`; `console_is_usable()` in
//!   `include/linux/console.h` refuses its `write_atomic()` anywhere else), and `panic()`
//!   (`kernel/panic.c`) calls that only at its very end, after `emergency_restart()` for any
//!   `kernel.panic` other than 0. So with `kernel.panic` -1 or N > 0, however many seconds N is
//!   (the countdown only waits), the report never leaves the machine; with 0 the machine halts
//!   and the whole report goes out at the end, in one burst. `cargo xtask vm-test` crashes real
//!   kernels to show it: 6.1 and 6.12 (legacy consoles, printed as the report is written)
//!   deliver it with `kernel.panic` 1 and 0; 7.x delivers nothing with 3, everything with 0.
//!   With -1 a legacy console's last lines can be lost too: the reset comes the instant they
//!   are written, while they are still in the network card's queue (6.12: the last 7 to 10 lines in 2 runs of 5).

use std::fmt;
use std::net::IpAddr;

use serde::Serialize;

/// A MAC address, printed `aa:bb:cc:dd:ee:ff`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// `ff:ff:ff:ff:ff:ff`, netconsole's default `remote_mac`.
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);

    /// A MAC from a netlink attribute: `None` unless it is 6 bytes and not all zero.
    #[must_use]
    pub fn from_slice(bytes: &[u8]) -> Option<MacAddr> {
        let mac: [u8; 6] = bytes.try_into().ok()?;
        (mac != [0; 6]).then_some(MacAddr(mac))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, byte) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// What the user asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The collector's address.
    pub target: IpAddr,
    /// The collector's UDP port.
    pub target_port: u16,
    /// netconsole's UDP source port.
    pub src_port: u16,
    /// `+`: the extended format.
    pub extended: bool,
    /// `r`: prepend the kernel release (needs `extended`).
    pub release: bool,
    /// The configfs target directory's name.
    pub name: String,
    /// The output device the user named (`--dev` or a `%DEV` zone), if any.
    pub dev: Option<String>,
}

/// The route type of the kernel's answer to RTM_GETROUTE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteKind {
    /// A unicast route: the normal case.
    Unicast,
    /// The target is an address of this machine.
    Local,
    /// Anything else (`broadcast`, `multicast`, `anycast`...), by name.
    Other(String),
}

/// The kernel's route to the target (`ip route get TARGET`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Its type.
    pub kind: RouteKind,
    /// Output interface index (`RTA_OIF`).
    pub oif: Option<u32>,
    /// Preferred source address (`RTA_PREFSRC`).
    pub source: Option<IpAddr>,
    /// Gateway (`RTA_GATEWAY`, or `RTA_VIA`); `None` when the target is on-link.
    pub gateway: Option<IpAddr>,
}

/// The kind of a virtual device, from `IFLA_INFO_KIND`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkKind {
    /// `bridge`.
    Bridge,
    /// `bond`.
    Bond,
    /// `team`.
    Team,
    /// `vlan` (802.1Q / 802.1ad).
    Vlan,
    /// Any other kind (`veth`, `macvlan`, ...).
    Other(String),
}

impl LinkKind {
    fn noun(&self) -> &str {
        match self {
            LinkKind::Bridge => "bridge",
            LinkKind::Bond => "bond",
            LinkKind::Team => "team",
            LinkKind::Vlan => "VLAN",
            LinkKind::Other(kind) => kind,
        }
    }
}

/// One network interface (RTM_GETLINK).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// `IFLA_INFO_KIND`, when the device has one.
    pub kind: Option<LinkKind>,
    /// `ARPHRD_*` link type (1 is Ethernet).
    pub link_type: u16,
    /// Its own MAC address.
    pub mac: Option<MacAddr>,
    /// `IFLA_MASTER`: the bond, bridge or team it is enslaved to.
    pub master: Option<u32>,
    /// `IFLA_LINK`: the lower device of a VLAN (or a veth's peer, in another namespace).
    pub lower: Option<u32>,
    /// `IFF_UP`.
    pub up: bool,
}

/// `ARPHRD_ETHER` (`include/uapi/linux/if_arp.h`).
pub const ARPHRD_ETHER: u16 = 1;

/// A neighbour-table entry's state (`NUD_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NeighbourState {
    /// Resolution in progress.
    Incomplete,
    /// Confirmed recently.
    Reachable,
    /// Known, not confirmed recently: still the right MAC to use.
    Stale,
    /// Waiting for confirmation.
    Delay,
    /// Being re-confirmed.
    Probe,
    /// Resolution failed: the host did not answer.
    Failed,
    /// The device does not use ARP/NDP.
    Noarp,
    /// Set by hand.
    Permanent,
    /// No state, or one this program does not know.
    None,
}

impl NeighbourState {
    fn has_mac(self) -> bool {
        matches!(
            self,
            NeighbourState::Reachable
                | NeighbourState::Stale
                | NeighbourState::Delay
                | NeighbourState::Probe
                | NeighbourState::Permanent
        )
    }
}

impl fmt::Display for NeighbourState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // As `ip neigh` prints them.
        f.write_str(match self {
            NeighbourState::Incomplete => "INCOMPLETE",
            NeighbourState::Reachable => "REACHABLE",
            NeighbourState::Stale => "STALE",
            NeighbourState::Delay => "DELAY",
            NeighbourState::Probe => "PROBE",
            NeighbourState::Failed => "FAILED",
            NeighbourState::Noarp => "NOARP",
            NeighbourState::Permanent => "PERMANENT",
            NeighbourState::None => "NONE",
        })
    }
}

/// The next hop's neighbour-table entry (RTM_GETNEIGH).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Neighbour {
    /// `NUD_*` state.
    pub state: NeighbourState,
    /// `NDA_LLADDR`.
    pub mac: Option<MacAddr>,
}

impl Neighbour {
    /// The MAC to send to, if this entry has a usable one.
    #[must_use]
    pub fn usable_mac(&self) -> Option<MacAddr> {
        self.mac.filter(|_| self.state.has_mac())
    }
}

/// Whether a neighbour entry is good enough to stop waiting for resolution.
#[must_use]
pub fn is_resolved(entry: Option<&Neighbour>) -> bool {
    entry.and_then(Neighbour::usable_mac).is_some()
}

/// Everything the kernel said, gathered by the netlink shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    /// The route to the target.
    pub route: Route,
    /// Every interface.
    pub links: Vec<Link>,
    /// The next hop's neighbour entry after resolution was tried (`None`: no entry at all).
    pub neighbour: Option<Neighbour>,
    /// How long resolution was waited for, in milliseconds (0: the entry was already there).
    pub waited_ms: u64,
    /// This kernel's release (`/proc/sys/kernel/osrelease`), when known.
    pub kernel_release: Option<String>,
    /// `kernel.panic` (`/proc/sys/kernel/panic`): 0 halts on panic, N > 0 reboots after N
    /// seconds, N < 0 at once.
    pub kernel_panic: Option<i64>,
    /// Whether the registered netconsole console is an nbcon one (its `/proc/consoles` flags
    /// hold `N`); `None` when netconsole is not loaded, so the release decides.
    pub netconsole_nbcon: Option<bool>,
    /// Every interface address, as (interface index, address) (RTM_GETADDR).
    pub addresses: Vec<(u32, IpAddr)>,
}

/// What a warning is about; stable names for scripts (`--format json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WarningKind {
    /// The next hop's MAC is unknown: the configuration broadcasts.
    UnresolvedNeighbour,
    /// The output device is a bond, bridge or team.
    AggregateDevice,
    /// The output device is a VLAN device.
    VlanDevice,
    /// The source address belongs to another device than the output device (a VLAN on top
    /// of it, say): the frames would leave untagged, onto another segment.
    SourceOnOtherDevice,
    /// The target is an IPv6 link-local address and the device was picked by the route lookup.
    LinkLocalTarget,
    /// The output device is down.
    DeviceDown,
    /// `--release` and a kernel older than 6.6: the line leaves `r` out.
    ReleaseUnsupported,
    /// An nbcon netconsole (7.0 and later) and a `kernel.panic` that reboots: the crash report
    /// never leaves the machine.
    CrashReportLost,
    /// `kernel.panic` below 0 on a legacy netconsole: the reset can drop the report's last
    /// lines from the network card's queue.
    CrashReportCut,
    /// The device name cannot be written in the `netconsole=` string.
    DeviceNameUnsafe,
}

/// A warning: a kind for scripts and a message for a person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Warning {
    /// What it is about.
    pub kind: WarningKind,
    /// What is wrong and what to do.
    pub message: String,
}

/// A netconsole target for this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SenderConfig {
    /// configfs target name.
    pub name: String,
    /// `+`.
    pub extended: bool,
    /// `r`.
    pub release: bool,
    /// `local_ip`.
    pub src_ip: IpAddr,
    /// `local_port`.
    pub src_port: u16,
    /// `dev_name`.
    pub dev: String,
    /// The device's own MAC (`local_mac`, read-only in configfs): for reference.
    pub dev_mac: Option<MacAddr>,
    /// `remote_ip`.
    pub target: IpAddr,
    /// `remote_port`.
    pub target_port: u16,
    /// The gateway when the target is routed, `None` when on-link.
    pub gateway: Option<IpAddr>,
    /// The address whose MAC is `remote_mac`: the gateway or the target.
    pub next_hop: IpAddr,
    /// The next hop's neighbour state as last seen, `None` when there was no entry.
    pub neighbour_state: Option<NeighbourState>,
    /// `remote_mac`; `None`: unresolved, broadcast.
    pub target_mac: Option<MacAddr>,
    /// How long resolution was waited for, in milliseconds.
    pub waited_ms: u64,
    /// Everything worth knowing before pasting.
    pub warnings: Vec<Warning>,
}

/// Why no configuration can be made from the facts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// `r` without `+`.
    #[error(
        "--release needs --extended: the kernel prepends the release only to extended messages \
         (netconsole accepts `r` only after `+`)"
    )]
    ReleaseWithoutExtended,
    /// The target is this machine.
    #[error(
        "{target} is an address of this machine: run sender-config on the machine to be logged, \
         with the collector's address as --target"
    )]
    TargetIsLocal {
        /// The target.
        target: IpAddr,
    },
    /// A route type netconsole cannot use.
    #[error("the route to {target} is of type {kind}, not unicast: check `ip route get {target}`")]
    NotUnicast {
        /// The target.
        target: IpAddr,
        /// The route type.
        kind: String,
    },
    /// No output interface in the route.
    #[error("the kernel's route to {target} names no output device: check `ip route get {target}`")]
    NoDevice {
        /// The target.
        target: IpAddr,
    },
    /// The route's interface index is not among the links.
    #[error(
        "the route to {target} goes out interface index {index}, which no longer exists: retry"
    )]
    UnknownLink {
        /// The target.
        target: IpAddr,
        /// The route's `RTA_OIF`.
        index: u32,
    },
    /// The output device is not Ethernet.
    #[error(
        "the route to {target} goes out {dev}, which is not an Ethernet device (ARPHRD {link_type}): \
         netconsole sends Ethernet frames only; route the target over an Ethernet interface or \
         pick one with --dev"
    )]
    NotEthernet {
        /// The target.
        target: IpAddr,
        /// The device.
        dev: String,
        /// Its `ARPHRD_*` type.
        link_type: u16,
    },
    /// The output device is a port of a bond, bridge or team.
    #[error(
        "{dev} is enslaved to {master}: netpoll refuses a port (\"{dev} is a slave device, \
         aborting\"; 6.1 then fails to load netconsole with EBUSY, 6.12 and later load it but log \
         \"Netpoll setup failed\" and send nothing), and the next hop's MAC is in {master}'s \
         neighbour table, not {dev}'s: name the master, --dev {master_name}"
    )]
    EnslavedDevice {
        /// The port.
        dev: String,
        /// `bond bond0`, as said.
        master: String,
        /// `bond0`.
        master_name: String,
    },
    /// No source address.
    #[error(
        "the route to {target} via {dev} has no source address: give {dev} an address of the \
         target's family"
    )]
    NoSource {
        /// The target.
        target: IpAddr,
        /// The device.
        dev: String,
    },
}

fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.is_unicast_link_local(),
    }
}

/// `(major, minor)` of a release such as `6.12.95+deb12-amd64`.
fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

fn names(links: &[&Link]) -> String {
    links
        .iter()
        .map(|l| l.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn device_warnings(dev: &Link, links: &[Link], warnings: &mut Vec<Warning>) {
    let by_index = |index: u32| links.iter().find(|l| l.index == index);
    match &dev.kind {
        Some(kind @ (LinkKind::Bridge | LinkKind::Bond | LinkKind::Team)) => {
            let ports: Vec<&Link> = links
                .iter()
                .filter(|l| l.master == Some(dev.index))
                .collect();
            let noun = kind.noun();
            let ports_text = match ports.as_slice() {
                [] => "no ports".to_owned(),
                [port] => format!("port {}", port.name),
                _ => format!("ports {}", names(&ports)),
            };
            warnings.push(Warning {
                kind: WarningKind::AggregateDevice,
                message: format!(
                    "output device {dev} is a {noun} with {ports_text}: name {dev} itself, as \
                     below (the kernel refuses an enslaved port as netconsole's device: \"is a \
                     slave device, aborting\"); netconsole then sends through the ports and works \
                     only if each supports netpoll: check dmesg for \"Netpoll setup failed\" or \
                     \"Not enabling netconsole\", which say it did not (6.12 and later print \
                     \"network logging started\" even when the only target failed). \
                     The kernel command-line form cannot work: {dev} does not exist yet when \
                     netconsole starts at boot; use modprobe or configfs once {dev} is up. To log \
                     independently of the {noun}, route the target over an interface that is not \
                     enslaved.",
                    dev = dev.name
                ),
            });
        }
        Some(LinkKind::Vlan) => {
            let lower = dev.lower.and_then(by_index);
            let lower_text = lower.map_or_else(
                || "its lower device".to_owned(),
                |l| format!("its lower device {}", l.name),
            );
            warnings.push(Warning {
                kind: WarningKind::VlanDevice,
                message: format!(
                    "output device {dev} is a VLAN device: netconsole sends through \
                     {lower_text}, tagged; naming {lower} instead would send untagged frames, to \
                     another segment. The kernel command-line form cannot work: {dev} does not \
                     exist yet when netconsole starts at boot; use modprobe or configfs once {dev} \
                     is up.",
                    dev = dev.name,
                    lower = lower.map_or("the lower device", |l| l.name.as_str()),
                ),
            });
        }
        _ => {}
    }
    if !dev.up {
        warnings.push(Warning {
            kind: WarningKind::DeviceDown,
            message: format!(
                "output device {dev} is down: netconsole brings it up, but nothing arrives until \
                 its link is up (`ip link set {dev} up`).",
                dev = dev.name
            ),
        });
    }
    // netpoll_parse_options() (net/core/netpoll.c) ends the device at the first `,`; configfs
    // takes any name.
    if dev.name.contains([',', ' ', '\t', ';', '"']) {
        warnings.push(Warning {
            kind: WarningKind::DeviceNameUnsafe,
            message: format!(
                "the device name `{}` contains a character the netconsole= option string cannot \
                 carry: use the configfs commands.",
                dev.name
            ),
        });
    }
}

/// netpoll refuses a port of a bond, bridge or team (`netpoll_setup()`, `net/core/netpoll.c`).
fn refuse_enslaved(dev: &Link, links: &[Link]) -> Result<(), PlanError> {
    if let Some(master_index) = dev.master {
        let master = links.iter().find(|l| l.index == master_index);
        return Err(PlanError::EnslavedDevice {
            dev: dev.name.clone(),
            master: master.map_or_else(
                || format!("interface index {master_index}"),
                |m| {
                    m.kind
                        .as_ref()
                        .map_or_else(|| m.name.clone(), |k| format!("{} {}", k.noun(), m.name))
                },
            ),
            master_name: master.map_or_else(|| "MASTER".to_owned(), |m| m.name.clone()),
        });
    }
    Ok(())
}

/// Whether `r` can stay: not on a kernel older than 6.6, which rejects it (a warning says so).
fn release_warning(request: &Request, facts: &Facts, warnings: &mut Vec<Warning>) -> bool {
    let release_supported = !(request.release
        && facts
            .kernel_release
            .as_deref()
            .and_then(kernel_version)
            .is_some_and(|v| v < (6, 6)));
    if !release_supported {
        warnings.push(Warning {
            kind: WarningKind::ReleaseUnsupported,
            message: format!(
                "--release needs Linux 6.6 or later; this kernel is {} and rejects the `r` flag \
                 (and has no configfs `release` file), so the lines below leave it out: the \
                 records will not carry the release.",
                facts.kernel_release.as_deref().unwrap_or_default()
            ),
        });
    }
    release_supported
}

/// Warns when `src_ip` is not an address of `dev`: netconsole sends from `dev` whatever the
/// source address says, so an address of a VLAN on top of it sends untagged frames onto the
/// other segment.
fn source_warning(dev: &Link, src_ip: IpAddr, facts: &Facts, warnings: &mut Vec<Warning>) {
    if facts.addresses.is_empty()
        || facts
            .addresses
            .iter()
            .any(|&(index, ip)| index == dev.index && ip == src_ip)
    {
        return;
    }
    let Some(owner) = facts
        .addresses
        .iter()
        .find(|&&(_, ip)| ip == src_ip)
        .and_then(|&(index, _)| facts.links.iter().find(|l| l.index == index))
    else {
        return;
    };
    let vlan_on_dev = owner.kind == Some(LinkKind::Vlan) && owner.lower == Some(dev.index);
    let message = if vlan_on_dev {
        format!(
            "the source address {src_ip} belongs to {owner}, a VLAN on {dev}, but netconsole would \
             send through {dev} itself: its frames would leave untagged, onto another segment \
             than {owner}'s, where the collector does not see them. Use --dev {owner} (or leave \
             --dev out).",
            owner = owner.name,
            dev = dev.name
        )
    } else {
        format!(
            "the source address {src_ip} belongs to {owner}, not to {dev}, which netconsole \
             would send through: the frames leave {dev} with {owner}'s address, and replies to \
             it (and the next hop's MAC) are {owner}'s. Use --dev {owner}, or give {dev} an \
             address on the collector's network.",
            owner = owner.name,
            dev = dev.name
        )
    };
    warnings.push(Warning {
        kind: WarningKind::SourceOnOtherDevice,
        message,
    });
}

/// Whether this kernel's netconsole is an nbcon console: `/proc/consoles` says so when it is
/// loaded; otherwise the release does (7.0 made it one, `drivers/net/netconsole.c`).
fn netconsole_is_nbcon(facts: &Facts) -> Option<bool> {
    facts.netconsole_nbcon.or_else(|| {
        facts
            .kernel_release
            .as_deref()
            .and_then(kernel_version)
            .map(|v| v >= (7, 0))
    })
}

/// Warns when a panic would reboot before an nbcon netconsole sends the report (see the module
/// documentation for the kernel's order of events).
fn crash_warning(facts: &Facts, warnings: &mut Vec<Warning>) {
    let Some(panic) = facts.kernel_panic.filter(|&p| p != 0) else {
        return;
    };
    if netconsole_is_nbcon(facts) != Some(true) {
        if panic < 0 {
            warnings.push(Warning {
                kind: WarningKind::CrashReportCut,
                message: format!(
                    "kernel.panic is {panic}: a panic resets the machine the instant its report \
                     is written, and the report's last lines can still be in the network card's \
                     queue (vm-test on 6.12: the last 7 to 10 lines lost in 2 runs of 5). Set \
                     kernel.panic to a few seconds (`sysctl -w kernel.panic=5`): netconsole sends \
                     the report as it is written, and the reset waits."
                ),
            });
        }
        return;
    }
    let release = facts.kernel_release.as_deref().unwrap_or("this kernel");
    let reboot = if panic < 0 {
        "reboots at once".to_owned()
    } else {
        format!("reboots after {panic} s")
    };
    warnings.push(Warning {
        kind: WarningKind::CrashReportLost,
        message: format!(
            "kernel.panic is {panic}: a panic {reboot}, and on {release} that loses the crash \
             report. netconsole is an nbcon console from Linux 7.0 on, and panic() sends its \
             report only at the very end, after the reboot (kernel/panic.c, \
             nbcon_atomic_flush_unsafe() in kernel/printk/nbcon.c); waiting longer does not help. \
             Set kernel.panic=0 (`sysctl -w kernel.panic=0`, and panic=0 on the kernel command \
             line): the whole report is then sent, and the machine stays halted until a watchdog \
             or a person resets it."
        ),
    });
}

/// Decides the netconsole target for `request` from the kernel's `facts`.
///
/// # Errors
/// [`PlanError`] when no working configuration exists (a local target, no usable route, a
/// device that is not Ethernet, `--release` without `--extended`).
pub fn plan(request: &Request, facts: &Facts) -> Result<SenderConfig, PlanError> {
    let target = request.target;
    if request.release && !request.extended {
        return Err(PlanError::ReleaseWithoutExtended);
    }
    match &facts.route.kind {
        RouteKind::Unicast => {}
        RouteKind::Local => return Err(PlanError::TargetIsLocal { target }),
        RouteKind::Other(kind) => {
            return Err(PlanError::NotUnicast {
                target,
                kind: kind.clone(),
            });
        }
    }
    let index = facts.route.oif.ok_or(PlanError::NoDevice { target })?;
    let dev = facts
        .links
        .iter()
        .find(|l| l.index == index)
        .ok_or(PlanError::UnknownLink { target, index })?;
    if dev.link_type != ARPHRD_ETHER {
        return Err(PlanError::NotEthernet {
            target,
            dev: dev.name.clone(),
            link_type: dev.link_type,
        });
    }
    refuse_enslaved(dev, &facts.links)?;
    let src_ip = facts.route.source.ok_or_else(|| PlanError::NoSource {
        target,
        dev: dev.name.clone(),
    })?;
    let next_hop = facts.route.gateway.unwrap_or(target);
    let target_mac = facts.neighbour.as_ref().and_then(Neighbour::usable_mac);

    let mut warnings = Vec::new();
    if target_mac.is_none() {
        let who = match facts.route.gateway {
            Some(gw) => format!("its gateway {gw} did"),
            None => "it did".to_owned(),
        };
        let seen = match &facts.neighbour {
            Some(n) => format!("neighbour state {}", n.state),
            None => "no neighbour entry".to_owned(),
        };
        warnings.push(Warning {
            kind: WarningKind::UnresolvedNeighbour,
            message: format!(
                "{target} looks unreachable: {who} not answer address resolution on {dev} \
                 ({seen} after {waited} ms), so its MAC is unknown. The configuration below \
                 broadcasts (ff:ff:ff:ff:ff:ff): every host on that segment receives the \
                 messages, and switches that filter broadcasts drop them. Check that {next_hop} \
                 is up, then run sender-config again, or put its MAC in by hand.",
                dev = dev.name,
                waited = facts.waited_ms,
            ),
        });
    }
    device_warnings(dev, &facts.links, &mut warnings);
    if is_link_local(target) && request.dev.is_none() {
        warnings.push(Warning {
            kind: WarningKind::LinkLocalTarget,
            message: format!(
                "{target} is a link-local address, valid on one link only: the route lookup picked \
                 {dev}. If the collector is on another link, name it: --target '[{target}%DEV]' \
                 or --dev DEV.",
                dev = dev.name
            ),
        });
    }
    source_warning(dev, src_ip, facts, &mut warnings);
    let release_supported = release_warning(request, facts, &mut warnings);
    crash_warning(facts, &mut warnings);

    Ok(SenderConfig {
        name: request.name.clone(),
        extended: request.extended,
        release: request.release && release_supported,
        src_ip,
        src_port: request.src_port,
        dev: dev.name.clone(),
        dev_mac: dev.mac,
        target,
        target_port: request.target_port,
        gateway: facts.route.gateway,
        next_hop,
        neighbour_state: facts.neighbour.map(|n| n.state),
        target_mac,
        waited_ms: facts.waited_ms,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEV_MAC: MacAddr = MacAddr([2, 0, 0, 0, 0x3c, 0x10]);
    const PEER_MAC: MacAddr = MacAddr([2, 0, 0, 0, 0x3c, 0x01]);

    fn request(target: &str) -> Request {
        Request {
            target: target.parse().unwrap(),
            target_port: 6666,
            src_port: 6665,
            extended: false,
            release: false,
            name: "netcon".into(),
            dev: None,
        }
    }

    fn eth(index: u32, name: &str) -> Link {
        Link {
            index,
            name: name.into(),
            kind: None,
            link_type: ARPHRD_ETHER,
            mac: Some(DEV_MAC),
            master: None,
            lower: None,
            up: true,
        }
    }

    fn facts(src: &str, gateway: Option<&str>, links: Vec<Link>) -> Facts {
        Facts {
            route: Route {
                kind: RouteKind::Unicast,
                oif: Some(links[0].index),
                source: Some(src.parse().unwrap()),
                gateway: gateway.map(|g| g.parse().unwrap()),
            },
            links,
            neighbour: Some(Neighbour {
                state: NeighbourState::Reachable,
                mac: Some(PEER_MAC),
            }),
            waited_ms: 0,
            kernel_release: Some("6.18.0".into()),
            kernel_panic: Some(0),
            netconsole_nbcon: None,
            addresses: Vec::new(),
        }
    }

    fn kinds(config: &SenderConfig) -> Vec<WarningKind> {
        config.warnings.iter().map(|w| w.kind).collect()
    }

    #[test]
    fn on_link_target_uses_its_mac() {
        let f = facts("10.60.0.10", None, vec![eth(2, "eth0")]);
        let c = plan(&request("10.60.0.1"), &f).unwrap();
        assert_eq!(c.dev, "eth0");
        assert_eq!(c.src_ip.to_string(), "10.60.0.10");
        assert_eq!(c.next_hop.to_string(), "10.60.0.1");
        assert_eq!(c.gateway, None);
        assert_eq!(c.target_mac, Some(PEER_MAC));
        assert_eq!(c.dev_mac, Some(DEV_MAC));
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }

    #[test]
    fn routed_target_uses_the_gateway_as_next_hop() {
        let f = facts("10.61.0.10", Some("10.61.0.1"), vec![eth(2, "eth0")]);
        let c = plan(&request("10.62.0.5"), &f).unwrap();
        assert_eq!(c.next_hop.to_string(), "10.61.0.1");
        assert_eq!(c.gateway, Some("10.61.0.1".parse().unwrap()));
        assert_eq!(c.target.to_string(), "10.62.0.5");
        assert_eq!(c.target_mac, Some(PEER_MAC));
    }

    #[test]
    fn stale_entry_is_still_usable() {
        let mut f = facts("10.60.0.10", None, vec![eth(2, "eth0")]);
        f.neighbour = Some(Neighbour {
            state: NeighbourState::Stale,
            mac: Some(PEER_MAC),
        });
        assert!(is_resolved(f.neighbour.as_ref()));
        assert_eq!(
            plan(&request("10.60.0.1"), &f).unwrap().target_mac,
            Some(PEER_MAC)
        );
    }

    #[test]
    fn unresolved_neighbour_broadcasts_with_a_warning() {
        for neighbour in [
            None,
            Some(Neighbour {
                state: NeighbourState::Failed,
                mac: None,
            }),
            Some(Neighbour {
                state: NeighbourState::Incomplete,
                mac: None,
            }),
            // A FAILED entry may keep an old address: not to be trusted.
            Some(Neighbour {
                state: NeighbourState::Failed,
                mac: Some(PEER_MAC),
            }),
        ] {
            let mut f = facts("10.60.0.10", Some("10.60.0.1"), vec![eth(2, "eth0")]);
            f.neighbour = neighbour;
            f.waited_ms = 1000;
            assert!(!is_resolved(f.neighbour.as_ref()));
            let c = plan(&request("10.63.0.5"), &f).unwrap();
            assert_eq!(c.target_mac, None);
            assert_eq!(kinds(&c), [WarningKind::UnresolvedNeighbour]);
            let message = &c.warnings[0].message;
            assert!(
                message.contains("its gateway 10.60.0.1 did not answer"),
                "{message}"
            );
            assert!(message.contains("1000 ms"), "{message}");
        }
    }

    #[test]
    fn release_needs_extended() {
        let f = facts("10.60.0.10", None, vec![eth(2, "eth0")]);
        let mut r = request("10.60.0.1");
        r.release = true;
        assert_eq!(plan(&r, &f), Err(PlanError::ReleaseWithoutExtended));
        r.extended = true;
        let c = plan(&r, &f).unwrap();
        assert!(c.extended && c.release);
        assert!(c.warnings.is_empty());
    }

    #[test]
    fn release_on_an_old_kernel_is_left_out_of_the_line() {
        let mut f = facts("10.60.0.10", None, vec![eth(2, "eth0")]);
        f.kernel_release = Some("6.1.0-56-amd64".into());
        let mut r = request("10.60.0.1");
        r.extended = true;
        r.release = true;
        let c = plan(&r, &f).unwrap();
        assert_eq!(kinds(&c), [WarningKind::ReleaseUnsupported]);
        assert!(c.warnings[0].message.contains("leave it out"));
        // The line 6.1 gets is one it accepts: `+` without `r`, no configfs `release`.
        assert!(c.extended && !c.release);
        assert!(
            c.netconsole_param().starts_with("+6665@"),
            "{}",
            c.netconsole_param()
        );
        assert!(!c.configfs_commands().iter().any(|l| l.contains("/release")));
        f.kernel_release = Some("6.12.95+deb12-amd64".into());
        let c = plan(&r, &f).unwrap();
        assert!(c.warnings.is_empty());
        assert!(c.netconsole_param().starts_with("+r6665@"));
        // An unknown release keeps what was asked for.
        f.kernel_release = None;
        assert!(plan(&r, &f).unwrap().release);
        assert_eq!(kernel_version("5.15.0"), Some((5, 15)));
        assert_eq!(kernel_version("garbage"), None);
    }

    #[test]
    fn bridge_names_its_ports_and_keeps_itself() {
        let mut br = eth(5, "br0");
        br.kind = Some(LinkKind::Bridge);
        let mut p1 = eth(6, "eth1");
        p1.master = Some(5);
        let mut p2 = eth(7, "eth2");
        p2.master = Some(5);
        let f = facts("10.60.0.10", None, vec![br, p1, p2, eth(8, "eth3")]);
        let c = plan(&request("10.60.0.1"), &f).unwrap();
        assert_eq!(c.dev, "br0");
        assert_eq!(kinds(&c), [WarningKind::AggregateDevice]);
        let m = &c.warnings[0].message;
        assert!(m.contains("bridge with ports eth1, eth2:"), "{m}");
        assert!(!m.contains("eth3"), "{m}");
        assert!(m.contains("slave device"), "{m}");
        // The sign that holds on every kernel, not "network logging started".
        assert!(
            m.contains("check dmesg for \"Netpoll setup failed\""),
            "{m}"
        );
    }

    #[test]
    fn bond_and_team_too() {
        for (kind, noun) in [(LinkKind::Bond, "bond"), (LinkKind::Team, "team")] {
            let mut agg = eth(5, "agg0");
            agg.kind = Some(kind);
            let mut p = eth(6, "eth1");
            p.master = Some(5);
            let c = plan(
                &request("10.60.0.1"),
                &facts("10.60.0.10", None, vec![agg, p]),
            )
            .unwrap();
            assert_eq!(kinds(&c), [WarningKind::AggregateDevice]);
            let m = &c.warnings[0].message;
            assert!(m.contains(&format!("is a {noun} with port eth1:")), "{m}");
        }
    }

    #[test]
    fn vlan_names_its_lower_device() {
        let mut vlan = eth(5, "eth0.100");
        vlan.kind = Some(LinkKind::Vlan);
        vlan.lower = Some(2);
        let c = plan(
            &request("10.60.0.1"),
            &facts("10.60.0.10", None, vec![vlan, eth(2, "eth0")]),
        )
        .unwrap();
        assert_eq!(c.dev, "eth0.100");
        assert_eq!(kinds(&c), [WarningKind::VlanDevice]);
        assert!(c.warnings[0].message.contains("lower device eth0, tagged"));
    }

    #[test]
    fn enslaved_device_is_refused_naming_its_master() {
        let mut port = eth(6, "eth1");
        port.master = Some(5);
        let mut bond = eth(5, "bond0");
        bond.kind = Some(LinkKind::Bond);
        // The ARP reply went to bond0: eth1's own neighbour entry stays unresolved, which must
        // not read as "the collector looks unreachable".
        let mut f = facts("10.60.0.10", None, vec![port, bond]);
        f.neighbour = None;
        let e = plan(&request("10.60.0.1"), &f).unwrap_err();
        assert_eq!(
            e,
            PlanError::EnslavedDevice {
                dev: "eth1".into(),
                master: "bond bond0".into(),
                master_name: "bond0".into(),
            }
        );
        let m = e.to_string();
        assert!(m.starts_with("eth1 is enslaved to bond bond0:"), "{m}");
        assert!(m.ends_with("--dev bond0"), "{m}");
        assert!(
            m.contains("Netpoll setup failed") && m.contains("EBUSY"),
            "{m}"
        );
        assert!(!m.contains("unreachable"), "{m}");
    }

    #[test]
    fn source_address_of_a_vlan_on_the_device_warns_untagged() {
        let mut vlan = eth(5, "eth0.100");
        vlan.kind = Some(LinkKind::Vlan);
        vlan.lower = Some(2);
        let mut f = facts(
            "10.60.0.10",
            None,
            vec![eth(2, "eth0"), vlan, eth(7, "eth1")],
        );
        f.addresses = vec![
            (2, "10.59.0.10".parse().unwrap()),
            (5, "10.60.0.10".parse().unwrap()),
        ];
        let mut r = request("10.60.0.1");
        r.dev = Some("eth0".into());
        let c = plan(&r, &f).unwrap();
        assert_eq!(kinds(&c), [WarningKind::SourceOnOtherDevice]);
        let m = &c.warnings[0].message;
        assert!(m.contains("belongs to eth0.100, a VLAN on eth0"), "{m}");
        assert!(m.contains("untagged"), "{m}");
        assert!(m.contains("--dev eth0.100"), "{m}");
        // Another device, not a VLAN on this one: said differently.
        f.addresses = vec![(7, "10.60.0.10".parse().unwrap())];
        let c = plan(&r, &f).unwrap();
        assert_eq!(kinds(&c), [WarningKind::SourceOnOtherDevice]);
        assert!(
            c.warnings[0]
                .message
                .contains("belongs to eth1, not to eth0")
        );
        // The device's own address: nothing to say.
        f.addresses = vec![(2, "10.60.0.10".parse().unwrap())];
        assert!(plan(&r, &f).unwrap().warnings.is_empty());
    }

    #[test]
    fn a_rebooting_panic_on_an_nbcon_kernel_warns() {
        let mut f = facts("10.60.0.10", None, vec![eth(2, "eth0")]);
        f.kernel_release = Some("7.2.13+deb14-amd64".into());
        let r = request("10.60.0.1");
        for (panic, says) in [
            (-1, "reboots at once"),
            (1, "reboots after 1 s"),
            (30, "after 30 s"),
        ] {
            f.kernel_panic = Some(panic);
            let c = plan(&r, &f).unwrap();
            assert_eq!(kinds(&c), [WarningKind::CrashReportLost], "{panic}");
            let m = &c.warnings[0].message;
            assert!(m.contains(says), "{m}");
            assert!(m.contains("Set kernel.panic=0"), "{m}");
            assert!(m.contains("7.2.13+deb14-amd64"), "{m}");
        }
        // Halting keeps the report; an unknown setting says nothing.
        for panic in [Some(0), None] {
            f.kernel_panic = panic;
            assert!(plan(&r, &f).unwrap().warnings.is_empty());
        }
        // Legacy consoles (before 7.0) send the report as it is written; only an immediate
        // reset (-1) can cut its end off in the NIC's queue.
        for release in ["6.1.0-56-amd64", "6.12.95+deb12-amd64", "6.19.1"] {
            f.kernel_release = Some(release.into());
            f.kernel_panic = Some(10);
            assert!(plan(&r, &f).unwrap().warnings.is_empty(), "{release}");
            f.kernel_panic = Some(-1);
            let c = plan(&r, &f).unwrap();
            assert_eq!(kinds(&c), [WarningKind::CrashReportCut], "{release}");
            assert!(c.warnings[0].message.contains("kernel.panic=5"));
        }
        // /proc/consoles, when netconsole is loaded, wins over the release.
        f.netconsole_nbcon = Some(true);
        assert_eq!(
            kinds(&plan(&r, &f).unwrap()),
            [WarningKind::CrashReportLost]
        );
        f.kernel_release = Some("7.2.13+deb14-amd64".into());
        f.netconsole_nbcon = Some(false);
        assert_eq!(kinds(&plan(&r, &f).unwrap()), [WarningKind::CrashReportCut]);
    }

    #[test]
    fn veth_and_macvlan_are_not_warned_about() {
        for kind in ["veth", "macvlan"] {
            let mut dev = eth(2, "eth0");
            dev.kind = Some(LinkKind::Other(kind.into()));
            dev.lower = Some(9);
            let c = plan(&request("10.60.0.1"), &facts("10.60.0.10", None, vec![dev])).unwrap();
            assert!(c.warnings.is_empty(), "{kind}: {:?}", c.warnings);
        }
    }

    #[test]
    fn device_down_and_odd_name() {
        let mut dev = eth(2, "we,ird");
        dev.up = false;
        let c = plan(&request("10.60.0.1"), &facts("10.60.0.10", None, vec![dev])).unwrap();
        assert_eq!(
            kinds(&c),
            [WarningKind::DeviceDown, WarningKind::DeviceNameUnsafe]
        );
    }

    #[test]
    fn link_local_target_without_a_device_warns() {
        let f = facts("fe80::10", None, vec![eth(2, "eth0")]);
        let c = plan(&request("fe80::1"), &f).unwrap();
        assert_eq!(kinds(&c), [WarningKind::LinkLocalTarget]);
        assert!(c.warnings[0].message.contains("picked eth0"));
        let mut r = request("fe80::1");
        r.dev = Some("eth0".into());
        assert!(plan(&r, &f).unwrap().warnings.is_empty());
        // A global IPv6 target needs nothing.
        let f = facts("fd00:60::10", None, vec![eth(2, "eth0")]);
        assert!(
            plan(&request("fd00:60::1"), &f)
                .unwrap()
                .warnings
                .is_empty()
        );
    }

    #[test]
    fn errors() {
        let base = facts("10.60.0.10", None, vec![eth(2, "eth0")]);
        let r = request("10.60.0.1");

        let mut f = base.clone();
        f.route.kind = RouteKind::Local;
        assert!(matches!(plan(&r, &f), Err(PlanError::TargetIsLocal { .. })));

        let mut f = base.clone();
        f.route.kind = RouteKind::Other("broadcast".into());
        let e = plan(&r, &f).unwrap_err();
        assert!(e.to_string().contains("type broadcast"), "{e}");

        let mut f = base.clone();
        f.route.oif = None;
        assert!(matches!(plan(&r, &f), Err(PlanError::NoDevice { .. })));

        let mut f = base.clone();
        f.route.oif = Some(42);
        assert!(matches!(
            plan(&r, &f),
            Err(PlanError::UnknownLink { index: 42, .. })
        ));

        let mut f = base.clone();
        f.links[0].link_type = 65534;
        let e = plan(&r, &f).unwrap_err();
        assert!(e.to_string().contains("not an Ethernet device"), "{e}");

        let mut f = base;
        f.route.source = None;
        assert!(matches!(plan(&r, &f), Err(PlanError::NoSource { .. })));
    }

    #[test]
    fn mac_from_netlink() {
        assert_eq!(MacAddr::from_slice(&[2, 0, 0, 0, 0x3c, 1]), Some(PEER_MAC));
        assert_eq!(MacAddr::from_slice(&[0; 6]), None);
        assert_eq!(MacAddr::from_slice(&[1, 2, 3]), None);
        assert_eq!(PEER_MAC.to_string(), "02:00:00:00:3c:01");
        assert_eq!(MacAddr::BROADCAST.to_string(), "ff:ff:ff:ff:ff:ff");
    }
}
