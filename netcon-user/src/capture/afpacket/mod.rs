//! The raw backend: pnet's datalink channel over a filtered `AF_PACKET` socket, one per
//! interface, for kernels or privileges where the XDP program cannot load.
//!
//! netcon opens each socket and sets up what pnet does not: the classic BPF filter (attached
//! while the socket is still unbound, so no unfiltered frame is ever queued), the receive buffer,
//! `PACKET_AUXDATA`, `SO_TIMESTAMPNS` and `PACKET_IGNORE_OUTGOING`. pnet (`pnet_datalink` 0.35)
//! takes the descriptor (`Config::socket_fd`), binds it to the interface and reads the frames
//! ([`socket`]).
//!
//! pnet's receiver blocks (`poll`, then `recvfrom`) for every frame, so each interface has a
//! receive thread of its own ([`receiver`]). The threads never wait for the pipeline: a thread
//! that waited would let the socket buffer overflow, and the kernel drops frames without
//! knowing whose they are, a genuine sender's with a flooder's. Instead each frame goes into its
//! source's queue in one [`fair::FairQueue`] (bounded, charged to the memory budget), which the
//! pipeline empties round-robin over the sources: a flooder overflows only its own queue, and
//! those drops are reported under its address (`capture_lost`, reason `queue_full`).

pub mod fair;
pub mod filter;
mod receiver;
mod socket;

use std::{
    collections::BTreeMap,
    io,
    os::fd::{AsRawFd, RawFd},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use chrono::Utc;
use pnet_datalink::DataLinkSender;
use tokio::sync::Notify;

use self::{
    fair::{FairQueue, Limits},
    receiver::{LinkCounters, Receiver, Shared},
    socket::{pnet_channel, prepare_socket, statistics},
};
use super::{Captured, RawCounters};
use crate::{
    budget::MemoryBudget,
    capture::Interface,
    notice::{CaptureLost, LossReason},
};

/// Longest frame read whole, bytes. Netconsole frames are under 1100 bytes
/// (`MAX_PRINT_CHUNK` = 1000 payload bytes plus headers); longer ones are cut and counted.
pub const MAX_FRAME: usize = 2048;

/// The bounds of the queues between the receive threads and the pipeline: 4 MiB in all, 1024
/// sources. One source may fill all of it (16,384 frames): a dying kernel's burst (its whole
/// log replayed, thousands of lines at wire speed) must not be cut while nobody else sends.
/// Fairness comes from where room is made once the total is reached: from the longest queue,
/// so a flooder loses its own frames and a light sender none. Every byte is charged to the
/// memory budget too, never refused by it: the decoder sheds its oldest held state to make
/// room, so the budget is exceeded by at most these 4 MiB.
pub const QUEUE_LIMITS: Limits = Limits {
    source_items: 16 * 1024,
    source_bytes: 4 * 1024 * 1024,
    sources: 1024,
    total_bytes: 4 * 1024 * 1024,
};

/// Most frames the pipeline takes from the queues at once. Default 1024, as the XDP backend.
pub const BATCH: usize = 1024;

/// How long an idle receive thread waits for a frame before it looks for shutdown again.
/// Default 100 ms: Ctrl-C stays prompt, an idle thread wakes 10 times a second.
const WAKE_INTERVAL: Duration = Duration::from_millis(100);

/// How long a receive thread goes on reading frames already queued once shutdown is asked.
/// Default 300 ms: enough to empty a full socket buffer, bounded under a flood.
const STOP_GRACE: Duration = Duration::from_millis(300);

/// Longest wait at shutdown for the receive threads to hand over their last frames. Default
/// 900 ms: the grace and a wake interval, with room to spare, under Ctrl-C's one second.
const DRAIN_LIMIT: Duration = Duration::from_millis(900);

/// Why the raw backend could not start or read.
#[derive(Debug, thiserror::Error)]
pub enum RawError {
    /// A socket call failed.
    #[error("{call} on {interface}{}: {source}", hint(source))]
    Socket {
        call: &'static str,
        interface: String,
        #[source]
        source: io::Error,
    },
    /// A receive thread could not be started.
    #[error("cannot start the receive thread for {interface}: {source}")]
    Thread {
        interface: String,
        #[source]
        source: io::Error,
    },
    /// Every receive thread has ended without saying why.
    #[error("the raw sockets' receive threads have ended (this is a bug in netcon-sniff)")]
    ReceiversEnded,
}

fn hint(error: &io::Error) -> &'static str {
    match error.raw_os_error() {
        Some(libc::EPERM | libc::EACCES) => " (needs root or CAP_NET_RAW)",
        Some(libc::ENETDOWN | libc::ENXIO | libc::ENODEV) => {
            " (the interface went down or away; restart netcon-sniff once it is back)"
        }
        _ => "",
    }
}

/// One interface's socket, as the pipeline side holds it.
struct Link {
    /// pnet's sending half, never used to send: it shares the descriptor with the receiving
    /// half and keeps it open, so `PACKET_STATISTICS` can be read after the thread ended.
    _pin: Box<dyn DataLinkSender>,
    fd: RawFd,
    counters: Arc<LinkCounters>,
    /// `PACKET_STATISTICS` resets on read: its sums so far.
    kernel_received: u64,
    kernel_dropped: u64,
    thread: Option<JoinHandle<()>>,
}

/// Packet sockets on each configured interface, read through pnet by one thread each.
pub struct RawCapture {
    links: Vec<Link>,
    /// Interface names by index, for loss notices.
    names: BTreeMap<u32, String>,
    shared: Arc<Shared>,
}

impl RawCapture {
    /// Opens, filters and binds a packet socket on each interface and starts its receive thread.
    /// Frames waiting for the pipeline are charged to `budget`.
    ///
    /// # Errors
    /// [`RawError`] when a socket call is refused or a thread cannot start.
    pub fn open(
        interfaces: &[Interface],
        ports: &[u16],
        rcvbuf_bytes: u32,
        budget: MemoryBudget,
    ) -> Result<Self, RawError> {
        Self::open_with_limits(interfaces, ports, rcvbuf_bytes, QUEUE_LIMITS, budget)
    }

    fn open_with_limits(
        interfaces: &[Interface],
        ports: &[u16],
        rcvbuf_bytes: u32,
        limits: Limits,
        budget: MemoryBudget,
    ) -> Result<Self, RawError> {
        let program = filter::program(ports);
        let mut capture = Self {
            links: Vec::with_capacity(interfaces.len()),
            names: interfaces
                .iter()
                .map(|i| (i.ifindex, i.name.clone()))
                .collect(),
            shared: Arc::new(Shared {
                queue: Mutex::new(FairQueue::new(limits, budget)),
                wake: Notify::new(),
                failed: Mutex::new(None),
                live: AtomicUsize::new(0),
                stop: AtomicBool::new(false),
            }),
        };
        // On an error below, dropping `capture` stops the threads already started.
        for interface in interfaces {
            let socket = prepare_socket(interface, &program, rcvbuf_bytes)?;
            let fd = socket.as_raw_fd();
            let (pin, pnet) = pnet_channel(interface, socket)?;
            let counters = Arc::new(LinkCounters::default());
            let receiver = Receiver {
                interface: interface.clone(),
                fd,
                pnet,
                counters: Arc::clone(&counters),
                shared: Arc::clone(&capture.shared),
            };
            capture.shared.live.fetch_add(1, Ordering::AcqRel);
            let thread = std::thread::Builder::new()
                .name(format!("raw {}", interface.name))
                .spawn(move || receiver.run())
                .map_err(|source| {
                    capture.shared.live.fetch_sub(1, Ordering::AcqRel);
                    RawError::Thread {
                        interface: interface.name.clone(),
                        source,
                    }
                })?;
            capture.links.push(Link {
                _pin: pin,
                fd,
                counters,
                kernel_received: 0,
                kernel_dropped: 0,
                thread: Some(thread),
            });
        }
        Ok(capture)
    }

    /// Waits until frames arrive, then appends up to [`BATCH`] of them, a round of each source
    /// at a time. Cancel safe.
    ///
    /// # Errors
    /// [`RawError`] when a socket cannot be read.
    pub async fn recv(&mut self, out: &mut Vec<Captured>) -> Result<(), RawError> {
        loop {
            if self.shared.queue().pop_into(out, BATCH) > 0 {
                return Ok(());
            }
            if let Some(error) = self.shared.take_failed() {
                return Err(error);
            }
            if self.shared.live.load(Ordering::Acquire) == 0 {
                return Err(RawError::ReceiversEnded);
            }
            // A push into the empty queue after the look above leaves a permit: no lost wake.
            self.shared.wake.notified().await;
        }
    }

    /// Stops the receive threads and appends every frame they read, those they read from the
    /// sockets' queues on the way out included (at shutdown; returns within [`DRAIN_LIMIT`]).
    ///
    /// # Errors
    /// [`RawError`] when a socket could not be read.
    pub fn drain(&mut self, out: &mut Vec<Captured>) -> Result<(), RawError> {
        self.shared.stop.store(true, Ordering::Relaxed);
        let deadline = Instant::now() + DRAIN_LIMIT;
        loop {
            // Read before taking: what a thread queued before it ended is taken below.
            let ended = self.shared.live.load(Ordering::Acquire) == 0;
            while self.shared.queue().pop_into(out, BATCH) > 0 {}
            if ended {
                break;
            }
            if Instant::now() >= deadline {
                tracing::warn!("raw receive threads still busy at shutdown; not waiting");
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        for link in &mut self.links {
            if let Some(thread) = link.thread.take_if(|t| t.is_finished()) {
                let _ = thread.join();
            }
        }
        self.shared.take_failed().map_or(Ok(()), Err)
    }

    /// Counters of all sockets, with the kernel's counts.
    #[must_use]
    pub fn counters(&mut self) -> RawCounters {
        let mut total = RawCounters {
            queue_full: self.shared.queue().dropped(),
            ..RawCounters::default()
        };
        for link in &mut self.links {
            let (packets, drops) = statistics(link.fd);
            link.kernel_received += packets;
            link.kernel_dropped += drops;
            total.add(&RawCounters {
                received: link.counters.received.load(Ordering::Relaxed),
                kernel_received: link.kernel_received,
                kernel_dropped: link.kernel_dropped,
                truncated: link.counters.truncated.load(Ordering::Relaxed),
                queue_full: 0,
            });
        }
        total
    }

    /// The frames the queues dropped since the last call, as `capture_lost` notices (reason
    /// `queue_full`): one for each source whose drops were counted by name, with its address
    /// and interface, and one for the rest (sender unknown, all interfaces).
    #[must_use]
    pub fn take_queue_losses(&mut self) -> Vec<CaptureLost> {
        let (named, unnamed) = self.shared.queue().take_drops();
        let now = Utc::now();
        let lost = |interface: String, sender, frames| CaptureLost {
            noticed: now,
            interface,
            reason: LossReason::QueueFull,
            frames,
            sender,
        };
        let mut notices: Vec<CaptureLost> = named
            .into_iter()
            .map(|(source, frames)| {
                let name = self.names.get(&source.ifindex).cloned().unwrap_or_default();
                lost(name, source.source, frames)
            })
            .collect();
        notices.sort_by_key(|l| std::cmp::Reverse(l.frames));
        if unnamed > 0 {
            let all = self.names.values().cloned().collect::<Vec<_>>().join(",");
            notices.push(lost(all, None, unnamed));
        }
        notices
    }
}

impl Drop for RawCapture {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for link in &mut self.links {
            if let Some(thread) = link.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket;

    use super::*;
    use crate::{
        capture::{CaptureCounters, LinkType},
        notice::SourcePrefix,
    };

    /// Runs `f` on a thread of its own in a fresh network namespace whose `lo` is up (threads
    /// and processes started from there share it); `None` without the privilege to make one.
    fn in_fresh_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        std::thread::spawn(move || {
            if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET) {
                eprintln!("skipped: cannot make a network namespace ({e}); needs root");
                return None;
            }
            let up = std::process::Command::new("ip")
                .args(["link", "set", "lo", "up"])
                .status();
            assert!(
                up.as_ref().is_ok_and(std::process::ExitStatus::success),
                "ip link set lo up: {up:?}"
            );
            Some(f())
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }

    fn loopback() -> Vec<Interface> {
        vec![Interface {
            name: "lo".into(),
            ifindex: 1,
        }]
    }

    fn send(datagrams: &[(u16, Vec<u8>)]) {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        for (port, payload) in datagrams {
            socket.send_to(payload, ("127.0.0.1", *port)).unwrap();
        }
    }

    /// Waits until the receive threads have read `n` frames.
    fn wait_received(capture: &mut RawCapture, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while capture.counters().received < n {
            assert!(Instant::now() < deadline, "{:?}", capture.counters());
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// `n` datagrams `NCT 0`, `NCT 1`, ... to port 6666.
    fn numbered(n: usize) -> Vec<(u16, Vec<u8>)> {
        (0..n).map(|i| (6666, format!("NCT {i}").into())).collect()
    }

    /// Checks that `frames` are `NCT 0`, `NCT 1`, ... in order.
    fn assert_numbered(frames: &[Captured]) {
        for (i, frame) in frames.iter().enumerate() {
            assert!(
                frame.bytes.ends_with(format!("NCT {i}").as_bytes()),
                "{frame:?}"
            );
        }
    }

    /// Receives until `frames` holds `n`.
    fn recv_until(capture: &mut RawCapture, frames: &mut Vec<Captured>, n: usize) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            while frames.len() < n {
                tokio::time::timeout(Duration::from_secs(10), capture.recv(frames))
                    .await
                    .expect("frames within 10 s")
                    .unwrap();
            }
        });
    }

    #[test]
    fn reads_matching_frames_once_with_kernel_time_and_length() {
        in_fresh_netns(|| {
            let mut capture =
                RawCapture::open(&loopback(), &[6666], 1 << 20, MemoryBudget::default()).unwrap();
            let long = vec![b'x'; 3000];
            let before = Utc::now();
            // Another port first: the filter must keep it out. On lo every frame is also seen
            // going out: those copies must be skipped.
            send(&[
                (7777, b"NCT other port".to_vec()),
                (6666, b"NCT 0".to_vec()),
                (6666, b"NCT 1".to_vec()),
                (6666, long.clone()),
            ]);
            let mut frames = Vec::new();
            recv_until(&mut capture, &mut frames, 3);
            let after = Utc::now();
            capture.drain(&mut frames).unwrap();
            assert_eq!(frames.len(), 3, "{frames:#?}");
            for (frame, payload) in frames.iter().zip([&b"NCT 0"[..], b"NCT 1"]) {
                assert!(frame.bytes.ends_with(payload), "{frame:?}");
                assert_eq!(frame.wire_len as usize, frame.bytes.len());
            }
            // 14 + 20 + 8 header bytes, then the payload, cut at MAX_FRAME.
            assert_eq!(frames[2].bytes.len(), MAX_FRAME);
            assert_eq!(frames[2].wire_len as usize, 42 + long.len());
            for frame in &frames {
                assert_eq!(frame.ifindex, 1);
                assert_eq!(frame.link, LinkType::Ethernet);
                assert!(
                    before <= frame.ts && frame.ts <= after,
                    "kernel time {} not within {before} .. {after}",
                    frame.ts
                );
            }
            assert_eq!(
                capture.counters(),
                RawCounters {
                    received: 3,
                    kernel_received: 3,
                    kernel_dropped: 0,
                    truncated: 1,
                    queue_full: 0,
                }
            );
        });
    }

    /// Sends `payloads` to port 6666 on lo from `from` (any 127.0.0.0/8 address).
    fn send_from(from: &str, payloads: impl IntoIterator<Item = String>) {
        let socket = UdpSocket::bind((from, 0)).unwrap();
        for payload in payloads {
            socket
                .send_to(payload.as_bytes(), ("127.0.0.1", 6666))
                .unwrap();
        }
    }

    #[test]
    fn a_flooder_overflows_only_its_own_queue_and_is_named() {
        in_fresh_netns(|| {
            let budget = MemoryBudget::default();
            let limits = Limits {
                source_items: 4,
                ..QUEUE_LIMITS
            };
            let mut capture =
                RawCapture::open_with_limits(&loopback(), &[6666], 1 << 20, limits, budget.clone())
                    .unwrap();
            // Nobody takes frames meanwhile: the flooder's queue fills, the threads read on.
            send_from("127.0.0.2", (0..50).map(|i| format!("NCT flood {i}")));
            send_from("127.0.0.3", (0..3).map(|i| format!("NCT {i}")));
            wait_received(&mut capture, 53);
            assert!(budget.used() > 0);
            let counters = capture.counters();
            assert_eq!(
                (
                    counters.received,
                    counters.queue_full,
                    counters.kernel_dropped
                ),
                (53, 46, 0),
                "{counters:?}"
            );
            let losses = capture.take_queue_losses();
            assert_eq!(losses.len(), 1, "{losses:?}");
            assert_eq!(
                (
                    losses[0].sender,
                    losses[0].frames,
                    losses[0].interface.as_str()
                ),
                (Some(SourcePrefix::of([127, 0, 0, 2].into())), 46, "lo")
            );
            assert_eq!(losses[0].reason, LossReason::QueueFull);
            assert!(capture.take_queue_losses().is_empty());
            let mut frames = Vec::new();
            recv_until(&mut capture, &mut frames, 7);
            capture.drain(&mut frames).unwrap();
            assert_eq!(frames.len(), 7);
            let victim: Vec<_> = frames
                .iter()
                .filter(|f| !f.bytes.windows(5).any(|w| w == b"flood"))
                .collect();
            assert_eq!(victim.len(), 3);
            assert_numbered(&victim.into_iter().cloned().collect::<Vec<_>>());
            assert_eq!(CaptureCounters::Raw(capture.counters()).lost(), 46);
            drop(capture);
            assert_eq!(budget.used(), 0);
        });
    }

    #[test]
    fn drain_hands_over_every_frame_and_stops_the_threads() {
        in_fresh_netns(|| {
            let mut capture =
                RawCapture::open(&loopback(), &[6666], 1 << 20, MemoryBudget::default()).unwrap();
            send(&numbered(200));
            // No recv: what the threads queued and what the socket still holds all comes out.
            let mut frames = Vec::new();
            capture.drain(&mut frames).unwrap();
            assert_eq!(frames.len(), 200);
            assert_numbered(&frames);
            assert!(capture.links.iter().all(|l| l.thread.is_none()));
            assert_eq!(capture.counters().received, 200);
        });
    }
}
