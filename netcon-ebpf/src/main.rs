//! netcon's XDP program.
//!
//! Runs on every frame of the interfaces it is attached to, matches UDP to the configured
//! destination ports (IPv4 or IPv6, behind up to two VLAN tags), and copies each matching frame
//! into the `EVENTS` ring buffer as a [`RecordHeader`] followed by exactly the frame's bytes.
//! Every path returns `XDP_PASS`: the host receives what it would have received without us.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, xdp_action},
    helpers::generated::{
        bpf_ktime_get_coarse_ns, bpf_ktime_get_ns, bpf_ringbuf_output, bpf_xdp_load_bytes,
    },
    macros::{map, xdp},
    maps::{Array, PerCpuArray, RingBuf},
    programs::XdpContext,
};
use netcon_common::{
    FLAG_TRUNCATED, MAX_CAPTURE, PORT_BITMAP_WORDS, READER_PARKED, RECORD_HEADER_LEN, ReaderState,
    RecordHeader, counter,
};

/// Destination ports to match: bit `port % 32` of word `port / 32`. Written by userspace at load.
#[map]
static PORTS: Array<u32> = Array::with_max_entries(PORT_BITMAP_WORDS, 0);

/// Per-CPU counters, indexed by `netcon_common::counter::*`.
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Records to userspace. The size here is a placeholder: userspace sets it at load time.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 22, 0);

/// Whether the reader is parked, and when to wake it anyway: written by userspace through an
/// mmap of this map (hence `BPF_F_MMAPABLE`), read here for every record.
#[map]
static READER: Array<ReaderState> = Array::with_max_entries(1, BPF_F_MMAPABLE);

/// What this CPU knows of the reader's current generation (see [`WakeState`]).
#[map]
static WAKE: PerCpuArray<WakeState> = PerCpuArray::with_max_entries(1, 0);

/// One CPU's view of the reader's current generation.
#[repr(C)]
struct WakeState {
    /// The reader generation the two fields below are about.
    generation: u32,
    /// Bytes this CPU put in the ring since it first saw `generation`: the reader was awake
    /// and looked at the ring when it started the generation, so at least what this CPU left
    /// unread since is counted here (more, if the reader read some of it). Counting it costs
    /// two instructions; asking the ring (`bpf_ringbuf_query`) was a helper call per record,
    /// ~0.6% of the sending core flat out.
    written: u32,
    /// Non-zero once this CPU woke the reader in `generation`: one wake-up per CPU per
    /// generation.
    woken: u32,
}

/// Whether to stamp each record with `bpf_ktime_get_ns` (1) or with `bpf_ktime_get_coarse_ns`
/// (0), for the reader to stamp it when it reads the record and use the coarse time only as a
/// bound. Set by userspace at load time in `.rodata`, which the kernel freezes: the verifier
/// sees the constant and removes the branch not taken.
///
/// The clock read is the dearest single step of a matching frame (~28 ns of ~115 ns here: a
/// serialising `rdtsc` in `ktime_get_mono_fast_ns`), paid in the receive softirq.
#[unsafe(no_mangle)]
static KERNEL_TIMESTAMPS: u8 = 1;

/// Where a record is assembled before `bpf_ringbuf_output`, so the record can be exactly as long
/// as the frame (a ring buffer reservation must have a constant size).
#[repr(C, align(8))]
struct Scratch {
    bytes: [u8; RECORD_HEADER_LEN + MAX_CAPTURE],
}

#[map]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPPROTO_UDP: u8 = 17;
const IPV4_MIN_HLEN: usize = 20;
const IPV6_HLEN: usize = 40;
const UDP_HLEN: usize = 8;

// The copy length is bounded with a mask (see `try_netcon`).
const _: () = assert!(MAX_CAPTURE.is_power_of_two());

#[xdp]
pub fn netcon(ctx: XdpContext) -> u32 {
    bump(counter::SEEN);
    // Errors only mean "not ours" or "could not deliver" (already counted): pass either way.
    let _ = try_netcon(&ctx);
    xdp_action::XDP_PASS
}

#[inline(always)]
fn bump(index: u32) {
    if let Some(value) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot, only this CPU writes it while this program runs.
        unsafe { *value += 1 };
    }
}

/// A pointer to `len` bytes at `offset` into the packet, if they are inside it.
#[inline(always)]
fn bytes_at(ctx: &XdpContext, offset: usize, len: usize) -> Result<*const u8, ()> {
    let start = ctx.data();
    if start + offset + len > ctx.data_end() {
        return Err(());
    }
    Ok((start + offset) as *const u8)
}

#[inline(always)]
fn u16_at(ctx: &XdpContext, offset: usize) -> Result<u16, ()> {
    let p = bytes_at(ctx, offset, 2)?;
    // SAFETY: bytes_at checked that both bytes are inside the packet.
    Ok(u16::from_be_bytes(unsafe { [*p, *p.add(1)] }))
}

#[inline(always)]
fn u8_at(ctx: &XdpContext, offset: usize) -> Result<u8, ()> {
    let p = bytes_at(ctx, offset, 1)?;
    // SAFETY: bytes_at checked that the byte is inside the packet.
    Ok(unsafe { *p })
}

/// The frame's UDP destination port, if it is Ethernet (+ up to two VLAN tags) + IPv4/IPv6 +
/// a whole UDP header.
///
/// Every frame of the host comes through here, and nearly all of them are not ours: the common
/// shape (untagged IPv4 without options, which is also what netpoll sends: `iph->ihl = 5` in
/// net/core/netpoll.c) is decided with one bounds check and loads at constant offsets; any
/// other shape takes the general path.
#[inline(always)]
fn udp_dst_port(ctx: &XdpContext) -> Result<u16, ()> {
    const UDP: usize = ETH_HLEN + IPV4_MIN_HLEN;
    if let Ok(p) = bytes_at(ctx, 0, UDP + UDP_HLEN) {
        // SAFETY: bytes_at checked that the first UDP + UDP_HLEN bytes are inside the packet.
        let (ethertype, version_ihl) = unsafe { ([*p.add(12), *p.add(13)], *p.add(ETH_HLEN)) };
        if u16::from_be_bytes(ethertype) == ETH_P_IP && version_ihl == 0x45 {
            // SAFETY: as above; every offset is below UDP + UDP_HLEN.
            let (protocol, fragment, dst_port) = unsafe {
                (
                    *p.add(ETH_HLEN + 9),
                    [*p.add(ETH_HLEN + 6), *p.add(ETH_HLEN + 7)],
                    [*p.add(UDP + 2), *p.add(UDP + 3)],
                )
            };
            // Only a first (or only) fragment carries the UDP header. netconsole never
            // IP-fragments (payloads are at most MAX_PRINT_CHUNK = 1000 bytes).
            if protocol != IPPROTO_UDP || u16::from_be_bytes(fragment) & 0x1fff != 0 {
                return Err(());
            }
            return Ok(u16::from_be_bytes(dst_port));
        }
    }
    let udp = udp_offset(ctx)?;
    // The whole UDP header must be present for the frame to be a datagram.
    bytes_at(ctx, udp, UDP_HLEN)?;
    u16_at(ctx, udp + 2)
}

/// Offset of the UDP header, if the frame is Ethernet (+ up to two VLAN tags) + IPv4/IPv6 + UDP.
#[inline(always)]
fn udp_offset(ctx: &XdpContext) -> Result<usize, ()> {
    let mut ethertype = u16_at(ctx, 12)?;
    let mut l3 = ETH_HLEN;
    // Unrolled: at most two tags (802.1ad outer, 802.1Q inner), a bounded loop for the verifier.
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        ethertype = u16_at(ctx, l3 + 2)?;
        l3 += 4;
        if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
            ethertype = u16_at(ctx, l3 + 2)?;
            l3 += 4;
        }
    }
    match ethertype {
        ETH_P_IP => {
            let version_ihl = u8_at(ctx, l3)?;
            if version_ihl >> 4 != 4 || u8_at(ctx, l3 + 9)? != IPPROTO_UDP {
                return Err(());
            }
            // Only a first (or only) fragment carries the UDP header. netconsole never
            // IP-fragments (payloads are at most MAX_PRINT_CHUNK = 1000 bytes).
            if u16_at(ctx, l3 + 6)? & 0x1fff != 0 {
                return Err(());
            }
            Ok(l3 + usize::from(version_ihl & 0x0f) * 4)
        }
        ETH_P_IPV6 => {
            // netconsole sends no extension headers (drivers/net/netconsole.c, netpoll's
            // push_ipv6): UDP must be the first next header.
            if u8_at(ctx, l3 + 6)? != IPPROTO_UDP {
                return Err(());
            }
            Ok(l3 + IPV6_HLEN)
        }
        _ => Err(()),
    }
}

#[inline(always)]
fn port_wanted(port: u16) -> bool {
    let word = u32::from(port) >> 5;
    let bit = 1u32 << (u32::from(port) & 31);
    PORTS.get(word).is_some_and(|w| w & bit != 0)
}

#[inline(always)]
fn try_netcon(ctx: &XdpContext) -> Result<(), ()> {
    let dst_port = udp_dst_port(ctx)?;
    if !port_wanted(dst_port) {
        return Err(());
    }
    bump(counter::MATCHED);

    // Lengths stay u64 up to the helper calls, so the verifier sees the bound on the register
    // that is passed.
    let pkt_len = (ctx.data_end() - ctx.data()) as u64;
    let mut flags = 0u32;
    let mut cap_len = pkt_len;
    if cap_len > MAX_CAPTURE as u64 {
        cap_len = MAX_CAPTURE as u64;
        flags |= FLAG_TRUNCATED;
        bump(counter::TRUNCATED);
    }
    // The verifier must see `cap_len` in 1..=MAX_CAPTURE on the very register passed to
    // `bpf_xdp_load_bytes` (its length is `ARG_CONST_SIZE`: zero is refused). An
    // `if cap_len == 0 { return }` test is not enough: 6.1's verifier learns nothing from
    // `!= 0` about a range 0..=MAX (6.12's raises the minimum to 1), so it refuses the call
    // ("R3 min value is outside of the allowed memory range"). A mask then an add give every
    // verifier the range on one register: ((len - 1) & (MAX - 1)) + 1 lies in 1..=MAX for any
    // len and equals len for len in 1..=MAX; LLVM cannot fold it away, as it turns 0 into MAX.
    // `pkt_len` is never 0 here (a whole UDP header was read). Compiled (llvm-objdump -d):
    // `r7 += -1; r7 &= 2047; ...; r4 = r7; r4 += 1; ...; call bpf_xdp_load_bytes`.
    let cap_len = (cap_len.wrapping_sub(1) & (MAX_CAPTURE as u64 - 1)) + 1;
    let scratch = SCRATCH.get_ptr_mut(0).ok_or(())?;
    // SAFETY: the per-CPU scratch slot is ours for the duration of this program run.
    let bytes = unsafe { &mut (*scratch).bytes };
    let header = RecordHeader {
        // SAFETY: a read of a constant global, and a helper without arguments.
        ts_ns: if unsafe { core::ptr::read_volatile(&raw const KERNEL_TIMESTAMPS) } != 0 {
            unsafe { bpf_ktime_get_ns() }
        } else {
            // CLOCK_MONOTONIC_COARSE: the timekeeper's last tick, no clock hardware read
            // (kernel/time/timekeeping.c ktime_get_coarse). The reader stamps the record
            // when it reads it, and bounds that time by this one plus the clock's resolution:
            // a reader kept off the CPU for a second must not date its backlog a second late
            // (the decoder would take that for the sender rebooting).
            unsafe { bpf_ktime_get_coarse_ns() }
        },
        ifindex: unsafe { (*ctx.ctx).ingress_ifindex },
        pkt_len: pkt_len as u32,
        cap_len: cap_len as u32,
        flags,
    };
    // SAFETY: the scratch buffer is 8-aligned and longer than the header.
    unsafe { core::ptr::write(bytes.as_mut_ptr().cast::<RecordHeader>(), header) };

    // SAFETY: cap_len is in 1..=MAX_CAPTURE and the destination has MAX_CAPTURE bytes after the header.
    let copied = unsafe {
        bpf_xdp_load_bytes(
            ctx.ctx,
            0,
            bytes.as_mut_ptr().add(RECORD_HEADER_LEN).cast(),
            cap_len as u32,
        )
    };
    if copied != 0 {
        bump(counter::COPY_FAILED);
        return Err(());
    }
    let record_len = RECORD_HEADER_LEN as u64 + cap_len;
    output(bytes.as_mut_ptr(), record_len)
}

/// The reader's generation word (see `ReaderState`).
#[inline(always)]
fn reader_generation(reader: *const ReaderState) -> u32 {
    // SAFETY: a pointer into the READER map; volatile, because userspace writes it at any time.
    unsafe { core::ptr::read_volatile(&raw const (*reader).generation) }
}

/// Writes `len` bytes at `record` into the ring buffer, waking the reader only when it needs
/// waking.
///
/// A wake-up is an `irq_work` self-interrupt on this CPU (a VM exit in a virtual machine), paid
/// in the receive softirq of the host we are meant to leave undisturbed; the kernel's default
/// (wake whenever the reader has caught up, kernel/bpf/ringbuf.c `bpf_ringbuf_commit`) pays it
/// for nearly every record at moderate rates. So records go out with `BPF_RB_NO_WAKEUP`, the
/// reader drains on its own short timer while traffic flows, and the program wakes it only when
/// it is parked (it found the ring empty and sleeps until woken) or this CPU has written more
/// than the threshold since the reader's generation began; once per CPU and reader generation,
/// so that a reader kept off the CPU does not cost an interrupt per packet.
#[inline(always)]
fn output(record: *mut u8, len: u64) -> Result<(), ()> {
    let reader = READER.get_ptr(0).ok_or(())?;
    let wake_state = WAKE.get_ptr_mut(0).ok_or(())?;
    // SAFETY: wake_threshold is written once, before the program is attached.
    let threshold = unsafe { (*reader).wake_threshold };
    let generation = reader_generation(reader);
    // SAFETY: a per-CPU slot, only this CPU touches it while this program runs.
    let state = unsafe { &mut *wake_state };
    if state.generation != generation {
        state.generation = generation;
        state.written = 0;
        state.woken = 0;
    }
    // len is at most RECORD_HEADER_LEN + MAX_CAPTURE.
    state.written = state.written.saturating_add(len as u32);
    let wake = state.woken == 0 && (generation & READER_PARKED != 0 || state.written >= threshold);
    let flags = if wake {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    // SAFETY: record points to at least len bytes (the caller's scratch buffer).
    let sent = unsafe {
        bpf_ringbuf_output(
            core::ptr::from_ref(&EVENTS).cast_mut().cast(),
            record.cast(),
            len,
            u64::from(flags),
        )
    };
    if sent != 0 {
        bump(counter::RINGBUF_FULL);
        return Err(());
    }
    if wake {
        state.woken = 1;
        bump(counter::WAKEUPS);
        return Ok(());
    }
    // The reader may have parked between the first look and the commit. The commit's xchg on
    // the record header is a full barrier, and the reader sets the parked bit before its own
    // full barrier and its last look at the producer position: either it saw this record and
    // stays awake, or this load sees it parked. Wake it with an empty record discarded.
    let now = reader_generation(reader);
    if now & READER_PARKED != 0 && now != state.generation {
        if let Some(entry) = EVENTS.reserve::<u64>(0) {
            entry.discard(u64::from(BPF_RB_FORCE_WAKEUP));
            state.generation = now;
            state.written = 0;
            state.woken = 1;
            bump(counter::WAKEUPS);
        }
    }
    Ok(())
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
