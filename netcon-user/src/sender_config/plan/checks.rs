//! The checks behind the plan's warnings and refusals (see the module documentation of
//! [`super`] for the kernel facts they rest on).

use std::net::IpAddr;

use super::{Facts, Link, LinkKind, PlanError, Request, Warning, WarningKind};

pub(super) fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.is_unicast_link_local(),
    }
}

/// `(major, minor)` of a release such as `6.12.95+deb12-amd64`.
pub(super) fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

pub(super) fn names(links: &[&Link]) -> String {
    links
        .iter()
        .map(|l| l.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

pub(super) fn device_warnings(dev: &Link, links: &[Link], warnings: &mut Vec<Warning>) {
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
pub(super) fn refuse_enslaved(dev: &Link, links: &[Link]) -> Result<(), PlanError> {
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
pub(super) fn release_warning(
    request: &Request,
    facts: &Facts,
    warnings: &mut Vec<Warning>,
) -> bool {
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
pub(super) fn source_warning(
    dev: &Link,
    src_ip: IpAddr,
    facts: &Facts,
    warnings: &mut Vec<Warning>,
) {
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
pub(super) fn netconsole_is_nbcon(facts: &Facts) -> Option<bool> {
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
pub(super) fn crash_warning(facts: &Facts, warnings: &mut Vec<Warning>) {
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
