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

mod environment;
mod limiter;
#[cfg(test)]
mod tests;

use std::{
    collections::{HashMap, VecDeque},
    io,
    net::{IpAddr, SocketAddr},
    os::{fd::AsFd as _, unix::process::CommandExt as _},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

pub use self::environment::environment;
pub use self::limiter::RateLimiter;
use super::Sink;
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
        out.extend([
            SinkCounter::total(
                "hooks_run",
                "--on-panic commands started.",
                self.run,
            ),
            SinkCounter::total(
                "hooks_failed",
                "--on-panic commands that could not start, exited with an error or were killed at --on-panic-timeout.",
                self.failed,
            ),
            SinkCounter::total(
                "hooks_suppressed",
                "Crash reports for which --on-panic was not run: the sender's --on-panic-interval had not passed.",
                self.suppressed,
            ),
            SinkCounter::total(
                "hooks_skipped",
                "Crash reports for which --on-panic was not run: the queue of reports waiting for a slot was full.",
                self.skipped,
            ),
            SinkCounter::total(
                "hooks_late",
                "--on-panic commands that started late, after waiting for a free slot.",
                self.late,
            ),
            SinkCounter::total(
                "hooks_timed_out",
                "--on-panic commands killed at --on-panic-timeout.",
                self.timed_out,
            ),
            SinkCounter::gauge(
                "hooks_waiting",
                "Crash reports waiting for a free --on-panic slot.",
                self.waiting.len() as u64,
            ),
        ]);
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
