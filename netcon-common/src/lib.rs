//! Types shared by the XDP program (`netcon-ebpf`) and userspace (`netcon-user`).
//!
//! Everything here is `#[repr(C)]`, `Copy`, and free of `bool` and enums, so that the layout the
//! eBPF program writes is exactly the layout userspace reads.
#![no_std]

/// Header of one ring buffer record; the captured frame bytes follow it directly.
///
/// 24 bytes, a multiple of 8 so that the frame starts aligned.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecordHeader {
    /// When the program saw the frame, `CLOCK_MONOTONIC` nanoseconds: `bpf_ktime_get_ns()`,
    /// or `bpf_ktime_get_coarse_ns()` (the last tick) when the reader stamps records itself.
    pub ts_ns: u64,
    /// Interface the frame arrived on (`ingress_ifindex`).
    pub ifindex: u32,
    /// Length of the frame on the wire, bytes.
    pub pkt_len: u32,
    /// Bytes of the frame that follow this header (`min(pkt_len, MAX_CAPTURE)`).
    pub cap_len: u32,
    /// Bit set of `FLAG_*`.
    pub flags: u32,
}

/// Size of [`RecordHeader`] in bytes.
pub const RECORD_HEADER_LEN: usize = core::mem::size_of::<RecordHeader>();

/// `RecordHeader::flags`: the frame was longer than [`MAX_CAPTURE`] and was cut.
pub const FLAG_TRUNCATED: u32 = 1;

/// Most frame bytes copied into one record. Netconsole payloads are at most 1000 bytes
/// (`MAX_PRINT_CHUNK`, drivers/net/netconsole.c), so 2 KiB holds any netconsole frame with two
/// VLAN tags and an IPv6 header. A power of two, so the eBPF side can bound the copy length as
/// `((len - 1) & (MAX_CAPTURE - 1)) + 1`, a range the verifier sees as 1..=`MAX_CAPTURE`.
pub const MAX_CAPTURE: usize = 2048;

/// Destination ports are a bitmap of 65536 bits in an array map of `u32` words.
pub const PORT_BITMAP_WORDS: u32 = 65536 / 32;

/// Index of each counter in the per-CPU `COUNTERS` array.
pub mod counter {
    /// Frames the program ran on.
    pub const SEEN: u32 = 0;
    /// Frames that were UDP to a configured port.
    pub const MATCHED: u32 = 1;
    /// Matched frames dropped because the ring buffer was full.
    pub const RINGBUF_FULL: u32 = 2;
    /// Matched frames longer than `MAX_CAPTURE`, delivered cut.
    pub const TRUNCATED: u32 = 3;
    /// Matched frames that could not be copied (`bpf_xdp_load_bytes` failed).
    pub const COPY_FAILED: u32 = 4;
    /// Records after which the program woke the reader (`BPF_RB_FORCE_WAKEUP`): it was parked,
    /// or this CPU wrote more than [`ReaderState::wake_threshold`](super::ReaderState) bytes
    /// since the reader last looked.
    pub const WAKEUPS: u32 = 5;
    /// Number of counters.
    pub const COUNT: u32 = 6;
}

/// What the reader tells the program, in the one entry of the `READER` array map (mmapped by
/// userspace, read by the program for every record it writes).
///
/// The program writes records without waking the reader (`BPF_RB_NO_WAKEUP`): while traffic
/// flows the reader drains the ring on its own short timer. It wakes the reader when the reader
/// has said it is parked (it found the ring empty and sleeps until woken), or when one CPU has
/// written more than `wake_threshold` bytes since the reader's generation began (so the ring
/// holds at most that times the CPUs); and each CPU wakes it at most once per
/// [`generation`](Self::generation), so a reader that the scheduler keeps off the CPU does not
/// turn every packet into an interrupt.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReaderState {
    /// Bumped by [`GENERATION_STEP`] each time the reader drains or parks; its lowest bit is
    /// [`READER_PARKED`] while the reader sleeps until woken. One word, so the program reads
    /// both at once. Written only by the reader.
    pub generation: u32,
    /// Bytes one CPU may write in a reader generation before its next record wakes the
    /// reader. Written by the reader before it attaches the program.
    pub wake_threshold: u32,
}

/// [`ReaderState::generation`] bit: the reader sleeps until the program wakes it.
pub const READER_PARKED: u32 = 1;

/// What [`ReaderState::generation`] advances by (the parked bit stays free).
pub const GENERATION_STEP: u32 = 2;

#[cfg(feature = "user")]
// SAFETY: RecordHeader is repr(C), Copy, has no padding (u64 + 4 * u32) and every bit pattern is valid.
unsafe impl aya::Pod for RecordHeader {}

#[cfg(feature = "user")]
// SAFETY: ReaderState is repr(C), Copy, has no padding (2 * u32) and every bit pattern is valid.
unsafe impl aya::Pod for ReaderState {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_padded_to_eight() {
        assert_eq!(RECORD_HEADER_LEN, 24);
        assert_eq!(RECORD_HEADER_LEN % 8, 0);
    }
}
