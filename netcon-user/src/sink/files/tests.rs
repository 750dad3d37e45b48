//! The per-sender files, end to end in a temporary directory.

use std::net::{Ipv6Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt as _;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::DateTime;

use super::*;
use crate::netconsole::{Duplicate, Record};
use crate::testing::TempDir;
use crate::testing::ipv4;

fn options(dir: &TempDir) -> LogDirOptions {
    LogDirOptions {
        dir: dir.0.clone(),
        resolve: false,
        fsync: false,
    }
}

/// A directory sink with at most `max_open_files` files open and `max_senders` senders.
fn limited(dir: &TempDir, max_open_files: usize, max_senders: usize) -> LogDir {
    LogDir::with_limits(
        options(dir),
        LogDirLimits {
            max_open_files,
            max_senders,
        },
    )
    .unwrap()
}

fn record(ip: IpAddr, text: &str) -> Event {
    Event::Record(Record {
        sender: SocketAddr::new(ip, 6665),
        seq: Some(1),
        ..Record::example(text.as_bytes())
    })
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

fn stats(sink: &LogDir) -> String {
    let mut s = String::new();
    sink.stats(&mut s);
    s
}

#[test]
fn writes_text_lines_appends_and_never_truncates() {
    let dir = TempDir::new("append");
    let path = dir.0.join("10.41.0.10.log");
    std::fs::write(&path, "existing line\n").unwrap();
    let mut sink = LogDir::open(options(&dir)).unwrap();
    let event = record(ipv4(41, 10), "one");
    sink.event(&event);
    sink.reopen();
    sink.event(&record(ipv4(41, 10), "two"));
    let text = read(&path);
    assert_eq!(
        text,
        format!(
            "existing line\n{}{}",
            text::format_event(&event),
            text::format_event(&record(ipv4(41, 10), "two"))
        )
    );
    // A second collector on the same directory appends too.
    drop(sink);
    let mut again = LogDir::open(options(&dir)).unwrap();
    again.event(&record(ipv4(41, 10), "three"));
    let text = read(&path);
    assert!(text.starts_with("existing line\n"), "{text}");
    assert_eq!(text.lines().count(), 4);
    assert_eq!(stats(&again), " files_written=1 files_errors=0");
}

#[test]
fn new_files_have_mode_0640_or_less() {
    let dir = TempDir::new("mode");
    let mut sink = LogDir::open(LogDirOptions {
        fsync: true,
        ..options(&dir)
    })
    .unwrap();
    sink.event(&record(ipv4(41, 10), "x"));
    let mode = std::fs::metadata(dir.0.join("10.41.0.10.log"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777 & !FILE_MODE, 0, "{mode:o}");
    assert_eq!(stats(&sink), " files_written=1 files_errors=0");
}

#[test]
fn reopen_after_rename_creates_the_file_again() {
    let dir = TempDir::new("rotate");
    let path = dir.0.join("10.41.0.10.log");
    let mut sink = LogDir::open(options(&dir)).unwrap();
    sink.event(&record(ipv4(41, 10), "before"));
    std::fs::rename(&path, dir.0.join("10.41.0.10.log.1")).unwrap();
    // Until SIGHUP the open file follows the rename (logrotate's `create` mode expects that).
    sink.event(&record(ipv4(41, 10), "still old"));
    sink.reopen();
    assert_eq!(sink.open_files(), 0);
    sink.event(&record(ipv4(41, 10), "after"));
    let old = read(&dir.0.join("10.41.0.10.log.1"));
    assert!(old.contains("before") && old.contains("still old"), "{old}");
    let new = read(&path);
    assert!(new.contains("after") && new.lines().count() == 1, "{new}");
}

#[test]
fn one_file_per_sender_and_duplicates_write_nothing() {
    let dir = TempDir::new("senders");
    let mut sink = LogDir::open(options(&dir)).unwrap();
    let v6 = IpAddr::V6(Ipv6Addr::new(0xfd00, 0x41, 0, 0, 0, 0, 0, 0x10));
    sink.event(&record(ipv4(41, 10), "a"));
    sink.event(&record(v6, "b"));
    sink.event(&Event::Duplicate(Duplicate {
        received: DateTime::from_timestamp(0, 0).unwrap_or_default(),
        sender: SocketAddr::new(ipv4(41, 10), 6665),
        ifindex: 2,
        len: 3,
    }));
    assert_eq!(read(&dir.0.join("10.41.0.10.log")).lines().count(), 1);
    assert_eq!(read(&dir.0.join("fd00:41::10.log")).lines().count(), 1);
    assert_eq!(stats(&sink), " files_written=2 files_errors=0");
}

#[test]
fn open_files_are_bounded_least_recently_used_first() {
    let dir = TempDir::new("lru");
    let mut sink = limited(&dir, 2, 100);
    for round in 0..3 {
        for last in 1..=5 {
            sink.event(&record(ipv4(41, last), &format!("round {round}")));
            assert!(sink.open_files() <= 2);
        }
    }
    // Sender 5 and 4 were written last: their files are the open ones.
    sink.event(&record(ipv4(41, 4), "again"));
    assert_eq!(sink.open_files(), 2);
    assert!(sink.senders[&ipv4(41, 4)].file.is_some());
    assert!(sink.senders[&ipv4(41, 5)].file.is_some());
    assert!(sink.senders[&ipv4(41, 1)].file.is_none());
    for last in 1..=5 {
        let text = read(&dir.0.join(format!("10.41.0.{last}.log")));
        let want = if last == 4 { 4 } else { 3 };
        assert_eq!(text.lines().count(), want, "sender {last}: {text}");
    }
    assert_eq!(stats(&sink), " files_written=16 files_errors=0");
}

#[test]
fn senders_table_is_bounded() {
    let dir = TempDir::new("senders-bound");
    let mut sink = limited(&dir, 2, 3);
    for last in 1..=10 {
        sink.event(&record(ipv4(41, last), "x"));
        assert!(sink.senders.len() <= 3);
        assert_eq!(sink.by_use.len(), sink.senders.len());
        assert!(sink.open_files() <= 2);
    }
    // A forgotten sender comes back: same file, appended.
    sink.event(&record(ipv4(41, 1), "back"));
    assert_eq!(read(&dir.0.join("10.41.0.1.log")).lines().count(), 2);
}

#[test]
fn errors_are_counted_not_fatal_and_recover() {
    let dir = TempDir::new("errors");
    let mut sink = LogDir::open(options(&dir)).unwrap();
    // A directory where the sender's file should be: opening it for writing fails.
    std::fs::create_dir(dir.0.join("10.41.0.10.log")).unwrap();
    sink.event(&record(ipv4(41, 10), "a"));
    sink.event(&record(ipv4(41, 10), "b"));
    sink.event(&record(ipv4(41, 11), "other sender still works"));
    assert_eq!(stats(&sink), " files_written=1 files_errors=2");
    assert!(sink.senders[&ipv4(41, 10)].warned);
    std::fs::remove_dir(dir.0.join("10.41.0.10.log")).unwrap();
    sink.event(&record(ipv4(41, 10), "c"));
    assert_eq!(stats(&sink), " files_written=2 files_errors=2");
    assert!(!sink.senders[&ipv4(41, 10)].warned);
    assert_eq!(read(&dir.0.join("10.41.0.10.log")).lines().count(), 1);
}

#[test]
fn symlinks_and_fifos_are_refused() {
    let dir = TempDir::new("planted");
    let target = dir.0.join("target");
    std::fs::write(&target, "precious\n").unwrap();
    std::os::unix::fs::symlink(&target, dir.0.join("10.41.0.10.log")).unwrap();
    nix::unistd::mkfifo(
        &dir.0.join("10.41.0.11.log"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    let mut sink = LogDir::open(options(&dir)).unwrap();
    sink.event(&record(ipv4(41, 10), "a"));
    sink.event(&record(ipv4(41, 11), "b"));
    assert_eq!(read(&target), "precious\n");
    assert_eq!(stats(&sink), " files_written=0 files_errors=2");
}

#[test]
fn unusable_directory_is_an_error_at_start() {
    let dir = TempDir::new("notadir");
    let file = dir.0.join("file");
    std::fs::write(&file, "").unwrap();
    let err = LogDir::open(LogDirOptions {
        dir: file.join("sub"),
        resolve: false,
        fsync: false,
    })
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(err.contains("cannot use --log-dir"), "{err}");
}

fn fake_lookup(ip: IpAddr) -> Option<String> {
    match ip {
        IpAddr::V4(v4) if v4.octets()[3] == 10 => Some("Node10.example".into()),
        IpAddr::V4(v4) if v4.octets()[3] == 12 => Some("10.41.0.10".into()),
        _ => None,
    }
}

/// Flushes until every lookup has answered; bounded.
fn settle(sink: &mut LogDir) {
    for _ in 0..500 {
        sink.flush();
        if sink.senders.values().all(|s| s.lookup != Lookup::Pending) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("lookups still pending after 5 s");
}

/// A directory sink with `--resolve`, looking names up with `lookup`, `max_pending` at once.
fn resolving(dir: &TempDir, lookup: fn(IpAddr) -> Option<String>, max_pending: usize) -> LogDir {
    LogDir::build(
        LogDirOptions {
            resolve: true,
            ..options(dir)
        },
        LogDirLimits::default(),
        Resolver::new(lookup, max_pending),
        None,
        MemoryBudget::default(),
    )
    .unwrap()
}

#[test]
fn resolve_names_files_by_host_once_known_and_falls_back_to_the_address() {
    let dir = TempDir::new("resolve");
    let mut sink = resolving(&dir, fake_lookup, 4);
    sink.event(&record(ipv4(41, 10), "a"));
    sink.event(&record(ipv4(41, 11), "b"));
    sink.event(&record(ipv4(41, 12), "c"));
    // Until the answer is in, the address names the file.
    assert_eq!(read(&dir.0.join("10.41.0.10.log")).lines().count(), 1);
    settle(&mut sink);
    sink.event(&record(ipv4(41, 10), "a2"));
    assert_eq!(
        sink.path_of(ipv4(41, 10)),
        Some(dir.0.join("node10.example.log").as_path())
    );
    assert_eq!(
        sink.path_of(ipv4(41, 11)),
        Some(dir.0.join("10.41.0.11.log").as_path())
    );
    assert_eq!(
        sink.path_of(ipv4(41, 12)),
        Some(dir.0.join("10.41.0.12.log").as_path())
    );
    assert!(read(&dir.0.join("node10.example.log")).contains(" a2\n"));
}

#[expect(
    clippy::unnecessary_wraps,
    reason = "it stands in for a lookup, which has this signature"
)]
fn slow_lookup(_: IpAddr) -> Option<String> {
    std::thread::sleep(Duration::from_secs(2));
    Some("slow.example".into())
}

#[test]
fn lookups_never_block_and_are_capped() {
    let dir = TempDir::new("resolve-slow");
    let mut sink = resolving(&dir, slow_lookup, 2);
    let start = std::time::Instant::now();
    for last in 1..=10 {
        sink.event(&record(ipv4(41, last), "x"));
    }
    // Blocking, the ten would have taken 20 s; capped, two threads run.
    assert!(
        start.elapsed() < Duration::from_millis(500),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(sink.resolver.pending.load(Ordering::Acquire), 2);
    let not_started = sink
        .senders
        .values()
        .filter(|s| s.lookup == Lookup::NotStarted)
        .count();
    assert_eq!(not_started, 8);
    for last in 1..=10 {
        assert!(dir.0.join(format!("10.41.0.{last}.log")).is_file());
    }
}

#[test]
fn capture_lost_goes_to_every_file_and_hook_notices_to_the_sender() {
    use crate::notice::{CaptureLost, HookNotice, HookOutcome, LossReason, SkipReason};
    let dir = TempDir::new("notices");
    let mut sink = limited(&dir, 1, 100);
    for last in 1..=3 {
        sink.event(&record(ipv4(41, last), "x"));
    }
    let lost = Notice::CaptureLost(CaptureLost {
        noticed: DateTime::from_timestamp(0, 0).unwrap_or_default(),
        interface: "eth1".into(),
        reason: LossReason::RingFull,
        frames: 7,
        sender: None,
    });
    sink.notice(&lost);
    sink.notice(&Notice::Hook(HookNotice {
        at: DateTime::from_timestamp(0, 0).unwrap_or_default(),
        sender: SocketAddr::new(ipv4(41, 2), 6665),
        outcome: HookOutcome::Skipped(SkipReason::QueueFull),
    }));
    for last in 1..=3 {
        let text = read(&dir.0.join(format!("10.41.0.{last}.log")));
        assert!(
            text.ends_with(&text::format_notice(&lost)) || last == 2,
            "{text}"
        );
        assert!(text.contains("CAPTURE LOST 7 frames on eth1"), "{text}");
    }
    assert!(read(&dir.0.join("10.41.0.2.log")).contains("PANIC HOOK SKIPPED"));
    assert!(sink.open_files() <= 1);
}

fn nobody() -> nix::unistd::User {
    nix::unistd::User::from_name("nobody").unwrap().unwrap()
}

#[test]
fn a_new_directory_is_given_to_the_user() {
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    let dir = TempDir::new("user-new");
    let new = dir.0.join("logs");
    let _sink = LogDir::open_as(
        LogDirOptions {
            dir: new.clone(),
            resolve: false,
            fsync: false,
        },
        Some(&nobody()),
        MemoryBudget::default(),
    )
    .unwrap();
    let stat = nix::sys::stat::stat(&new).unwrap();
    assert_eq!(stat.st_uid, nobody().uid.as_raw());
    assert_eq!(stat.st_mode & 0o777, DIR_MODE);
}

#[test]
fn a_directory_the_user_cannot_write_is_refused_with_the_fix() {
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    let dir = TempDir::new("user-old");
    let open = || {
        LogDir::open_as(options(&dir), Some(&nobody()), MemoryBudget::default())
            .err()
            .map(|e| e.to_string())
    };
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    let error = open().unwrap_or_default();
    assert!(
        error.contains("not writable by --user nobody") && error.contains("chown -R nobody"),
        "{error}"
    );
    // Writable by all, but a root-owned log file inside is not.
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::fs::write(dir.0.join("10.41.0.1.log"), "old\n").unwrap();
    std::fs::set_permissions(
        dir.0.join("10.41.0.1.log"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let error = open().unwrap_or_default();
    assert!(error.contains("10.41.0.1.log"), "{error}");
    std::fs::remove_file(dir.0.join("10.41.0.1.log")).unwrap();
    assert_eq!(open(), None);
}

#[test]
fn sender_state_is_charged_to_the_budget_and_released() {
    let dir = TempDir::new("budget");
    let budget = MemoryBudget::new(3 * (SENDER_STATE_BYTES + 100));
    let mut sink = LogDir::build(
        options(&dir),
        LogDirLimits::default(),
        Resolver::new(fake_lookup, 1),
        None,
        budget.clone(),
    )
    .unwrap();
    for last in 1..=10 {
        sink.event(&record(ipv4(41, last), "x"));
    }
    // The budget holds three senders; the least recently heard were forgotten, and every
    // record still reached its file.
    assert!(sink.senders.len() <= 3, "{}", sink.senders.len());
    assert!(budget.used() <= budget.limit());
    assert_eq!(stats(&sink), " files_written=10 files_errors=0");
    drop(sink);
    assert_eq!(budget.used(), 0);
}
