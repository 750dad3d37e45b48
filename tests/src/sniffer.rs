//! Running the real `netcon-sniff` inside a namespace and watching what it prints.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
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
        require_root();
        let bin = sniff_binary();
        let command = format!(
            "ip netns exec {} {} {}",
            ns.name(),
            bin.display(),
            args.join(" ")
        );
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns.name()])
            .arg(&bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // If the test process is SIGKILLed no destructor runs: have the kernel kill the sniffer
        // then (the death signal follows the spawning thread, which is the test's own thread,
        // and survives the exec of `ip` and of the binary).
        // SAFETY: only an async-signal-safe syscall runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `{command}`: {e}"));
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
        loop {
            if let Some(i) = self.stdout[self.cursor..]
                .iter()
                .position(|l| l.contains(needle))
            {
                let line = self.stdout[self.cursor + i].clone();
                self.cursor += i + 1;
                return line;
            }
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
    /// Interface name.
    pub iface: String,
    /// Source address and port.
    pub src: SocketAddr,
    /// Destination address and port.
    pub dst: SocketAddr,
    /// The payload, escaped as printed.
    pub payload: String,
}

impl RawLine {
    /// Parses and checks one line, including that the timestamp is RFC 3339 UTC with exactly
    /// six fractional digits and within a day of now.
    ///
    /// # Panics
    /// If the line does not have that shape.
    #[must_use]
    pub fn parse(line: &str) -> RawLine {
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
        let parse_addr = |s: &str| -> SocketAddr {
            s.parse()
                .unwrap_or_else(|e| panic!("bad address {s:?} ({e}) in {line:?}"))
        };
        let ts_secs = parse_rfc3339_micros(&ts).unwrap_or_else(|| {
            panic!("timestamp {ts:?} is not RFC 3339 UTC with microseconds (YYYY-MM-DDTHH:MM:SS.ffffffZ) in {line:?}")
        });
        let now = i64::try_from(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .expect("clock after 1970")
                .as_secs(),
        )
        .expect("sane clock");
        assert!(
            (ts_secs - now).abs() < 86_400,
            "timestamp {ts:?} is not within a day of now (a clock or epoch mix-up?) in {line:?}"
        );
        RawLine {
            ts,
            iface,
            src: parse_addr(&src),
            dst: parse_addr(&dst),
            payload,
        }
    }
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

/// The two summary lines printed on SIGTERM/SIGINT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
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
    /// Datagrams printed by userspace.
    pub printed: u64,
}

impl Summary {
    /// Finds and parses `netcon-sniff: xdp counters: seen=N matched=N ringbuf_full=N truncated=N
    /// copy_failed=N` and `netcon-sniff: printed N datagrams` in `stderr`.
    ///
    /// # Panics
    /// If either line is missing or malformed.
    #[must_use]
    pub fn parse(stderr: &str) -> Summary {
        let counters = stderr
            .lines()
            .find_map(|l| l.strip_prefix("netcon-sniff: xdp counters: "))
            .unwrap_or_else(|| {
                panic!("no `netcon-sniff: xdp counters:` line in stderr:\n{stderr}")
            });
        let mut values = [None; 5];
        let names = [
            "seen",
            "matched",
            "ringbuf_full",
            "truncated",
            "copy_failed",
        ];
        for field in counters.split_whitespace() {
            let (k, v) = field
                .split_once('=')
                .unwrap_or_else(|| panic!("bad counter {field:?} in {counters:?}"));
            let i = names
                .iter()
                .position(|n| *n == k)
                .unwrap_or_else(|| panic!("unknown counter {k:?} in {counters:?}"));
            values[i] = Some(
                v.parse::<u64>()
                    .unwrap_or_else(|e| panic!("counter {k}={v:?}: {e}")),
            );
        }
        let get =
            |i: usize| values[i].unwrap_or_else(|| panic!("no {}= in {counters:?}", names[i]));
        let printed = stderr
            .lines()
            .find_map(|l| {
                l.strip_prefix("netcon-sniff: printed ")?
                    .strip_suffix(" datagrams")
            })
            .unwrap_or_else(|| {
                panic!("no `netcon-sniff: printed N datagrams` line in stderr:\n{stderr}")
            });
        Summary {
            seen: get(0),
            matched: get(1),
            ringbuf_full: get(2),
            truncated: get(3),
            copy_failed: get(4),
            printed: printed
                .parse()
                .unwrap_or_else(|e| panic!("printed {printed:?}: {e}")),
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
        let l = RawLine::parse(&format!(
            "{ts} veth-c1 [fd00:1::10]:6665 > [fd00:1::1]:6666 x"
        ));
        assert_eq!(l.dst, "[fd00:1::1]:6666".parse().unwrap());
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
    fn parses_summary() {
        let s = Summary::parse(
            "listening on x\nnetcon-sniff: xdp counters: seen=10 matched=3 ringbuf_full=0 truncated=1 copy_failed=0\nnetcon-sniff: printed 3 datagrams\n",
        );
        assert_eq!(
            s,
            Summary {
                seen: 10,
                matched: 3,
                ringbuf_full: 0,
                truncated: 1,
                copy_failed: 0,
                printed: 3
            }
        );
    }

    #[test]
    #[should_panic(expected = "no copy_failed=")]
    fn summary_needs_every_counter() {
        let _ = Summary::parse(
            "netcon-sniff: xdp counters: seen=1 matched=1 ringbuf_full=0 truncated=0\nnetcon-sniff: printed 1 datagrams\n",
        );
    }
}
