//! How the runner starts the binary: in a test's namespace with `ip netns exec`, offline, or
//! inside a namespace with every capability dropped; and what every start shares (the death
//! signal, the namespace entry between fork and exec).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use crate::netns::{Netns, require_root};

/// Where and how the binary runs.
pub(super) enum Launch<'a> {
    /// `ip netns exec NS BIN ...`, as root.
    InNetns(&'a Netns),
    /// `BIN ...` in the caller's namespace.
    Offline,
    /// `BIN ...` in the namespace, entered with `setns` before the exec, without capabilities.
    Unprivileged(&'a Netns),
}

impl Launch<'_> {
    /// The command for `bin ARGS...` and how to show it in messages.
    ///
    /// # Panics
    /// If the launch needs root and this is not, or the namespace cannot be opened.
    pub(super) fn command(&self, bin: &Path, args: &[&str]) -> (Command, String) {
        let (mut command, shown) = match self {
            Launch::InNetns(ns) => {
                require_root();
                let mut command = Command::new("ip");
                command.args(["netns", "exec", ns.name()]).arg(bin);
                let shown = format!("ip netns exec {} {}", ns.name(), bin.display());
                (command, shown)
            }
            Launch::Offline => (Command::new(bin), bin.display().to_string()),
            Launch::Unprivileged(ns) => {
                require_root();
                let path = format!("/run/netns/{}", ns.name());
                let netns = File::open(&path).unwrap_or_else(|e| panic!("cannot open {path}: {e}"));
                let mut command = Command::new(bin);
                enter_netns_unprivileged(&mut command, netns);
                let shown = format!("{} (in {}, no capabilities)", bin.display(), ns.name());
                (command, shown)
            }
        };
        command.args(args);
        (command, format!("{shown} {}", args.join(" ")))
    }
}

/// Has the kernel kill the child when the spawning thread ends: if the test process is
/// `SIGKILLed` no destructor runs. The death signal follows the spawning thread (a test's own
/// thread) and survives the exec of `ip` and of the binary.
pub(super) fn kill_with_parent(command: &mut Command) {
    // SAFETY: only an async-signal-safe syscall runs between fork and exec.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Enters `netns` between fork and exec, then drops every capability. `netns` moves into the
/// closure, so it stays open until the command is dropped.
fn enter_netns_unprivileged(command: &mut Command, netns: File) {
    // SAFETY: only async-signal-safe syscalls run between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            drop_all_capabilities()
        });
    }
}

/// Capability header version 3 (`_LINUX_CAPABILITY_VERSION_3`, include/uapi/linux/capability.h).
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// `struct __user_cap_header_struct`.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct`; version 3 takes two of them (capabilities 0-31, 32-63).
#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Leaves the calling process unable to hold any capability after its next exec, even as uid 0:
/// the bounding set and the ambient set are emptied, then the process's own sets (the
/// inheritable one is what an exec would otherwise pass on). Only raw syscalls, so it may run
/// between fork and exec.
fn drop_all_capabilities() -> std::io::Result<()> {
    // Capabilities above the kernel's last one give EINVAL: nothing to drop there.
    for cap in 0..64 {
        // SAFETY: plain prctl with integer arguments.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
        if rc != 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
            return Err(std::io::Error::last_os_error());
        }
    }
    // SAFETY: plain prctl with integer arguments.
    let rc = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [CapData {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: header and data are valid for capset(2) with version 3 (two data structs).
    let rc = unsafe { libc::syscall(libc::SYS_capset, &raw mut header, data.as_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
