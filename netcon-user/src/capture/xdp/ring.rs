//! The reader's side of the ring buffer: the `READER` map it announces itself in, the ring's
//! positions, the drain timer, and turning records into [`Captured`] frames.

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd},
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use aya::{Ebpf, maps::MapData};
use bytes::BytesMut;
use chrono::{DateTime, Utc};
use netcon_common::{GENERATION_STEP, READER_PARKED, RECORD_HEADER_LEN, ReaderState, RecordHeader};

use super::{MAX_BATCH, XdpError, load::take_map};
use crate::capture::{Captured, LinkType, RingFill};

/// The `READER` map's one entry, mmapped (the map is `BPF_F_MMAPABLE`): a store here is seen by
/// the program's next record without a syscall.
pub(super) struct ReaderMap {
    state: std::ptr::NonNull<ReaderState>,
    len: usize,
    /// What we last wrote to `generation`.
    generation: u32,
    // The mapping keeps the map alive by itself; the fd is kept to say whose it is.
    _map: MapData,
}

impl ReaderMap {
    pub(super) fn open(ebpf: &mut Ebpf, wake_threshold: u32) -> Result<Self, XdpError> {
        let aya::maps::Map::Array(map) = take_map(ebpf, "READER")? else {
            return Err(XdpError::Map {
                name: "READER",
                source: aya::maps::MapError::InvalidName {
                    name: "READER (not an array)".into(),
                },
            });
        };
        let page = page_size();
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
    pub(super) fn set_parked(&mut self, parked: bool) {
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

/// `struct bpf_ringbuf_hdr` (kernel/bpf/ringbuf.c, include/uapi/linux/bpf.h): every record
/// starts with a `u32` length word and a `u32` page offset, and is padded to 8 bytes.
const RINGBUF_HDR_LEN: usize = 8;
/// The length word's bit while the producer still writes the record (`BPF_RINGBUF_BUSY_BIT`).
const RINGBUF_BUSY_BIT: u32 = 1 << 31;
/// The length word's bit of a discarded record (`BPF_RINGBUF_DISCARD_BIT`).
const RINGBUF_DISCARD_BIT: u32 = 1 << 30;

/// Our side of the `EVENTS` ring buffer (kernel/bpf/ringbuf.c, `ringbuf_map_mmap_kern`): the
/// consumer page read-write; the producer page and the data area read-only. The kernel can map
/// the data area twice back to back, so that a record that wraps reads as one slice, as libbpf
/// maps it; we map it once, because the kernel fills every page table entry of the mapping at
/// mmap time and the second copy would count the ring twice in our RSS (16 MiB for the 8 MiB
/// default) for the one record per lap that wraps, which [`walk`] puts together in a scratch
/// buffer instead.
///
/// Why not `aya::maps::RingBuf`: it publishes the consumer position after every record, and
/// the program reads that word twice per record (`__bpf_ringbuf_reserve`'s space check,
/// `bpf_ringbuf_commit`'s wake-up test), so while we read, each record the program writes
/// fetches the cache line back from our core. Here the position is published once a batch.
pub(super) struct RingReader {
    /// The map; its fd is what the program's wake-ups make readable.
    map: MapData,
    /// The consumer page: `consumer_pos` at its start.
    consumer: std::ptr::NonNull<usize>,
    /// The producer page (`producer_pos` at its start), then the data area once.
    producer: std::ptr::NonNull<usize>,
    page: usize,
    /// Bytes in the data area: a power of two.
    size: usize,
    /// Where the next record starts; published to `consumer_pos` at the end of each batch.
    pos: usize,
    /// A record that wraps around the end of the data area, put together.
    wrapped: Vec<u8>,
}

impl RingReader {
    /// Maps `map`, a ring buffer whose data area is `size` bytes.
    pub(super) fn map(map: MapData, size: u32) -> io::Result<Self> {
        let size = usize::try_from(size).map_err(io::Error::other)?;
        if !size.is_power_of_two() {
            return Err(io::Error::other(format!(
                "ring buffer size {size} is not a power of two"
            )));
        }
        let page = page_size();
        let fd = map.fd().as_fd().as_raw_fd();
        // SAFETY: a fresh shared mapping of the map's fd; the kernel allows exactly the first
        // page writable.
        let consumer = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                page,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if consumer == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: as above, read-only, from the second page on: the producer page and the data
        // area once (the kernel's remap_vmalloc_range accepts a mapping shorter than the area).
        let producer = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                page + size,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd,
                libc::off_t::try_from(page).unwrap_or(4096),
            )
        };
        if producer == libc::MAP_FAILED {
            let error = io::Error::last_os_error();
            // SAFETY: the mapping made above, unmapped once.
            unsafe { libc::munmap(consumer, page) };
            return Err(error);
        }
        let (Some(consumer), Some(producer)) = (
            std::ptr::NonNull::new(consumer.cast::<usize>()),
            std::ptr::NonNull::new(producer.cast::<usize>()),
        ) else {
            return Err(io::Error::other("mmap of the ring buffer returned NULL"));
        };
        let mut reader = Self {
            map,
            consumer,
            producer,
            page,
            size,
            pos: 0,
            wrapped: Vec::new(),
        };
        reader.pos = reader.consumer_word().load(Ordering::Acquire);
        Ok(reader)
    }

    fn consumer_word(&self) -> &AtomicUsize {
        // SAFETY: a page-aligned `unsigned long` (`usize` on Linux) at the start of our live
        // mapping; the kernel reads it concurrently, hence atomic.
        unsafe { AtomicUsize::from_ptr(self.consumer.as_ptr()) }
    }

    /// `producer_pos`, with acquire ordering: the records before it are visible after it.
    fn producer_pos(&self) -> usize {
        // SAFETY: producer_pos is a page-aligned `unsigned long` at the start of our live,
        // read-only mapping; the kernel writes it with a release store, which the fence pairs
        // with. A volatile read, not an atomic one, as the mapping is read-only.
        let producer = unsafe { std::ptr::read_volatile(self.producer.as_ptr()) };
        std::sync::atomic::fence(Ordering::Acquire);
        producer
    }

    /// The fill now: what the program has written and we have not yet published as read.
    pub(super) fn fill(&self) -> RingFill {
        // The consumer position first: the producer's, read after it, cannot be behind it.
        let consumer = self.consumer_word().load(Ordering::Acquire);
        let producer = self.producer_pos();
        RingFill {
            used: held_bytes(consumer, producer, self.size as u64),
            size: self.size as u64,
        }
    }

    /// Calls `record` with each committed record's bytes, oldest first, until `max` records
    /// were given or the next one is absent or still being written; skips discarded records.
    /// Publishes the new consumer position once, at the end. Returns the records given.
    ///
    /// A record still being written (busy) ends the batch: we park only after a full barrier
    /// and a look, and the program looks at the parked bit after its commit's full barrier,
    /// so that record wakes us if we park now (`output` in netcon-ebpf).
    pub(super) fn read(&mut self, max: usize, record: impl FnMut(&[u8])) -> usize {
        let producer = self.producer_pos();
        // SAFETY: the data area, mapped once, starts one page into our live mapping of
        // page + size bytes; committed records are not written until we pass them.
        let walked = unsafe {
            walk(
                self.producer.as_ptr().cast::<u8>().add(self.page),
                self.size,
                self.pos,
                producer,
                max,
                &mut self.wrapped,
                record,
            )
        };
        self.pos = walked.pos;
        // After the records were copied out: the kernel pairs this with the acquire load in
        // __bpf_ringbuf_reserve before it reuses their space.
        self.consumer_word().store(self.pos, Ordering::Release);
        walked.given
    }
}

/// Where [`walk`] stopped, and how many records it gave.
#[derive(Debug, PartialEq, Eq)]
struct Walked {
    pos: usize,
    given: usize,
}

/// Walks a BPF ring buffer's records from consumer position `pos` towards `producer`, giving
/// each committed one's bytes to `record`, until `max` were given, a record is still being
/// written (busy) or `producer` is reached; discarded records are passed over. A record that
/// wraps around the end of the area is copied together into `wrapped` and given from there.
///
/// # Safety
/// `data` points to the ring's data area (`size` readable bytes, `size` a power of two,
/// 8-aligned), whose records between `pos` and `producer` nobody writes except to clear a busy
/// bit.
unsafe fn walk(
    data: *const u8,
    size: usize,
    mut pos: usize,
    producer: usize,
    max: usize,
    wrapped: &mut Vec<u8>,
    mut record: impl FnMut(&[u8]),
) -> Walked {
    let mut given = 0;
    while given < max && pos != producer {
        let offset = pos & (size - 1);
        // SAFETY: offset < size and the header is 8 bytes, 8-aligned (records are padded to
        // 8, size is a multiple of 8): inside the area, never across its end. The kernel sets
        // the busy bit before it moves producer_pos and clears it with a full barrier (xchg in
        // bpf_ringbuf_commit); the acquire fence pairs with that.
        #[expect(
            clippy::cast_ptr_alignment,
            reason = "data is 8-aligned and every record starts at a multiple of 8"
        )]
        let word = unsafe { std::ptr::read_volatile(data.add(offset).cast::<u32>()) };
        std::sync::atomic::fence(Ordering::Acquire);
        if word & RINGBUF_BUSY_BIT != 0 {
            break;
        }
        let len = (word & !(RINGBUF_BUSY_BIT | RINGBUF_DISCARD_BIT)) as usize;
        if len > size - RINGBUF_HDR_LEN {
            // Only a kernel bug could write this: skip what is there rather than read outside
            // the ring.
            tracing::warn!(
                len,
                "ring buffer record longer than the ring: skipping to the producer"
            );
            return Walked {
                pos: producer,
                given,
            };
        }
        if word & RINGBUF_DISCARD_BIT == 0 {
            // The record's bytes start at `start` (offset + 8 <= size) and may run past the end
            // of the area, on from its beginning.
            let start = offset + RINGBUF_HDR_LEN;
            let first = len.min(size - start);
            // SAFETY: start + first <= size: inside the area.
            let head = unsafe { std::slice::from_raw_parts(data.add(start), first) };
            if first == len {
                record(head);
            } else {
                wrapped.clear();
                wrapped.extend_from_slice(head);
                // SAFETY: len - first < size - 8: from the start of the area, inside it.
                wrapped.extend_from_slice(unsafe { std::slice::from_raw_parts(data, len - first) });
                record(wrapped);
            }
            given += 1;
        }
        pos = pos.wrapping_add((RINGBUF_HDR_LEN + len).next_multiple_of(8));
    }
    Walked { pos, given }
}

impl AsRawFd for RingReader {
    fn as_raw_fd(&self) -> i32 {
        self.map.fd().as_fd().as_raw_fd()
    }
}

impl Drop for RingReader {
    fn drop(&mut self) {
        // SAFETY: the mappings made in map, each unmapped once.
        unsafe {
            libc::munmap(self.consumer.as_ptr().cast(), self.page);
            libc::munmap(self.producer.as_ptr().cast(), self.page + self.size);
        }
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

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096)
}

/// A one-shot `timerfd` (`CLOCK_MONOTONIC`): tokio's own timers tick in milliseconds, the drain
/// interval is in microseconds.
pub(super) struct DrainTimer {
    fd: std::os::fd::OwnedFd,
}

impl DrainTimer {
    pub(super) fn new() -> io::Result<Self> {
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
    pub(super) fn arm(&self, after: Duration) -> io::Result<()> {
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

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec; both clocks exist on every Linux.
    unsafe { libc::clock_gettime(clock, &raw mut ts) };
    timespec_ns(&ts)
}

fn timespec_ns(ts: &libc::timespec) -> i128 {
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

pub(super) fn mono_to_wall_ns() -> i128 {
    clock_ns(libc::CLOCK_REALTIME) - clock_ns(libc::CLOCK_MONOTONIC)
}

/// How far past a `CLOCK_MONOTONIC_COARSE` reading a frame can have arrived: two of the clock's
/// ticks (it lags the real time by less than one; the second is margin).
pub(super) fn coarse_slack_ns() -> i128 {
    let mut res = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: res is a valid timespec; the clock exists on every Linux since 2.6.32.
    let rc = unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &raw mut res) };
    let tick = if rc == 0 {
        timespec_ns(&res)
    } else {
        // The longest tick Linux has (HZ=100).
        10_000_000
    };
    2 * tick.clamp(1, 10_000_000)
}

/// Reads up to [`MAX_BATCH`] records; returns how many. Malformed records (which only a
/// mismatched program could produce) are skipped with a warning.
pub(super) fn read_batch(
    ring: &mut RingReader,
    arena: &mut BytesMut,
    stamp: Stamp,
    out: &mut Vec<Captured>,
) -> usize {
    let first = out.len();
    let read = ring.read(MAX_BATCH, |record| {
        if let Some((header, frame)) = parse_record(record) {
            if arena.capacity() - arena.len() < frame.len() {
                arena.reserve(64 * 1024);
            }
            arena.extend_from_slice(frame);
            out.push(Captured {
                ts: match stamp {
                    Stamp::Kernel { mono_to_wall_ns } => wall_time(mono_to_wall_ns, header.ts_ns),
                    // The latest the frame can have arrived; the read time replaces it below
                    // when earlier.
                    Stamp::Read {
                        mono_to_wall_ns,
                        coarse_slack_ns,
                    } => wall_time(mono_to_wall_ns + coarse_slack_ns, header.ts_ns),
                },
                ifindex: header.ifindex,
                wire_len: header.pkt_len,
                link: LinkType::Ethernet,
                bytes: arena.split().freeze(),
            });
        } else {
            tracing::warn!(len = record.len(), "skipping malformed ring buffer record");
        }
    });
    if matches!(stamp, Stamp::Read { .. }) && out.len() > first {
        // Read after the batch, so no frame is stamped before it arrived.
        let now = Utc::now();
        for captured in &mut out[first..] {
            captured.ts = read_time(now, captured.ts);
        }
    }
    read
}

/// A frame's receive time when the reader stamps it: the wall clock after the batch was read,
/// unless the frame's coarse arrival bound is earlier. The bound matters only when the reader
/// was kept from reading for longer than two ticks: a collector that falls behind must not
/// date its backlog late (`netconsole::boot`: the decoder would take a second's delay for a
/// reboot of the sender).
fn read_time(read: DateTime<Utc>, latest_arrival: DateTime<Utc>) -> DateTime<Utc> {
    read.min(latest_arrival)
}

/// Where a record's receive time comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stamp {
    /// The program's `bpf_ktime_get_ns` in the record header, turned into wall time with
    /// `CLOCK_REALTIME - CLOCK_MONOTONIC` (read once, at start).
    Kernel { mono_to_wall_ns: i128 },
    /// The wall clock right after the reader read the batch, bounded by the header's
    /// `bpf_ktime_get_coarse_ns` plus `coarse_slack_ns` (see [`read_time`]).
    Read {
        mono_to_wall_ns: i128,
        coarse_slack_ns: i128,
    },
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

    /// A ring's data area as we map it: `size` bytes once, with records written at consumer
    /// positions from `start`.
    struct FakeRing {
        data: Vec<u64>,
        size: usize,
        producer: usize,
    }

    impl FakeRing {
        fn new(size: usize, start: usize) -> Self {
            Self {
                data: vec![0; size / 8],
                size,
                producer: start,
            }
        }

        /// Appends a record of `payload` with the header bits `flags`, wrapping at the end.
        fn push(&mut self, payload: &[u8], flags: u32) {
            let len = u32::try_from(payload.len()).unwrap() | flags;
            let mut bytes = len.to_le_bytes().to_vec();
            bytes.extend_from_slice(&[0; 4]);
            bytes.extend_from_slice(payload);
            bytes.resize(bytes.len().next_multiple_of(8), 0);
            let area: &mut [u8] = bytemuck_bytes(&mut self.data);
            for (i, byte) in bytes.iter().enumerate() {
                let at = (self.producer + i) & (self.size - 1);
                area[at] = *byte;
            }
            self.producer = self.producer.wrapping_add(bytes.len());
        }

        fn walk(&self, pos: usize, max: usize) -> (Walked, Vec<Vec<u8>>) {
            let mut seen = Vec::new();
            let mut wrapped = Vec::new();
            // SAFETY: size bytes, 8-aligned (u64s), nobody writes them meanwhile.
            let walked = unsafe {
                walk(
                    self.data.as_ptr().cast(),
                    self.size,
                    pos,
                    self.producer,
                    max,
                    &mut wrapped,
                    |r| seen.push(r.to_vec()),
                )
            };
            (walked, seen)
        }
    }

    fn bytemuck_bytes(words: &mut [u64]) -> &mut [u8] {
        // SAFETY: u8 has no alignment or validity requirement; same memory, 8x the length.
        unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast(), words.len() * 8) }
    }

    #[test]
    fn walks_committed_records_in_order_across_the_wrap() {
        // Start 40 bytes before the end of a 256-byte area: the second record wraps.
        let mut ring = FakeRing::new(256, 256 * 7 + 216);
        let start = ring.producer;
        ring.push(b"first", 0);
        ring.push(&[7; 50], 0);
        ring.push(b"third!", 0);
        let (walked, seen) = ring.walk(start, 10);
        assert_eq!(
            seen,
            vec![b"first".to_vec(), vec![7; 50], b"third!".to_vec()]
        );
        assert_eq!(
            walked,
            Walked {
                pos: ring.producer,
                given: 3
            }
        );
    }

    #[test]
    fn a_record_whose_header_ends_the_area_has_its_bytes_at_the_start() {
        // The header fills the last 8 bytes; the payload is all on the far side of the wrap.
        let mut ring = FakeRing::new(256, 248);
        ring.push(b"all after the wrap", 0);
        ring.push(b"next", 0);
        let (walked, seen) = ring.walk(248, 10);
        assert_eq!(seen, vec![b"all after the wrap".to_vec(), b"next".to_vec()]);
        assert_eq!(walked.pos, ring.producer);
    }

    #[test]
    fn passes_over_discarded_records_and_stops_at_a_busy_one() {
        let mut ring = FakeRing::new(256, 0);
        ring.push(&[], RINGBUF_DISCARD_BIT);
        ring.push(b"kept", 0);
        let busy_at = ring.producer;
        ring.push(b"still being written", RINGBUF_BUSY_BIT);
        ring.push(b"after", 0);
        let (walked, seen) = ring.walk(0, 10);
        assert_eq!(seen, vec![b"kept".to_vec()]);
        assert_eq!(
            walked,
            Walked {
                pos: busy_at,
                given: 1
            },
            "stops at the busy record"
        );
    }

    #[test]
    fn gives_at_most_max_records() {
        let mut ring = FakeRing::new(1024, 0);
        for i in 0..5u8 {
            ring.push(&[i; 3], 0);
        }
        let (walked, seen) = ring.walk(0, 2);
        assert_eq!(seen, vec![vec![0; 3], vec![1; 3]]);
        assert_eq!(walked, Walked { pos: 32, given: 2 });
        let (walked, seen) = ring.walk(walked.pos, 10);
        assert_eq!(seen.len(), 3);
        assert_eq!(walked.pos, ring.producer);
    }

    #[test]
    fn a_length_beyond_the_ring_skips_to_the_producer() {
        let mut ring = FakeRing::new(256, 0);
        ring.push(b"ok", 0);
        // A header claiming more than the ring holds (no kernel writes this).
        ring.data[2] = 0x0000_1000;
        ring.producer = 64;
        let (walked, seen) = ring.walk(0, 10);
        assert_eq!(seen, vec![b"ok".to_vec()]);
        assert_eq!(walked, Walked { pos: 64, given: 1 });
    }

    #[test]
    fn a_late_read_is_bounded_by_the_coarse_arrival() {
        let at = |ms: i64| DateTime::<Utc>::from_timestamp_millis(1_700_000_000_000 + ms).unwrap();
        // Read promptly: the read time, which is the finer of the two.
        assert_eq!(read_time(at(3), at(8)), at(3));
        // Read 1.2 s after the frame came (the reader was kept off the CPU): the bound.
        assert_eq!(read_time(at(1_200), at(8)), at(8));
        let slack = coarse_slack_ns();
        assert!((2..=20_000_000).contains(&slack), "{slack}");
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
}
