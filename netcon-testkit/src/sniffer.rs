//! Running the real `netcon-sniff` inside a namespace and watching what it prints.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::netns::{Netns, require_root};

/// How long the sniffer may take to print its `listening on` lines (the first start after a
/// build loads and verifies the BPF program; the machine is shared), a failure deadline only.
pub const READY_TIMEOUT: Duration = Duration::from_mins(1);
/// A generous default deadline for an expected stdout line.
pub const LINE_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the sniffer may take to exit after a signal before the test fails.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the `netcon-sniff` binary is: `$NETCON_SNIFF`, else `<workspace>/target/debug/netcon-sniff`.
///
/// # Panics
/// If the file does not exist.
#[must_use]
pub fn sniff_binary() -> PathBuf {
    let path = std::env::var_os("NETCON_SNIFF").map_or_else(
        || {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join("target/debug/netcon-sniff")
        },
        PathBuf::from,
    );
    assert!(
        path.is_file(),
        "netcon-sniff not built: run `cargo build -p netcon-user` (cargo xtask test does this); \
         looked for {} (set NETCON_SNIFF to use another build)",
        path.display()
    );
    path
}

enum Event {
    Stdout(Vec<u8>),
    Stderr(String),
    StdoutEof,
    StderrEof,
}

/// A running `netcon-sniff`, killed on drop if still running.
///
/// All stdout lines are kept; the `expect_*` methods consume them in order with a cursor, while
/// [`Sniffer::assert_no_line_containing`] looks at every line ever printed. Every stdout line is
/// checked to be valid UTF-8 without raw control characters (the payload escaping contract).
pub struct Sniffer {
    child: Child,
    status: Option<ExitStatus>,
    events: Receiver<Event>,
    command: String,
    interfaces: usize,
    stdout: Vec<String>,
    cursor: usize,
    stderr: Vec<String>,
    stdout_open: bool,
    stderr_open: bool,
}

impl Sniffer {
    /// Starts `netcon-sniff ARGS...` in `ns` (`ip netns exec NS BIN ARGS...`) without waiting.
    /// The process is killed when the calling thread ends, so keep the `Sniffer` on the test's
    /// thread.
    ///
    /// # Panics
    /// If not root, the binary is missing, or the process cannot be started.
    #[must_use]
    pub fn start(ns: &Netns, args: &[&str]) -> Sniffer {
        Sniffer::spawn(&Launch::InNetns(ns), args, None, &[])
    }

    /// Starts `netcon-sniff ARGS...` directly, in the test's own namespace, for work that touches
    /// no interface (`-r FILE`). With `stdin`, those bytes are written to its standard input,
    /// which is then closed; without, standard input is empty.
    ///
    /// # Panics
    /// If the binary is missing or cannot be started.
    #[must_use]
    pub fn start_offline(args: &[&str], stdin: Option<Vec<u8>>) -> Sniffer {
        Sniffer::spawn(&Launch::Offline, args, stdin, &[])
    }

    /// As [`Sniffer::start_offline`], but inside `ns` and with no capabilities at all: before
    /// the exec the child empties its capability bounding, ambient and inheritable sets, so the
    /// binary runs as uid 0 without any privilege (no `CAP_NET_RAW`, `CAP_BPF`,
    /// `CAP_NET_ADMIN`, `CAP_DAC_OVERRIDE`). A file it opens must belong to root or be
    /// world-readable.
    ///
    /// # Panics
    /// If not root, the binary is missing, or the process cannot be started.
    #[must_use]
    pub fn start_unprivileged(ns: &Netns, args: &[&str], stdin: Option<Vec<u8>>) -> Sniffer {
        Sniffer::spawn(&Launch::Unprivileged(ns), args, stdin, &[])
    }

    /// As [`Sniffer::start`], with `env` added to its environment (`NOTIFY_SOCKET`, ...).
    ///
    /// # Panics
    /// As [`Sniffer::start`].
    #[must_use]
    pub fn start_with_env(ns: &Netns, args: &[&str], env: &[(&str, &str)]) -> Sniffer {
        Sniffer::spawn(&Launch::InNetns(ns), args, None, env)
    }

    fn spawn(
        launch: &Launch<'_>,
        args: &[&str],
        stdin: Option<Vec<u8>>,
        env: &[(&str, &str)],
    ) -> Sniffer {
        let bin = sniff_binary();
        let mut netns_file = None;
        let (mut cmd, command) = match launch {
            Launch::InNetns(ns) => {
                require_root();
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", ns.name()]).arg(&bin);
                let shown = format!("ip netns exec {} {}", ns.name(), bin.display());
                (cmd, shown)
            }
            Launch::Offline => (Command::new(&bin), bin.display().to_string()),
            Launch::Unprivileged(ns) => {
                require_root();
                let path = format!("/run/netns/{}", ns.name());
                netns_file =
                    Some(File::open(&path).unwrap_or_else(|e| panic!("cannot open {path}: {e}")));
                let shown = format!("{} (in {}, no capabilities)", bin.display(), ns.name());
                (Command::new(&bin), shown)
            }
        };
        let command = format!("{command} {}", args.join(" "));
        cmd.args(args)
            .envs(env.iter().copied())
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let netns_fd = netns_file.as_ref().map(AsRawFd::as_raw_fd);
        let drop_privileges = matches!(launch, Launch::Unprivileged(_));
        // If the test process is SIGKILLed no destructor runs: have the kernel kill the sniffer
        // then (the death signal follows the spawning thread, which is the test's own thread,
        // and survives the exec of `ip` and of the binary).
        // SAFETY: only async-signal-safe syscalls run between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if let Some(fd) = netns_fd
                    && libc::setns(fd, libc::CLONE_NEWNET) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                if drop_privileges {
                    drop_all_capabilities()?;
                }
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `{command}`: {e}"));
        drop(netns_file);
        if let Some(bytes) = stdin {
            let mut pipe = child.stdin.take().expect("stdin is piped");
            // An early exit (a rejected file) closes the pipe: the write error is expected then.
            std::thread::spawn(move || {
                let _ = pipe.write_all(&bytes);
            });
        }
        let (tx, events) = mpsc::channel();
        let out = child.stdout.take().expect("stdout is piped");
        let err = child.stderr.take().expect("stderr is piped");
        let tx2 = tx.clone();
        std::thread::spawn(move || read_stdout(out, &tx));
        std::thread::spawn(move || read_stderr(err, &tx2));
        let interfaces = args
            .iter()
            .filter(|a| **a == "-i" || **a == "--interface")
            .count();
        Sniffer {
            child,
            status: None,
            events,
            command,
            interfaces: interfaces.max(1),
            stdout: Vec::new(),
            cursor: 0,
            stderr: Vec::new(),
            stdout_open: true,
            stderr_open: true,
        }
    }

    /// Runs `netcon-sniff -r FILE --format raw` offline to its end (with `stdin` as its standard
    /// input, for `FILE` = `-`), checks that it exited 0 with a file summary, and returns what
    /// it printed.
    ///
    /// # Panics
    /// If it fails, or does not end within the exit deadline.
    #[must_use]
    pub fn read_file(file: &str, stdin: Option<Vec<u8>>) -> FileRun {
        let mut s = Sniffer::start_offline(&["-r", file, "--format", "raw"], stdin);
        let (status, stderr) = s.wait();
        assert_eq!(
            status.code(),
            Some(0),
            "`{}` exited with {status}; stderr:\n{stderr}",
            s.command
        );
        let summary = Summary::parse(&stderr);
        FileRun {
            lines: s.stdout.clone(),
            stderr: s.stderr.clone(),
            summary,
        }
    }

    /// [`Sniffer::start`] then [`Sniffer::wait_ready`].
    ///
    /// # Panics
    /// As both.
    #[must_use]
    pub fn start_ready(ns: &Netns, args: &[&str]) -> Sniffer {
        let mut s = Sniffer::start(ns, args);
        s.wait_ready();
        s
    }

    /// The process id.
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until stderr has one `listening on ` line per `-i` given (at least one), and returns
    /// those lines.
    ///
    /// # Panics
    /// If the process exits first or after [`READY_TIMEOUT`], with all stderr so far.
    pub fn wait_ready(&mut self) -> Vec<String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let ready: Vec<String> = self
                .stderr
                .iter()
                .filter(|l| l.starts_with("listening on "))
                .cloned()
                .collect();
            if ready.len() >= self.interfaces {
                return ready;
            }
            if !self.stderr_open {
                let status = self.reap(Instant::now() + EXIT_TIMEOUT);
                panic!(
                    "`{}` exited ({status}) before it was ready; stderr:\n{}",
                    self.command,
                    self.stderr_text()
                );
            }
            let progressed = self.pump(deadline);
            assert!(
                progressed,
                "`{}` printed {} of {} `listening on` lines within {READY_TIMEOUT:?}; stderr so far:\n{}",
                self.command,
                ready.len(),
                self.interfaces,
                self.stderr_text()
            );
        }
    }

    /// The next `n` stdout lines not yet consumed.
    ///
    /// # Panics
    /// If they do not all arrive within `timeout`.
    pub fn expect_lines(&mut self, n: usize, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        while self.stdout.len() < self.cursor + n {
            let progressed = self.pump(deadline);
            assert!(
                progressed,
                "expected {n} more stdout lines from `{}` within {timeout:?}, got {}; \
                     last lines: {:#?}\nstderr:\n{}",
                self.command,
                self.stdout.len() - self.cursor,
                self.tail(5),
                self.stderr_text()
            );
        }
        let lines = self.stdout[self.cursor..self.cursor + n].to_vec();
        self.cursor += n;
        lines
    }

    /// The first not yet consumed stdout line that contains `needle`; lines before it are
    /// consumed too.
    ///
    /// # Panics
    /// If none arrives within `timeout`.
    pub fn expect_line_containing(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        // Each line is looked at once: a burst of thousands before the match stays linear.
        let mut checked = self.cursor;
        loop {
            if let Some(i) = self.stdout[checked..]
                .iter()
                .position(|l| l.contains(needle))
            {
                let line = self.stdout[checked + i].clone();
                self.cursor = checked + i + 1;
                return line;
            }
            checked = self.stdout.len();
            let progressed = self.pump(deadline);
            assert!(
                progressed,
                "no stdout line containing {needle:?} from `{}` within {timeout:?}; \
                     last lines: {:#?}\nstderr:\n{}",
                self.command,
                self.tail(5),
                self.stderr_text()
            );
        }
    }

    /// The first stderr line (consumed or not: stderr has no cursor) after the first `skip`
    /// that contains `needle`, waiting for it.
    ///
    /// # Panics
    /// If none arrives within `timeout`.
    pub fn expect_stderr_containing(
        &mut self,
        needle: &str,
        skip: usize,
        timeout: Duration,
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.stderr.iter().skip(skip).find(|l| l.contains(needle)) {
                return line.clone();
            }
            let progressed = self.pump(deadline);
            assert!(
                progressed,
                "no stderr line containing {needle:?} from `{}` within {timeout:?}; stderr:\n{}",
                self.command,
                self.stderr_text()
            );
        }
    }

    /// Collects output for `quiet` and then asserts that no stdout line printed so far (consumed
    /// or not) contains `needle`.
    ///
    /// # Panics
    /// If such a line was printed.
    pub fn assert_no_line_containing(&mut self, needle: &str, quiet: Duration) {
        let deadline = Instant::now() + quiet;
        while self.pump(deadline) {}
        if let Some(line) = self.stdout.iter().find(|l| l.contains(needle)) {
            panic!(
                "`{}` printed a line it should not have: {line}",
                self.command
            );
        }
    }

    /// Every stdout line received so far.
    #[must_use]
    pub fn stdout_lines(&self) -> &[String] {
        &self.stdout
    }

    /// Every stderr line received so far.
    #[must_use]
    pub fn stderr_lines(&self) -> &[String] {
        &self.stderr
    }

    /// Sends SIGTERM.
    ///
    /// # Panics
    /// If the process was already reaped or the signal cannot be sent.
    pub fn sigterm(&mut self) {
        self.signal(Signal::SIGTERM);
    }

    /// Sends SIGKILL.
    ///
    /// # Panics
    /// If the process was already reaped or the signal cannot be sent.
    pub fn sigkill(&mut self) {
        self.signal(Signal::SIGKILL);
    }

    fn signal(&mut self, sig: Signal) {
        assert!(self.status.is_none(), "`{}` already exited", self.command);
        let pid = Pid::from_raw(i32::try_from(self.child.id()).expect("pid fits in i32"));
        kill(pid, sig).unwrap_or_else(|e| panic!("kill({pid}, {sig}) failed: {e}"));
    }

    /// Waits for the process to exit and for its output to end; returns the exit status and all
    /// of stderr. Stdout lines printed meanwhile are kept (see [`Sniffer::stdout_lines`]).
    ///
    /// # Panics
    /// If it has not exited within [`EXIT_TIMEOUT`] (it is then killed).
    pub fn wait(&mut self) -> (ExitStatus, String) {
        let deadline = Instant::now() + EXIT_TIMEOUT;
        let status = self.reap(deadline);
        while (self.stdout_open || self.stderr_open) && self.pump(deadline) {}
        (status, self.stderr_text())
    }

    fn reap(&mut self, deadline: Instant) -> ExitStatus {
        loop {
            if let Some(status) = self.status {
                return status;
            }
            match self.child.try_wait() {
                Ok(Some(status)) => self.status = Some(status),
                Ok(None) if Instant::now() < deadline => {
                    // Keep draining the pipes so that a full pipe cannot block the child.
                    self.pump(Instant::now() + Duration::from_millis(20));
                }
                Ok(None) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    panic!(
                        "`{}` did not exit in time (killed it); stderr:\n{}",
                        self.command,
                        self.stderr_text()
                    );
                }
                Err(e) => panic!("waiting for `{}` failed: {e}", self.command),
            }
        }
    }

    /// Receives one event until `deadline`; false on timeout or when both streams have ended.
    fn pump(&mut self, deadline: Instant) -> bool {
        if !self.stdout_open && !self.stderr_open {
            return false;
        }
        let wait = deadline.saturating_duration_since(Instant::now());
        match self.events.recv_timeout(wait) {
            Ok(Event::Stdout(raw)) => {
                let line = check_stdout_line(&raw).unwrap_or_else(|e| {
                    panic!("`{}` printed a bad stdout line: {e}", self.command)
                });
                self.stdout.push(line);
                true
            }
            Ok(Event::Stderr(line)) => {
                self.stderr.push(line);
                true
            }
            Ok(Event::StdoutEof) => {
                self.stdout_open = false;
                true
            }
            Ok(Event::StderrEof) => {
                self.stderr_open = false;
                true
            }
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => false,
        }
    }

    fn stderr_text(&self) -> String {
        let mut s = self.stderr.join("\n");
        if !s.is_empty() {
            s.push('\n');
        }
        s
    }

    fn tail(&self, n: usize) -> &[String] {
        &self.stdout[self.stdout.len().saturating_sub(n)..]
    }
}

/// What [`Sniffer::read_file`] printed.
#[derive(Debug, Clone)]
pub struct FileRun {
    /// Every stdout line.
    pub lines: Vec<String>,
    /// Every stderr line.
    pub stderr: Vec<String>,
    /// The exit summary.
    pub summary: Summary,
}

/// Where and how [`Sniffer::spawn`] runs the binary.
enum Launch<'a> {
    /// `ip netns exec NS BIN ...`, as root.
    InNetns(&'a Netns),
    /// `BIN ...` in the test's namespace.
    Offline,
    /// `BIN ...` in the namespace, entered with `setns` before the exec, without capabilities.
    Unprivileged(&'a Netns),
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

impl Drop for Sniffer {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn read_stdout(out: impl Read, tx: &Sender<Event>) {
    let mut r = BufReader::new(out);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match r.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                if buf.last() == Some(&b'\n') {
                    buf.pop();
                }
                if tx.send(Event::Stdout(buf.clone())).is_err() {
                    return;
                }
            }
        }
    }
    let _ = tx.send(Event::StdoutEof);
}

fn read_stderr(err: impl Read, tx: &Sender<Event>) {
    let mut r = BufReader::new(err);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match r.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let line = String::from_utf8_lossy(&buf)
                    .trim_end_matches('\n')
                    .to_owned();
                if tx.send(Event::Stderr(line)).is_err() {
                    return;
                }
            }
        }
    }
    let _ = tx.send(Event::StderrEof);
}

/// A stdout line must be valid UTF-8 and hold no control character: the payload is escaped.
fn check_stdout_line(raw: &[u8]) -> Result<String, String> {
    let line = std::str::from_utf8(raw)
        .map_err(|e| format!("not valid UTF-8 ({e}): {}", raw.escape_ascii()))?;
    if let Some(c) = line.chars().find(|c| c.is_control()) {
        return Err(format!("raw control character {c:?} in {line:?}"));
    }
    Ok(line.to_owned())
}

/// One parsed `--format raw` line:
/// `<RFC3339 UTC µs> <IFACE> <SRC>:<SPORT> > <DST>:<DPORT> <escaped payload>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawLine {
    /// The timestamp as printed.
    pub ts: String,
    /// Interface name (for `-r`, whatever the binary names the file's interface).
    pub iface: String,
    /// Source address and port.
    pub src: SocketAddr,
    /// Destination address and port.
    pub dst: SocketAddr,
    /// The payload, escaped as printed.
    pub payload: String,
}

impl RawLine {
    /// Parses and checks one line of a live capture, including that the timestamp is RFC 3339
    /// UTC with exactly six fractional digits and within a day of now.
    ///
    /// # Panics
    /// If the line does not have that shape.
    #[must_use]
    pub fn parse(line: &str) -> RawLine {
        let parsed = RawLine::parse_any_time(line);
        let ts_secs = parse_rfc3339_micros(&parsed.ts).expect("checked by parse_any_time");
        let now = i64::try_from(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .expect("clock after 1970")
                .as_secs(),
        )
        .expect("sane clock");
        assert!(
            (ts_secs - now).abs() < 86_400,
            "timestamp {:?} is not within a day of now (a clock or epoch mix-up?) in {line:?}",
            parsed.ts
        );
        parsed
    }

    /// As [`RawLine::parse`] but for lines read from a capture file (`-r`): the timestamp must
    /// have the same shape but may be any time (the file's).
    ///
    /// # Panics
    /// If the line does not have that shape.
    #[must_use]
    pub fn parse_any_time(line: &str) -> RawLine {
        let mut it = line.splitn(6, ' ');
        let mut next = |what: &str| {
            it.next()
                .unwrap_or_else(|| panic!("no {what} in output line {line:?}"))
        };
        let ts = next("timestamp").to_owned();
        let iface = next("interface").to_owned();
        let src = next("source").to_owned();
        let arrow = next("`>`");
        let dst = next("destination").to_owned();
        let payload = next("payload").to_owned();
        assert_eq!(arrow, ">", "no ` > ` between addresses in {line:?}");
        assert!(!iface.is_empty(), "empty interface column in {line:?}");
        let parse_addr = |s: &str| -> SocketAddr {
            s.parse()
                .unwrap_or_else(|e| panic!("bad address {s:?} ({e}) in {line:?}"))
        };
        assert!(
            parse_rfc3339_micros(&ts).is_some(),
            "timestamp {ts:?} is not RFC 3339 UTC with microseconds (YYYY-MM-DDTHH:MM:SS.ffffffZ) in {line:?}"
        );
        RawLine {
            ts,
            iface,
            src: parse_addr(&src),
            dst: parse_addr(&dst),
            payload,
        }
    }

    /// The payload's bytes: the printed column with the escapes undone (`\\`, `\n`, `\r`,
    /// `\t`, `\u{HEX}`, `\xHH`; anything else is printed as itself).
    ///
    /// # Panics
    /// On an escape outside that set.
    #[must_use]
    pub fn payload_bytes(&self) -> Vec<u8> {
        unescape(&self.payload).unwrap_or_else(|e| panic!("payload {:?}: {e}", self.payload))
    }
}

/// Undoes the payload escaping of `--format raw` (sink/escape.rs), written independently of it.
fn unescape(s: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(s.len());
    let mut chars = s.char_indices();
    while let Some((at, c)) = chars.next() {
        if c != '\\' {
            let mut buf = [0; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            continue;
        }
        match chars.next().map(|(_, e)| e) {
            Some('\\') => out.push(b'\\'),
            Some('n') => out.push(b'\n'),
            Some('r') => out.push(b'\r'),
            Some('t') => out.push(b'\t'),
            Some('x') => {
                let hex: String = chars.by_ref().take(2).map(|(_, h)| h).collect();
                if hex.len() != 2 || !hex.chars().all(|h| h.is_ascii_hexdigit()) {
                    return Err(format!("bad \\x escape at byte {at}"));
                }
                out.push(u8::from_str_radix(&hex, 16).expect("two hex digits"));
            }
            Some('u') => {
                if chars.next().map(|(_, b)| b) != Some('{') {
                    return Err(format!("no `{{` after \\u at byte {at}"));
                }
                let mut hex = String::new();
                let mut closed = false;
                for (_, h) in chars.by_ref() {
                    if h == '}' {
                        closed = true;
                        break;
                    }
                    hex.push(h);
                }
                let c = Some(&hex)
                    .filter(|h| closed && (1..=6).contains(&h.len()))
                    .filter(|h| h.chars().all(|d| d.is_ascii_hexdigit()))
                    .and_then(|h| u32::from_str_radix(h, 16).ok())
                    .and_then(char::from_u32)
                    .ok_or_else(|| format!("bad \\u{{{hex}}} escape at byte {at}"))?;
                let mut buf = [0; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
            Some(other) => return Err(format!("unknown escape \\{other} at byte {at}")),
            None => return Err("lone `\\` at the end".to_owned()),
        }
    }
    Ok(out)
}

/// Seconds since the Unix epoch of `YYYY-MM-DDTHH:MM:SS.ffffffZ`, or `None` if not exactly that.
fn parse_rfc3339_micros(ts: &str) -> Option<i64> {
    let shape = "dddd-dd-ddTdd:dd:dd.ddddddZ";
    if ts.len() != shape.len() {
        return None;
    }
    for (got, want) in ts.bytes().zip(shape.bytes()) {
        let ok = if want == b'd' {
            got.is_ascii_digit()
        } else {
            got == want
        };
        if !ok {
            return None;
        }
    }
    let num = |r: std::ops::Range<usize>| ts[r].parse::<i64>().ok();
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Inverse of `days_from_civil` (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` for a time since the Unix epoch, truncated to microseconds
/// (as `--format raw` prints it).
#[must_use]
pub fn rfc3339_micros(secs: i64, nanos: u32) -> String {
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:06}Z",
        s / 3600,
        s / 60 % 60,
        s % 60,
        nanos / 1000
    )
}

/// Start of the stats line (`--stats`, SIGUSR1, and once more at exit), which repeats the
/// counters with the pipeline's and the decoder's.
pub const STATS_PREFIX: &str = "netcon-sniff: stats: ";

/// `lines` without stats lines ([`STATS_PREFIX`]), for exact comparisons of the rest of stderr.
#[must_use]
pub fn without_stats(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .filter(|l| !l.starts_with(STATS_PREFIX))
        .cloned()
        .collect()
}

/// The capture backend named by the exit summary's counters line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaptureBackend {
    /// `xdp counters: seen= matched= ringbuf_full= truncated= copy_failed=`
    Xdp,
    /// `raw counters: received= kernel_received= kernel_dropped= truncated= queue_full=`
    Raw,
    /// `file counters: read= skipped=`
    File,
}

impl CaptureBackend {
    /// The word before ` counters:`.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            CaptureBackend::Xdp => "xdp",
            CaptureBackend::Raw => "raw",
            CaptureBackend::File => "file",
        }
    }

    /// Every counter the line must carry, in the order printed.
    #[must_use]
    pub fn counter_names(self) -> &'static [&'static str] {
        match self {
            CaptureBackend::Xdp => &[
                "seen",
                "matched",
                "ringbuf_full",
                "truncated",
                "copy_failed",
                "wakeups",
            ],
            CaptureBackend::Raw => &[
                "received",
                "kernel_received",
                "kernel_dropped",
                "truncated",
                "queue_full",
            ],
            CaptureBackend::File => &["read", "skipped"],
        }
    }

    fn from_name(name: &str) -> Option<CaptureBackend> {
        [
            CaptureBackend::Xdp,
            CaptureBackend::Raw,
            CaptureBackend::File,
        ]
        .into_iter()
        .find(|b| b.name() == name)
    }
}

/// Counters of the XDP backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XdpCounters {
    /// Frames the XDP program saw.
    pub seen: u64,
    /// Frames that matched (UDP to a configured port).
    pub matched: u64,
    /// Records dropped because the ring buffer was full.
    pub ringbuf_full: u64,
    /// Frames cut to the capture length.
    pub truncated: u64,
    /// Frames the program failed to copy.
    pub copy_failed: u64,
    /// Records after which the program woke the reader (it was parked, or behind).
    pub wakeups: u64,
}

/// Counters of the raw (`AF_PACKET`) backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawCounters {
    /// Frames read from the sockets.
    pub received: u64,
    /// Frames the kernel queued to the sockets, dropped ones included (`PACKET_STATISTICS`).
    pub kernel_received: u64,
    /// Frames the kernel dropped because a socket's buffer was full.
    pub kernel_dropped: u64,
    /// Frames cut to the read buffer.
    pub truncated: u64,
    /// Frames read but dropped because the queue to the pipeline was full.
    pub queue_full: u64,
}

/// Counters of a capture file (`-r`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileCounters {
    /// Frames read.
    pub read: u64,
    /// Frames of a link type the binary cannot decode.
    pub skipped: u64,
}

/// The exit summary: `netcon-sniff: <backend> counters: k=N ...` then
/// `netcon-sniff: printed N datagrams`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Which backend's counters line was printed.
    pub backend: CaptureBackend,
    /// Every counter of that line by name (exactly [`CaptureBackend::counter_names`]).
    pub counters: BTreeMap<String, u64>,
    /// Datagrams printed by userspace.
    pub printed: u64,
}

impl Summary {
    /// Finds and parses the counters line (exactly one, of a known backend, with exactly that
    /// backend's counters) and `netcon-sniff: printed N datagrams` in `stderr`.
    ///
    /// # Panics
    /// If either line is missing, repeated or malformed.
    #[must_use]
    pub fn parse(stderr: &str) -> Summary {
        // `<backend>` is one word: `netcon-sniff: stats: file counters: ... | ...` (the
        // periodic and exit stats line) is not a counters line.
        let found: Vec<(&str, &str)> = stderr
            .lines()
            .filter_map(|l| l.strip_prefix("netcon-sniff: ")?.split_once(" counters: "))
            .filter(|(name, _)| !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric()))
            .collect();
        let [(name, fields)] = found[..] else {
            panic!(
                "expected one `netcon-sniff: <backend> counters: ...` line, found {} in stderr:\n{stderr}",
                found.len()
            )
        };
        let backend = CaptureBackend::from_name(name)
            .unwrap_or_else(|| panic!("unknown backend {name:?} in counters line: {fields:?}"));
        let names = backend.counter_names();
        let mut counters = BTreeMap::new();
        for field in fields.split_whitespace() {
            let (k, v) = field
                .split_once('=')
                .unwrap_or_else(|| panic!("bad counter {field:?} in {fields:?}"));
            assert!(
                names.contains(&k),
                "unknown {name} counter {k:?} in {fields:?}"
            );
            let v = v
                .parse::<u64>()
                .unwrap_or_else(|e| panic!("counter {k}={v:?}: {e}"));
            assert!(
                counters.insert(k.to_owned(), v).is_none(),
                "{k} twice in {fields:?}"
            );
        }
        for n in names {
            assert!(counters.contains_key(*n), "no {n}= in {fields:?}");
        }
        let printed: Vec<&str> = stderr
            .lines()
            .filter_map(|l| {
                l.strip_prefix("netcon-sniff: printed ")?
                    .strip_suffix(" datagrams")
            })
            .collect();
        let [printed] = printed[..] else {
            panic!(
                "expected one `netcon-sniff: printed N datagrams` line, found {} in stderr:\n{stderr}",
                printed.len()
            )
        };
        Summary {
            backend,
            counters,
            printed: printed
                .parse()
                .unwrap_or_else(|e| panic!("printed {printed:?}: {e}")),
        }
    }

    /// One counter by name.
    ///
    /// # Panics
    /// If this backend has no such counter.
    #[must_use]
    pub fn counter(&self, name: &str) -> u64 {
        *self.counters.get(name).unwrap_or_else(|| {
            panic!(
                "no counter {name:?} for the {} backend: {self:?}",
                self.backend.name()
            )
        })
    }

    fn expect_backend(&self, want: CaptureBackend) {
        assert_eq!(
            self.backend,
            want,
            "expected {} counters, got {self:?}",
            want.name()
        );
    }

    /// The XDP counters.
    ///
    /// # Panics
    /// If the summary is of another backend.
    #[must_use]
    pub fn xdp(&self) -> XdpCounters {
        self.expect_backend(CaptureBackend::Xdp);
        XdpCounters {
            seen: self.counter("seen"),
            matched: self.counter("matched"),
            ringbuf_full: self.counter("ringbuf_full"),
            truncated: self.counter("truncated"),
            copy_failed: self.counter("copy_failed"),
            wakeups: self.counter("wakeups"),
        }
    }

    /// The raw backend's counters.
    ///
    /// # Panics
    /// If the summary is of another backend.
    #[must_use]
    pub fn raw(&self) -> RawCounters {
        self.expect_backend(CaptureBackend::Raw);
        RawCounters {
            received: self.counter("received"),
            kernel_received: self.counter("kernel_received"),
            kernel_dropped: self.counter("kernel_dropped"),
            truncated: self.counter("truncated"),
            queue_full: self.counter("queue_full"),
        }
    }

    /// The capture file's counters.
    ///
    /// # Panics
    /// If the summary is of another backend.
    #[must_use]
    pub fn file(&self) -> FileCounters {
        self.expect_backend(CaptureBackend::File);
        FileCounters {
            read: self.counter("read"),
            skipped: self.counter("skipped"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_raw_line_v4_and_v6() {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let (y, m, d) = civil_from_days(i64::try_from(now).unwrap().div_euclid(86_400));
        let ts = format!("{y:04}-{m:02}-{d:02}T12:00:00.123456Z");
        let l = RawLine::parse(&format!(
            "{ts} veth-c1 10.1.0.10:6665 > 10.1.0.1:6666 hello world\\n"
        ));
        assert_eq!(l.iface, "veth-c1");
        assert_eq!(l.src, "10.1.0.10:6665".parse().unwrap());
        assert_eq!(l.dst, "10.1.0.1:6666".parse().unwrap());
        assert_eq!(l.payload, "hello world\\n");
        assert_eq!(l.payload_bytes(), b"hello world\n");
        let l = RawLine::parse(&format!(
            "{ts} veth-c1 [fd00:1::10]:6665 > [fd00:1::1]:6666 x"
        ));
        assert_eq!(l.dst, "[fd00:1::1]:6666".parse().unwrap());
    }

    #[test]
    #[should_panic(expected = "not within a day of now")]
    fn live_line_must_be_recent() {
        let _ = RawLine::parse("2001-02-03T04:05:06.000007Z 0 10.77.0.10:6665 > 10.77.0.1:6666 x");
    }

    #[test]
    fn file_line_may_be_old() {
        let l = RawLine::parse_any_time(
            "2001-02-03T04:05:06.000007Z 0 10.77.0.10:6665 > 10.77.0.1:6666 a b  c",
        );
        assert_eq!(l.iface, "0");
        assert_eq!(l.payload, "a b  c");
    }

    #[test]
    fn unescapes_every_escape() {
        assert_eq!(
            unescape(r"a\\b\n\r\t\u{1b}[\u{0}\u{9b}\xff\xc3 hé ✓").unwrap(),
            b"a\\b\n\r\t\x1b[\x00\xc2\x9b\xff\xc3 h\xc3\xa9 \xe2\x9c\x93"
        );
        assert!(unescape(r"\q").is_err());
        assert!(unescape(r"\x4").is_err());
        assert!(unescape(r"\u{110000}").is_err());
        assert!(unescape(r"\u1b").is_err());
        assert!(unescape(r"\u{1b").is_err());
        assert!(unescape(r"\x+f").is_err());
        assert!(unescape("end\\").is_err());
    }

    #[test]
    fn formats_rfc3339_micros() {
        assert_eq!(rfc3339_micros(0, 999), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            rfc3339_micros(1_795_822_008, 519_824_999),
            "2026-11-27T23:26:48.519824Z"
        );
        assert_eq!(
            parse_rfc3339_micros(&rfc3339_micros(1_795_822_008, 0)),
            Some(1_795_822_008)
        );
    }

    #[test]
    fn civil_round_trip() {
        for days in [-1, 0, 59, 60, 365, 11_016, 20_784, 20_785, 100_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
        assert_eq!(civil_from_days(20_784), (2026, 11, 27));
    }

    #[test]
    fn rejects_bad_timestamps() {
        assert_eq!(
            parse_rfc3339_micros("1970-01-02T00:00:01.000000Z"),
            Some(86_401)
        );
        assert_eq!(parse_rfc3339_micros("2026-11-27T21:53:56.123Z"), None);
        assert_eq!(
            parse_rfc3339_micros("2026-11-27T21:53:56.123456+00:00"),
            None
        );
        assert_eq!(parse_rfc3339_micros("2026-11-27 21:53:56.123456Z"), None);
        assert_eq!(parse_rfc3339_micros("2026-13-27T21:53:56.123456Z"), None);
    }

    #[test]
    fn stdout_lines_must_be_escaped() {
        assert!(check_stdout_line(b"a \\u{1b} \\xff").is_ok());
        assert!(check_stdout_line(b"a \x1b b").is_err());
        assert!(check_stdout_line(b"a \xff b").is_err());
        assert!(check_stdout_line("a \u{9b} b".as_bytes()).is_err());
    }

    #[test]
    fn parses_xdp_summary() {
        let s = Summary::parse(
            "listening on x\nnetcon-sniff: xdp counters: seen=10 matched=3 ringbuf_full=0 truncated=1 copy_failed=0 wakeups=2\nnetcon-sniff: printed 3 datagrams\n",
        );
        assert_eq!(s.backend, CaptureBackend::Xdp);
        assert_eq!(s.printed, 3);
        assert_eq!(
            s.xdp(),
            XdpCounters {
                seen: 10,
                matched: 3,
                ringbuf_full: 0,
                truncated: 1,
                copy_failed: 0,
                wakeups: 2,
            }
        );
        assert_eq!(s.counter("seen"), 10);
    }

    #[test]
    fn parses_raw_summary() {
        let s = Summary::parse(
            "netcon-sniff: raw counters: received=5 kernel_received=6 kernel_dropped=1 truncated=0 queue_full=2\nnetcon-sniff: printed 3 datagrams\n",
        );
        assert_eq!(s.backend, CaptureBackend::Raw);
        assert_eq!(
            s.raw(),
            RawCounters {
                received: 5,
                kernel_received: 6,
                kernel_dropped: 1,
                truncated: 0,
                queue_full: 2,
            }
        );
        assert_eq!(s.printed, 3);
    }

    #[test]
    fn parses_file_summary() {
        let s = Summary::parse(
            "reading f.pcap, ports 6666\nnetcon-sniff: file counters: read=590 skipped=2\nnetcon-sniff: printed 588 datagrams\n",
        );
        assert_eq!(
            s.file(),
            FileCounters {
                read: 590,
                skipped: 2
            }
        );
        assert_eq!(s.printed, 588);
    }

    #[test]
    fn stats_line_is_not_a_counters_line() {
        let stderr = "netcon-sniff: file counters: read=590 skipped=0\nnetcon-sniff: printed 590 datagrams\nnetcon-sniff: stats: file counters: read=590 skipped=0 lost=0 | datagrams=590\n";
        let s = Summary::parse(stderr);
        assert_eq!(s.file().read, 590);
        let lines: Vec<String> = stderr.lines().map(str::to_owned).collect();
        assert_eq!(without_stats(&lines).len(), 2);
    }

    #[test]
    #[should_panic(expected = "expected xdp counters")]
    fn typed_accessor_checks_the_backend() {
        let _ = Summary::parse(
            "netcon-sniff: file counters: read=1 skipped=0\nnetcon-sniff: printed 1 datagrams\n",
        )
        .xdp();
    }

    #[test]
    #[should_panic(expected = "no copy_failed=")]
    fn summary_needs_every_counter() {
        let _ = Summary::parse(
            "netcon-sniff: xdp counters: seen=1 matched=1 ringbuf_full=0 truncated=0\nnetcon-sniff: printed 1 datagrams\n",
        );
    }

    #[test]
    #[should_panic(expected = "unknown raw counter \"seen\"")]
    fn summary_rejects_foreign_counters() {
        let _ = Summary::parse(
            "netcon-sniff: raw counters: received=1 kernel_received=1 kernel_dropped=0 truncated=0 queue_full=0 seen=1\nnetcon-sniff: printed 1 datagrams\n",
        );
    }

    #[test]
    #[should_panic(expected = "unknown backend \"afxdp\"")]
    fn summary_rejects_unknown_backend() {
        let _ = Summary::parse(
            "netcon-sniff: afxdp counters: x=1\nnetcon-sniff: printed 1 datagrams\n",
        );
    }

    #[test]
    #[should_panic(expected = "found 2")]
    fn summary_rejects_two_counter_lines() {
        let _ = Summary::parse(
            "netcon-sniff: file counters: read=1 skipped=0\nnetcon-sniff: file counters: read=1 skipped=0\nnetcon-sniff: printed 1 datagrams\n",
        );
    }
}
