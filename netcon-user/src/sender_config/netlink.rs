//! The thin I/O shell: asks the kernel over rtnetlink for the route, the links and the next
//! hop's neighbour entry, and nudges resolution when the entry is missing. Every decision is
//! in [`super::plan`].

use std::ffi::OsString;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6, UdpSocket};
use std::time::{Duration, Instant};

use futures_util::TryStreamExt as _;
use nix::sys::socket::{setsockopt, sockopt};
use rtnetlink::Handle;
use rtnetlink::packet_route::{
    AddressFamily,
    address::AddressAttribute,
    link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage},
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState as Nud},
    route::{RouteAddress, RouteAttribute, RouteMessage, RouteType, RouteVia},
};

use super::SenderConfigError;
use super::plan::{
    ARPHRD_ETHER, Facts, Link, LinkKind, MacAddr, Neighbour, NeighbourState, Route, RouteKind,
    is_resolved,
};

/// How often the neighbour table is read again while resolution runs, in milliseconds.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// The discard service (RFC 863): a datagram there makes the kernel resolve the next hop
/// without asking anything of the host that answers.
const DISCARD_PORT: u16 = 9;

fn netlink_error(what: &'static str, error: rtnetlink::Error) -> SenderConfigError {
    SenderConfigError::Netlink {
        what,
        source: to_io(error),
    }
}

fn to_io(error: rtnetlink::Error) -> io::Error {
    match error {
        rtnetlink::Error::NetlinkError(message) => message.to_io(),
        other => io::Error::other(other.to_string()),
    }
}

/// Gathers the facts for a target: links, the route (through `dev` when given), the next
/// hop's neighbour entry, waiting up to `wait` for it to resolve.
pub(super) async fn gather(
    target: IpAddr,
    dev: Option<&str>,
    wait: Duration,
) -> Result<Facts, SenderConfigError> {
    let (connection, handle, _) =
        rtnetlink::new_connection().map_err(|source| SenderConfigError::Netlink {
            what: "cannot open a netlink socket",
            source,
        })?;
    let connection = tokio::spawn(connection);
    let result = gather_with(&handle, target, dev, wait).await;
    connection.abort();
    result
}

async fn gather_with(
    handle: &Handle,
    target: IpAddr,
    dev: Option<&str>,
    wait: Duration,
) -> Result<Facts, SenderConfigError> {
    let links = links(handle).await?;
    let oif = match dev {
        None => None,
        Some(name) => Some(
            links
                .iter()
                .find(|l| l.name == name)
                .map(|l| l.index)
                .ok_or_else(|| SenderConfigError::UnknownDevice {
                    dev: name.to_owned(),
                })?,
        ),
    };
    let route = route(handle, target, oif).await?;
    let mut facts = Facts {
        links,
        neighbour: None,
        waited_ms: 0,
        kernel_release: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .ok()
            .map(|s| s.trim().to_owned()),
        kernel_panic: std::fs::read_to_string("/proc/sys/kernel/panic")
            .ok()
            .and_then(|s| s.trim().parse().ok()),
        netconsole_nbcon: std::fs::read_to_string("/proc/consoles")
            .ok()
            .and_then(|s| netconsole_nbcon(&s)),
        addresses: addresses(handle).await?,
        route,
    };
    // Resolve only where planning will want a MAC: a unicast route out an Ethernet device.
    let Some(oif) = facts.route.oif.filter(|&oif| {
        facts.route.kind == RouteKind::Unicast
            && facts
                .links
                .iter()
                .any(|l| l.index == oif && l.link_type == ARPHRD_ETHER)
    }) else {
        return Ok(facts);
    };
    let next_hop = facts.route.gateway.unwrap_or(target);
    facts.neighbour = neighbour(handle, oif, next_hop).await?;
    if is_resolved(facts.neighbour.as_ref()) || wait.is_zero() {
        return Ok(facts);
    }
    let started = Instant::now();
    let dev = facts
        .links
        .iter()
        .find(|l| l.index == oif)
        .map(|l| l.name.as_str());
    nudge(next_hop, oif, dev);
    loop {
        tokio::time::sleep(POLL_INTERVAL).await;
        facts.neighbour = neighbour(handle, oif, next_hop).await?;
        let waited = started.elapsed();
        if is_resolved(facts.neighbour.as_ref()) || waited >= wait {
            facts.waited_ms = u64::try_from(waited.as_millis()).unwrap_or(u64::MAX);
            tracing::debug!(
                next_hop = %next_hop,
                waited_ms = facts.waited_ms,
                entry = ?facts.neighbour,
                "neighbour resolution"
            );
            return Ok(facts);
        }
    }
}

/// Sends one empty datagram to the next hop's discard port: to send it, the kernel resolves
/// the next hop's MAC (ARP or neighbour discovery), as netconsole itself never does. The
/// socket is bound to the route's device `dev`, so that resolution happens there even when
/// `--dev` picked another device than the routing table would. Failing to send is not an
/// error: the neighbour table says how resolution went.
fn nudge(next_hop: IpAddr, oif: u32, dev: Option<&str>) {
    let (bind, to): (SocketAddr, SocketAddr) = match next_hop {
        IpAddr::V4(ip) => ((Ipv4Addr::UNSPECIFIED, 0).into(), (ip, DISCARD_PORT).into()),
        IpAddr::V6(ip) => {
            // A link-local next hop (an IPv6 gateway usually is one) needs its link.
            let scope = if ip.is_unicast_link_local() { oif } else { 0 };
            (
                (Ipv6Addr::UNSPECIFIED, 0).into(),
                SocketAddrV6::new(ip, DISCARD_PORT, 0, scope).into(),
            )
        }
    };
    let sent = UdpSocket::bind(bind).and_then(|socket| {
        if let Some(dev) = dev {
            // Needs CAP_NET_RAW; without it the routing table picks the device, which is
            // the route's own unless --dev overrode it.
            if let Err(error) = setsockopt(&socket, sockopt::BindToDevice, &OsString::from(dev)) {
                tracing::debug!(dev, %error, "resolution datagram not bound to its device");
            }
        }
        socket.send_to(&[], to)
    });
    if let Err(error) = sent {
        tracing::debug!(%to, %error, "resolution datagram not sent");
    }
}

/// Whether `/proc/consoles` (`fs/proc/consoles.c`) lists a netconsole console (`netcon0`,
/// `netcon_ext0`) with the nbcon flag `N` among its flags (`netcon_ext0  -W- (EN)`); `None` when
/// netconsole is not registered.
fn netconsole_nbcon(consoles: &str) -> Option<bool> {
    consoles
        .lines()
        .filter(|line| line.starts_with("netcon"))
        .map(|line| {
            line.rsplit_once('(')
                .and_then(|(_, flags)| flags.split_once(')'))
                .is_some_and(|(flags, _)| flags.contains('N'))
        })
        .reduce(|a, b| a || b)
}

async fn addresses(handle: &Handle) -> Result<Vec<(u32, IpAddr)>, SenderConfigError> {
    handle
        .address()
        .get()
        .execute()
        .try_filter_map(|message| async move {
            // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer's on a
            // point-to-point link and the same as IFA_LOCAL otherwise (IPv6 sends only it).
            let local = message.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            });
            let address = message.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            });
            Ok(local.or(address).map(|ip| (message.header.index, ip)))
        })
        .try_collect()
        .await
        .map_err(|e| netlink_error("cannot list the interface addresses", e))
}

async fn links(handle: &Handle) -> Result<Vec<Link>, SenderConfigError> {
    handle
        .link()
        .get()
        .execute()
        .map_ok(|message| link_from(&message))
        .try_collect()
        .await
        .map_err(|e| netlink_error("cannot list the network interfaces", e))
}

fn link_from(message: &LinkMessage) -> Link {
    let mut link = Link {
        index: message.header.index,
        name: String::new(),
        kind: None,
        link_type: u16::from(message.header.link_layer_type),
        mac: None,
        master: None,
        lower: None,
        up: message.header.flags.contains(LinkFlags::Up),
    };
    for attribute in &message.attributes {
        match attribute {
            LinkAttribute::IfName(name) => link.name.clone_from(name),
            LinkAttribute::Address(bytes) => link.mac = MacAddr::from_slice(bytes),
            LinkAttribute::Controller(index) => link.master = Some(*index),
            LinkAttribute::Link(index) => link.lower = Some(*index),
            LinkAttribute::LinkInfo(infos) => {
                link.kind = infos.iter().find_map(|info| match info {
                    LinkInfo::Kind(kind) => Some(link_kind(kind)),
                    _ => None,
                });
            }
            _ => {}
        }
    }
    link
}

fn link_kind(kind: &InfoKind) -> LinkKind {
    match kind {
        InfoKind::Bridge => LinkKind::Bridge,
        InfoKind::Bond => LinkKind::Bond,
        InfoKind::Team => LinkKind::Team,
        InfoKind::Vlan => LinkKind::Vlan,
        other => LinkKind::Other(other.to_string()),
    }
}

/// RTM_GETROUTE for one destination, as `ip route get TARGET [oif DEV]`.
async fn route(
    handle: &Handle,
    target: IpAddr,
    oif: Option<u32>,
) -> Result<Route, SenderConfigError> {
    let mut request = RouteMessage::default();
    let (family, length) = match target {
        IpAddr::V4(_) => (AddressFamily::Inet, 32),
        IpAddr::V6(_) => (AddressFamily::Inet6, 128),
    };
    request.header.address_family = family;
    request.header.destination_prefix_length = length;
    request
        .attributes
        .push(RouteAttribute::Destination(RouteAddress::from(target)));
    if let Some(oif) = oif {
        request.attributes.push(RouteAttribute::Oif(oif));
    }
    let no_route = |source| SenderConfigError::NoRoute { target, source };
    let message = handle
        .route()
        .get(request)
        .execute()
        .try_next()
        .await
        .map_err(|e| no_route(to_io(e)))?
        .ok_or_else(|| no_route(io::Error::other("the kernel sent no route")))?;
    Ok(route_from(&message))
}

fn route_from(message: &RouteMessage) -> Route {
    let kind = match message.header.kind {
        RouteType::Unicast => RouteKind::Unicast,
        RouteType::Local => RouteKind::Local,
        other => RouteKind::Other(format!("{other:?}").to_lowercase()),
    };
    let mut route = Route {
        kind,
        oif: None,
        source: None,
        gateway: None,
    };
    for attribute in &message.attributes {
        match attribute {
            RouteAttribute::Oif(index) => route.oif = Some(*index),
            RouteAttribute::PrefSource(address) => route.source = route_ip(address),
            RouteAttribute::Gateway(address) => route.gateway = route_ip(address),
            // An IPv4 route through an IPv6 gateway (RFC 5549).
            RouteAttribute::Via(RouteVia::Inet(ip)) => route.gateway = Some((*ip).into()),
            RouteAttribute::Via(RouteVia::Inet6(ip)) => route.gateway = Some((*ip).into()),
            _ => {}
        }
    }
    route
}

fn route_ip(address: &RouteAddress) -> Option<IpAddr> {
    match address {
        RouteAddress::Inet(ip) => Some((*ip).into()),
        RouteAddress::Inet6(ip) => Some((*ip).into()),
        _ => None,
    }
}

/// The neighbour entry for `ip` on interface `oif`, if there is one.
async fn neighbour(
    handle: &Handle,
    oif: u32,
    ip: IpAddr,
) -> Result<Option<Neighbour>, SenderConfigError> {
    let family = match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    let mut stream = handle
        .neighbours()
        .get()
        .set_address_family(family)
        .execute();
    while let Some(message) = stream
        .try_next()
        .await
        .map_err(|e| netlink_error("cannot read the neighbour table", e))?
    {
        if message.header.ifindex == oif && neighbour_ip(&message) == Some(ip) {
            return Ok(Some(neighbour_from(&message)));
        }
    }
    Ok(None)
}

fn neighbour_ip(message: &NeighbourMessage) -> Option<IpAddr> {
    message.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some((*ip).into()),
        NeighbourAttribute::Destination(NeighbourAddress::Inet6(ip)) => Some((*ip).into()),
        _ => None,
    })
}

fn neighbour_from(message: &NeighbourMessage) -> Neighbour {
    let state = match message.header.state {
        Nud::Incomplete => NeighbourState::Incomplete,
        Nud::Reachable => NeighbourState::Reachable,
        Nud::Stale => NeighbourState::Stale,
        Nud::Delay => NeighbourState::Delay,
        Nud::Probe => NeighbourState::Probe,
        Nud::Failed => NeighbourState::Failed,
        Nud::Noarp => NeighbourState::Noarp,
        Nud::Permanent => NeighbourState::Permanent,
        _ => NeighbourState::None,
    };
    let mac = message.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(bytes) => MacAddr::from_slice(bytes),
        _ => None,
    });
    Neighbour { state, mac }
}

#[cfg(test)]
mod tests {
    use super::netconsole_nbcon;

    #[test]
    fn reads_the_nbcon_flag_from_proc_consoles() {
        // 7.2 (nbcon; `E` no longer shown), 6.12 (legacy), and no netconsole at all.
        let v7 = "ttyS0                -W- (ECp  a)    4:64\nnetcon_ext0          -W- (EN)\n";
        let v6 = "ttyS0                -W- (EC   a)    4:64\nnetcon0              -W- (E)\n";
        assert_eq!(netconsole_nbcon(v7), Some(true));
        assert_eq!(netconsole_nbcon(v6), Some(false));
        assert_eq!(
            netconsole_nbcon("ttyS0                -W- (ECN  a)    4:64\n"),
            None
        );
    }
}
