//! Property tests: any split, order or duplication gives back the original; no input panics.

use super::*;

/// Text without commas, so that no piece of a plain stream looks like an extended header.
fn plain_text() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            Just(b'a'),
            Just(b' '),
            Just(b'['),
            Just(b']'),
            Just(b'.'),
            Just(b'7'),
            Just(b'\t'),
            Just(0xc3),
            Just(0xa9),
            Just(0xff),
        ],
        0..40,
    )
}

fn plain_stream() -> impl Strategy<Value = (Vec<Vec<u8>>, Vec<u8>)> {
    prop::collection::vec((plain_text(), prop::option::of(0u64..100_000_000)), 1..20).prop_map(
        |lines| {
            let mut stream = Vec::new();
            let mut expected = Vec::new();
            for (text, ts) in lines {
                let mut line = Vec::new();
                if let Some(ts) = ts {
                    let mut p = String::new();
                    let _ = write!(p, "[{:5}.{:06}] ", ts / 1_000_000, ts % 1_000_000);
                    line.extend_from_slice(p.as_bytes());
                }
                line.extend_from_slice(&text);
                expected.push(plain::parse_lines(&line).text);
                stream.extend_from_slice(&line);
                stream.push(b'\n');
            }
            (expected, stream)
        },
    )
}

proptest! {
    #[test]
    fn any_split_of_plain_payloads_gives_the_same_lines(
        (expected, stream) in plain_stream(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..10),
    ) {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(stream.len())).collect();
        cuts.push(0);
        cuts.push(stream.len());
        cuts.sort_unstable();
        cuts.dedup();
        let mut h = Harness::with(DecoderConfig {
            // Identical pieces are legitimate here.
            duplicate_history: 0,
            ..DecoderConfig::default()
        });
        let mut events = Vec::new();
        for w in cuts.windows(2) {
            events.extend(h.push(0, &stream[w[0]..w[1]]));
        }
        events.extend(h.flush());
        let lines: Vec<Vec<u8>> = records(&events)
            .iter()
            .flat_map(|r| r.lines().map(<[u8]>::to_vec).collect::<Vec<_>>())
            .collect();
        prop_assert_eq!(lines, expected);
        prop_assert!(records(&events).iter().all(|r| !r.flags.partial));
    }

    #[test]
    fn any_kernel_fragmentation_in_any_order_with_duplicates_gives_the_original(
        text in prop::collection::vec(any::<u8>(), 0..3000),
        fields in prop::collection::vec(("[A-Za-z_]{1,10}", prop::collection::vec(any::<u8>(), 0..30)), 0..4),
        max in 80usize..=1000,
        order in any::<prop::sample::Index>(),
        dups in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
        dedupe in any::<bool>(),
    ) {
        let mut body = kernel_escape(&text);
        body.push(b'\n');
        for (k, v) in &fields {
            body.push(b' ');
            body.extend_from_slice(k.as_bytes());
            body.push(b'=');
            body.extend_from_slice(&kernel_escape(v));
            body.push(b'\n');
        }
        let frags = kernel_fragments("6.12.95+deb12-amd64,14,595,8439407,-,caller=T1", &body, max);
        // Any order: a rotation and a reversal chosen by `order`, then duplicates anywhere.
        let n = frags.len();
        let mut seq: Vec<usize> = (0..n).collect();
        seq.rotate_left(order.index(n));
        if order.index(2) == 1 {
            seq.reverse();
        }
        for d in &dups {
            let at = d.index(seq.len() + 1);
            seq.insert(at, d.index(n));
        }
        let mut h = Harness::with(DecoderConfig {
            duplicate_history: if dedupe { DEFAULT_DUPLICATE_HISTORY } else { 0 },
            ..DecoderConfig::default()
        });
        let mut events = Vec::new();
        for (i, f) in seq.iter().enumerate() {
            events.extend(h.push(u64::try_from(i).unwrap_or(0), &frags[*f]));
        }
        events.extend(h.flush());
        let recs = records(&events);
        prop_assert_eq!(recs.len(), 1, "{:?}", events);
        let r = recs[0];
        prop_assert_eq!(&r.text, &text);
        prop_assert_eq!(r.fields.len(), fields.len());
        for (f, (k, v)) in r.fields.iter().zip(&fields) {
            prop_assert_eq!(&f.key, k.as_bytes());
            prop_assert_eq!(&f.value, v);
        }
        prop_assert_eq!(r.release.as_deref(), Some("6.12.95+deb12-amd64"));
        prop_assert_eq!(r.caller.clone(), Some(Caller::Task(1)));
        prop_assert!(r.flags.fragmented);
        prop_assert_eq!(r.flags.incomplete, None);
        prop_assert!(!events.iter().any(|e| matches!(e, Event::Malformed(_) | Event::Lost(_))));
    }

    #[test]
    fn no_input_panics_or_leaks_past_its_bounds(
        payloads in prop::collection::vec((0u8..4, prop::collection::vec(any::<u8>(), 0..200), 0u64..2000), 0..40),
    ) {
        let mut h = Harness::with(DecoderConfig {
            max_senders: 2,
            max_fragment_entries: 2,
            ..DecoderConfig::default()
        });
        let mut now = 0;
        for (from, payload, step) in &payloads {
            now += step;
            h.push_from(now, *from, 1, payload);
            h.poll(now);
        }
        prop_assert!(h.dec.stats().senders <= 2);
        prop_assert!(h.dec.assembler.len() <= 2);
        h.flush();
        prop_assert!(h.dec.assembler.is_empty());
    }
}
