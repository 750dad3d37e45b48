//! The reader's side of the ring buffer: the `READER` map it announces itself in, the ring's
//! positions, the drain timer, and turning records into [`Captured`] frames.

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd},
    time::Duration,
};

use aya::{
    Ebpf,
    maps::{MapData, RingBuf},
};
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

/// The ring buffer's consumer and producer positions, mapped read-only: kernel/bpf/ringbuf.c
/// (`struct bpf_ringbuf`) puts `consumer_pos` alone on the map's first page and `producer_pos`
/// alone on the second, each an `unsigned long` at the page's start, and lets any process map
/// them read-only (writable only the consumer page, which aya maps for its own reads). Reading
/// them costs two loads, no syscall and nothing on the reader's path.
pub(super) struct RingPositions {
    /// The start of the mapping: `consumer_pos`; `producer_pos` is one page further.
    consumer: std::ptr::NonNull<usize>,
    page: usize,
    size: u64,
}

impl RingPositions {
    /// Maps the two position pages of `ring`, whose data area is `size` bytes.
    pub(super) fn map(ring: &RingBuf<MapData>, size: u32) -> io::Result<Self> {
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
    pub(super) fn fill(&self) -> RingFill {
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
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

pub(super) fn mono_to_wall_ns() -> i128 {
    clock_ns(libc::CLOCK_REALTIME) - clock_ns(libc::CLOCK_MONOTONIC)
}

/// Reads up to [`MAX_BATCH`] records; returns how many it read. Malformed records (which only a
/// mismatched program could produce) are skipped with a warning.
pub(super) fn read_batch(
    ring: &mut RingBuf<MapData>,
    arena: &mut BytesMut,
    stamp: Stamp,
    out: &mut Vec<Captured>,
) -> usize {
    let first = out.len();
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
                ts: match stamp {
                    Stamp::Kernel { mono_to_wall_ns } => wall_time(mono_to_wall_ns, header.ts_ns),
                    Stamp::Read => DateTime::<Utc>::MIN_UTC,
                },
                ifindex: header.ifindex,
                wire_len: header.pkt_len,
                link: LinkType::Ethernet,
                bytes: arena.split().freeze(),
            });
        } else {
            tracing::warn!(len = item.len(), "skipping malformed ring buffer record");
        }
    }
    if stamp == Stamp::Read && out.len() > first {
        // Read after the batch, so no frame is stamped before it arrived.
        let now = Utc::now();
        for captured in &mut out[first..] {
            captured.ts = now;
        }
    }
    read
}

/// Where a record's receive time comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stamp {
    /// The program's `bpf_ktime_get_ns` in the record header, turned into wall time with
    /// `CLOCK_REALTIME - CLOCK_MONOTONIC` (read once, at start).
    Kernel { mono_to_wall_ns: i128 },
    /// The wall clock right after the reader read the batch: the header carries no time.
    Read,
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
}
