//! The memory budget and hostile senders.

use super::*;

/// The continuation flood: `6,N,T,c;` datagrams whose bodies are hundreds of empty dictionary
/// lines, one a millisecond, each continuing the one before.
fn continuation_flood(h: &mut Harness, from: u8, count: u64) -> Vec<Event> {
    let body = " \n".repeat(600);
    let mut out = Vec::new();
    for n in 0..count {
        let payload = format!("6,{n},{},c;\n{body}", n * 1000);
        out.extend(h.push_from(n, from, 2, payload.as_bytes()));
        assert!(h.dec.budget().used() <= h.dec.budget().limit());
        assert_eq!(h.dec.budget().used(), h.dec.held_bytes());
    }
    out
}

#[test]
fn continuation_flood_stays_bounded_and_is_emitted_cut() {
    let mut h = Harness::new();
    let events = continuation_flood(&mut h, 10, 2_000);
    // Each piece alone has more fields than a chain may: out at once, marked partial.
    let recs = records(&events);
    assert_eq!(recs.len(), 2_000);
    assert!(recs.iter().all(|r| r.flags.partial && r.flags.continued));
    assert_eq!(h.dec.stats().continuations_cut, 2_000);
    // Nothing held beyond the sender's own entry and its duplicate history.
    assert!(
        h.dec.budget().peak() < 16 * 1024,
        "{}",
        h.dec.budget().peak()
    );
}

#[test]
fn continuation_chain_is_cut_at_its_byte_bound() {
    let mut h = Harness::new();
    let piece = "x".repeat(900);
    let mut recs = 0;
    for n in 0..20u64 {
        let events = h.push(n, format!("6,{n},{},c;{piece}\n", n * 1000).as_bytes());
        for r in records(&events) {
            recs += 1;
            assert!(r.flags.partial && r.text.len() <= DEFAULT_MAX_CONTINUATION_BYTES);
        }
    }
    // 9 pieces of 900 bytes fit in 8 KiB: two chains cut, the third still held.
    assert_eq!(recs, 2);
    assert_eq!(h.dec.stats().continuations_cut, 2);
    let rest = h.flush();
    assert_eq!(one_record(&rest).text.len(), 2 * 900);
    assert_eq!(h.dec.stats().continuations_joined, 17);
}

#[test]
fn full_budget_emits_the_oldest_held_state_first() {
    // Room for a few senders' partial lines only.
    let budget = crate::budget::MemoryBudget::new(24 * 1024);
    let mut h = Harness {
        dec: Decoder::with_budget(DecoderConfig::default(), budget.clone()),
        t0: Instant::now(),
    };
    let mut emitted = Vec::new();
    for n in 0..100u8 {
        let line = format!("partial line {n:03} {}", "y".repeat(2000));
        emitted.extend(h.push_from(u64::from(n), n, 2, line.as_bytes()));
        assert!(budget.used() <= budget.limit());
        assert_eq!(budget.used(), h.dec.held_bytes());
    }
    assert!(h.dec.stats().budget_shed > 0);
    // The ones emitted early are the oldest, in order, and marked partial.
    let early: Vec<&Record> = records(&emitted);
    assert!(!early.is_empty());
    for (i, r) in early.iter().enumerate() {
        assert!(r.flags.partial);
        assert!(
            r.text
                .starts_with(format!("partial line {i:03}").as_bytes()),
            "{i}"
        );
    }
    // Nothing lost: the rest comes out on flush.
    emitted.extend(h.flush());
    assert_eq!(records(&emitted).len(), 100);
    drop(h);
    assert_eq!(budget.used(), 0);
}

#[test]
fn spoofed_spray_does_not_evict_an_active_sender() {
    let mut h = Harness::with(DecoderConfig {
        max_senders: 1_000,
        ..DecoderConfig::default()
    });
    let spoofed = |n: u32| {
        let [_, _, hi, lo] = n.to_be_bytes();
        SocketAddr::from(([10, 99, hi, lo], 6665))
    };
    let mut seq = 0u64;
    let mut ms = 0u64;
    for round in 0..10u32 {
        // The victim: two records, one of them opening a crash report.
        for _ in 0..2 {
            seq += 1;
            let text = if seq == 1 {
                "Kernel panic - not syncing: x"
            } else {
                "RIP: y"
            };
            let events = h.push(ms, format!("0,{seq},{},-;{text}\n", ms * 1000).as_bytes());
            assert_eq!(records(&events).len(), 1, "{events:?}");
            assert!(
                records(&events)[0].flags.panic.is_some(),
                "round {round}: {events:?}"
            );
        }
        // Then more one-off sources than the table holds.
        for n in 0..1_500 {
            let mut out = Vec::new();
            h.dec.push(
                h.at(ms),
                Incoming {
                    received: wall(ms),
                    ifindex: 2,
                    src: spoofed(round * 1_500 + n),
                    payload: b"[    1.000000] spoofed\n",
                },
                &mut out,
            );
        }
        ms += 1;
    }
    assert!(h.dec.stats().senders_evicted >= 14_000);
    // The victim was never evicted: its sequence still shows a gap, its report is still open.
    let events = h.push(
        ms,
        format!("4,{},{},-;Call Trace:\n", seq + 2, ms * 1000).as_bytes(),
    );
    match events.as_slice() {
        [Event::Lost(l), Event::Record(r)] => {
            assert_eq!(l.count, 1);
            assert!(r.flags.panic.is_some_and(|p| !p.begins));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn counters_saturate() {
    let mut h = Harness::new();
    h.push(0, b"6,0,0,-;a\n");
    h.push(1, format!("6,{},1,-;b\n", 1u64 << 32).as_bytes());
    h.dec.inner.stats.records_lost = u64::MAX - 5;
    h.push(2, format!("6,{},2,-;c\n", 2u64 << 32).as_bytes());
    assert_eq!(h.dec.stats().records_lost, u64::MAX);
}
