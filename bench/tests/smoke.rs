//! The generator's frames decode with netcon's own parser and decoder, and the verifier counts
//! netcon's text output right: a smoke test of the bench's two ends without a network.

use std::net::SocketAddr;
use std::time::Instant;

use chrono::Utc;
use netcon::netconsole::{Decoder, DecoderConfig, Event, Incoming};
use netcon::wire::Datagram;
use netcon_bench::load::{FrameBatch, LoadConfig};
use netcon_bench::record::{Format, RecordShape};
use netcon_bench::verify::{Expectation, Verifier};
use netcon_testkit::BROADCAST_MAC;

fn config(senders: u32, format: Format, fragments: u8) -> LoadConfig {
    LoadConfig {
        senders,
        shape: RecordShape {
            format,
            size: 200,
            fragments,
        },
        run: 9,
        seq_start: 1000,
        ..LoadConfig::new(
            "unused",
            ([2, 0, 0, 0, 0x91, 2], BROADCAST_MAC),
            "10.91.1.0".parse().unwrap(),
            "10.91.0.1:6666".parse().unwrap(),
        )
    }
}

/// The frames of records `0..records`, as netcon-load builds them.
fn frames(c: &LoadConfig, records: u64) -> Vec<Vec<u8>> {
    let mut batch = FrameBatch::new(c.shape, 64);
    let mut out = Vec::new();
    for i in 0..records {
        batch.clear();
        batch.push_record(c, i, 1_000_000_000 + i * 1000);
        let (buffer, frames) = batch.frames();
        out.extend(frames.iter().map(|&(o, l)| buffer[o..o + l].to_vec()));
    }
    out
}

/// Runs frames through netcon's wire parser, decoder and text sink; returns the text and the
/// decoded records.
fn decode(frames: &[Vec<u8>]) -> (String, Vec<netcon::netconsole::Record>) {
    let mut decoder = Decoder::new(DecoderConfig::default());
    let mut events = Vec::new();
    let now = Instant::now();
    for f in frames {
        let d = Datagram::parse(f).expect("a well-formed UDP frame");
        assert_eq!(d.dst, "10.91.0.1:6666".parse::<SocketAddr>().unwrap());
        decoder.push(
            now,
            Incoming {
                received: Utc::now(),
                ifindex: 2,
                src: d.src,
                payload: d.payload,
            },
            &mut events,
        );
    }
    decoder.flush(&mut events);
    let mut text = String::new();
    let mut records = Vec::new();
    for e in events {
        netcon::sink::text::write_event(&e, &mut text);
        if let Event::Record(r) = e {
            records.push(r);
        }
    }
    (text, records)
}

fn verify(c: &LoadConfig, records: u64, text: &str) -> Verifier {
    let mut v = Verifier::new(
        Expectation {
            run: c.run,
            senders: c.senders,
            seq_start: c.seq_start,
            records,
            fragments: c.shape.fragments,
        },
        true,
    );
    v.feed(text.as_bytes(), 2_000_000_000);
    v.finish(2_000_000_000);
    v
}

#[test]
fn extended_records_from_many_senders_decode_whole() {
    let c = config(5, Format::Extended, 1);
    let (text, records) = decode(&frames(&c, 25));
    assert_eq!(records.len(), 25, "{text}");
    for (i, r) in records.iter().enumerate() {
        let k = u32::try_from(i % 5).unwrap();
        assert_eq!(r.sender, c.sender_addr(k));
        assert_eq!(r.seq, Some(1000 + i as u64 / 5));
        assert_eq!(r.priority.map(|p| p.level), Some(6));
        // 200-byte payload: the header, then the text (its `\n` is not part of it).
        let header = format!("6,{},", 1000 + i as u64 / 5);
        assert!(r.text.starts_with(b"@nb:9:"), "{:?}", r.text_display());
        assert!(200 - header.len() > r.text.len());
    }
    let v = verify(&c, 25, &text);
    assert!(v.all_received(), "{}", v.summary().to_line());
    let s = v.summary();
    assert_eq!(
        (s.totals.missing, s.totals.duplicated, s.unexpected),
        (0, 0, 0)
    );
    let latency = s.latency.unwrap();
    assert_eq!(latency.count, 25);
}

#[test]
fn plain_records_decode() {
    let c = config(2, Format::Plain, 1);
    let (text, records) = decode(&frames(&c, 6));
    assert_eq!(records.len(), 6, "{text}");
    assert!(
        records
            .iter()
            .all(|r| r.seq.is_none() && r.timestamp_us.is_some())
    );
    // Plain mode carries no seq: the token's does the counting.
    assert!(verify(&c, 6, &text).all_received());
}

#[test]
fn fragmented_records_reassemble_in_netcon() {
    let c = config(3, Format::Extended, 4);
    let all = frames(&c, 6);
    assert_eq!(all.len(), 24);
    let (text, records) = decode(&all);
    assert_eq!(records.len(), 6, "{text}");
    for r in &records {
        assert!(r.flags.incomplete.is_none());
        assert_eq!(netcon_bench::record::tokens(&r.text).count(), 4);
    }
    assert!(verify(&c, 6, &text).all_received());
}

#[test]
fn losses_show_per_sender_through_netcon() {
    let c = config(2, Format::Extended, 4);
    let mut all = frames(&c, 8);
    // Record 3 (sender 1, seq 1001) loses its third fragment; record 6 (sender 0, seq 1003)
    // is lost whole.
    all.drain(24..28);
    all.remove(3 * 4 + 2);
    let (text, _) = decode(&all);
    let v = verify(&c, 8, &text);
    let s0 = v.sender(0);
    assert_eq!(
        (s0.received, s0.missing, s0.incomplete),
        (3, 1, 0),
        "{text}"
    );
    let s1 = v.sender(1);
    assert_eq!(
        (s1.received, s1.missing, s1.incomplete),
        (3, 0, 1),
        "{text}"
    );
    assert_eq!(v.summary().senders_with_loss, 2);
}
