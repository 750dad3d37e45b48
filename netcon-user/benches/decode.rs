//! Records decoded per second on one core: small (~100 byte) extended records, and records
//! sent as four `ncfrag` fragments. Goal: at least 2 million small records/s/core. Also the
//! steps around the decoder on the reader's path: a frame parsed to its UDP datagram, a record
//! formatted as a text line.
//!
//! `cargo bench -p netcon-user --bench decode`

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use criterion::measurement::WallTime;
use criterion::{
    BatchSize, BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main,
};
use netcon::netconsole::{Decoder, DecoderConfig, Event, Incoming};

const SMALL: usize = 10_000;
const FRAGMENTED: usize = 1_000;

fn sender() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 77, 0, 10)), 6665)
}

/// ~100-byte extended records with consecutive seqs, as a sender's live log.
fn small_payloads() -> Vec<Vec<u8>> {
    (0..SMALL)
        .map(|i| {
            let mut p = format!(
                "6,{},{},-;e1000e 0000:00:19.0 eth0: NIC Link is Up 1000 Mbps Full Duplex, Flow Control: {:05}\n",
                i + 1000,
                4_000_000 + i * 13,
                i
            )
            .into_bytes();
            p.truncate(100);
            p
        })
        .collect()
}

/// Records of ~3.4 KB once escaped, cut as `drivers/net/netconsole.c` does into four fragments
/// of at most 1000 bytes.
fn fragmented_payloads() -> Vec<Vec<u8>> {
    let text = "NCT LONGX-BEGIN ".to_owned() + &"äöü✓".repeat(90);
    let mut body = Vec::new();
    for b in text.bytes() {
        if !(b' '..127).contains(&b) || b == b'\\' {
            body.extend_from_slice(format!("\\x{b:02x}").as_bytes());
        } else {
            body.push(b);
        }
    }
    body.push(b'\n');
    let mut out = Vec::new();
    for i in 0..FRAGMENTED {
        let header = format!("14,{},{},-", i + 1000, 6_402_705 + i * 17);
        let mut offset = 0;
        let mut n = 0;
        while offset < body.len() {
            let mut p = format!("{header},ncfrag={offset}/{};", body.len()).into_bytes();
            let chunk = (body.len() - offset).min(1000 - p.len());
            p.extend_from_slice(&body[offset..offset + chunk]);
            out.push(p);
            offset += chunk;
            n += 1;
        }
        assert_eq!(n, 4);
    }
    out
}

fn run(decoder: &mut Decoder, payloads: &[Vec<u8>], out: &mut Vec<Event>) -> usize {
    let base = Instant::now();
    let wall = DateTime::<Utc>::from_timestamp(1_795_817_754, 0).unwrap_or_default();
    let mut records = 0;
    for (i, payload) in payloads.iter().enumerate() {
        let step = Duration::from_micros(u64::try_from(i).unwrap_or(0) * 10);
        decoder.push(
            base + step,
            Incoming {
                received: wall + step,
                ifindex: 2,
                src: sender(),
                payload,
            },
            out,
        );
        // A sink takes the events as they come.
        records += out.len();
        out.clear();
    }
    records
}

/// Benchmarks decoding `payloads`, which hold `records` records, as one batch per iteration
/// on a fresh decoder.
fn bench_records(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    payloads: &[Vec<u8>],
    records: usize,
) {
    group.throughput(Throughput::Elements(records as u64));
    group.bench_function(name, |b| {
        b.iter_batched_ref(
            || {
                (
                    Decoder::new(DecoderConfig::default()),
                    Vec::with_capacity(16),
                )
            },
            |(decoder, out)| {
                let n = run(decoder, black_box(payloads), out);
                assert_eq!(n, records);
            },
            BatchSize::LargeInput,
        );
    });
}

/// An Ethernet II, IPv4, UDP frame carrying a ~100-byte extended record, as a sender sends it.
fn frame() -> Vec<u8> {
    let payload = &small_payloads()[0];
    let builder = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 2], [0xff; 6])
        .ipv4([10, 77, 0, 10], [10, 77, 0, 1], 64)
        .udp(6665, 6666);
    let mut out = Vec::with_capacity(builder.size(payload.len()));
    builder
        .write(&mut out, payload)
        .unwrap_or_else(|e| panic!("building the frame: {e}"));
    out
}

fn bench_reader_steps(c: &mut Criterion) {
    let mut group = c.benchmark_group("reader");
    group.throughput(Throughput::Elements(1));
    let frame = frame();
    group.bench_function("frame_to_datagram", |b| {
        b.iter(|| netcon::wire::Datagram::parse(black_box(&frame)).map(|d| d.payload.len()));
    });
    let mut decoder = Decoder::new(DecoderConfig::default());
    let mut events = Vec::new();
    run(&mut decoder, &small_payloads()[..1], &mut events);
    let mut first_record = Vec::new();
    decoder.push(
        Instant::now(),
        Incoming {
            received: DateTime::<Utc>::from_timestamp(1_795_817_754, 0).unwrap_or_default(),
            ifindex: 2,
            src: sender(),
            payload: &small_payloads()[1],
        },
        &mut first_record,
    );
    let event = first_record
        .pop()
        .unwrap_or_else(|| panic!("no record decoded"));
    let mut line = String::with_capacity(256);
    group.bench_function("record_to_text_line", |b| {
        b.iter(|| {
            line.clear();
            netcon::sink::text::write_event(black_box(&event), &mut line);
            line.len()
        });
    });
    group.finish();
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode");
    bench_records(
        &mut group,
        "extended_100_byte_records",
        &small_payloads(),
        SMALL,
    );
    bench_records(
        &mut group,
        "extended_4_fragment_records",
        &fragmented_payloads(),
        FRAGMENTED,
    );
    group.finish();
}

criterion_group!(benches, bench, bench_reader_steps);
criterion_main!(benches);
