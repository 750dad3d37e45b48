//! The interfaces' own receive drop counters, read over rtnetlink while capturing.
//!
//! A frame the NIC drops never reaches the XDP program or a packet socket, so neither backend
//! can count it; the interface can. `rx_missed_errors` (the NIC had no receive buffer, its FIFO
//! overflowed), `rx_fifo_errors` and `rx_over_errors` (ring overruns) from `IFLA_STATS64`
//! (`struct rtnl_link_stats64`, `include/uapi/linux/if_link.h`) grow when frames are lost before
//! any program sees them. They count every kind of traffic, not only netconsole: a growth is a
//! frame that *may* have been a record. `rx_dropped` is left out on purpose: the core counts
//! there every frame no protocol took (`__netif_receive_skb_core`, net/core/dev.c), such as LLDP,
//! STP or a VLAN without its module, after capture already saw it: on a real segment it grows
//! all the time without a netconsole frame lost. `RTM_GETLINK` needs no privilege, so the reader
//! keeps working after `--user`.
//!
//! The counts are reported since [`InterfaceDrops::open`]: drops from before netcon-sniff started
//! are not its business.

use std::io;

use futures_util::TryStreamExt as _;
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};

use super::Interface;

/// Why the interface counters cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum IfStatsError {
    /// No netlink socket.
    #[error("cannot open a netlink socket to read interface counters: {source}")]
    Open {
        #[source]
        source: io::Error,
    },
    /// The kernel refused or did not answer a request.
    #[error("cannot read the counters of {interface} over netlink: {source}")]
    Read {
        interface: String,
        #[source]
        source: io::Error,
    },
    /// The answer held no statistics.
    #[error("netlink gave no statistics for {interface}")]
    NoStats { interface: String },
}

/// Frames `link` lost on receive before any program saw them: `rx_missed_errors +
/// rx_fifo_errors + rx_over_errors` (64-bit statistics, else the 32-bit ones), or `None` when
/// the message carries neither.
#[must_use]
pub fn rx_drops(link: &LinkMessage) -> Option<u64> {
    let mut short = None;
    for attribute in &link.attributes {
        match attribute {
            LinkAttribute::Stats64(s) => {
                return Some(
                    s.rx_missed_errors
                        .saturating_add(s.rx_fifo_errors)
                        .saturating_add(s.rx_over_errors),
                );
            }
            LinkAttribute::Stats(s) => {
                short = Some(
                    u64::from(s.rx_missed_errors)
                        + u64::from(s.rx_fifo_errors)
                        + u64::from(s.rx_over_errors),
                );
            }
            _ => {}
        }
    }
    short
}

/// One watched interface.
struct Watched {
    interface: Interface,
    /// The counter when watching began (or after it went backwards: a driver reset).
    baseline: u64,
    /// Drops since then, as last read.
    since: u64,
    /// A read failed and was logged; log again only after it worked.
    failing: bool,
}

/// Reads the receive drop counters of the captured interfaces (see the module documentation).
pub struct InterfaceDrops {
    handle: rtnetlink::Handle,
    connection: tokio::task::JoinHandle<()>,
    watched: Vec<Watched>,
}

impl InterfaceDrops {
    /// Opens a netlink socket (its connection runs as a task on the current tokio runtime) and
    /// reads each interface's counter as the baseline.
    ///
    /// # Errors
    /// [`IfStatsError`] when the socket cannot be opened or an interface cannot be read.
    pub async fn open(interfaces: &[Interface]) -> Result<Self, IfStatsError> {
        let (connection, handle, _) =
            rtnetlink::new_connection().map_err(|source| IfStatsError::Open { source })?;
        let connection = tokio::spawn(connection);
        let mut this = Self {
            handle,
            connection,
            watched: Vec::with_capacity(interfaces.len()),
        };
        for interface in interfaces {
            let baseline = this.read_one(interface).await?;
            this.watched.push(Watched {
                interface: interface.clone(),
                baseline,
                since: 0,
                failing: false,
            });
        }
        Ok(this)
    }

    async fn read_one(&self, interface: &Interface) -> Result<u64, IfStatsError> {
        let read_error = |source| IfStatsError::Read {
            interface: interface.name.clone(),
            source,
        };
        let mut answers = self
            .handle
            .link()
            .get()
            .match_index(interface.ifindex)
            .execute();
        let link = answers
            .try_next()
            .await
            .map_err(|error| {
                read_error(match error {
                    rtnetlink::Error::NetlinkError(message) => message.to_io(),
                    other => io::Error::other(other.to_string()),
                })
            })?
            .ok_or_else(|| read_error(io::Error::from(io::ErrorKind::UnexpectedEof)))?;
        rx_drops(&link).ok_or_else(|| IfStatsError::NoStats {
            interface: interface.name.clone(),
        })
    }

    /// Each interface's drops since [`InterfaceDrops::open`], by name. An interface that cannot
    /// be read keeps its last count (and the failure is logged once).
    pub async fn read(&mut self) -> Vec<(&str, u64)> {
        for i in 0..self.watched.len() {
            let interface = self.watched[i].interface.clone();
            let result = self.read_one(&interface).await;
            let w = &mut self.watched[i];
            match result {
                Ok(now) => {
                    if now < w.baseline + w.since {
                        // The counter went backwards (driver reset): count from here on.
                        w.baseline = now.saturating_sub(w.since);
                    }
                    w.since = now - w.baseline;
                    w.failing = false;
                }
                Err(error) if !w.failing => {
                    w.failing = true;
                    tracing::warn!(%error, "interface drops are not counted until it works again");
                }
                Err(_) => {}
            }
        }
        self.watched
            .iter()
            .map(|w| (w.interface.name.as_str(), w.since))
            .collect()
    }
}

impl Drop for InterfaceDrops {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

#[cfg(test)]
mod tests {
    use rtnetlink::packet_route::link::{Stats, Stats64};

    use super::*;

    #[test]
    fn drops_are_nic_overruns_not_frames_no_protocol_took() {
        let mut link = LinkMessage::default();
        assert_eq!(rx_drops(&link), None);
        let mut short = Stats::default();
        short.rx_dropped = 100;
        short.rx_missed_errors = 3;
        short.rx_fifo_errors = 4;
        short.rx_over_errors = 5;
        short.tx_dropped = 100;
        link.attributes.push(LinkAttribute::Stats(short));
        assert_eq!(rx_drops(&link), Some(12));
        let mut long = Stats64::default();
        long.rx_dropped = 7;
        long.rx_missed_errors = 5_000_000_000;
        long.rx_over_errors = 2;
        link.attributes.push(LinkAttribute::Stats64(long));
        assert_eq!(rx_drops(&link), Some(5_000_000_002));
    }

    #[test]
    fn reads_loopback_from_zero() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let lo = Interface {
                name: "lo".into(),
                ifindex: 1,
            };
            let mut drops = InterfaceDrops::open(std::slice::from_ref(&lo))
                .await
                .unwrap();
            let read = drops.read().await;
            assert_eq!(read.len(), 1);
            assert_eq!(read[0].0, "lo");
            // Nothing is dropped on loopback between two reads microseconds apart.
            assert_eq!(read[0].1, 0);
            let missing = Interface {
                name: "gone".into(),
                ifindex: u32::MAX - 1,
            };
            assert!(InterfaceDrops::open(&[missing]).await.is_err());
        });
    }
}
