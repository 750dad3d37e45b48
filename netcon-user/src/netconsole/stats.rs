//! The decoder's counters.

#[cfg(doc)]
use super::config::{DEFAULT_MAX_CONTINUATION_BYTES, DEFAULT_MAX_CONTINUATION_FIELDS};
#[cfg(doc)]
use super::error::DecodeError;

/// Counters; a loss is never silent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DecoderStats {
    /// Datagrams pushed.
    pub datagrams: u64,
    /// Empty payloads (ignored).
    pub empty: u64,
    /// Records emitted.
    pub records: u64,
    /// `ncfrag` fragments received.
    pub fragments: u64,
    /// Records reassembled whole from fragments.
    pub reassembled: u64,
    /// Reassembly entries emitted incomplete because their deadline passed (or on flush).
    pub fragments_expired: u64,
    /// Reassembly entries emitted incomplete to make room for newer ones.
    pub fragments_evicted: u64,
    /// Records emitted with bytes missing.
    pub incomplete_records: u64,
    /// Plain lines emitted without their `\n`.
    pub partial_lines: u64,
    /// Continuation records joined onto the one they continue.
    pub continuations_joined: u64,
    /// Continuation records emitted alone after waiting in vain.
    pub continuation_timeouts: u64,
    /// Continuation chains emitted, marked partial, because they reached their bound
    /// ([`DEFAULT_MAX_CONTINUATION_BYTES`], [`DEFAULT_MAX_CONTINUATION_FIELDS`]).
    pub continuations_cut: u64,
    /// Pieces of held state (continuation chains, partial lines, pending fragments) emitted
    /// early, and senders evicted, because the memory budget was full.
    pub budget_shed: u64,
    /// Datagrams whose seq or msgid jumped further than a real sender's can (reported as
    /// malformed, see [`DecodeError::SeqJump`], [`DecodeError::MsgidJump`]).
    pub suspicious: u64,
    /// Bytes of state held now, as charged to the memory budget.
    pub held_bytes: u64,
    /// Senders tracked now.
    pub senders: u64,
    /// Senders evicted from the table (least recently heard first).
    pub senders_evicted: u64,
    /// Records missing according to seq gaps.
    pub records_lost: u64,
    /// Messages missing according to sysdata msgid gaps.
    pub msgid_lost: u64,
    /// Records that arrived after a higher seq.
    pub late: u64,
    /// Reboots seen.
    pub reboots: u64,
    /// Duplicate datagrams dropped.
    pub duplicates: u64,
    /// Malformed datagrams.
    pub malformed: u64,
    /// Invalid `\x` escapes kept literally.
    pub bad_escapes: u64,
    /// Crash reports begun.
    pub panics: u64,
}

/// Adds to a counter without wrapping: counts that a forged datagram sets (a loss of 2^64
/// records) stop at the top rather than start over.
pub(super) fn add(counter: &mut u64, n: u64) {
    *counter = counter.saturating_add(n);
}
