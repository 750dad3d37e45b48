//! netcon's benchmark tools: a netconsole load generator and a verifier of what a
//! receiver printed. `cargo xtask bench` drives both against netcon-sniff and the socket
//! baseline; the binaries `netcon-load` and `netcon-verify` expose them by hand.
//!
//! - [`record`]: netconsole payloads (extended, plain, `ncfrag` fragments) carrying a
//!   [`record::Token`]: run, sender, sequence number, send time.
//! - [`load`]: H simulated senders, round-robin, paced or flat out, `sendmmsg` over
//!   `AF_PACKET` (frames and sender from `netcon_testkit`, shared with the end-to-end tests).
//! - [`pcap`]: the UDP payloads of a `tcpdump -w` stream, for the verifier.
//! - [`verify`]: per-sender received / missing / duplicated / out of order, and latency.

pub mod load;
pub mod pcap;
pub mod record;
pub mod verify;

/// Counts as floats, for rates and ratios: exact below 2^53, which no count here reaches.
#[must_use]
#[expect(
    clippy::cast_precision_loss,
    reason = "counts of records and nanoseconds stay far below 2^53"
)]
pub fn count_f64(v: u64) -> f64 {
    v as f64
}

/// A float as a count, saturating: negative and NaN give 0, too large gives `u64::MAX`.
#[must_use]
#[expect(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "`as` from float saturates, which is the intent"
)]
pub fn f64_count(v: f64) -> u64 {
    v as u64
}
