//! The XDP backend: loads `netcon-ebpf`, attaches it to each interface through a `bpf_link`, and
//! reads the frames it copies into the `EVENTS` ring buffer.
//!
//! A `bpf_link` is owned by a file descriptor: when this process exits, even by SIGKILL, the kernel
//! closes it and the program is detached. Nothing is left on the interface.

use std::{
    cell::Cell,
    error::Error as StdError,
    io,
    os::fd::{AsFd as _, AsRawFd},
    time::Duration,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData, PerCpuArray, RingBuf},
    programs::{Xdp, xdp::XdpMode},
    util::KernelVersion,
};
use bytes::BytesMut;
use chrono::{DateTime, Utc};
use netcon_common::{
    GENERATION_STEP, READER_PARKED, RECORD_HEADER_LEN, ReaderState, RecordHeader, counter,
};
use tokio::io::unix::AsyncFd;

use super::{Captured, LinkType, RingFill, XdpCounters};
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

/// Share of the ring buffer that, unread, makes every record wake the reader even while it
/// drains on its timer (it fell behind: a timer tick was late). Unit: 1/n of the ring; default
/// a quarter.
pub const WAKE_THRESHOLD_DIVISOR: u32 = 4;

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
    ring: AsyncFd<RingBuf<MapData>>,
    /// The ring's two position pages, read for its fill; `None` where they could not be mapped.
    ring_positions: Option<RingPositions>,
    /// Ticks every [`DRAIN_INTERVAL`] while the reader drains on its timer.
    drain_timer: AsyncFd<DrainTimer>,
    /// The `READER` map: where the reader says it is parked.
    reader: ReaderMap,
    /// Timer drains in a row that found the ring empty.
    empty_drains: u32,
    counters: PerCpuArray<MapData, u64>,
    /// One buffer that captured frames are split off, so records cost no allocation each.
    arena: BytesMut,
    /// `CLOCK_REALTIME - CLOCK_MONOTONIC`, to turn `bpf_ktime_get_ns` into wall time.
    mono_to_wall_ns: i128,
    attached: Vec<(String, AttachedMode)>,
    /// The counters as last read, shown once they cannot be read any more.
    last_counters: Cell<XdpCounters>,
    /// Reading them failed once (and was reported): they are not tried again.
    counters_unavailable: Cell<bool>,
    _ebpf: Ebpf,
}

impl XdpCapture {
    /// Loads the program with `ports` and a ring buffer of `ring_bytes`, then attaches it to
    /// every interface in `interfaces`.
    ///
    /// # Errors
    /// [`XdpError`] with a hint when the kernel, privileges or interface do not allow it.
    pub fn open(
        interfaces: &[Interface],
        ports: &[u16],
        mode: AttachPolicy,
        ring_bytes: u32,
    ) -> Result<Self, XdpError> {
        if PROGRAM.is_empty() {
            return Err(XdpError::NotBuilt);
        }
        check_kernel()?;
        let mut ebpf = EbpfLoader::new()
            .map_max_entries("EVENTS", ring_bytes)
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
        let reader = ReaderMap::open(&mut ebpf, ring_bytes / WAKE_THRESHOLD_DIVISOR)?;

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

        let ring =
            RingBuf::try_from(take_map(&mut ebpf, "EVENTS")?).map_err(|source| XdpError::Map {
                name: "EVENTS",
                source,
            })?;
        let counters =
            PerCpuArray::try_from(take_map(&mut ebpf, "COUNTERS")?).map_err(|source| {
                XdpError::Map {
                    name: "COUNTERS",
                    source,
                }
            })?;
        let ring_positions = RingPositions::map(&ring, ring_bytes)
            .inspect_err(|error| {
                tracing::debug!(%error, "the ring buffer's fill is not exposed: cannot mmap its positions");
            })
            .ok();
        // SAFETY: the RingBuf owns its map's fd, which stays open, and is the same fd, for as
        // long as the AsyncFd owns the RingBuf.
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
            ring_positions,
            drain_timer,
            reader,
            empty_drains: 0,
            counters,
            arena: BytesMut::new(),
            mono_to_wall_ns: mono_to_wall_ns(),
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
        read_batch(
            self.ring.get_mut(),
            &mut self.arena,
            self.mono_to_wall_ns,
            out,
        )
    }

    /// Appends whatever the ring buffer holds now, without waiting (for shutdown).
    pub fn drain(&mut self, out: &mut Vec<Captured>) {
        while read_batch(
            self.ring.get_mut(),
            &mut self.arena,
            self.mono_to_wall_ns,
            out,
        ) > 0
        {}
    }

    /// The program's counters, summed over CPUs. Where they cannot be read (after `--user` on
    /// a kernel that lets only `CAP_BPF` use `bpf(2)` at all while
    /// `kernel.unprivileged_bpf_disabled` is set, as Debian sets it: 5.18, as map access through
    /// a descriptor is allowed from 5.19 on; or where an LSM refuses it), says so once on stderr
    /// and gives the last values read from then on: capture and output go on without them.
    ///
    /// # Errors
    /// None at present; kept for callers that treat counters as fallible.
    ///
    /// The ring buffer's fill is read afresh each time (from its mapped positions, no syscall),
    /// even where the program's counters cannot be.
    pub fn counters(&self) -> Result<XdpCounters, XdpError> {
        let ring = self.ring_positions.as_ref().map(RingPositions::fill);
        if self.counters_unavailable.get() {
            return Ok(XdpCounters {
                ring,
                ..self.last_counters.get()
            });
        }
        match self.read_counters() {
            Ok(counters) => {
                self.last_counters.set(counters);
                Ok(XdpCounters { ring, ..counters })
            }
            Err(error) => {
                self.counters_unavailable.set(true);
                let why = if root_errno(&error) == Some(libc::EPERM) {
                    " (this kernel lets only CAP_BPF read BPF maps, see kernel.unprivileged_bpf_disabled, and it was dropped)"
                } else {
                    ""
                };
                eprintln!(
                    "netcon-sniff: XDP counters unavailable from now on: reading them failed ({}){why}; the stats show the last values read",
                    root_cause(&error)
                );
                Ok(XdpCounters {
                    ring,
                    ..self.last_counters.get()
                })
            }
        }
    }

    fn read_counters(&self) -> Result<XdpCounters, XdpError> {
        let sum = |index: u32| -> Result<u64, XdpError> {
            let values = self
                .counters
                .get(&index, 0)
                .map_err(|source| XdpError::Map {
                    name: "COUNTERS",
                    source,
                })?;
            Ok(values.iter().copied().fold(0u64, u64::wrapping_add))
        };
        Ok(XdpCounters {
            seen: sum(counter::SEEN)?,
            matched: sum(counter::MATCHED)?,
            ringbuf_full: sum(counter::RINGBUF_FULL)?,
            truncated: sum(counter::TRUNCATED)?,
            copy_failed: sum(counter::COPY_FAILED)?,
            wakeups: sum(counter::WAKEUPS)?,
            ring: None,
        })
    }

    /// The ring buffer's file descriptor (for diagnostics).
    #[must_use]
    pub fn ring_fd(&self) -> i32 {
        self.ring.get_ref().as_raw_fd()
    }
}

/// The `READER` map's one entry, mmapped (the map is `BPF_F_MMAPABLE`): a store here is seen by
/// the program's next record without a syscall.
struct ReaderMap {
    state: std::ptr::NonNull<ReaderState>,
    len: usize,
    /// What we last wrote to `generation`.
    generation: u32,
    // The mapping keeps the map alive by itself; the fd is kept to say whose it is.
    _map: MapData,
}

impl ReaderMap {
    fn open(ebpf: &mut Ebpf, wake_threshold: u32) -> Result<Self, XdpError> {
        let aya::maps::Map::Array(map) = take_map(ebpf, "READER")? else {
            return Err(XdpError::Map {
                name: "READER",
                source: aya::maps::MapError::InvalidName {
                    name: "READER (not an array)".into(),
                },
            });
        };
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let len = size_of::<ReaderState>().next_multiple_of(page);
        // SAFETY: a fresh shared mapping of the map's fd; the kernel checks size and flags.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(XdpError::Load {
                source: format!(
                    "cannot mmap the READER map: {} (needs kernel 5.5 or later)",
                    io::Error::last_os_error()
                )
                .into(),
            });
        }
        let state = std::ptr::NonNull::new(ptr.cast::<ReaderState>()).ok_or(XdpError::Load {
            source: "mmap of the READER map returned NULL".into(),
        })?;
        let reader = Self {
            state,
            len,
            generation: 0,
            _map: map,
        };
        // SAFETY: the mapping is page-aligned, writable and at least one entry long.
        unsafe {
            std::ptr::write_volatile(
                reader.state.as_ptr(),
                ReaderState {
                    generation: 0,
                    wake_threshold,
                },
            );
        }
        Ok(reader)
    }

    /// Starts a new generation, parked (we sleep until woken) or not; then a full barrier, so
    /// that what we read next from the ring comes after the program can see it.
    fn set_parked(&mut self, parked: bool) {
        let next = self.generation.wrapping_add(GENERATION_STEP) & !READER_PARKED;
        self.generation = if parked { next | READER_PARKED } else { next };
        // SAFETY: a live, aligned u32 in our mapping; the program only reads it. A u32
        // atomic, because the kernel reads it concurrently.
        let word = unsafe {
            std::sync::atomic::AtomicU32::from_ptr(&raw mut (*self.state.as_ptr()).generation)
        };
        word.store(self.generation, std::sync::atomic::Ordering::SeqCst);
        if parked {
            std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        }
    }
}

impl Drop for ReaderMap {
    fn drop(&mut self) {
        // SAFETY: the mapping made in open, unmapped once.
        unsafe { libc::munmap(self.state.as_ptr().cast(), self.len) };
    }
}

/// The ring buffer's consumer and producer positions, mapped read-only: kernel/bpf/ringbuf.c
/// (`struct bpf_ringbuf`) puts `consumer_pos` alone on the map's first page and `producer_pos`
/// alone on the second, each an `unsigned long` at the page's start, and lets any process map
/// them read-only (writable only the consumer page, which aya maps for its own reads). Reading
/// them costs two loads, no syscall and nothing on the reader's path.
struct RingPositions {
    /// The start of the mapping: `consumer_pos`; `producer_pos` is one page further.
    consumer: std::ptr::NonNull<usize>,
    page: usize,
    size: u64,
}

impl RingPositions {
    /// Maps the two position pages of `ring`, whose data area is `size` bytes.
    fn map(ring: &RingBuf<MapData>, size: u32) -> io::Result<Self> {
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        // SAFETY: a fresh read-only shared mapping of the map's fd; the kernel checks the
        // range (kernel/bpf/ringbuf.c: ringbuf_map_mmap_kern).
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                2 * page,
                libc::PROT_READ,
                libc::MAP_SHARED,
                ring.as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let consumer = std::ptr::NonNull::new(ptr.cast::<usize>())
            .ok_or_else(|| io::Error::other("mmap of the ring buffer's positions returned NULL"))?;
        Ok(Self {
            consumer,
            page,
            size: u64::from(size),
        })
    }

    /// The fill now. The consumer position is read first: the producer's, read after it,
    /// cannot be behind it, as the reader never passes the program.
    fn fill(&self) -> RingFill {
        use std::sync::atomic::{AtomicUsize, Ordering};
        // SAFETY: both words are page-aligned `unsigned long`s (`usize` on Linux) inside our
        // live mapping; the kernel and aya write them concurrently, hence atomic loads.
        let (consumer, producer) = unsafe {
            let consumer = AtomicUsize::from_ptr(self.consumer.as_ptr()).load(Ordering::Acquire);
            let producer = AtomicUsize::from_ptr(self.consumer.as_ptr().byte_add(self.page))
                .load(Ordering::Acquire);
            (consumer, producer)
        };
        RingFill {
            used: held_bytes(consumer, producer, self.size),
            size: self.size,
        }
    }
}

impl Drop for RingPositions {
    fn drop(&mut self) {
        // SAFETY: the mapping made in map, unmapped once.
        unsafe { libc::munmap(self.consumer.as_ptr().cast(), 2 * self.page) };
    }
}

/// Bytes between the consumer and producer positions (free-running counters that wrap),
/// clamped to the ring's `size`: a position torn across a wrap or read mid-update never shows
/// more than the ring holds.
fn held_bytes(consumer: usize, producer: usize, size: u64) -> u64 {
    u64::try_from(producer.wrapping_sub(consumer))
        .unwrap_or(u64::MAX)
        .min(size)
}

/// A one-shot `timerfd` (`CLOCK_MONOTONIC`): tokio's own timers tick in milliseconds, the drain
/// interval is in microseconds.
struct DrainTimer {
    fd: std::os::fd::OwnedFd,
}

impl DrainTimer {
    fn new() -> io::Result<Self> {
        // SAFETY: plain syscall; the fd is owned below.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd we own.
        Ok(Self {
            fd: unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) },
        })
    }

    /// Fires once after `after` (re-arming resets the expiry count, so nothing needs reading).
    fn arm(&self, after: Duration) -> io::Result<()> {
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: libc::time_t::try_from(after.as_secs()).unwrap_or(libc::time_t::MAX),
                tv_nsec: libc::c_long::from(after.subsec_nanos().max(1)),
            },
        };
        // SAFETY: spec is a valid itimerspec; no old value wanted.
        let rc = unsafe {
            libc::timerfd_settime(
                self.fd.as_raw_fd(),
                0,
                &raw const spec,
                std::ptr::null_mut(),
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

impl AsRawFd for DrainTimer {
    fn as_raw_fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }
}

/// [`XdpError::Rejected`] when the verifier ran and said no (its log is not empty), with the
/// whole log at debug level; otherwise [`XdpError::Load`].
fn load_error(error: aya::programs::ProgramError) -> XdpError {
    if let aya::programs::ProgramError::LoadError {
        io_error,
        verifier_log,
    } = &error
    {
        let log = verifier_log.to_string();
        if let Some(rejected) = verifier_rejection(&log) {
            tracing::debug!(error = %io_error, "the verifier's log:\n{}", log.trim_end());
            return rejected;
        }
    }
    XdpError::Load {
        source: error.into(),
    }
}

/// [`XdpError::Rejected`] for a non-empty verifier log.
fn verifier_rejection(log: &str) -> Option<XdpError> {
    last_verifier_message(log).map(|reason| XdpError::Rejected {
        kernel: kernel_release(),
        reason: reason.to_owned(),
    })
}

/// The running kernel's `uname -r`.
fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map_or_else(
        |_| KernelVersion::current().map_or_else(|_| "this kernel".to_owned(), |v| v.to_string()),
        |release| release.trim().to_owned(),
    )
}

/// The line of a verifier log that says why it refused: the last one that is neither an
/// instruction (`166: (85) call bpf_xdp_load_bytes#189`), a register state (`R1=ctx() ...`,
/// `from 12 to 40: ...`), a source line (`; let x = ...`) nor a statistic (`processed 165
/// insns ...`, `verification time ...`, `stack depth ...`). `None` for an empty log.
fn last_verifier_message(log: &str) -> Option<&str> {
    let mut last_nonempty = None;
    for line in log.lines().rev().map(str::trim).filter(|l| !l.is_empty()) {
        last_nonempty.get_or_insert(line);
        let first = line.split_whitespace().next().unwrap_or_default();
        let numbered = first
            .strip_suffix(':')
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        let register_state = first.starts_with('R')
            && first[1..].starts_with(|c: char| c.is_ascii_digit())
            && first.contains('=');
        let noise = numbered
            || register_state
            || line.starts_with(';')
            || line.starts_with("from ")
            || line.starts_with("processed ")
            || line.starts_with("verification time")
            || line.starts_with("stack depth")
            || line.starts_with("func#")
            || line.starts_with("-- ");
        if !noise {
            return Some(line);
        }
    }
    last_nonempty
}

fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, XdpError> {
    ebpf.take_map(name).ok_or(XdpError::Map {
        name,
        source: aya::maps::MapError::InvalidName { name: name.into() },
    })
}

fn check_kernel() -> Result<(), XdpError> {
    // If the version cannot be read, let loading decide.
    if let Ok(version) = KernelVersion::current()
        && version < KernelVersion::new(MIN_KERNEL.0, MIN_KERNEL.1, 0)
    {
        return Err(XdpError::KernelTooOld {
            found: version.to_string(),
        });
    }
    Ok(())
}

fn attach(
    program: &mut Xdp,
    interface: &Interface,
    mode: AttachPolicy,
) -> Result<AttachedMode, XdpError> {
    let try_mode = |program: &mut Xdp, mode: AttachedMode| {
        let flags = match mode {
            AttachedMode::Native => XdpMode::Driver,
            AttachedMode::Skb => XdpMode::Skb,
        };
        program
            .attach_to_if_index(interface.ifindex, flags)
            .map(|_| mode)
            .map_err(|source| XdpError::Attach {
                interface: interface.name.clone(),
                mode: mode.as_str(),
                source,
            })
    };
    match mode {
        AttachPolicy::Native => try_mode(program, AttachedMode::Native),
        AttachPolicy::Skb => try_mode(program, AttachedMode::Skb),
        AttachPolicy::Auto => try_mode(program, AttachedMode::Native).or_else(|native| {
            // Only a driver without native XDP is helped by generic mode; a busy interface or
            // missing privileges fail the same way in both, and the native error says it best.
            if !native_unsupported(&native) {
                return Err(native);
            }
            let skb = try_mode(program, AttachedMode::Skb)?;
            // The root cause alone (e.g. "Operation not supported"): the full error carries a
            // hint to use skb mode, which is what happens next.
            let cause = root_cause(&native);
            eprintln!(
                "netcon-sniff: native XDP unavailable on {} ({cause}); using generic (skb) mode",
                interface.name
            );
            Ok(skb)
        }),
    }
}

/// The errno of the first `io::Error` in `error`'s chain; `None` when there is none (an
/// `io::Error` without an errno gives `None` too).
fn root_errno(error: &(dyn StdError + 'static)) -> Option<i32> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            return io.raw_os_error();
        }
        current = e.source();
    }
    None
}

/// The innermost error of `error`'s chain (e.g. `Operation not permitted (os error 1)`).
fn root_cause<'a>(error: &'a (dyn StdError + 'static)) -> &'a (dyn StdError + 'static) {
    let mut cause = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause
}

/// Whether attaching in native mode failed because the driver cannot do it.
fn native_unsupported(error: &XdpError) -> bool {
    root_errno(error).is_none_or(|errno| matches!(errno, libc::EOPNOTSUPP | libc::EINVAL))
}

/// The `PORTS` map contents: `(word index, bits)` for each word with a port in it.
fn port_bitmap(ports: &[u16]) -> Vec<(u32, u32)> {
    let mut words = std::collections::BTreeMap::<u32, u32>::new();
    for &port in ports {
        *words.entry(u32::from(port) >> 5).or_default() |= 1 << (u32::from(port) & 31);
    }
    words.into_iter().collect()
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec; both clocks exist on every Linux.
    unsafe { libc::clock_gettime(clock, &raw mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

fn mono_to_wall_ns() -> i128 {
    clock_ns(libc::CLOCK_REALTIME) - clock_ns(libc::CLOCK_MONOTONIC)
}

/// Reads up to [`MAX_BATCH`] records; returns how many it read. Malformed records (which only a
/// mismatched program could produce) are skipped with a warning.
fn read_batch(
    ring: &mut RingBuf<MapData>,
    arena: &mut BytesMut,
    mono_to_wall_ns: i128,
    out: &mut Vec<Captured>,
) -> usize {
    let mut read = 0;
    while read < MAX_BATCH {
        let Some(item) = ring.next() else { break };
        read += 1;
        if let Some((header, frame)) = parse_record(&item) {
            if arena.capacity() - arena.len() < frame.len() {
                arena.reserve(64 * 1024);
            }
            arena.extend_from_slice(frame);
            out.push(Captured {
                ts: wall_time(mono_to_wall_ns, header.ts_ns),
                ifindex: header.ifindex,
                wire_len: header.pkt_len,
                link: LinkType::Ethernet,
                bytes: arena.split().freeze(),
            });
        } else {
            tracing::warn!(len = item.len(), "skipping malformed ring buffer record");
        }
    }
    read
}

/// Splits a ring buffer record into its header and frame, checking every length.
#[must_use]
pub fn parse_record(record: &[u8]) -> Option<(RecordHeader, &[u8])> {
    let (head, rest) = record.split_at_checked(RECORD_HEADER_LEN)?;
    // Fields are read one by one from little-endian bytes: no transmute, no alignment
    // assumption about the ring buffer's memory. BPF on x86_64/arm64 is little-endian.
    let u32_at = |i: usize| u32::from_le_bytes(head[i..i + 4].try_into().unwrap_or_default());
    let header = RecordHeader {
        ts_ns: u64::from_le_bytes(head[0..8].try_into().ok()?),
        ifindex: u32_at(8),
        pkt_len: u32_at(12),
        cap_len: u32_at(16),
        flags: u32_at(20),
    };
    let frame = rest.get(..usize::try_from(header.cap_len).ok()?)?;
    Some((header, frame))
}

fn wall_time(mono_to_wall_ns: i128, ts_ns: u64) -> DateTime<Utc> {
    let wall = mono_to_wall_ns + i128::from(ts_ns);
    i64::try_from(wall).map_or(DateTime::<Utc>::MAX_UTC, DateTime::from_timestamp_nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(cap_len: u32, frame: &[u8]) -> Vec<u8> {
        let mut r = Vec::new();
        r.extend_from_slice(&7u64.to_le_bytes());
        r.extend_from_slice(&3u32.to_le_bytes());
        r.extend_from_slice(&99u32.to_le_bytes());
        r.extend_from_slice(&cap_len.to_le_bytes());
        r.extend_from_slice(&0u32.to_le_bytes());
        r.extend_from_slice(frame);
        r
    }

    #[test]
    fn ring_fill_is_the_distance_between_positions_clamped_to_the_ring() {
        let size = 8 << 20;
        assert_eq!(held_bytes(0, 0, size), 0);
        assert_eq!(held_bytes(4096, 4096 + 1500, size), 1500);
        // Positions run freely and wrap; the distance survives the wrap.
        assert_eq!(held_bytes(usize::MAX - 99, 200, size), 300);
        assert_eq!(held_bytes(100, 100 + (8 << 20), size), size, "a full ring");
        // Never more than the ring holds, whatever a torn read gives.
        assert_eq!(held_bytes(100, 100 + (9 << 20), size), size);
        assert_eq!(held_bytes(200, 100, size), size);
    }

    #[test]
    fn parses_header_and_frame() {
        let r = record(3, b"abcXX");
        let (h, f) = parse_record(&r).unwrap();
        assert_eq!((h.ts_ns, h.ifindex, h.pkt_len, h.cap_len), (7, 3, 99, 3));
        assert_eq!(f, b"abc");
    }

    #[test]
    fn rejects_short_records() {
        assert!(parse_record(&[0; RECORD_HEADER_LEN - 1]).is_none());
        assert!(parse_record(&record(6, b"abc")).is_none());
    }

    /// The end of 6.1's log for a length the verifier could not bound (real output).
    const REJECTED_6_1: &str = "func#0 @0
0: R1=ctx(off=0,imm=0) R10=fp0
; pub fn netcon(ctx: XdpContext) -> u32 {
0: (bf) r6 = r1                       ; R1=ctx(off=0,imm=0) R6_w=ctx(off=0,imm=0)
165: (bf) r3 = r8                     ; R3_w=scalar(umax=2048,var_off=(0x0; 0xfff))
166: (85) call bpf_xdp_load_bytes#189
invalid access to map value, value_size=2072 off=24 size=0
R3 min value is outside of the allowed memory range
processed 166 insns (limit 1000000) max_states_per_insn 0 total_states 10 peak_states 10 mark_read 6
";

    #[test]
    fn verifier_reason_is_its_last_message() {
        assert_eq!(
            last_verifier_message(REJECTED_6_1),
            Some("R3 min value is outside of the allowed memory range")
        );
        assert_eq!(
            last_verifier_message("processed 3 insns\nverification time 12 usec\n"),
            Some("verification time 12 usec"),
            "a log of noise only still gives its last line"
        );
        assert_eq!(last_verifier_message(" \n"), None);
    }

    #[test]
    fn rejection_is_one_line_without_the_log() {
        let text = verifier_rejection(REJECTED_6_1).unwrap().to_string();
        assert!(
            text.starts_with("the kernel's verifier rejected the XDP program on "),
            "{text}"
        );
        assert!(
            text.contains(
                ": R3 min value is outside of the allowed memory range; run with RUST_LOG=debug"
            ),
            "{text}"
        );
        assert!(
            !text.contains('\n') && !text.contains("processed"),
            "{text}"
        );
        assert!(!text.contains("CAP_BPF"), "no privilege hint: {text}");
    }

    #[test]
    fn privilege_hint_only_before_verification() {
        assert!(verifier_rejection("").is_none());
        let denied = XdpError::Load {
            source: Box::new(io::Error::from_raw_os_error(libc::EPERM)),
        };
        assert!(denied.to_string().contains("CAP_BPF"), "{denied}");
        let invalid = XdpError::Load {
            source: Box::new(io::Error::from_raw_os_error(libc::EINVAL)),
        };
        assert!(!invalid.to_string().contains("CAP_BPF"), "{invalid}");
    }

    #[test]
    fn bitmap_sets_one_bit_per_port() {
        assert_eq!(
            port_bitmap(&[6666, 6667, 0, 65535]),
            vec![
                (0, 1),
                (208, 0b1100_0000_0000), // 6666 = 208 * 32 + 10
                (2047, 1 << 31)
            ]
        );
    }
}
