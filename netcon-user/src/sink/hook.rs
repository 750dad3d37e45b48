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
//! `hooks_suppressed` and shown (`hook_skipped`, reason `rate_limited`). The decision is the
//! sans-IO [`RateLimiter`]; its table of senders is bounded ([`DEFAULT_MAX_SENDERS`]); when it is
//! full, entries whose interval has passed go first, then the oldest. Evicting can let a sender
//! run again early, which is the safer way to be wrong: a flood of forged senders must not
//! silence a real panic.
//!
//! **Slots and the queue.** At most [`DEFAULT_MAX_RUNNING`] commands run at once, and at most one
//! per sender. A report that finds every slot busy (forged panics from many addresses running a
//! slow pager, say) is not dropped: it waits in a queue and starts as soon as a slot frees (the
//! sender heard from longest ago first, then first come first served); when it starts, a `hook_late` notice says how long it waited. The queue
//! holds at most [`DEFAULT_MAX_QUEUED`] reports, each charged to the memory budget; beyond that
//! a report is skipped, counted (`hooks_skipped`) and shown (`hook_skipped`, `queue_full`), never
//! silently. A command still running after `--on-panic-timeout` ([`DEFAULT_RUN_TIMEOUT`]) is
//! killed with its whole process group (it runs in a group of its own, so a shell's children go
//! too), counted as failed and shown (`hook_timeout`): hung commands cannot hold the slots. So
//! forged reports can delay a genuine one by at most the timeout. When the queue is full, the
//! report of the sender heard from *most recently for the first time* gives way: a machine that
//! has been logging for a while outranks addresses whose first datagram is a panic, which is
//! what a spray of forged sources looks like ([`DEFAULT_MAX_KNOWN`] senders are remembered for
//! this; beyond, newcomers count as heard just now). Only forged reports from addresses that
//! were already heard before the real sender can still crowd it out; `--allow` closes that door.
//!
//! **Children.** The command is started and not waited for: the pipeline never blocks on it.
//! Each event and each flush reaps the ones that ended (no zombies), logging and counting a
//! non-zero exit as `hooks_failed`; while any runs or waits, the pipeline flushes this sink every
//! [`HOUSEKEEPING_INTERVAL`] even when no record arrives. At exit, reports still queued are
//! started at once (the slots protect a running collector, which is ending); children still
//! running then are left to finish (init reaps them).
//!
//! A command that cannot be started (missing, not executable) is logged and counted as
//! `hooks_failed`, never fatal.

use std::{
    collections::{HashMap, VecDeque},
    io,
    net::{IpAddr, SocketAddr},
    os::{fd::AsFd as _, unix::process::CommandExt as _},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use chrono::SecondsFormat;

use super::{Sink, escape::escape_into};
use crate::budget::MemoryBudget;
use crate::netconsole::{Event, Record};
use crate::notice::{HookNotice, HookOutcome, Notice, SkipReason};

/// Senders whose last run is remembered for the rate limit, at most: 1024.
pub const DEFAULT_MAX_SENDERS: usize = 1024;
/// Commands running at once, at most: 16. A report beyond it waits in the queue.
pub const DEFAULT_MAX_RUNNING: usize = 16;
/// Reports waiting for a slot, at most: 256. A report beyond it is skipped, counted and shown.
pub const DEFAULT_MAX_QUEUED: usize = 256;
/// How long a command may run before its process group is killed (`--on-panic-timeout`): 60 s.
/// Enough to send a page or copy a crash dump; short enough that commands hung (or kept busy
/// by forged reports) free their slots for a genuine one.
pub const DEFAULT_RUN_TIMEOUT: Duration = Duration::from_mins(1);
/// Senders whose first datagram's time is remembered, to rank queued reports when the queue is
/// full: 4096. Once full, no more are added (a spray of new addresses cannot push out the
/// machines heard before it).
pub const DEFAULT_MAX_KNOWN: usize = 4096;
/// How often running and queued commands are looked at while no event arrives: 100 ms, the
/// longest a queued report waits after its slot freed.
pub const HOUSEKEEPING_INTERVAL: Duration = Duration::from_millis(100);
/// Longest `NETCON_TEXT`, bytes: 64 KiB. The kernel refuses an environment string over 128 KiB
/// (`MAX_ARG_STRLEN`), and an escaped record can reach that (the decoder keeps records up to
/// 32 KiB; escaping can quadruple them).
pub const MAX_TEXT_ENV_BYTES: usize = 64 * 1024;

/// What `--on-panic`, `--on-panic-interval` and `--on-panic-timeout` asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PanicHookOptions {
    /// Program and arguments.
    pub command: Vec<String>,
    /// At most one run per sender in this interval.
    pub min_interval: Duration,
    /// Kill a command (and its process group) still running after this long.
    pub timeout: Duration,
}

/// The bounds of a [`PanicHook`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HookLimits {
    /// Senders remembered by the rate limit ([`DEFAULT_MAX_SENDERS`]); at least 1 is used.
    pub max_senders: usize,
    /// Commands running at once ([`DEFAULT_MAX_RUNNING`]); at least 1 is used.
    pub max_running: usize,
    /// Reports waiting for a slot ([`DEFAULT_MAX_QUEUED`]).
    pub max_queued: usize,
}

impl Default for HookLimits {
    fn default() -> Self {
        Self {
            max_senders: DEFAULT_MAX_SENDERS,
            max_running: DEFAULT_MAX_RUNNING,
            max_queued: DEFAULT_MAX_QUEUED,
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
    #[error(
        "--on-panic command {program:?} still running after {after:?}; killed its process group \
         (raise --on-panic-timeout if it needs longer)"
    )]
    TimedOut { program: String, after: Duration },
    /// Its status could not be collected.
    #[error("cannot wait for --on-panic command {program:?}: {source}")]
    Wait {
        program: String,
        #[source]
        source: io::Error,
    },
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

/// A report waiting for a slot.
struct Waiting {
    sender: SocketAddr,
    env: Vec<(&'static str, String)>,
    since: Instant,
    /// Bytes charged to the budget for it.
    charged: usize,
}

/// Runs the command.
pub struct PanicHook {
    command: Vec<String>,
    limits: HookLimits,
    timeout: Duration,
    limiter: RateLimiter,
    running: Vec<Running>,
    waiting: VecDeque<Waiting>,
    budget: MemoryBudget,
    notices: Vec<Notice>,
    /// When each sender was first heard (any event), at most [`DEFAULT_MAX_KNOWN`].
    first_heard: HashMap<IpAddr, Instant>,
    /// Before every first-heard time: the origin of [`PanicHook::newness`].
    origin: Instant,
    /// When running and waiting commands were last looked at.
    last_look: Instant,
    /// Commands started.
    run: u64,
    /// Commands that could not start, exited unsuccessfully or were killed.
    failed: u64,
    /// Reports that did not run the command because of the rate limit.
    suppressed: u64,
    /// Reports that did not run it because the queue (or the budget) was full.
    skipped: u64,
    /// Commands that started after waiting for a slot.
    late: u64,
    /// Commands killed for running past the timeout.
    timed_out: u64,
}

impl PanicHook {
    /// A hook for `options`, charging what it queues to `budget`.
    #[must_use]
    pub fn new(options: PanicHookOptions, budget: MemoryBudget) -> Self {
        Self::with_limits(options, HookLimits::default(), budget)
    }

    /// [`PanicHook::new`] with other bounds.
    #[must_use]
    pub fn with_limits(
        options: PanicHookOptions,
        limits: HookLimits,
        budget: MemoryBudget,
    ) -> Self {
        if options.command.is_empty() {
            tracing::warn!("--on-panic command is empty: every panic will count as hooks_failed");
        }
        Self {
            limiter: RateLimiter::new(options.min_interval, limits.max_senders),
            command: options.command,
            timeout: options.timeout,
            limits: HookLimits {
                max_running: limits.max_running.max(1),
                ..limits
            },
            running: Vec::new(),
            waiting: VecDeque::new(),
            budget,
            notices: Vec::new(),
            first_heard: HashMap::new(),
            origin: Instant::now(),
            last_look: Instant::now(),
            run: 0,
            failed: 0,
            suppressed: 0,
            skipped: 0,
            late: 0,
            timed_out: 0,
        }
    }

    /// Commands started and not yet reaped.
    #[must_use]
    pub fn running(&self) -> usize {
        self.running.len()
    }

    /// Reports waiting for a slot.
    #[must_use]
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    fn program(&self) -> String {
        self.command.first().cloned().unwrap_or_default()
    }

    fn notice(&mut self, sender: SocketAddr, outcome: HookOutcome) {
        self.notices.push(Notice::Hook(HookNotice {
            at: chrono::Utc::now(),
            sender,
            outcome,
        }));
    }

    fn spawn(&self, env: &[(&'static str, String)]) -> Result<Child, HookError> {
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
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(stdout)
            // A group of its own, so that the timeout kills what a shell script started too.
            .process_group(0)
            .spawn()
            .map_err(|source| HookError::Spawn {
                program: program.clone(),
                source,
            })
    }

    fn on_panic(&mut self, record: &Record, now: Instant) {
        if !self.limiter.admit(record.sender.ip(), now) {
            self.suppressed += 1;
            tracing::info!(
                sender = %record.sender,
                interval = ?self.limiter.min_interval,
                "--on-panic: already ran for this sender within --on-panic-interval; suppressed"
            );
            self.notice(record.sender, HookOutcome::Skipped(SkipReason::RateLimited));
            return;
        }
        if self.waiting.len() >= self.limits.max_queued && !self.make_room(record.sender.ip()) {
            self.skip(record.sender, SkipReason::QueueFull);
            return;
        }
        let env = environment(record);
        let charged = size_of::<Waiting>()
            + env
                .iter()
                .map(|(k, v)| k.len() + v.len() + size_of::<(&str, String)>())
                .sum::<usize>();
        if !self.budget.try_charge(charged) {
            self.skip(record.sender, SkipReason::Memory);
            return;
        }
        self.waiting.push_back(Waiting {
            sender: record.sender,
            env,
            since: now,
            charged,
        });
        self.start_waiting(now, false);
    }

    /// How recently `ip` was first heard: larger is newer; never heard is newest.
    fn newness(&self, ip: IpAddr) -> u128 {
        self.first_heard.get(&ip).map_or(u128::MAX, |t| {
            t.saturating_duration_since(self.origin).as_nanos()
        })
    }

    /// With the queue full, skips the waiting report of the newest sender if `ip` was heard
    /// before it; `false` (nothing skipped) otherwise.
    fn make_room(&mut self, ip: IpAddr) -> bool {
        let incoming = self.newness(ip);
        let Some((at, newest)) = self
            .waiting
            .iter()
            .enumerate()
            .map(|(i, w)| (i, self.newness(w.sender.ip())))
            .max_by_key(|&(_, n)| n)
        else {
            return false;
        };
        if newest <= incoming {
            return false;
        }
        if let Some(entry) = self.waiting.remove(at) {
            self.budget.release(entry.charged);
            self.skip(entry.sender, SkipReason::QueueFull);
        }
        true
    }

    fn skip(&mut self, sender: SocketAddr, why: SkipReason) {
        self.skipped += 1;
        tracing::warn!(
            %sender,
            running = self.running.len(),
            waiting = self.waiting.len(),
            "--on-panic: {}; report skipped",
            why.describe()
        );
        self.notice(sender, HookOutcome::Skipped(why));
    }

    /// Starts waiting reports while slots are free, the longest-known sender's first; a sender
    /// whose command is still running waits for it. With `all`, ignores the slot limit (at exit).
    fn start_waiting(&mut self, now: Instant, all: bool) {
        while all || self.running.len() < self.limits.max_running {
            // Of the reports whose sender runs nothing now, the longest-known sender's first
            // (then the oldest report): forged newcomers queue behind a machine heard before.
            let next = self
                .waiting
                .iter()
                .enumerate()
                .filter(|(_, w)| {
                    all || !self
                        .running
                        .iter()
                        .any(|r| r.sender.ip() == w.sender.ip() && !r.killed)
                })
                .min_by_key(|&(i, w)| (self.newness(w.sender.ip()), i))
                .map(|(i, _)| i);
            let Some(entry) = next.and_then(|i| self.waiting.remove(i)) else {
                break;
            };
            self.budget.release(entry.charged);
            if entry.since != now {
                let waited = now.saturating_duration_since(entry.since);
                self.late += 1;
                tracing::info!(sender = %entry.sender, ?waited, "--on-panic: started late");
                self.notice(entry.sender, HookOutcome::Late { waited });
            }
            match self.spawn(&entry.env) {
                Ok(child) => {
                    self.run += 1;
                    tracing::info!(
                        sender = %entry.sender,
                        pid = child.id(),
                        "--on-panic: command started"
                    );
                    self.running.push(Running {
                        child,
                        started: now,
                        sender: entry.sender,
                        killed: false,
                    });
                }
                Err(error) => {
                    self.failed += 1;
                    tracing::warn!(sender = %entry.sender, %error, "--on-panic: command not run");
                }
            }
        }
    }

    /// Collects the commands that ended, and kills those that ran too long.
    fn reap(&mut self, now: Instant) {
        self.last_look = now;
        let program = self.program();
        let timeout = self.timeout;
        let mut timed_out = Vec::new();
        let Self {
            running, failed, ..
        } = self;
        running.retain_mut(|r| {
            let error = match r.child.try_wait() {
                Ok(Some(status)) if status.success() || r.killed => None,
                Ok(Some(status)) => Some(HookError::Failed {
                    program: program.clone(),
                    status,
                }),
                Ok(None) => {
                    if r.killed || now.saturating_duration_since(r.started) < timeout {
                        return true;
                    }
                    kill_group(&mut r.child);
                    // Reaped at a later call, once the signal has taken effect.
                    r.killed = true;
                    *failed += 1;
                    let error = HookError::TimedOut {
                        program: program.clone(),
                        after: timeout,
                    };
                    tracing::warn!(sender = %r.sender, pid = r.child.id(), %error, "--on-panic");
                    timed_out.push(r.sender);
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
        for sender in timed_out {
            self.timed_out += 1;
            self.notice(sender, HookOutcome::TimedOut { after: timeout });
        }
    }

    /// Reaps, then starts what waits.
    fn housekeeping(&mut self) {
        let now = Instant::now();
        self.reap(now);
        self.start_waiting(now, false);
    }
}

/// Kills `child`'s process group (it leads one: see [`PanicHook::spawn`]), and the child itself
/// should the group be gone.
fn kill_group(child: &mut Child) {
    use nix::sys::signal::{Signal, killpg};
    use nix::unistd::Pid;
    let group = i32::try_from(child.id()).map(Pid::from_raw);
    if group.is_err() || group.is_ok_and(|g| killpg(g, Signal::SIGKILL).is_err()) {
        let _ = child.kill();
    }
}

impl Sink for PanicHook {
    fn event(&mut self, event: &Event) {
        let now = Instant::now();
        if self.first_heard.len() < DEFAULT_MAX_KNOWN {
            self.first_heard.entry(event.sender().ip()).or_insert(now);
        }
        self.reap(now);
        self.start_waiting(now, false);
        if let Some(record) = event.as_record()
            && record.flags.panic.is_some_and(|p| p.begins)
        {
            self.on_panic(record, now);
        }
    }

    fn flush(&mut self) {
        self.housekeeping();
    }

    fn close(&mut self) {
        let now = Instant::now();
        self.reap(now);
        if !self.waiting.is_empty() {
            tracing::info!(
                waiting = self.waiting.len(),
                "--on-panic: exiting; starting the reports still queued"
            );
        }
        self.start_waiting(now, true);
    }

    fn take_notices(&mut self, out: &mut Vec<Notice>) {
        out.append(&mut self.notices);
    }

    fn poll_at(&self) -> Option<Instant> {
        (!self.running.is_empty() || !self.waiting.is_empty())
            .then(|| self.last_look + HOUSEKEEPING_INTERVAL)
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
            "--on-panic commands that could not start, exited with an error or were killed at --on-panic-timeout.",
            self.failed,
        ));
        out.push(SinkCounter::total(
            "hooks_suppressed",
            "Crash reports for which --on-panic was not run: the sender's --on-panic-interval had not passed.",
            self.suppressed,
        ));
        out.push(SinkCounter::total(
            "hooks_skipped",
            "Crash reports for which --on-panic was not run: the queue of reports waiting for a slot was full.",
            self.skipped,
        ));
        out.push(SinkCounter::total(
            "hooks_late",
            "--on-panic commands that started late, after waiting for a free slot.",
            self.late,
        ));
        out.push(SinkCounter::total(
            "hooks_timed_out",
            "--on-panic commands killed at --on-panic-timeout.",
            self.timed_out,
        ));
        out.push(SinkCounter::gauge(
            "hooks_waiting",
            "Crash reports waiting for a free --on-panic slot.",
            self.waiting.len() as u64,
        ));
    }
}

impl Drop for PanicHook {
    fn drop(&mut self) {
        // Collect what already ended; the rest finish on their own and init reaps them.
        self.reap(Instant::now());
        for entry in self.waiting.drain(..) {
            self.budget.release(entry.charged);
        }
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

    fn options(command: Vec<String>, min_interval: Duration) -> PanicHookOptions {
        PanicHookOptions {
            command,
            min_interval,
            timeout: DEFAULT_RUN_TIMEOUT,
        }
    }

    fn hook(command: Vec<String>, min_interval: Duration) -> PanicHook {
        PanicHook::new(options(command, min_interval), MemoryBudget::default())
    }

    fn sh(script: &str) -> Vec<String> {
        vec!["sh".into(), "-c".into(), script.into()]
    }

    fn notices(hook: &mut PanicHook) -> Vec<HookOutcome> {
        let mut out = Vec::new();
        hook.take_notices(&mut out);
        out.into_iter()
            .map(|n| match n {
                Notice::Hook(h) => h.outcome,
                other => panic!("a hook reports only hook notices: {other:?}"),
            })
            .collect()
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
        let mut hook = hook(sh(&script), Duration::from_hours(1));
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
            " hooks_run=1 hooks_failed=0 hooks_suppressed=1 hooks_skipped=0 hooks_late=0 \
             hooks_timed_out=0 hooks_waiting=0"
        );
        assert_eq!(
            notices(&mut hook),
            [HookOutcome::Skipped(SkipReason::RateLimited)]
        );
    }

    #[test]
    fn missing_command_is_counted_not_fatal() {
        let mut hook = hook(
            vec!["/nonexistent/netcon-hook".into(), "arg".into()],
            Duration::ZERO,
        );
        hook.event(&panic_event(1));
        hook.event(&panic_event(2));
        assert!(stats(&hook).starts_with(" hooks_run=0 hooks_failed=2 hooks_suppressed=0 "));
    }

    #[test]
    fn empty_command_is_counted_not_fatal() {
        let mut hook = hook(Vec::new(), Duration::ZERO);
        hook.event(&panic_event(1));
        assert!(stats(&hook).starts_with(" hooks_run=0 hooks_failed=1 hooks_suppressed=0 "));
    }

    #[test]
    fn failing_command_is_reaped_and_counted() {
        let mut hook = hook(sh("exit 3"), Duration::ZERO);
        hook.event(&panic_event(1));
        reap_all(&mut hook);
        assert!(stats(&hook).starts_with(" hooks_run=1 hooks_failed=1 hooks_suppressed=0 "));
    }

    /// Reaps until `done` holds; bounded.
    fn flush_until(hook: &mut PanicHook, done: impl Fn(&PanicHook) -> bool) {
        for _ in 0..500 {
            hook.flush();
            if done(hook) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("not done after 10 s: {}", stats(hook));
    }

    #[test]
    fn busy_slots_queue_the_report_and_it_runs_late_when_one_frees() {
        let dir = TempDir::new("queue");
        let out = dir.0.join("out");
        // Forged reports hold both slots for a while; the genuine one waits, then runs.
        let script = format!(
            "case \"$NETCON_SENDER\" in 10.42.0.99:*) echo genuine >> '{}';; *) sleep 0.5;; esac",
            out.display()
        );
        let mut hook = PanicHook::with_limits(
            options(sh(&script), Duration::from_hours(1)),
            HookLimits {
                max_running: 2,
                ..HookLimits::default()
            },
            MemoryBudget::default(),
        );
        for i in 1..=4 {
            hook.event(&panic_event(i));
        }
        hook.event(&panic_event(99));
        assert_eq!((hook.running(), hook.waiting()), (2, 3));
        assert!(hook.poll_at().is_some(), "a queue needs housekeeping");
        flush_until(&mut hook, |h| h.running() == 0 && h.waiting() == 0);
        assert_eq!(wait_for_file(&out), "genuine\n");
        let outcomes = notices(&mut hook);
        assert_eq!(outcomes.len(), 3, "{outcomes:?}");
        assert!(
            outcomes
                .iter()
                .all(|o| matches!(o, HookOutcome::Late { waited } if *waited >= Duration::from_millis(400))),
            "{outcomes:?}"
        );
        assert!(stats(&hook).starts_with(
            " hooks_run=5 hooks_failed=0 hooks_suppressed=0 hooks_skipped=0 hooks_late=3 "
        ));
        assert_eq!(hook.poll_at(), None);
        assert_eq!(hook.budget.used(), 0, "the queue's charges are released");
    }

    #[test]
    fn a_full_queue_gives_way_to_a_sender_heard_before_the_newcomers() {
        let mut hook = PanicHook::with_limits(
            options(vec!["sleep".into(), "30".into()], Duration::ZERO),
            HookLimits {
                max_senders: 100,
                max_running: 1,
                max_queued: 3,
            },
            MemoryBudget::default(),
        );
        // The real machine has been logging before anything else happened.
        hook.event(&Event::Record(Record {
            sender: SocketAddr::new(ip(99), 6665),
            ..Record::example(b"eth0: link up")
        }));
        std::thread::sleep(Duration::from_millis(2));
        // A spray of forged panics from new addresses fills the slot and the queue.
        for i in 1..=4 {
            hook.event(&panic_event(i));
        }
        assert_eq!((hook.running(), hook.waiting()), (1, 3));
        let _ = notices(&mut hook);
        hook.event(&panic_event(99));
        assert!(
            hook.waiting.iter().any(|w| w.sender.ip() == ip(99)),
            "the genuine report waits"
        );
        assert_eq!(hook.waiting(), 3);
        assert_eq!(
            notices(&mut hook),
            [HookOutcome::Skipped(SkipReason::QueueFull)],
            "a forged one gave way, and says so"
        );
        // Another newcomer does not push anyone out.
        hook.event(&panic_event(50));
        assert!(hook.waiting.iter().any(|w| w.sender.ip() == ip(99)));
        assert!(
            stats(&hook).contains(" hooks_skipped=2 "),
            "{}",
            stats(&hook)
        );
        for r in &mut hook.running {
            kill_group(&mut r.child);
        }
    }

    #[test]
    fn one_command_per_sender_at_a_time() {
        let mut hook = hook(vec!["sleep".into(), "0.3".into()], Duration::ZERO);
        hook.event(&panic_event(1));
        hook.event(&panic_event(1));
        assert_eq!((hook.running(), hook.waiting()), (1, 1));
        flush_until(&mut hook, |h| h.waiting() == 0);
        assert_eq!(hook.running(), 1);
        assert!(matches!(notices(&mut hook)[..], [HookOutcome::Late { .. }]));
    }

    #[test]
    fn a_full_queue_or_budget_skips_and_says_so() {
        let mut hook = PanicHook::with_limits(
            options(vec!["sleep".into(), "30".into()], Duration::ZERO),
            HookLimits {
                max_senders: 100,
                max_running: 1,
                max_queued: 2,
            },
            MemoryBudget::default(),
        );
        for i in 1..=4 {
            hook.event(&panic_event(i));
        }
        assert_eq!((hook.running(), hook.waiting()), (1, 2));
        assert_eq!(
            notices(&mut hook),
            [HookOutcome::Skipped(SkipReason::QueueFull)]
        );
        assert!(
            stats(&hook).contains(" hooks_skipped=1 "),
            "{}",
            stats(&hook)
        );
        hook.close();
        assert_eq!(
            (hook.running(), hook.waiting()),
            (3, 0),
            "exit starts what waits"
        );
        for r in &mut hook.running {
            kill_group(&mut r.child);
        }

        let mut starved = PanicHook::new(
            options(vec!["true".into()], Duration::ZERO),
            MemoryBudget::new(10),
        );
        starved.event(&panic_event(1));
        assert_eq!(
            notices(&mut starved),
            [HookOutcome::Skipped(SkipReason::Memory)]
        );
    }

    #[test]
    fn a_command_past_the_timeout_is_killed_with_its_process_group() {
        let dir = TempDir::new("timeout");
        let pid_file = dir.0.join("pid");
        // The shell starts a grandchild in the same group; the timeout must take it too.
        let script = format!("sleep 30 & echo $! > '{}'; wait", pid_file.display());
        let mut hook = PanicHook::new(
            PanicHookOptions {
                command: sh(&script),
                min_interval: Duration::ZERO,
                timeout: Duration::from_millis(300),
            },
            MemoryBudget::default(),
        );
        hook.event(&panic_event(1));
        let grandchild: i32 = wait_for_file(&pid_file).trim().parse().unwrap();
        std::thread::sleep(Duration::from_millis(350));
        reap_all(&mut hook);
        assert_eq!(
            notices(&mut hook),
            [HookOutcome::TimedOut {
                after: Duration::from_millis(300)
            }]
        );
        assert!(
            stats(&hook).contains(" hooks_failed=1 "),
            "{}",
            stats(&hook)
        );
        assert!(
            stats(&hook).contains(" hooks_timed_out=1 "),
            "{}",
            stats(&hook)
        );
        // The grandchild is gone too (a zombie until init reaps it counts as gone).
        let mut gone = false;
        for _ in 0..100 {
            let state =
                std::fs::read_to_string(format!("/proc/{grandchild}/stat")).unwrap_or_default();
            if state.is_empty() || state.split(' ').nth(2) == Some("Z") {
                gone = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(gone, "the command's child survived the timeout");
    }
}
