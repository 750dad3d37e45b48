//! Drives the netconsole decoder with arbitrary payloads from a few senders, arbitrary time
//! steps, polls and flushes; small bounds (and a small memory budget) so that every eviction
//! path is reached. Besides "no panic", it checks after every step that the memory budget
//! holds (charged bytes within the limit, and equal to what the decoder says it holds), that
//! bounds hold, timers are consistent and the text sink never writes a control character.

#![no_main]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use chrono::DateTime;
use libfuzzer_sys::fuzz_target;
use netcon::budget::MemoryBudget;
use netcon::netconsole::{Decoder, DecoderConfig, Event, Incoming};
use netcon::sink::text::write_event;

#[derive(Arbitrary, Debug)]
enum Op {
    /// Any bytes.
    Raw {
        sender: u8,
        ifindex: u8,
        advance_ms: u16,
        payload: Vec<u8>,
    },
    /// An extended header the fuzzer can vary field by field, so that it reaches reassembly,
    /// sequence tracking, reboot detection and continuation joining.
    Extended {
        sender: u8,
        advance_ms: u16,
        release: bool,
        pri: u16,
        seq: Seq,
        ts: u32,
        flag: u8,
        frag: Option<(u16, u16)>,
        body: Vec<u8>,
        /// Empty dictionary lines after the body (`\n \n ...`): the continuation flood.
        dict_lines: u16,
        /// A sysdata msgid line.
        msgid: Option<u32>,
    },
    Poll {
        advance_ms: u16,
    },
    Flush,
}

/// A sequence number: near the sender's last one (the common case: next, gaps, late, the
/// same again), or anywhere in the 64-bit range (forged jumps, reboots).
#[derive(Arbitrary, Debug)]
enum Seq {
    Step(i8),
    Any(u64),
}

const MAX_SENDERS: usize = 3;
/// Small enough that a few held chains or fragment entries fill it.
const BUDGET_BYTES: usize = 24 * 1024;

fn config() -> DecoderConfig {
    DecoderConfig {
        max_senders: MAX_SENDERS,
        max_fragment_entries: 4,
        max_fragment_bytes: 8 * 1024,
        max_fragment_total: 4 * 1024,
        max_fragment_ranges: 8,
        duplicate_history: 8,
        max_plain_line: 2048,
        max_continuation_bytes: 2048,
        panic_context: 8,
        ..DecoderConfig::default()
    }
}

fn check(decoder: &Decoder, events: &mut Vec<Event>, text: &mut String) {
    let budget = decoder.budget();
    assert!(
        budget.used() <= budget.limit(),
        "{} > {}",
        budget.used(),
        budget.limit()
    );
    assert_eq!(budget.used(), decoder.held_bytes());
    assert_eq!(decoder.stats().held_bytes, budget.used() as u64);
    for e in events.drain(..) {
        if let Event::Record(r) = &e
            && let Some(inc) = r.flags.incomplete
        {
            assert!(inc.missing_bytes > 0 && inc.missing_bytes <= inc.total_bytes);
        }
        text.clear();
        write_event(&e, text);
        assert!(
            !text.chars().any(|c| c.is_control() && c != '\n'),
            "control character in {text:?}"
        );
        if !matches!(e, Event::Duplicate(_)) {
            assert!(text.ends_with('\n'));
        }
    }
    assert!(decoder.stats().senders <= MAX_SENDERS as u64);
}

fuzz_target!(|ops: Vec<Op>| {
    let mut decoder = Decoder::with_budget(config(), MemoryBudget::new(BUDGET_BYTES));
    let mut last_seq = [0u64; 5];
    let base = Instant::now();
    let epoch = DateTime::from_timestamp(1_795_817_754, 0).unwrap_or_default();
    let mut ms = 0u64;
    let mut events = Vec::new();
    let mut text = String::new();
    let mut payload = Vec::new();
    for op in ops {
        let (sender, ifindex, advance) = match &op {
            Op::Raw {
                sender,
                ifindex,
                advance_ms,
                ..
            } => (*sender, *ifindex, *advance_ms),
            Op::Extended {
                sender, advance_ms, ..
            } => (*sender, 1, *advance_ms),
            Op::Poll { advance_ms } => (0, 0, *advance_ms),
            Op::Flush => (0, 0, 0),
        };
        ms += u64::from(advance);
        let now = base + Duration::from_millis(ms);
        let received = epoch + Duration::from_millis(ms);
        let src = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, sender % 5)), 6665);
        match op {
            Op::Raw { payload: p, .. } => payload = p,
            Op::Extended {
                release,
                pri,
                seq,
                ts,
                flag,
                frag,
                body,
                dict_lines,
                msgid,
                ..
            } => {
                let last = &mut last_seq[usize::from(sender % 5)];
                let seq = match seq {
                    Seq::Step(d) => last.wrapping_add_signed(i64::from(d)),
                    Seq::Any(n) => n,
                };
                *last = seq;
                payload.clear();
                if release {
                    payload.extend_from_slice(b"6.12.95+deb12-amd64,");
                }
                let flag = [b'-', b'c', b'+', flag][usize::from(flag % 4)];
                payload.extend_from_slice(format!("{pri},{seq},{ts},").as_bytes());
                payload.push(flag);
                if let Some((off, total)) = frag {
                    payload.extend_from_slice(format!(",ncfrag={off}/{total}").as_bytes());
                }
                payload.push(b';');
                payload.extend_from_slice(&body);
                for _ in 0..dict_lines % 700 {
                    payload.extend_from_slice(b"\n ");
                }
                if let Some(id) = msgid {
                    payload.extend_from_slice(format!("\n msgid={id}\n").as_bytes());
                }
            }
            Op::Poll { .. } => {
                decoder.poll(now, &mut events);
                check(&decoder, &mut events, &mut text);
                // Everything due is done: the next timer is in the future.
                assert!(decoder.poll_at().is_none_or(|at| at > now));
                continue;
            }
            Op::Flush => {
                decoder.flush(&mut events);
                check(&decoder, &mut events, &mut text);
                assert_eq!(decoder.poll_at(), None);
                continue;
            }
        }
        decoder.push(
            now,
            Incoming {
                received,
                ifindex: u32::from(ifindex),
                src,
                payload: &payload,
            },
            &mut events,
        );
        check(&decoder, &mut events, &mut text);
    }
    decoder.flush(&mut events);
    check(&decoder, &mut events, &mut text);
    assert_eq!(decoder.poll_at(), None);
});
