//! The panic hook, running real commands (`sh -c`) with a bounded wait for each.

use std::net::Ipv6Addr;
use std::path::Path;

use super::*;
use crate::netconsole::{Flags, PanicKind, PanicMark, Priority, Record};
use crate::testing::ipv4;

use crate::testing::TempDir;

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
        SocketAddr::new(ipv4(42, last), 6665),
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

/// A hook with one slot and `max_queued` places in its queue, whose command sleeps 30 s (so
/// that the slot stays taken), with no rate limit.
fn one_slot_sleeping(max_queued: usize) -> PanicHook {
    PanicHook::with_limits(
        options(vec!["sleep".into(), "30".into()], Duration::ZERO),
        HookLimits {
            max_senders: 100,
            max_running: 1,
            max_queued,
        },
        MemoryBudget::default(),
    )
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
    let sender = SocketAddr::new(ipv4(42, 1), 6665);
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
        SocketAddr::new(ipv4(42, 11), 6665),
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
        outcomes.iter().all(
            |o| matches!(o, HookOutcome::Late { waited } if *waited >= Duration::from_millis(400))
        ),
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
    let mut hook = one_slot_sleeping(3);
    // The real machine has been logging before anything else happened.
    hook.event(&Event::Record(Record {
        sender: SocketAddr::new(ipv4(42, 99), 6665),
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
        hook.waiting.iter().any(|w| w.sender.ip() == ipv4(42, 99)),
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
    assert!(hook.waiting.iter().any(|w| w.sender.ip() == ipv4(42, 99)));
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
    let mut hook = one_slot_sleeping(2);
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
        let state = std::fs::read_to_string(format!("/proc/{grandchild}/stat")).unwrap_or_default();
        if state.is_empty() || state.split(' ').nth(2) == Some("Z") {
            gone = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(gone, "the command's child survived the timeout");
}
