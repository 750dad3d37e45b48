//! An empty XDP program (`return XDP_PASS`), loaded and attached with bpf(2) alone: what any
//! XDP program costs on this machine before doing anything (dispatch, and the two clock reads
//! that `kernel.bpf_stats_enabled` adds around every run). netcon's figures read against it.

use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};

use anyhow::{Result, bail};

/// `BPF_PROG_LOAD`, `BPF_LINK_CREATE` (include/uapi/linux/bpf.h).
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_ENABLE_STATS: libc::c_long = 32;
/// `BPF_STATS_RUN_TIME`: `run_time_ns` and `run_cnt` of every program.
const BPF_STATS_RUN_TIME: u32 = 0;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;
/// `XDP_FLAGS_SKB_MODE`: generic, as netcon's `--xdp-mode auto` attaches on veth.
const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;

/// The loaded program and its link; dropping it detaches the program.
#[derive(Debug)]
pub struct EmptyXdp {
    prog: OwnedFd,
    _link: OwnedFd,
}

fn bpf(cmd: libc::c_long, attr: &mut [u8; 128]) -> Result<OwnedFd> {
    // SAFETY: attr is a zero-padded bpf_attr of the size passed.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) };
    if fd < 0 {
        bail!("bpf({cmd}): {}", std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor the kernel just returned.
    Ok(unsafe { OwnedFd::from_raw_fd(i32::try_from(fd)?) })
}

impl EmptyXdp {
    /// Loads the program and attaches it (generic mode) to `ifindex` of the calling thread's
    /// network namespace.
    pub fn attach(ifindex: u32) -> Result<Self> {
        // r0 = XDP_PASS (2); exit.
        let insns: [u8; 16] = [0xb7, 0, 0, 0, 2, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0];
        let license = b"GPL\0";
        let mut attr = [0u8; 128];
        attr[0..4].copy_from_slice(&BPF_PROG_TYPE_XDP.to_ne_bytes());
        attr[4..8].copy_from_slice(&2u32.to_ne_bytes());
        attr[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
        attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
        attr[48..56].copy_from_slice(b"nb_empty");
        attr[68..72].copy_from_slice(&BPF_XDP.to_ne_bytes());
        let prog = bpf(BPF_PROG_LOAD, &mut attr)?;
        let mut attr = [0u8; 128];
        attr[0..4].copy_from_slice(&prog.as_raw_fd().to_ne_bytes());
        attr[4..8].copy_from_slice(&ifindex.to_ne_bytes());
        attr[8..12].copy_from_slice(&BPF_XDP.to_ne_bytes());
        attr[12..16].copy_from_slice(&XDP_FLAGS_SKB_MODE.to_ne_bytes());
        let link = bpf(BPF_LINK_CREATE, &mut attr)?;
        Ok(Self { prog, _link: link })
    }

    /// `(run_time_ns, run_cnt)` so far, from this process's fdinfo of the program.
    pub fn stats(&self) -> Result<(u64, u64)> {
        let text = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", self.prog.as_raw_fd()))?;
        match (
            super::procs::field(&text, "run_time_ns:"),
            super::procs::field(&text, "run_cnt:"),
        ) {
            (Some(t), Some(n)) => Ok((t, n)),
            _ => bail!("no run_time_ns/run_cnt in the program's fdinfo"),
        }
    }
}

/// Run-time accounting of BPF programs (`run_time_ns`, `run_cnt`), on while this lives.
///
/// The same switch as `sysctl kernel.bpf_stats_enabled=1` (one static key), taken through
/// `BPF_ENABLE_STATS` so that it is a file descriptor: the kernel turns it off when the bench
/// exits, even when it is killed, and it never touches a value someone else set.
#[derive(Debug)]
pub struct BpfStats {
    _fd: OwnedFd,
}

impl BpfStats {
    /// Turns the accounting on (machine-wide; costs two clock reads per program run).
    pub fn enable() -> Result<Self> {
        let mut attr = [0u8; 128];
        attr[0..4].copy_from_slice(&BPF_STATS_RUN_TIME.to_ne_bytes());
        Ok(Self {
            _fd: bpf(BPF_ENABLE_STATS, &mut attr)?,
        })
    }
}

/// [`EmptyXdp::attach`] on `dev` inside `ns`.
pub fn attach_in(ns: &super::topo::Netns, dev: &str) -> Result<EmptyXdp> {
    ns.try_run_in(|| {
        let name = std::ffi::CString::new(dev)?;
        // SAFETY: a valid NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            bail!("no interface {dev}: {}", std::io::Error::last_os_error());
        }
        EmptyXdp::attach(ifindex)
    })?
}
