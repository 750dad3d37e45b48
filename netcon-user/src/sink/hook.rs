//! `--on-panic`: run a command for each kernel panic or oops.
//!
//! The command runs for every record that *begins* a crash report (`flags.panic` with
//! `begins`; the decoder attributes the `RIP:` and `Call Trace:` lines after it to the same
//! report, and those do not run it again). It runs without a shell: `command[0]` with
//! `command[1..]` as its arguments, standard input from `/dev/null`, standard output sent to our
//! standard error (our standard output carries records), and in its environment:
//!
//! - `NETCON_SENDER`: the sender's address and port, `10.77.0.10:6665` or `[fd00::10]:6665`;
//! - `NETCON_TEXT`: the record's text, escaped as the text output escapes it (`\n`, `\t`,
//!   `\u{1b}`, `\xff`, `\\`): lossless, one line, and never holding a NUL, which an environment
//!   cannot carry. Cut at [`MAX_TEXT_ENV_BYTES`] (with `NETCON_TEXT_TRUNCATED=1`), below the
//!   kernel's limit on one environment string (`MAX_ARG_STRLEN`, 128 KiB);
//! - `NETCON_TIME`: when the record was received, RFC 3339 UTC with microseconds, the same
//!   string as the text line's first column;
//! - `NETCON_KIND`: `panic`, `oops`, `bug`, `general-protection-fault` or `soft-lockup`.
//!
//! **Rate limit.** At most one run per sender (IP address, as for `--log-dir`) per
//! `--on-panic-interval`: a dying kernel often oopses several times, and a flapping one would
//! otherwise page someone every minute. Later reports in the interval are counted as
//! `hooks_suppressed`. The decision is the sans-IO [`decide`]; the table of senders is bounded
//! ([`DEFAULT_MAX_SENDERS`]); when it is full, entries whose interval has passed go first, then
//! the oldest. Evicting can let a sender run again early, which is the safer way to be wrong: a
//! flood of forged senders must not silence a real panic.
//!
//! **Children.** The command is started and not waited for: the pipeline never blocks on it.
//! Each event and each flush reaps the ones that ended (no zombies), logging and counting a
//! non-zero exit as `hooks_failed`. At most [`DEFAULT_MAX_RUNNING`] run at once (more is
//! suppressed, with a warning); one still running after [`DEFAULT_RUN_TIMEOUT`] is killed and
//! counted as failed, so a hung command cannot use the slots up. Children still running when
//! the collector exits are left to finish (init reaps them).
//!
//! A command that cannot be started (missing, not executable) is logged and counted as
//! `hooks_failed`, never fatal.

use std::{
    collections::HashMap,
    io,
    net::{IpAddr, SocketAddr},
    os::fd::AsFd as _,
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use chrono::SecondsFormat;

use super::{Sink, escape::escape_into};
use crate::netconsole::{Event, Record};

/// Senders whose last run is remembered for the rate limit, at most: 1024.
pub const DEFAULT_MAX_SENDERS: usize = 1024;
/// Commands running at once, at most: 16. A panic beyond it is suppressed.
pub const DEFAULT_MAX_RUNNING: usize = 16;
/// How long a command may run before it is killed: 10 minutes. Generous for anything that
/// sends a page or collects a crash dump, short enough that hung commands free their slots.
pub const DEFAULT_RUN_TIMEOUT: Duration = Duration::from_mins(10);
/// Longest `NETCON_TEXT`, bytes: 64 KiB. The kernel refuses an environment string over 128 KiB
/// (`MAX_ARG_STRLEN`), and an escaped record can reach that (the decoder keeps records up to
/// 32 KiB; escaping can quadruple them).
pub const MAX_TEXT_ENV_BYTES: usize = 64 * 1024;

/// What `--on-panic` and `--on-panic-interval` asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PanicHookOptions {
    /// Program and arguments.
    pub command: Vec<String>,
    /// At most one run per sender in this interval.
    pub min_interval: Duration,
}

/// The bounds of a [`PanicHook`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HookLimits {
    /// Senders remembered by the rate limit ([`DEFAULT_MAX_SENDERS`]); at least 1 is used.
    pub max_senders: usize,
    /// Commands running at once ([`DEFAULT_MAX_RUNNING`]); at least 1 is used.
    pub max_running: usize,
    /// Run time after which a command is killed ([`DEFAULT_RUN_TIMEOUT`]).
    pub run_timeout: Duration,
}

impl Default for HookLimits {
    fn default() -> Self {
        Self {
            max_senders: DEFAULT_MAX_SENDERS,
            max_running: DEFAULT_MAX_RUNNING,
            run_timeout: DEFAULT_RUN_TIMEOUT,
        }
    }
}

/// Why a run of the command failed.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// `--on-panic ""`.
    #[error("--on-panic command is empty")]
    EmptyCommand,
    /// The program could not be started (missing, not executable).
    #[error("cannot start --on-panic command {program:?}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: io::Error,
    },
    /// It ran and exited unsuccessfully (or was killed by a signal).
    #[error("--on-panic command {program:?} failed: {status}")]
    Failed { program: String, status: ExitStatus },
    /// It ran too long and was killed.
    #[error("--on-panic command {program:?} still running after {after:?}; killed it")]
    TimedOut { program: String, after: Duration },
    /// Its status could not be collected.
    #[error("cannot wait for --on-panic command {program:?}: {source}")]
    Wait {
        program: String,
        #[source]
        source: io::Error,
    },
}

/// What to do about a panic report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Run the command.
    Run,
    /// The sender's command ran less than the interval ago.
    RateLimited,
    /// Too many commands are still running.
    Busy,
}

/// The per-sender rate limit: sans-IO, the time is passed in.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    min_interval: Duration,
    max_senders: usize,
    /// When each sender last ran the command.
    last: HashMap<IpAddr, Instant>,
}

impl RateLimiter {
    /// A limit of one run per `min_interval` per sender, remembering at most `max_senders`
    /// (at least 1).
    #[must_use]
    pub fn new(min_interval: Duration, max_senders: usize) -> Self {
        Self {
            min_interval,
            max_senders: max_senders.max(1),
            last: HashMap::new(),
        }
    }

    /// Whether `sender` may run the command at `now`; if so, `now` becomes its last run.
    pub fn admit(&mut self, sender: IpAddr, now: Instant) -> bool {
        let interval = self.min_interval;
        // A clock that went backwards gives zero: the run is suppressed, not repeated.
        let passed = |last: Instant| now.saturating_duration_since(last) >= interval;
        if let Some(last) = self.last.get_mut(&sender) {
            if !passed(*last) {
                return false;
            }
            *last = now;
            return true;
        }
        if self.last.len() >= self.max_senders {
            self.last.retain(|_, last| !passed(*last));
        }
        while self.last.len() >= self.max_senders {
            let Some(oldest) = self
                .last
                .iter()
                .min_by_key(|(_, last)| **last)
                .map(|(ip, _)| *ip)
            else {
                break;
            };
            self.last.remove(&oldest);
        }
        self.last.insert(sender, now);
        true
    }

    /// Senders remembered.
    #[must_use]
    pub fn len(&self) -> usize {
        self.last.len()
    }

    /// Whether no sender is remembered.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.last.is_empty()
    }
}

/// Decides about a panic report from `sender` at `now`, with `running` commands still running
/// out of `max_running`. A busy refusal does not use up the sender's interval.
pub fn decide(
    limiter: &mut RateLimiter,
    running: usize,
    max_running: usize,
    sender: IpAddr,
    now: Instant,
) -> Decision {
    if running >= max_running.max(1) {
        Decision::Busy
    } else if limiter.admit(sender, now) {
        Decision::Run
    } else {
        Decision::RateLimited
    }
}

/// The environment the command gets for `record` (see the module documentation).
#[must_use]
pub fn environment(record: &Record) -> Vec<(&'static str, String)> {
    let mut text = String::with_capacity(record.text.len());
    escape_into(&record.text, &mut text);
    let truncated = text.len() > MAX_TEXT_ENV_BYTES;
    if truncated {
        text.truncate(text.floor_char_boundary(MAX_TEXT_ENV_BYTES));
    }
    let mut env = vec![
        ("NETCON_SENDER", record.sender.to_string()),
        ("NETCON_TEXT", text),
        (
            "NETCON_TIME",
            record.received.to_rfc3339_opts(SecondsFormat::Micros, true),
        ),
        (
            "NETCON_KIND",
            record
                .flags
                .panic
                .map_or("panic", |p| p.kind.as_str())
                .to_owned(),
        ),
    ];
    if truncated {
        env.push(("NETCON_TEXT_TRUNCATED", "1".to_owned()));
    }
    env
}

/// A started command.
struct Running {
    child: Child,
    started: Instant,
    sender: SocketAddr,
    /// Killed for running too long (and counted); waiting to be reaped.
    killed: bool,
}

/// Runs the command.
pub struct PanicHook {
    command: Vec<String>,
    limits: HookLimits,
    limiter: RateLimiter,
    running: Vec<Running>,
    /// Commands started.
    run: u64,
    /// Commands that could not start, exited unsuccessfully or were killed.
    failed: u64,
    /// Reports that did not run the command (rate limit, too many running).
    suppressed: u64,
    /// The "too many running" warning was given and no command started since.
    busy_warned: bool,
}

impl PanicHook {
    /// A hook for `options`.
    #[must_use]
    pub fn new(options: PanicHookOptions) -> Self {
        Self::with_limits(options, HookLimits::default())
    }

    /// [`PanicHook::new`] with other bounds.
    #[must_use]
    pub fn with_limits(options: PanicHookOptions, limits: HookLimits) -> Self {
        if options.command.is_empty() {
            tracing::warn!("--on-panic command is empty: every panic will count as hooks_failed");
        }
        Self {
            limiter: RateLimiter::new(options.min_interval, limits.max_senders),
            command: options.command,
            limits,
            running: Vec::new(),
            run: 0,
            failed: 0,
            suppressed: 0,
            busy_warned: false,
        }
    }

    /// Commands started and not yet reaped.
    #[must_use]
    pub fn running(&self) -> usize {
        self.running.len()
    }

    fn program(&self) -> String {
        self.command.first().cloned().unwrap_or_default()
    }

    fn spawn(&self, record: &Record) -> Result<Child, HookError> {
        let Some((program, args)) = self.command.split_first() else {
            return Err(HookError::EmptyCommand);
        };
        // The command's own output is a diagnostic: keep it off our stdout, which carries
        // records (possibly into a parser).
        let stdout = io::stderr()
            .as_fd()
            .try_clone_to_owned()
            .map_or_else(|_| Stdio::null(), Stdio::from);
        Command::new(program)
            .args(args)
            .envs(environment(record))
            .stdin(Stdio::null())
            .stdout(stdout)
            .spawn()
            .map_err(|source| HookError::Spawn {
                program: program.clone(),
                source,
            })
    }

    fn on_panic(&mut self, record: &Record, now: Instant) {
        let decision = decide(
            &mut self.limiter,
            self.running.len(),
            self.limits.max_running,
            record.sender.ip(),
            now,
        );
        match decision {
            Decision::RateLimited => {
                self.suppressed += 1;
                tracing::info!(
                    sender = %record.sender,
                    interval = ?self.limiter.min_interval,
                    "--on-panic: already ran for this sender within --on-panic-interval; suppressed"
                );
            }
            Decision::Busy => {
                self.suppressed += 1;
                if !self.busy_warned {
                    self.busy_warned = true;
                    tracing::warn!(
                        sender = %record.sender,
                        running = self.running.len(),
                        "--on-panic: too many commands still running; suppressing until one ends"
                    );
                }
            }
            Decision::Run => match self.spawn(record) {
                Ok(child) => {
                    self.run += 1;
                    self.busy_warned = false;
                    tracing::info!(
                        sender = %record.sender,
                        pid = child.id(),
                        "--on-panic: command started"
                    );
                    self.running.push(Running {
                        child,
                        started: now,
                        sender: record.sender,
                        killed: false,
                    });
                }
                Err(error) => {
                    self.failed += 1;
                    tracing::warn!(sender = %record.sender, %error, "--on-panic: command not run");
                }
            },
        }
    }

    /// Collects the commands that ended, and kills those that ran too long.
    fn reap(&mut self, now: Instant) {
        let program = self.program();
        let Self {
            running,
            failed,
            limits,
            ..
        } = self;
        running.retain_mut(|r| {
            let error = match r.child.try_wait() {
                Ok(Some(status)) if status.success() || r.killed => None,
                Ok(Some(status)) => Some(HookError::Failed {
                    program: program.clone(),
                    status,
                }),
                Ok(None) => {
                    if r.killed || now.saturating_duration_since(r.started) < limits.run_timeout {
                        return true;
                    }
                    // Reaped at a later call, once the signal has taken effect.
                    let _ = r.child.kill();
                    r.killed = true;
                    *failed += 1;
                    let error = HookError::TimedOut {
                        program: program.clone(),
                        after: limits.run_timeout,
                    };
                    tracing::warn!(sender = %r.sender, pid = r.child.id(), %error, "--on-panic");
                    return true;
                }
                Err(source) => Some(HookError::Wait {
                    program: program.clone(),
                    source,
                }),
            };
            if let Some(error) = error {
                *failed += 1;
                tracing::warn!(sender = %r.sender, pid = r.child.id(), %error, "--on-panic");
            }
            false
        });
    }
}

impl Sink for PanicHook {
    fn event(&mut self, event: &Event) {
        let now = Instant::now();
        self.reap(now);
        if let Some(record) = event.as_record()
            && record.flags.panic.is_some_and(|p| p.begins)
        {
            self.on_panic(record, now);
        }
    }

    fn flush(&mut self) {
        self.reap(Instant::now());
    }

    fn counters(&self, out: &mut Vec<super::SinkCounter>) {
        use super::SinkCounter;
        out.push(SinkCounter::total(
            "hooks_run",
            "--on-panic commands started.",
            self.run,
        ));
        out.push(SinkCounter::total(
            "hooks_failed",
            "--on-panic commands that could not start or exited with an error.",
            self.failed,
        ));
        out.push(SinkCounter::total(
            "hooks_suppressed",
            "Crash reports for which --on-panic was not run (rate limit, or too many running).",
            self.suppressed,
        ));
    }
}

impl Drop for PanicHook {
    fn drop(&mut self) {
        // Collect what already ended; the rest finish on their own and init reaps them.
        self.reap(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::path::Path;

    use super::*;
    use crate::netconsole::{Flags, PanicKind, PanicMark, Priority, Record};

    use crate::testing::TempDir;

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 42, 0, last))
    }

    fn panic_record(sender: SocketAddr, text: &[u8], begins: bool) -> Record {
        Record {
            sender,
            priority: Priority::from_pri(0),
            seq: Some(10),
            timestamp_us: Some(1000),
            flags: Flags {
                panic: Some(PanicMark {
                    event: 0,
                    kind: PanicKind::Panic,
                    begins,
                }),
                ..Flags::default()
            },
            ..Record::example(text)
        }
    }

    fn panic_event(last: u8) -> Event {
        Event::Record(panic_record(
            SocketAddr::new(ip(last), 6665),
            b"Kernel panic - not syncing: test",
            true,
        ))
    }

    fn stats(hook: &PanicHook) -> String {
        let mut s = String::new();
        hook.stats(&mut s);
        s
    }

    /// Flushes (reaps) until no command is running; bounded.
    fn reap_all(hook: &mut PanicHook) {
        for _ in 0..500 {
            hook.flush();
            if hook.running() == 0 {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("commands still running after 10 s");
    }

    fn wait_for_file(path: &Path) -> String {
        for _ in 0..500 {
            if let Ok(text) = std::fs::read_to_string(path)
                && text.ends_with('\n')
            {
                return text;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("{} not written within 10 s", path.display());
    }

    #[test]
    fn rate_limit_per_sender_with_a_fake_clock() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut limiter = RateLimiter::new(Duration::from_mins(1), 100);
        assert!(limiter.admit(ip(1), at(0)));
        assert!(!limiter.admit(ip(1), at(1)));
        assert!(!limiter.admit(ip(1), at(59)));
        // Another sender is not affected.
        assert!(limiter.admit(ip(2), at(30)));
        assert!(limiter.admit(ip(1), at(60)));
        assert!(!limiter.admit(ip(1), at(100)));
        assert!(limiter.admit(ip(1), at(120)));
        assert!(!limiter.admit(ip(2), at(89)));
        assert!(limiter.admit(ip(2), at(90)));
    }

    #[test]
    fn clock_going_backwards_suppresses() {
        let t0 = Instant::now();
        let mut limiter = RateLimiter::new(Duration::from_mins(1), 100);
        assert!(limiter.admit(ip(1), t0 + Duration::from_secs(100)));
        assert!(!limiter.admit(ip(1), t0 + Duration::from_secs(50)));
    }

    #[test]
    fn zero_interval_always_runs() {
        let t0 = Instant::now();
        let mut limiter = RateLimiter::new(Duration::ZERO, 2);
        for i in 0..10 {
            assert!(limiter.admit(ip(i % 5), t0));
        }
        assert!(limiter.len() <= 2);
    }

    #[test]
    fn sender_table_is_bounded_expired_first_then_oldest() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut limiter = RateLimiter::new(Duration::from_mins(1), 3);
        assert!(limiter.admit(ip(1), at(0)));
        assert!(limiter.admit(ip(2), at(10)));
        assert!(limiter.admit(ip(3), at(20)));
        // Full, nothing expired: the oldest (1) goes.
        assert!(limiter.admit(ip(4), at(30)));
        assert_eq!(limiter.len(), 3);
        assert!(!limiter.last.contains_key(&ip(1)));
        assert!(!limiter.admit(ip(3), at(31)));
        // At 81 the entries of 2 (10) and 3 (20) have expired: both go, 4 (30) stays limited.
        assert!(limiter.admit(ip(5), at(81)));
        assert_eq!(limiter.len(), 2);
        assert!(!limiter.admit(ip(4), at(82)));
        for i in 10..200 {
            limiter.admit(ip(i), at(85));
            assert!(limiter.len() <= 3);
        }
    }

    #[test]
    fn busy_does_not_use_up_the_interval() {
        let t0 = Instant::now();
        let mut limiter = RateLimiter::new(Duration::from_mins(1), 10);
        assert_eq!(decide(&mut limiter, 2, 2, ip(1), t0), Decision::Busy);
        assert_eq!(decide(&mut limiter, 1, 2, ip(1), t0), Decision::Run);
        assert_eq!(decide(&mut limiter, 0, 2, ip(1), t0), Decision::RateLimited);
    }

    #[test]
    fn environment_is_lossless_and_env_safe() {
        let sender = SocketAddr::new(
            IpAddr::V6(Ipv6Addr::new(0xfd00, 0x42, 0, 0, 0, 0, 0, 0x10)),
            6665,
        );
        let record = panic_record(sender, b"Oops: a\0b\nc\x1b[31m\xff\\", true);
        let env: HashMap<_, _> = environment(&record).into_iter().collect();
        assert_eq!(env["NETCON_SENDER"], "[fd00:42::10]:6665");
        assert_eq!(env["NETCON_TEXT"], "Oops: a\\u{0}b\\nc\\u{1b}[31m\\xff\\\\");
        assert_eq!(env["NETCON_TIME"], "2026-11-27T22:13:56.123456Z");
        assert_eq!(env["NETCON_KIND"], "panic");
        assert!(!env.contains_key("NETCON_TEXT_TRUNCATED"));
        assert!(env.values().all(|v| !v.contains('\0')));
    }

    #[test]
    fn long_text_is_cut_below_the_kernel_limit() {
        let sender = SocketAddr::new(ip(1), 6665);
        let record = panic_record(sender, &vec![0xff; 40_000], true);
        let env: HashMap<_, _> = environment(&record).into_iter().collect();
        assert!(env["NETCON_TEXT"].len() <= MAX_TEXT_ENV_BYTES);
        assert_eq!(env["NETCON_TEXT_TRUNCATED"], "1");
    }

    #[test]
    fn runs_the_command_with_the_environment_once_per_interval() {
        let dir = TempDir::new("env");
        let out = dir.0.join("out");
        let script = format!(
            "printf '%s|%s|%s|%s\\n' \"$NETCON_SENDER\" \"$NETCON_TEXT\" \"$NETCON_TIME\" \
             \"$NETCON_KIND\" >> '{}'",
            out.display()
        );
        let mut hook = PanicHook::new(PanicHookOptions {
            command: vec!["sh".into(), "-c".into(), script],
            min_interval: Duration::from_hours(1),
        });
        hook.event(&panic_event(10));
        hook.event(&panic_event(10));
        // Records inside the report do not run it.
        hook.event(&Event::Record(panic_record(
            SocketAddr::new(ip(11), 6665),
            b"RIP: 0010:x",
            false,
        )));
        reap_all(&mut hook);
        assert_eq!(
            wait_for_file(&out),
            "10.42.0.10:6665|Kernel panic - not syncing: test|2026-11-27T22:13:56.123456Z|panic\n"
        );
        assert_eq!(
            stats(&hook),
            " hooks_run=1 hooks_failed=0 hooks_suppressed=1"
        );
    }

    #[test]
    fn missing_command_is_counted_not_fatal() {
        let mut hook = PanicHook::new(PanicHookOptions {
            command: vec!["/nonexistent/netcon-hook".into(), "arg".into()],
            min_interval: Duration::ZERO,
        });
        hook.event(&panic_event(1));
        hook.event(&panic_event(2));
        assert_eq!(
            stats(&hook),
            " hooks_run=0 hooks_failed=2 hooks_suppressed=0"
        );
    }

    #[test]
    fn empty_command_is_counted_not_fatal() {
        let mut hook = PanicHook::new(PanicHookOptions {
            command: Vec::new(),
            min_interval: Duration::ZERO,
        });
        hook.event(&panic_event(1));
        assert_eq!(
            stats(&hook),
            " hooks_run=0 hooks_failed=1 hooks_suppressed=0"
        );
    }

    #[test]
    fn failing_command_is_reaped_and_counted() {
        let mut hook = PanicHook::new(PanicHookOptions {
            command: vec!["sh".into(), "-c".into(), "exit 3".into()],
            min_interval: Duration::ZERO,
        });
        hook.event(&panic_event(1));
        reap_all(&mut hook);
        assert_eq!(
            stats(&hook),
            " hooks_run=1 hooks_failed=1 hooks_suppressed=0"
        );
    }

    #[test]
    fn running_commands_are_bounded_and_killed_after_the_timeout() {
        let mut hook = PanicHook::with_limits(
            PanicHookOptions {
                command: vec!["sleep".into(), "30".into()],
                min_interval: Duration::ZERO,
            },
            HookLimits {
                max_senders: 10,
                max_running: 2,
                run_timeout: Duration::from_millis(200),
            },
        );
        for i in 0..5 {
            hook.event(&panic_event(i));
        }
        assert_eq!(hook.running(), 2);
        assert_eq!(
            stats(&hook),
            " hooks_run=2 hooks_failed=0 hooks_suppressed=3"
        );
        std::thread::sleep(Duration::from_millis(250));
        reap_all(&mut hook);
        assert_eq!(
            stats(&hook),
            " hooks_run=2 hooks_failed=2 hooks_suppressed=3"
        );
    }
}
