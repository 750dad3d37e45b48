//! The running `netcon-sniff`: its process, and its stdout and stderr read line by line by two
//! threads so that a full pipe never blocks it.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::counters::{Stats, Summary};
use super::launch::{Launch, kill_with_parent};
use super::lines::check_stdout_line;
use super::{EXIT_TIMEOUT, LINE_TIMEOUT, READY_TIMEOUT, sniff_binary};
use crate::netns::Netns;

/// Where the process's stdout goes.
#[derive(Debug)]
pub enum StdoutTo {
    /// Read line by line by the runner, each line checked (see [`Sniffer`]).
    Lines,
    /// Elsewhere (a file): the runner does not see it.
    Elsewhere(Stdio),
    /// A pipe the caller reads: [`Sniffer::take_stdout`].
    Pipe,
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
///
/// The test constructors ask a capture for `--stats-format json` (unless the arguments name a
/// stats format), so that its counters are read from JSON ([`Stats`], [`Summary`]).
///
/// The `try_*` methods report a failure as an error, for callers that are not tests (xtask);
/// the others panic with it.
pub struct Sniffer {
    child: Child,
    status: Option<ExitStatus>,
    events: Receiver<Event>,
    pub(super) command: String,
    interfaces: usize,
    pub(super) stdout: Vec<String>,
    pub(super) cursor: usize,
    stderr: Vec<String>,
    stdout_open: bool,
    stderr_open: bool,
    stdout_pipe: Option<ChildStdout>,
}

/// `args` with `--stats-format json` added for a capture (its first argument an option) that
/// names no stats format. A subcommand (`tail`, ...) prints no counters and takes no such
/// option.
fn with_json_stats<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut args = args.to_vec();
    let capture = args.first().is_some_and(|a| a.starts_with('-'));
    if capture && !args.iter().any(|a| a.starts_with("--stats-format")) {
        args.extend(["--stats-format", "json"]);
    }
    args
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
        Sniffer::launch(&Launch::InNetns(ns), args, None, &[])
    }

    /// Starts `netcon-sniff ARGS...` directly, in the test's own namespace, for work that touches
    /// no interface (`-r FILE`). With `stdin`, those bytes are written to its standard input,
    /// which is then closed; without, standard input is empty.
    ///
    /// # Panics
    /// If the binary is missing or cannot be started.
    #[must_use]
    pub fn start_offline(args: &[&str], stdin: Option<Vec<u8>>) -> Sniffer {
        Sniffer::launch(&Launch::Offline, args, stdin, &[])
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
        Sniffer::launch(&Launch::Unprivileged(ns), args, stdin, &[])
    }

    /// As [`Sniffer::start`], with `env` added to its environment (`NOTIFY_SOCKET`, ...).
    ///
    /// # Panics
    /// As [`Sniffer::start`].
    #[must_use]
    pub fn start_with_env(ns: &Netns, args: &[&str], env: &[(&str, &str)]) -> Sniffer {
        Sniffer::launch(&Launch::InNetns(ns), args, None, env)
    }

    fn launch(
        launch: &Launch<'_>,
        args: &[&str],
        stdin: Option<Vec<u8>>,
        env: &[(&str, &str)],
    ) -> Sniffer {
        let (mut command, shown) = launch.command(&sniff_binary(), &with_json_stats(args));
        command.envs(env.iter().copied()).stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        let mut sniffer = Sniffer::spawn(command, shown.clone(), StdoutTo::Lines)
            .unwrap_or_else(|e| panic!("cannot start `{shown}`: {e}"));
        if let Some(bytes) = stdin {
            let mut pipe = sniffer.child.stdin.take().expect("stdin is piped");
            // An early exit (a rejected file) closes the pipe: the write error is expected then.
            std::thread::spawn(move || {
                let _ = pipe.write_all(&bytes);
            });
        }
        sniffer
    }

    /// Starts `command`, which the caller built (xtask: its own namespace entry, CPU pinning,
    /// an older build's options), without waiting; its stderr is read as with the test
    /// constructors, its stdout goes to `stdout`. The process is killed on drop, and when the
    /// calling thread ends.
    ///
    /// # Errors
    /// If it cannot be started.
    pub fn spawn_command(command: Command, stdout: StdoutTo) -> std::io::Result<Sniffer> {
        let shown = format!("{command:?}");
        Sniffer::spawn(command, shown, stdout)
    }

    fn spawn(mut command: Command, shown: String, stdout: StdoutTo) -> std::io::Result<Sniffer> {
        let interfaces = command
            .get_args()
            .filter(|a| *a == "-i" || *a == "--interface")
            .count();
        kill_with_parent(&mut command);
        let lines = matches!(stdout, StdoutTo::Lines);
        command.stderr(Stdio::piped()).stdout(match stdout {
            StdoutTo::Lines | StdoutTo::Pipe => Stdio::piped(),
            StdoutTo::Elsewhere(to) => to,
        });
        let mut child = command.spawn()?;
        let (tx, events) = mpsc::channel();
        let err = child.stderr.take().expect("stderr is piped");
        let mut stdout_pipe = child.stdout.take();
        if lines {
            let out = stdout_pipe.take().expect("stdout is piped");
            let tx = tx.clone();
            std::thread::spawn(move || read_stdout(out, &tx));
        }
        std::thread::spawn(move || read_stderr(err, &tx));
        Ok(Sniffer {
            child,
            status: None,
            events,
            command: shown,
            interfaces: interfaces.max(1),
            stdout: Vec::new(),
            cursor: 0,
            stderr: Vec::new(),
            stdout_open: lines,
            stderr_open: true,
            stdout_pipe,
        })
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

    /// The command line, for messages.
    #[must_use]
    pub fn command(&self) -> &str {
        &self.command
    }

    /// The stdout pipe of [`StdoutTo::Pipe`], once.
    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.stdout_pipe.take()
    }

    /// Waits until stderr has one `listening on ` line per `-i` given (at least one), and returns
    /// those lines.
    ///
    /// # Panics
    /// If the process exits first or after [`READY_TIMEOUT`], with all stderr so far.
    pub fn wait_ready(&mut self) -> Vec<String> {
        self.try_wait_ready(READY_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// As [`Sniffer::wait_ready`] within `timeout`.
    ///
    /// # Errors
    /// If the process exits first or is not ready in time, with all stderr so far.
    pub fn try_wait_ready(&mut self, timeout: Duration) -> Result<Vec<String>, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let ready: Vec<String> = self
                .stderr
                .iter()
                .filter(|l| l.starts_with("listening on "))
                .cloned()
                .collect();
            if ready.len() >= self.interfaces {
                return Ok(ready);
            }
            if !self.stderr_open {
                let status = self.try_reap(Instant::now() + EXIT_TIMEOUT)?;
                return Err(format!(
                    "`{}` exited ({status}) before it was ready; stderr:\n{}",
                    self.command,
                    self.stderr_text()
                ));
            }
            if !self.try_pump(deadline)? {
                return Err(format!(
                    "`{}` printed {} of {} `listening on` lines within {timeout:?}; stderr so far:\n{}",
                    self.command,
                    ready.len(),
                    self.interfaces,
                    self.stderr_text()
                ));
            }
        }
    }

    /// As [`Sniffer::expect_stderr_containing`].
    ///
    /// # Errors
    /// If none arrives within `timeout`, or stderr ends first.
    pub fn try_stderr_containing(
        &mut self,
        needle: &str,
        skip: usize,
        timeout: Duration,
    ) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.stderr.iter().skip(skip).find(|l| l.contains(needle)) {
                return Ok(line.clone());
            }
            if !self.try_pump(deadline)? {
                return Err(format!(
                    "no stderr line containing {needle:?} from `{}` within {timeout:?}; stderr:\n{}",
                    self.command,
                    self.stderr_text()
                ));
            }
        }
    }

    /// The exit status if the process has exited, without waiting; what it printed meanwhile
    /// is taken in.
    ///
    /// # Errors
    /// If it printed a bad stdout line, or cannot be waited for.
    pub fn try_status(&mut self) -> Result<Option<ExitStatus>, String> {
        while self.try_pump(Instant::now())? {}
        if self.status.is_none() {
            self.status = self
                .child
                .try_wait()
                .map_err(|e| format!("waiting for `{}` failed: {e}", self.command))?;
        }
        Ok(self.status)
    }

    /// Sends SIGUSR1 and returns the counters it makes the process print: the first
    /// `--stats-format json` stats object on stderr after the signal.
    ///
    /// # Panics
    /// If none arrives within [`LINE_TIMEOUT`].
    pub fn stats(&mut self) -> Stats {
        self.try_stats(LINE_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// As [`Sniffer::stats`] within `timeout`.
    ///
    /// # Errors
    /// If the signal cannot be sent, or no stats object arrives in time.
    pub fn try_stats(&mut self, timeout: Duration) -> Result<Stats, String> {
        let skip = self.stderr.len();
        self.try_signal(Signal::SIGUSR1)?;
        let deadline = Instant::now() + timeout;
        let mut checked = skip;
        loop {
            if let Some(stats) = self.stderr[checked..]
                .iter()
                .find_map(|l| Stats::from_line(l))
            {
                return Ok(stats);
            }
            checked = self.stderr.len();
            if !self.try_pump(deadline)? {
                return Err(format!(
                    "`{}` printed no --stats-format json stats within {timeout:?} of SIGUSR1; stderr:\n{}",
                    self.command,
                    self.stderr_text()
                ));
            }
        }
    }

    /// Every stdout line received so far.
    #[must_use]
    pub fn stdout_lines(&self) -> &[String] {
        &self.stdout
    }

    /// How many stdout lines received so far contain `needle`.
    #[must_use]
    pub fn stdout_lines_containing(&self, needle: &str) -> usize {
        self.stdout.iter().filter(|l| l.contains(needle)).count()
    }

    /// Every stderr line received so far.
    #[must_use]
    pub fn stderr_lines(&self) -> &[String] {
        &self.stderr
    }

    /// Every stderr line received so far, each ended by a newline.
    #[must_use]
    pub fn stderr_text(&self) -> String {
        let mut s = self.stderr.join("\n");
        if !s.is_empty() {
            s.push('\n');
        }
        s
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
        self.try_signal(sig).unwrap_or_else(|e| panic!("{e}"));
    }

    /// Sends `sig`.
    ///
    /// # Errors
    /// If the process was already reaped or the signal cannot be sent.
    pub fn try_signal(&mut self, sig: Signal) -> Result<(), String> {
        if self.status.is_some() {
            return Err(format!("`{}` already exited", self.command));
        }
        let pid = i32::try_from(self.child.id()).map_err(|e| format!("pid: {e}"))?;
        let pid = Pid::from_raw(pid);
        kill(pid, sig).map_err(|e| format!("kill({pid}, {sig}) failed: {e}"))
    }

    /// Waits for the process to exit and for its output to end; returns the exit status and all
    /// of stderr. Stdout lines printed meanwhile are kept (see [`Sniffer::stdout_lines`]).
    ///
    /// # Panics
    /// If it has not exited within [`EXIT_TIMEOUT`] (it is then killed).
    pub fn wait(&mut self) -> (ExitStatus, String) {
        let status = self
            .try_wait(EXIT_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}"));
        (status, self.stderr_text())
    }

    /// As [`Sniffer::wait`] within `timeout`, returning the exit status.
    ///
    /// # Errors
    /// If it has not exited in time (it is then killed), or printed a bad stdout line.
    pub fn try_wait(&mut self, timeout: Duration) -> Result<ExitStatus, String> {
        let deadline = Instant::now() + timeout;
        let status = self.try_reap(deadline)?;
        while (self.stdout_open || self.stderr_open) && self.try_pump(deadline)? {}
        Ok(status)
    }

    /// Sends `sig` (unless it already exited) and waits for the exit as [`Sniffer::try_wait`]
    /// within `grace`.
    ///
    /// # Errors
    /// As both.
    pub fn try_stop(&mut self, sig: Signal, grace: Duration) -> Result<ExitStatus, String> {
        if self.status.is_none() && self.child.try_wait().ok().flatten().is_none() {
            self.try_signal(sig)?;
        }
        self.try_wait(grace)
    }

    fn try_reap(&mut self, deadline: Instant) -> Result<ExitStatus, String> {
        loop {
            if let Some(status) = self.status {
                return Ok(status);
            }
            match self.child.try_wait() {
                Ok(Some(status)) => self.status = Some(status),
                Ok(None) if Instant::now() < deadline => {
                    // Keep draining the pipes so that a full pipe cannot block the child.
                    self.try_pump(Instant::now() + Duration::from_millis(20))?;
                    if !self.stdout_open && !self.stderr_open {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
                Ok(None) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return Err(format!(
                        "`{}` did not exit in time (killed it); stderr:\n{}",
                        self.command,
                        self.stderr_text()
                    ));
                }
                Err(e) => return Err(format!("waiting for `{}` failed: {e}", self.command)),
            }
        }
    }

    /// Receives one event until `deadline`; false on timeout or when both streams have ended.
    pub(super) fn pump(&mut self, deadline: Instant) -> bool {
        self.try_pump(deadline).unwrap_or_else(|e| panic!("{e}"))
    }

    fn try_pump(&mut self, deadline: Instant) -> Result<bool, String> {
        if !self.stdout_open && !self.stderr_open {
            return Ok(false);
        }
        let wait = deadline.saturating_duration_since(Instant::now());
        match self.events.recv_timeout(wait) {
            Ok(Event::Stdout(raw)) => {
                let line = check_stdout_line(&raw)
                    .map_err(|e| format!("`{}` printed a bad stdout line: {e}", self.command))?;
                self.stdout.push(line);
            }
            Ok(Event::Stderr(line)) => self.stderr.push(line),
            Ok(Event::StdoutEof) => self.stdout_open = false,
            Ok(Event::StderrEof) => self.stderr_open = false,
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return Ok(false),
        }
        Ok(true)
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

impl Drop for Sniffer {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Sends each line of `from` (without its newline) as `line(bytes)`, then `end`.
fn read_lines(from: impl Read, tx: &Sender<Event>, line: impl Fn(Vec<u8>) -> Event, end: Event) {
    let mut r = BufReader::new(from);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match r.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                if buf.last() == Some(&b'\n') {
                    buf.pop();
                }
                if tx.send(line(buf.clone())).is_err() {
                    return;
                }
            }
        }
    }
    let _ = tx.send(end);
}

fn read_stdout(out: impl Read, tx: &Sender<Event>) {
    read_lines(out, tx, Event::Stdout, Event::StdoutEof);
}

fn read_stderr(err: impl Read, tx: &Sender<Event>) {
    read_lines(
        err,
        tx,
        |bytes| Event::Stderr(String::from_utf8_lossy(&bytes).into_owned()),
        Event::StderrEof,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_ask_for_json_stats() {
        assert_eq!(
            with_json_stats(&["-i", "eth0"]),
            ["-i", "eth0", "--stats-format", "json"]
        );
        assert_eq!(
            with_json_stats(&["-r", "f", "--stats-format", "text"]),
            ["-r", "f", "--stats-format", "text"]
        );
        assert_eq!(with_json_stats(&["tail", "nats://x"]), ["tail", "nats://x"]);
    }
}
