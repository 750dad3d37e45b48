//! Helpers for the end-to-end tests of the file and command outputs (`--log-dir`,
//! `--on-panic`): a one-link topology on a chosen subnet, extended-format payloads, signals to
//! the running binary, bounded waits on files, and a hook script that records its environment.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::netns::{Netns, Topology};
use crate::sniffer::{Sniffer, Stats};

/// Subnets these tests may use: 10.N.0.0/24 with N in 40..=49 (other test files use others).
pub const OUTPUT_SUBNETS: std::ops::RangeInclusive<u8> = 40..=49;
/// How long a file may take to show what the test waits for (a failure deadline only).
pub const FILE_TIMEOUT: Duration = Duration::from_secs(20);
/// How often a bounded wait looks again.
const POLL: Duration = Duration::from_millis(50);

/// One sender namespace linked to the collector on subnet `subnet` (10.N.0.0/24, `fd00:N::/64`;
/// sender `.10`, collector `.1`), with interfaces `veth-sN` and `veth-cN`. Dropping it removes
/// both namespaces.
///
/// # Panics
/// If `subnet` is outside [`OUTPUT_SUBNETS`], or an `ip` command fails.
#[must_use]
pub fn topology_on_subnet(subnet: u8) -> Topology {
    assert!(
        OUTPUT_SUBNETS.contains(&subnet),
        "output tests use subnets {OUTPUT_SUBNETS:?}, not {subnet}"
    );
    Topology::on_subnet(subnet)
}

/// An extended-format netconsole payload (`<pri>,<seq>,<usec>,-;<text>\n`, as
/// `kernel/printk/printk.c` `info_print_ext_header` writes it).
#[must_use]
pub fn extended(pri: u16, seq: u64, usec: u64, text: &str) -> Vec<u8> {
    format!("{pri},{seq},{usec},-;{text}\n").into_bytes()
}

/// The process to signal: `netcon-sniff` itself, whether `ip netns exec` replaced itself with it
/// or runs it as its child.
#[must_use]
pub fn sniffer_pid(s: &Sniffer) -> u32 {
    let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", s.pid()))
        .unwrap_or_default();
    children
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| s.pid())
}

/// The value of `field` in `/proc/PID/status` (`Uid`, `CapEff`, `VmHWM`, ...), trimmed.
///
/// # Panics
/// If the file cannot be read or has no such field.
#[must_use]
pub fn proc_status_field(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        .trim()
        .to_owned()
}

/// Sends `signal` to the running `netcon-sniff`.
///
/// # Panics
/// If the signal cannot be sent.
pub fn signal_sniffer(s: &Sniffer, signal: Signal) {
    let pid = sniffer_pid(s);
    let raw = i32::try_from(pid).expect("pid fits in i32");
    kill(Pid::from_raw(raw), signal).unwrap_or_else(|e| panic!("kill({pid}, {signal}): {e}"));
}

/// The lines of `path`, or `None` if it does not exist.
///
/// # Panics
/// If it exists but cannot be read, or is not UTF-8.
#[must_use]
pub fn file_lines(path: &Path) -> Option<Vec<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Some(text.lines().map(str::to_owned).collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => panic!("cannot read {}: {e}", path.display()),
    }
}

/// Waits until `path` has at least `n` lines and returns them.
///
/// # Panics
/// If it does not within [`FILE_TIMEOUT`].
#[must_use]
pub fn wait_for_lines(path: &Path, n: usize) -> Vec<String> {
    let deadline = Instant::now() + FILE_TIMEOUT;
    loop {
        let lines = file_lines(path).unwrap_or_default();
        if lines.len() >= n {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "{} has {} lines, not {n}, after {FILE_TIMEOUT:?}: {lines:#?}",
            path.display(),
            lines.len()
        );
        std::thread::sleep(POLL);
    }
}

/// The permission bits of `path`.
///
/// # Panics
/// If it cannot be examined.
#[must_use]
pub fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("cannot stat {}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// Writes an executable `/bin/sh` script `dir/hook.sh` that appends one line per run to
/// `dir/hook.out`: `SENDER=<NETCON_SENDER> TIME=<NETCON_TIME> TEXT=<NETCON_TEXT>`. Returns
/// the `--on-panic` value (script and output path, split on whitespace by netcon-sniff, so `dir`
/// must not contain any) and the output path.
///
/// # Panics
/// If `dir` holds whitespace or the script cannot be written.
#[must_use]
pub fn env_recording_hook(dir: &Path) -> (String, PathBuf) {
    let script = dir.join("hook.sh");
    let out = dir.join("hook.out");
    let command = format!("{} {}", script.display(), out.display());
    assert_eq!(
        command.split_whitespace().count(),
        2,
        "no whitespace allowed in {}",
        dir.display()
    );
    std::fs::write(
        &script,
        "#!/bin/sh\n\
         # Written by netcon-tests: records what netcon-sniff passed to --on-panic.\n\
         printf 'SENDER=%s TIME=%s TEXT=%s\\n' \"$NETCON_SENDER\" \"$NETCON_TIME\" \"$NETCON_TEXT\" >> \"$1\"\n",
    )
    .unwrap_or_else(|e| panic!("cannot write {}: {e}", script.display()));
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("cannot chmod {}: {e}", script.display()));
    (command, out)
}

/// The counter `name` of the last counters object (`--stats-format json`) in `stderr`: the
/// exit summary once the process has ended.
///
/// # Panics
/// If there is none, or it has no such counter.
#[must_use]
pub fn stats_counter(stderr: &str, name: &str) -> u64 {
    Stats::last(stderr).counter(name)
}

/// `/etc/netns/NS/hosts` for one namespace: `ip netns exec NS` bind-mounts it over `/etc/hosts`
/// for the program it runs (see ip-netns(8)), so name lookups there see these entries and the
/// rest of the machine does not. Removed on drop (with `/etc/netns` if this left it empty).
#[derive(Debug)]
pub struct NetnsHosts {
    dir: PathBuf,
}

impl NetnsHosts {
    /// Writes `hosts` (in `/etc/hosts` syntax) for `ns`.
    ///
    /// # Panics
    /// If the file cannot be written.
    #[must_use]
    pub fn new(ns: &Netns, hosts: &str) -> NetnsHosts {
        let dir = Path::new("/etc/netns").join(ns.name());
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        // From here on the guard removes the directory, also if the write fails.
        let guard = NetnsHosts { dir };
        let path = guard.dir.join("hosts");
        std::fs::write(&path, hosts)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        guard
    }
}

impl Drop for NetnsHosts {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("netcon-tests: cannot remove {}: {e}", self.dir.display());
        }
        // Fails (and is left) while other tests' directories are in it.
        let _ = std::fs::remove_dir("/etc/netns");
    }
}
