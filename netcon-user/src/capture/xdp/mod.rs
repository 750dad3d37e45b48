//! The XDP backend: loads `netcon-ebpf`, attaches it to each interface through a `bpf_link`, and
//! reads the frames it copies into the `EVENTS` ring buffer.
//!
//! A `bpf_link` is owned by a file descriptor: when this process exits, even by SIGKILL, the kernel
//! closes it and the program is detached. Nothing is left on the interface.

mod counters;
mod load;
mod ring;

use std::{cell::Cell, error::Error as StdError, io, os::fd::AsRawFd, time::Duration};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData, PerCpuArray},
    programs::Xdp,
};
use bytes::BytesMut;
use tokio::io::unix::AsyncFd;

use self::load::{attach, check_kernel, load_error, port_bitmap, root_cause, root_errno, take_map};
pub use self::ring::parse_record;
use self::ring::{
    DrainTimer, ReaderMap, RingReader, Stamp, coarse_slack_ns, mono_to_wall_ns, read_batch,
};
use super::{Captured, XdpCounters};
use crate::capture::Interface;

/// The compiled XDP program, built by `build.rs` from `netcon-ebpf`.
static PROGRAM: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netcon.bpf.o"));

/// The oldest kernel the XDP path works on: BPF ring buffer (5.8), XDP `bpf_link` (5.9) and
/// `bpf_xdp_load_bytes` (5.18).
pub const MIN_KERNEL: (u8, u8) = (5, 18);

pub use super::MAX_BATCH;

/// While records flow, the reader drains the ring on this timer instead of being woken for
/// them: the program writes with `BPF_RB_NO_WAKEUP`, because a wake-up is an `irq_work`
/// self-interrupt paid in the sender's receive softirq (a VM exit in a virtual machine), and the
/// kernel's default sends one whenever the reader has caught up, i.e. for most records at
/// moderate rates. The most latency this adds; each tick costs the reader's core a timer
/// interrupt (a VM exit too), and measured here 1 ms let the sender's core go ~9% faster than
/// 100 µs with a busy machine: 500 µs halves the latency of 1 ms for most of that. Unit: time;
/// default 500 µs.
pub const DRAIN_INTERVAL: Duration = Duration::from_micros(500);

/// Timer drains in a row that must find the ring empty before the reader parks (sleeps until
/// the program wakes it). Parking costs the program one wake-up for the next record; staying
/// awake costs the reader a timer tick per [`DRAIN_INTERVAL`]. Unit: drains; default 3.
pub const EMPTY_DRAINS_BEFORE_PARKING: u32 = 3;

/// Share of the ring buffer that, unread, makes the program wake the reader even while it
/// drains on its timer (it fell behind: a timer tick was late). Each CPU counts what it wrote
/// since the reader's last look, so the threshold each CPU gets is this share divided by the
/// number of CPUs: the ring holds at most the share before one of them wakes the reader.
/// Unit: 1/n of the ring; default a quarter.
pub const WAKE_THRESHOLD_DIVISOR: u32 = 4;

/// The bytes one CPU may write after the reader's last look before it wakes the reader.
fn wake_threshold_per_cpu(ring_bytes: u32, cpus: usize) -> u32 {
    let cpus = u32::try_from(cpus.max(1)).unwrap_or(u32::MAX);
    (ring_bytes / WAKE_THRESHOLD_DIVISOR / cpus).max(1)
}

/// Why the XDP backend could not start or read.
#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    /// This binary was built with `NETCON_SKIP_EBPF`.
    #[error(
        "this netcon-sniff was built without its XDP program (NETCON_SKIP_EBPF); rebuild after `cargo xtask setup`"
    )]
    NotBuilt,
    /// The running kernel is older than [`MIN_KERNEL`].
    #[error("kernel {found} is too old for the XDP backend: it needs {}.{} or later (BPF ring buffer, XDP links, bpf_xdp_load_bytes)", MIN_KERNEL.0, MIN_KERNEL.1)]
    KernelTooOld { found: String },
    /// The kernel's verifier refused the program. Its whole log went to the debug log.
    #[error(
        "the kernel's verifier rejected the XDP program on {kernel}: {reason}; run with RUST_LOG=debug for the whole log"
    )]
    Rejected {
        /// `uname -r`.
        kernel: String,
        /// The verifier's last message that says what is wrong.
        reason: String,
    },
    /// Loading the object or the program failed.
    #[error("cannot load the XDP program{}: {source}", hint(source.as_ref()))]
    Load {
        #[source]
        source: Box<dyn StdError + Send + Sync>,
    },
    /// Attaching to an interface failed.
    #[error(
        "cannot attach XDP to {interface} in {mode} mode{}: {source}",
        hint(source)
    )]
    Attach {
        interface: String,
        mode: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    /// A map the program needs was missing or of the wrong type.
    #[error("the XDP object has no usable map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    /// Waiting on or reading the ring buffer failed.
    #[error("reading the XDP ring buffer: {source}")]
    Read {
        #[source]
        source: io::Error,
    },
}

/// What a person can do about an error, from the errno at its root. A verifier rejection
/// (`EACCES` with a log) never gets here: it is [`XdpError::Rejected`], so `EACCES` means the
/// kernel refused before verifying.
fn hint(error: &(dyn StdError + 'static)) -> &'static str {
    match root_errno(error) {
        Some(libc::EPERM | libc::EACCES) => {
            " (needs root, or CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON)"
        }
        Some(libc::EBUSY | libc::EEXIST) => {
            " (another XDP program is attached: see `ip link show`; detach it first)"
        }
        Some(libc::EOPNOTSUPP | libc::EINVAL) => " (try --xdp-mode skb)",
        _ => "",
    }
}

/// Which attach modes to try (`--xdp-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachPolicy {
    /// Native, then generic (skb) if the driver cannot.
    Auto,
    /// In the driver only.
    Native,
    /// Generic XDP only.
    Skb,
}

/// Who stamps a captured frame with its receive time (`--xdp-timestamps`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timestamps {
    /// The program, for each frame (`bpf_ktime_get_ns`): exact, and the dearest step of a
    /// matching frame in the receive softirq (~28 ns of ~115 measured here).
    Kernel,
    /// The reader, for each batch right after reading it, and a frame's time is late by what
    /// it waited in the ring (up to a [`DRAIN_INTERVAL`] or one batch while records flow; the
    /// wake-up when the reader was parked); but never later than the program's coarse clock
    /// (its last tick, no clock hardware read) plus that clock's resolution, so a reader kept
    /// off the CPU does not date its backlog late.
    Read,
}

/// How the program ended up attached to one interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachedMode {
    /// In the driver.
    Native,
    /// Generic XDP, in the kernel's receive path (slower, works everywhere).
    Skb,
}

impl AttachedMode {
    /// `native` or `skb`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::Skb => "skb",
        }
    }
}

/// An attached XDP program and the ring buffer it fills.
pub struct XdpCapture {
    // Field order is drop order: the ring buffer and maps go before the program and its links.
    ring: AsyncFd<RingReader>,
    /// Ticks every [`DRAIN_INTERVAL`] while the reader drains on its timer.
    drain_timer: AsyncFd<DrainTimer>,
    /// The `READER` map: where the reader says it is parked.
    reader: ReaderMap,
    /// Timer drains in a row that found the ring empty.
    empty_drains: u32,
    counters: PerCpuArray<MapData, u64>,
    /// One buffer that captured frames are split off, so records cost no allocation each.
    arena: BytesMut,
    /// Where receive times come from.
    stamp: Stamp,
    attached: Vec<(String, AttachedMode)>,
    /// The counters as last read, shown once they cannot be read any more.
    last_counters: Cell<XdpCounters>,
    /// Reading them failed once (and was reported): they are not tried again.
    counters_unavailable: Cell<bool>,
    _ebpf: Ebpf,
}

impl XdpCapture {
    /// Loads the program with `ports`, a ring buffer of `ring_bytes` and who stamps frames,
    /// then attaches it to every interface in `interfaces`.
    ///
    /// # Errors
    /// [`XdpError`] with a hint when the kernel, privileges or interface do not allow it.
    pub fn open(
        interfaces: &[Interface],
        ports: &[u16],
        mode: AttachPolicy,
        ring_bytes: u32,
        timestamps: Timestamps,
    ) -> Result<Self, XdpError> {
        if PROGRAM.is_empty() {
            return Err(XdpError::NotBuilt);
        }
        check_kernel()?;
        let kernel_timestamps = u8::from(timestamps == Timestamps::Kernel);
        let mut ebpf = EbpfLoader::new()
            .map_max_entries("EVENTS", ring_bytes)
            .override_global("KERNEL_TIMESTAMPS", &kernel_timestamps, true)
            .load(PROGRAM)
            .map_err(|e| XdpError::Load { source: e.into() })?;

        let mut port_map: Array<_, u32> =
            Array::try_from(ebpf.map_mut("PORTS").ok_or(XdpError::Map {
                name: "PORTS",
                source: aya::maps::MapError::InvalidName {
                    name: "PORTS".into(),
                },
            })?)
            .map_err(|source| XdpError::Map {
                name: "PORTS",
                source,
            })?;
        for (word, bits) in port_bitmap(ports) {
            port_map
                .set(word, bits, 0)
                .map_err(|source| XdpError::Map {
                    name: "PORTS",
                    source,
                })?;
        }

        // Before the program runs: it reads the threshold for every record.
        let cpus = aya::util::nr_cpus().unwrap_or(1);
        let reader = ReaderMap::open(&mut ebpf, wake_threshold_per_cpu(ring_bytes, cpus))?;

        let program: &mut Xdp = ebpf
            .program_mut("netcon")
            .ok_or_else(|| XdpError::Load {
                source: "no program named netcon in the object".into(),
            })?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| XdpError::Load { source: e.into() })?;
        program.load().map_err(load_error)?;
        let mut attached = Vec::with_capacity(interfaces.len());
        for interface in interfaces {
            attached.push((interface.name.clone(), attach(program, interface, mode)?));
        }

        let aya::maps::Map::RingBuf(events) = take_map(&mut ebpf, "EVENTS")? else {
            return Err(XdpError::Map {
                name: "EVENTS",
                source: aya::maps::MapError::InvalidName {
                    name: "EVENTS (not a ring buffer)".into(),
                },
            });
        };
        let counters =
            PerCpuArray::try_from(take_map(&mut ebpf, "COUNTERS")?).map_err(|source| {
                XdpError::Map {
                    name: "COUNTERS",
                    source,
                }
            })?;
        let ring = RingReader::map(events, ring_bytes).map_err(|error| XdpError::Load {
            source: format!("cannot mmap the EVENTS ring buffer: {error}").into(),
        })?;
        // SAFETY: the RingReader owns its map's fd, which stays open, and is the same fd, for
        // as long as the AsyncFd owns the RingReader.
        let ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
            .map_err(|e| XdpError::Read { source: e.into() })?;
        let drain_timer = DrainTimer::new()
            .and_then(|timer| {
                // SAFETY: the DrainTimer owns its fd, which stays open and the same for as
                // long as the AsyncFd owns the DrainTimer.
                unsafe { AsyncFd::register_with_interest(timer, tokio::io::Interest::READABLE) }
                    .map_err(io::Error::from)
            })
            .map_err(|source| XdpError::Read { source })?;
        Ok(Self {
            ring,
            drain_timer,
            reader,
            empty_drains: 0,
            counters,
            arena: BytesMut::new(),
            stamp: match timestamps {
                Timestamps::Kernel => Stamp::Kernel {
                    mono_to_wall_ns: mono_to_wall_ns(),
                },
                Timestamps::Read => Stamp::Read {
                    mono_to_wall_ns: mono_to_wall_ns(),
                    coarse_slack_ns: coarse_slack_ns(),
                },
            },
            attached,
            last_counters: Cell::new(XdpCounters::default()),
            counters_unavailable: Cell::new(false),
            _ebpf: ebpf,
        })
    }

    /// The interfaces and the mode each was attached in.
    #[must_use]
    pub fn attached(&self) -> &[(String, AttachedMode)] {
        &self.attached
    }

    /// Waits until the ring buffer has records, then appends up to [`MAX_BATCH`] of them.
    ///
    /// While records flow it drains the ring every [`DRAIN_INTERVAL`]; after
    /// [`EMPTY_DRAINS_BEFORE_PARKING`] empty drains in a row it parks: it tells the program
    /// (through the `READER` map) and sleeps until the program wakes it for the next record, so
    /// a lone record after a quiet minute is read at once. Cancel-safe: the state lives in
    /// `self`, and a future dropped while parked only leaves the program waking a reader that
    /// is not asleep.
    ///
    /// # Errors
    /// [`XdpError::Read`] when the ring buffer or the timer cannot be polled.
    pub async fn recv(&mut self, out: &mut Vec<Captured>) -> Result<(), XdpError> {
        loop {
            // A new generation per drain: the program may wake us once more if we fall behind.
            self.reader.set_parked(false);
            if self.read(out) > 0 {
                self.empty_drains = 0;
                return Ok(());
            }
            if self.empty_drains < EMPTY_DRAINS_BEFORE_PARKING {
                self.empty_drains += 1;
                self.wait_drain_tick().await?;
                continue;
            }
            // Park: announce it, then look once more. The full barrier pairs with the one in
            // the program's commit (kernel/bpf/ringbuf.c: xchg on the record header) before it
            // reads the parked bit: either this look sees its record, or the program sees us
            // parked and wakes us.
            self.reader.set_parked(true);
            if self.read(out) > 0 {
                self.reader.set_parked(false);
                self.empty_drains = 0;
                return Ok(());
            }
            let mut guard = self
                .ring
                .readable_mut()
                .await
                .map_err(|source| XdpError::Read { source })?;
            // Cleared before the next read: a wake-up after this point is seen by that read or
            // marks the ring readable again.
            guard.clear_ready();
            drop(guard);
            self.empty_drains = 0;
        }
    }

    /// Waits one [`DRAIN_INTERVAL`], or less if the program wakes us because the ring filled
    /// past the threshold.
    async fn wait_drain_tick(&mut self) -> Result<(), XdpError> {
        self.drain_timer
            .get_ref()
            .arm(DRAIN_INTERVAL)
            .map_err(|source| XdpError::Read { source })?;
        tokio::select! {
            guard = self.drain_timer.readable() => {
                guard.map_err(|source| XdpError::Read { source })?.clear_ready();
            }
            guard = self.ring.readable_mut() => {
                guard.map_err(|source| XdpError::Read { source })?.clear_ready();
            }
        }
        Ok(())
    }

    /// Reads up to [`MAX_BATCH`] records into `out`; returns how many.
    fn read(&mut self, out: &mut Vec<Captured>) -> usize {
        read_batch(self.ring.get_mut(), &mut self.arena, self.stamp, out)
    }

    /// Appends whatever the ring buffer holds now, without waiting (for shutdown).
    pub fn drain(&mut self, out: &mut Vec<Captured>) {
        while read_batch(self.ring.get_mut(), &mut self.arena, self.stamp, out) > 0 {}
    }

    /// The ring buffer's file descriptor (for diagnostics).
    #[must_use]
    pub fn ring_fd(&self) -> i32 {
        self.ring.get_ref().as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpus_share_the_wake_threshold() {
        let ring = 8 << 20;
        assert_eq!(wake_threshold_per_cpu(ring, 1), 2 << 20);
        assert_eq!(wake_threshold_per_cpu(ring, 2), 1 << 20);
        // Together the CPUs never let more than a quarter of the ring go unread unwoken.
        for cpus in [1, 3, 7, 64, 4096] {
            let total = u64::from(wake_threshold_per_cpu(ring, cpus)) * cpus as u64;
            assert!(
                total <= u64::from(ring / WAKE_THRESHOLD_DIVISOR),
                "{cpus} cpus"
            );
        }
        // No CPU count (or a failed count) makes it zero, which would wake on every record.
        assert_eq!(wake_threshold_per_cpu(16, 4096), 1);
        assert_eq!(wake_threshold_per_cpu(ring, 0), 2 << 20);
    }
}
