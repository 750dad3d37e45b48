//! Loading the program and attaching it: kernel checks, the verifier's verdict, attach modes
//! and the hints that go with their errors.

use std::{
    error::Error as StdError,
    io,
    os::fd::{AsRawFd as _, FromRawFd as _},
};

use aya::{
    Ebpf,
    programs::{Xdp, xdp::XdpMode},
    util::KernelVersion,
};

use super::{AttachPolicy, AttachedMode, MIN_KERNEL, XdpError};
use crate::capture::Interface;

/// [`XdpError::Rejected`] when the verifier ran and said no (its log is not empty), with the
/// whole log at debug level; otherwise [`XdpError::Load`].
pub(super) fn load_error(error: aya::programs::ProgramError) -> XdpError {
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

pub(super) fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, XdpError> {
    ebpf.take_map(name).ok_or(XdpError::Map {
        name,
        source: aya::maps::MapError::InvalidName { name: name.into() },
    })
}

pub(super) fn check_kernel() -> Result<(), XdpError> {
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

pub(super) fn attach(
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
        // Native XDP on veth runs on a copy: veth switches to its NAPI path and copies every
        // frame the stack built into a page-pool page with 256 bytes of headroom first
        // (drivers/net/veth.c, `veth_convert_skb_to_xdp_buff`), matching or not, and passes
        // it on through GRO. Generic mode only widens the frame's headroom
        // (net/core/dev.c, `netif_receive_generic_xdp`). Measured on this project's VM, sender
        // and softirq on one core: frames the program does not match went through at 0.82–0.93M/s
        // with native, 1.00–1.04M/s with generic (1.20–1.24M/s with nothing attached), and
        // netconsole frames at 0.80–0.88M/s against 0.91–0.99M/s.
        AttachPolicy::Auto if driver_name(&interface.name).is_ok_and(|d| d == "veth") => {
            try_mode(program, AttachedMode::Skb)
        }
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

/// The interface's driver as `ethtool -i` names it (`ETHTOOL_GDRVINFO`), e.g. `veth` or
/// `virtio_net`.
fn driver_name(interface: &str) -> io::Result<String> {
    /// `struct ethtool_drvinfo` (include/uapi/linux/ethtool.h).
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        version: [u8; 32],
        fw_version: [u8; 32],
        bus_info: [u8; 32],
        erom_version: [u8; 32],
        reserved2: [u8; 12],
        n_priv_flags: u32,
        n_stats: u32,
        testinfo_len: u32,
        eedump_len: u32,
        regdump_len: u32,
    }
    const ETHTOOL_GDRVINFO: u32 = 3;

    let name = interface.as_bytes();
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(&0) {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    // SAFETY: plain socket(2); the descriptor is owned right after.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a descriptor we just opened and nobody else owns.
    let socket = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    // SAFETY: all-zero is a valid value of these plain C structs.
    let mut info: DrvInfo = unsafe { std::mem::zeroed() };
    info.cmd = ETHTOOL_GDRVINFO;
    // SAFETY: as above.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (to, &from) in request.ifr_name.iter_mut().zip(name) {
        *to = from.cast_signed();
    }
    request.ifr_ifru.ifru_data = (&raw mut info).cast();
    // SAFETY: SIOCETHTOOL with ETHTOOL_GDRVINFO writes at most size_of::<DrvInfo>() bytes into
    // `info`, which outlives the call; the name is NUL-terminated (checked above, zeroed rest).
    let done = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCETHTOOL, &raw mut request) };
    if done < 0 {
        return Err(io::Error::last_os_error());
    }
    let end = info
        .driver
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(info.driver.len());
    Ok(String::from_utf8_lossy(&info.driver[..end]).into_owned())
}

/// The errno of the first `io::Error` in `error`'s chain; `None` when there is none (an
/// `io::Error` without an errno gives `None` too).
pub(super) fn root_errno(error: &(dyn StdError + 'static)) -> Option<i32> {
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
pub(super) fn root_cause<'a>(error: &'a (dyn StdError + 'static)) -> &'a (dyn StdError + 'static) {
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
pub(super) fn port_bitmap(ports: &[u16]) -> Vec<(u32, u32)> {
    let mut words = std::collections::BTreeMap::<u32, u32>::new();
    for &port in ports {
        *words.entry(u32::from(port) >> 5).or_default() |= 1 << (u32::from(port) & 31);
    }
    words.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn driver_name_refuses_names_the_kernel_could_not_hold() {
        for bad in ["", "a-name-of-16-chars", "nul\0inside"] {
            let error = driver_name(bad).expect_err(bad);
            assert_eq!(error.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
        }
        // An interface that does not exist is the kernel's answer, not a panic.
        assert!(driver_name("netcon-absent0").is_err());
    }

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
