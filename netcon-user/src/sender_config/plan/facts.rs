//! What the kernel said, as the plan takes it: the request, the route to the target, the
//! links, the next hop's neighbour entry, and the kernel's release and settings.

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
    pub(super) fn noun(&self) -> &str {
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
    pub(super) fn has_mac(self) -> bool {
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
