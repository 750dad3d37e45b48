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

mod checks;
mod facts;
#[cfg(test)]
mod tests;

use std::net::IpAddr;

use serde::Serialize;

use self::checks::{
    crash_warning, device_warnings, is_link_local, refuse_enslaved, release_warning, source_warning,
};
pub use self::facts::{
    ARPHRD_ETHER, Facts, Link, LinkKind, MacAddr, Neighbour, NeighbourState, Request, Route,
    RouteKind, is_resolved,
};

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
