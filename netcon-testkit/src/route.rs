//! Routed topologies for `sender-config` tests: a sender and a collector on one segment (the
//! sender's side optionally behind a bridge), or a gateway namespace that forwards between
//! them. Every namespace is a [`Netns`], removed on drop, also when a test panics.
//!
//! Addresses: `10.N.0.0/24` and `fd00:N::/64` per segment, host part `.10`/`::10` for the
//! sender, `.1`/`::1` for the other side (collector or gateway); MACs `02:00:00:00:N:10` and
//! `02:00:00:00:N:01`. Callers pick N (sender-config uses 60-69).

use crate::netns::{Link, Mac, Netns};
use std::net::{Ipv4Addr, Ipv6Addr};

/// Sets the sysctl `key` (dotted, as `sysctl` takes it) to `value` inside `ns`.
///
/// # Panics
/// If the write fails.
pub fn sysctl(ns: &Netns, key: &str, value: &str) {
    ns.sysctl(key, value).unwrap_or_else(|e| panic!("{e}"));
}

/// A namespace where IPv6 addresses are usable at once (no duplicate address detection, also
/// for link-local addresses of interfaces created later).
#[must_use]
pub fn quick_netns(role: &str) -> Netns {
    let ns = Netns::new(role);
    sysctl(&ns, "net.ipv6.conf.default.accept_dad", "0");
    sysctl(&ns, "net.ipv6.conf.all.accept_dad", "0");
    ns
}

/// One segment `10.N.0.0/24` / `fd00:N::/64` between a near side (`.10`) and a far side (`.1`).
#[derive(Debug, Clone)]
pub struct Segment {
    /// N.
    pub subnet: u8,
    /// Near side's interface (in the near namespace).
    pub near_if: String,
    /// Far side's interface (in the far namespace).
    pub far_if: String,
    /// `02:00:00:00:N:10`.
    pub near_mac: Mac,
    /// `02:00:00:00:N:01`.
    pub far_mac: Mac,
    /// `10.N.0.10`.
    pub near_v4: Ipv4Addr,
    /// `10.N.0.1`.
    pub far_v4: Ipv4Addr,
    /// `fd00:N::10`.
    pub near_v6: Ipv6Addr,
    /// `fd00:N::1`.
    pub far_v6: Ipv6Addr,
}

impl Segment {
    /// The addresses of segment N, interfaces `sc{N}-near` / `sc{N}-far`.
    #[must_use]
    pub fn new(subnet: u8) -> Segment {
        // The same plan as a [`Topology`](crate::Topology) link: near is its sender end.
        let plan = Link::new(subnet, 0);
        Segment {
            subnet,
            near_if: format!("sc{subnet}-near"),
            far_if: format!("sc{subnet}-far"),
            near_mac: plan.sender_mac,
            far_mac: plan.collector_mac,
            near_v4: plan.sender_v4,
            far_v4: plan.collector_v4,
            near_v6: plan.sender_v6,
            far_v6: plan.collector_v6,
        }
    }

    /// An address of the segment that nobody has: `10.N.0.99`.
    #[must_use]
    pub fn absent_v4(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.subnet, 0, 99)
    }

    /// Gives `dev` in `near` (the near end, or what stands for it) the near side's addresses.
    fn address_near(&self, near: &Netns, dev: &str) {
        address(near, dev, self.near_v4, self.near_v6);
    }

    /// Gives the far end in `far` the far side's addresses.
    fn address_far(&self, far: &Netns) {
        address(far, &self.far_if, self.far_v4, self.far_v6);
    }

    /// Creates the veth pair between `near` and `far`, both ends up, with no addresses.
    fn wire(&self, near: &Netns, far: &Netns) {
        near.add_veth(
            (&self.near_if, self.near_mac),
            far,
            (&self.far_if, self.far_mac),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        near.ip(&["link", "set", "dev", &self.near_if, "up"]);
        far.ip(&["link", "set", "dev", &self.far_if, "up"]);
    }
}

/// Gives `dev` in `ns` an IPv4 `/24` and an IPv6 `/64` address.
fn address(ns: &Netns, dev: &str, v4: Ipv4Addr, v6: Ipv6Addr) {
    ns.add_addresses(dev, (v4, 24), Some(v6))
        .unwrap_or_else(|e| panic!("{e}"));
}

/// The IPv6 link-local address of `dev` in `ns` (`ip -6 addr show dev DEV scope link`).
///
/// # Panics
/// If the device has none.
#[must_use]
pub fn link_local(ns: &Netns, dev: &str) -> Ipv6Addr {
    let out = ns.ip(&["-6", "-o", "addr", "show", "dev", dev, "scope", "link"]);
    out.split_whitespace()
        .skip_while(|w| *w != "inet6")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no link-local address on {dev} in {}:\n{out}", ns.name()))
}

/// A sender and a collector namespace joined by segment N (sender near, collector far), no
/// addresses yet.
fn wired_pair(subnet: u8) -> (Netns, Netns, Segment) {
    let sender = quick_netns("sc-sender");
    let collector = quick_netns("sc-collector");
    let segment = Segment::new(subnet);
    segment.wire(&sender, &collector);
    (sender, collector, segment)
}

/// A sender and a collector on one segment: the collector is the far side.
#[derive(Debug)]
pub struct OnLink {
    /// Where `sender-config` runs.
    pub sender: Netns,
    /// The collector.
    pub collector: Netns,
    /// The segment.
    pub segment: Segment,
}

impl OnLink {
    /// Segment N, addresses on the veth ends.
    #[must_use]
    pub fn new(subnet: u8) -> OnLink {
        let (sender, collector, segment) = wired_pair(subnet);
        segment.address_near(&sender, &segment.near_if);
        segment.address_far(&collector);
        OnLink {
            sender,
            collector,
            segment,
        }
    }
}

/// A sender whose veth end is a port of bridge `br0`, the sender's addresses on `br0`, and a
/// collector on the far side.
#[derive(Debug)]
pub struct Bridged {
    /// Where `sender-config` runs.
    pub sender: Netns,
    /// The collector.
    pub collector: Netns,
    /// The segment; `near_if` is the bridge port.
    pub segment: Segment,
    /// `br0`.
    pub bridge: String,
}

impl Bridged {
    /// Segment N. With `addresses_on_port`, the addresses go on the port itself rather than
    /// on the bridge (a misconfiguration `sender-config` must point out).
    #[must_use]
    pub fn new(subnet: u8, addresses_on_port: bool) -> Bridged {
        let (sender, collector, segment) = wired_pair(subnet);
        let bridge = "br0".to_owned();
        sender.ip(&["link", "add", "name", &bridge, "type", "bridge"]);
        sender.ip(&["link", "set", "dev", &segment.near_if, "master", &bridge]);
        sender.ip(&["link", "set", "dev", &bridge, "up"]);
        let on = if addresses_on_port {
            &segment.near_if
        } else {
            &bridge
        };
        segment.address_near(&sender, on);
        segment.address_far(&collector);
        Bridged {
            sender,
            collector,
            segment,
            bridge,
        }
    }
}

/// sender ⇄ gateway ⇄ collector: the sender's default routes (IPv4 and IPv6) go through the
/// gateway, which forwards.
#[derive(Debug)]
pub struct Routed {
    /// Where `sender-config` runs.
    pub sender: Netns,
    /// Forwards between the two segments.
    pub gateway: Netns,
    /// The collector.
    pub collector: Netns,
    /// sender (near) ⇄ gateway (far).
    pub first: Segment,
    /// gateway (near) ⇄ collector (far).
    pub second: Segment,
}

impl Routed {
    /// Segments N (sender side) and M (collector side).
    #[must_use]
    pub fn new(first: u8, second: u8) -> Routed {
        let sender = quick_netns("sc-sender");
        let gateway = quick_netns("sc-gateway");
        let collector = quick_netns("sc-collector");
        let first = Segment::new(first);
        let second = Segment::new(second);
        first.wire(&sender, &gateway);
        second.wire(&gateway, &collector);
        first.address_near(&sender, &first.near_if);
        first.address_far(&gateway);
        second.address_near(&gateway, &second.near_if);
        second.address_far(&collector);
        sysctl(&gateway, "net.ipv4.ip_forward", "1");
        sysctl(&gateway, "net.ipv6.conf.all.forwarding", "1");
        sender.ip(&["route", "add", "default", "via", &first.far_v4.to_string()]);
        sender.ip(&[
            "-6",
            "route",
            "add",
            "default",
            "via",
            &first.far_v6.to_string(),
        ]);
        collector.ip(&[
            "route",
            "add",
            "default",
            "via",
            &second.near_v4.to_string(),
        ]);
        collector.ip(&[
            "-6",
            "route",
            "add",
            "default",
            "via",
            &second.near_v6.to_string(),
        ]);
        Routed {
            sender,
            gateway,
            collector,
            first,
            second,
        }
    }
}
