//! The plan against hand-written kernel facts.

use super::checks::kernel_version;
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
