//! Tests of the harness itself: it must work before `netcon-sniff` does, and a harness that
//! silently sends nothing would make every end-to-end test meaningless.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use netcon_testkit::{BROADCAST_MAC, Netns, Topology, UdpFrame, Vlan, netns_list};

/// Read deadline for a datagram the test expects (a failure deadline, not a timing check).
const RECV_TIMEOUT: Duration = Duration::from_secs(10);

fn bind_in(ns: &Netns, addr: SocketAddr) -> UdpSocket {
    let sock = ns.run_in(|| UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}")));
    sock.set_read_timeout(Some(RECV_TIMEOUT)).unwrap();
    sock
}

fn recv(sock: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut buf = [0u8; 2048];
    let (n, from) = sock.recv_from(&mut buf).unwrap_or_else(|e| {
        panic!(
            "no datagram on {:?} within {RECV_TIMEOUT:?}: {e}",
            sock.local_addr()
        )
    });
    (buf[..n].to_vec(), from)
}

/// A crafted frame addressed to the collector's MAC and IP reaches a plain UDP socket there, and
/// a broadcast-MAC frame (netconsole's default with no target MAC,
/// `Documentation/networking/netconsole.rst`) to an IP the collector does not own does not: it is sent first, so were it delivered it would be what `recv` returns.
#[test]
fn harness_delivers_to_udp_socket() {
    let topo = Topology::new();
    let link = topo.link().clone();
    let v4 = bind_in(&topo.collector, "0.0.0.0:6666".parse().unwrap());
    // Another port: a `[::]` socket is dual-stack and would clash with the IPv4 wildcard one.
    let v6 = bind_in(&topo.collector, "[::]:6667".parse().unwrap());
    let mut tx = topo.sender(&link);

    tx.send(
        &UdpFrame::v4(&link, b"foreign-ip".to_vec())
            .dst_mac(BROADCAST_MAC)
            .dst_ip(link.foreign_v4())
            .build(),
    );
    tx.send(&UdpFrame::v4(&link, b"to-collector-v4\n".to_vec()).build());
    let (payload, from) = recv(&v4);
    assert_eq!(payload, b"to-collector-v4\n");
    assert_eq!(from, SocketAddr::new(link.sender_v4.into(), 6665));

    tx.send(
        &UdpFrame::v6(&link, b"foreign-ip-v6".to_vec())
            .dst_mac(BROADCAST_MAC)
            .dst_ip(link.foreign_v6())
            .dst_port(6667)
            .build(),
    );
    tx.send(
        &UdpFrame::v6(&link, b"to-collector-v6\n".to_vec())
            .dst_port(6667)
            .build(),
    );
    let (payload, from) = recv(&v6);
    assert_eq!(payload, b"to-collector-v6\n");
    assert_eq!(from, SocketAddr::new(link.sender_v6.into(), 6665));
    assert_eq!(tx.sent(), 4);
}

/// With two links, paced frames of the second link arrive, in order, at the second link's
/// collector address from the second sender.
#[test]
fn harness_two_links_deliver_separately() {
    let topo = Topology::with_links(2);
    let l2 = topo.links[1].clone();
    let sock = bind_in(
        &topo.collector,
        SocketAddr::new(l2.collector_v4.into(), 6666),
    );
    let mut tx = topo.sender(&l2);
    let frames: Vec<Vec<u8>> = (0..3)
        .map(|i| UdpFrame::v4(&l2, format!("link2-{i}")).build())
        .collect();
    tx.send_paced(&frames, Duration::from_millis(10));
    for i in 0..3 {
        let (payload, from) = recv(&sock);
        assert_eq!(payload, format!("link2-{i}").as_bytes());
        assert_eq!(from.ip(), l2.sender_v4);
    }
    // A double-tagged frame goes out too (the collector has no VLAN device and drops it).
    tx.send(
        &UdpFrame::v4(&l2, b"tagged".to_vec())
            .vlan(Vlan::Double { outer: 7, inner: 8 })
            .build(),
    );
    assert_eq!(tx.sent(), 4);
}

#[test]
fn topology_is_removed_on_drop() {
    let topo = Topology::with_links(2);
    let names = topo.namespace_names();
    assert_eq!(names.len(), 3);
    let listed = netns_list();
    for n in &names {
        assert!(
            n.starts_with(&format!("nct-{}-", std::process::id())),
            "{n}"
        );
        assert!(listed.contains(n), "{n} not in `ip netns list`: {listed:?}");
    }
    let link = topo.link();
    assert!(
        topo.collector
            .link_summary(&link.collector_if)
            .contains("state UP"),
        "{} is not up",
        link.collector_if
    );
    assert_eq!(topo.collector.promiscuity(&link.collector_if), 0);
    assert!(!topo.collector.xdp_attached(&link.collector_if));
    drop(topo);
    let listed = netns_list();
    for n in &names {
        assert!(!listed.contains(n), "{n} is left behind: {listed:?}");
    }
}

#[test]
fn topology_is_removed_when_a_test_panics() {
    let names = std::sync::Mutex::new(Vec::new());
    let result = std::panic::catch_unwind(|| {
        let topo = Topology::new();
        *names.lock().unwrap() = topo.namespace_names();
        panic!("deliberate failure inside a test");
    });
    assert!(result.is_err());
    let names = names.into_inner().unwrap();
    assert_eq!(names.len(), 2);
    let listed = netns_list();
    for n in &names {
        assert!(
            !listed.contains(n),
            "{n} is left behind after a panic: {listed:?}"
        );
    }
}
