//! The per-sender state machine: sequence tracking (loss, reboot), msgid gaps, continuation
//! joining, crash-report marking. Each function takes one sender and the decoder's shared state
//! ([`DecoderInner`]), so that the decoder can lend both at once.

use std::time::Instant;

use chrono::{DateTime, Utc};

#[cfg(doc)]
use super::config::DEFAULT_MAX_BOOT_SHIFT;
use super::config::DecoderConfig;
use super::decoder::Incoming;
use super::error::DecodeError;
use super::extended;
use super::frag::Reassembled;
use super::plain::{self, Lines};
use super::record::{
    Caller, ContFlag, Duplicate, Event, Flags, Incomplete, LossKind, Lost, Malformed, Rebooted,
    Record, RecordFormat, Sysdata,
};
use super::sender::{Held, Sender};
#[cfg(doc)]
use super::seq::SeqTracker;
use super::seq::SeqVerdict;
use super::stats::{DecoderStats, add};

/// What the decoder shares with every sender's state machine: its bounds, its counters and the
/// crash-report numbering. Kept apart from the sender table so that a sender and this can be
/// borrowed at the same time.
#[derive(Debug)]
pub(super) struct DecoderInner {
    pub(super) config: DecoderConfig,
    pub(super) stats: DecoderStats,
    pub(super) next_panic_event: u64,
}

/// Sequence tracking for one extended datagram: reboot and loss events.
///
/// A new boot is either the implied boot time moving later than any delay explains
/// ([`DEFAULT_MAX_BOOT_SHIFT`]), or the sequence starting over ([`SeqTracker::observe`]).
/// The same record heard again (same seq and timestamp as the highest) is never a reboot.
pub(super) fn track_seq(
    sender: &mut Sender,
    incoming: &Incoming<'_>,
    header: &extended::Header<'_>,
    inner: &mut DecoderInner,
    out: &mut Vec<Event>,
) -> SeqVerdict {
    let heard_again = sender.seq.highest() == Some((header.seq, header.ts_usec));
    let later_boot = !heard_again
        && sender.boot.is_later_boot(
            incoming.received,
            header.ts_usec,
            inner.config.boot_shift_us(),
        );
    let verdict = if later_boot {
        sender.seq.restart(header.seq, header.ts_usec)
    } else {
        sender.seq.observe(
            header.seq,
            header.ts_usec,
            inner.config.reorder_window,
            inner.config.backstep_us(),
        )
    };
    match verdict {
        SeqVerdict::Reboot {
            previous_seq,
            previous_ts,
        } => new_boot(
            sender,
            NewBoot {
                received: incoming.received,
                ifindex: incoming.ifindex,
                previous_seq: Some(previous_seq),
                seq: Some(header.seq),
                previous_timestamp_us: Some(previous_ts),
                timestamp_us: Some(header.ts_usec),
            },
            inner,
            out,
        ),
        SeqVerdict::First if later_boot => new_boot(
            sender,
            NewBoot {
                received: incoming.received,
                ifindex: incoming.ifindex,
                previous_seq: None,
                seq: Some(header.seq),
                previous_timestamp_us: sender.plain_ts,
                timestamp_us: Some(header.ts_usec),
            },
            inner,
            out,
        ),
        SeqVerdict::Gap { first, last } => {
            let count = last - first + 1;
            add(&mut inner.stats.records_lost, count);
            add(&mut sender.tally.records_lost, count);
            out.push(Event::Lost(Lost {
                received: incoming.received,
                sender: incoming.src,
                ifindex: incoming.ifindex,
                kind: LossKind::Seq,
                first,
                last,
                count,
            }));
        }
        SeqVerdict::Late => add(&mut inner.stats.late, 1),
        SeqVerdict::First | SeqVerdict::Next | SeqVerdict::Same => {}
    }
    verdict
}

/// What a `rebooted` event says about the boot change.
#[derive(Clone, Copy)]
struct NewBoot {
    received: DateTime<Utc>,
    ifindex: u32,
    previous_seq: Option<u64>,
    seq: Option<u64>,
    previous_timestamp_us: Option<u64>,
    timestamp_us: Option<u64>,
}

/// The sender booted again: what the old boot still held goes out first, then the `rebooted`
/// event); the boot estimate, msgid and crash-report context start over. (The caller has already
/// restarted the sequence tracking.)
fn new_boot(sender: &mut Sender, boot: NewBoot, inner: &mut DecoderInner, out: &mut Vec<Event>) {
    add(&mut inner.stats.reboots, 1);
    if let Some(held) = sender.held.take() {
        emit(sender, held.record, inner, out);
    }
    sender.boot.reset();
    sender.panic.reset();
    sender.msgid = None;
    sender.last_reassembled = None;
    sender.plain_ts = None;
    out.push(Event::Rebooted(Rebooted {
        received: boot.received,
        sender: sender.addr,
        ifindex: boot.ifindex,
        previous_seq: boot.previous_seq,
        seq: boot.seq,
        previous_timestamp_us: boot.previous_timestamp_us,
        timestamp_us: boot.timestamp_us,
    }));
}

pub(super) fn duplicate(incoming: &Incoming<'_>) -> Event {
    Event::Duplicate(Duplicate {
        received: incoming.received,
        sender: incoming.src,
        ifindex: incoming.ifindex,
        len: incoming.payload.len(),
    })
}

/// The record an extended header describes, without its text yet.
pub(super) fn head_record(incoming: &Incoming<'_>, header: &extended::Header<'_>) -> Record {
    Record {
        received: incoming.received,
        sender: incoming.src,
        ifindex: incoming.ifindex,
        format: RecordFormat::Extended,
        priority: Some(header.priority),
        seq: Some(header.seq),
        timestamp_us: Some(header.ts_usec),
        kernel_time: None,
        release: header.release.map(str::to_owned),
        caller: header.caller.map(Caller::parse),
        cont: header.cont,
        header_extra: header
            .extra_fields()
            .map(|f| String::from_utf8_lossy(f).into_owned())
            .collect(),
        text: Vec::new(),
        fields: Vec::new(),
        sysdata: Sysdata::default(),
        flags: Flags::default(),
    }
}

/// Splits and unescapes a whole extended body into `record`.
pub(super) fn fill_body(record: &mut Record, body: &[u8], stats: &mut DecoderStats) {
    let bad = extended::parse_body(body, &mut record.text, &mut record.fields);
    add(&mut stats.bad_escapes, bad as u64);
    if !record.fields.is_empty() {
        record.sysdata = Sysdata::from_fields(&record.fields);
        if record.release.is_none() {
            record.release.clone_from(&record.sysdata.release);
        }
    }
}

pub(super) fn reassembled_record(r: Reassembled, stats: &mut DecoderStats) -> Record {
    let mut record = r.head;
    fill_body(&mut record, &r.body, stats);
    record.flags.fragmented = true;
    if r.missing > 0 {
        record.flags.incomplete = Some(Incomplete {
            missing_bytes: r.missing,
            total_bytes: r.total,
        });
    }
    record
}

pub(super) fn plain_record(
    sender: &mut Sender,
    lines: &Lines,
    now: Instant,
    inner: &mut DecoderInner,
    out: &mut Vec<Event>,
) {
    let parsed = plain::parse_lines(&lines.bytes);
    if let Some(ts) = parsed.timestamp_us {
        let went_back = sender
            .plain_ts
            .is_some_and(|prev| ts.saturating_add(inner.config.backstep_us()) < prev);
        let later_boot =
            sender
                .boot
                .is_later_boot(lines.received, ts, inner.config.boot_shift_us());
        if went_back || later_boot {
            new_boot(
                sender,
                NewBoot {
                    received: lines.received,
                    ifindex: lines.ifindex,
                    previous_seq: None,
                    seq: None,
                    previous_timestamp_us: sender.plain_ts,
                    timestamp_us: Some(ts),
                },
                inner,
                out,
            );
        }
        sender.plain_ts = Some(ts);
    }
    let record = Record {
        received: lines.received,
        sender: sender.addr,
        ifindex: lines.ifindex,
        format: RecordFormat::Plain,
        priority: None,
        seq: None,
        timestamp_us: parsed.timestamp_us,
        kernel_time: None,
        release: None,
        caller: parsed.caller,
        cont: ContFlag::None,
        header_extra: Vec::new(),
        text: parsed.text,
        fields: Vec::new(),
        sysdata: Sysdata::default(),
        flags: Flags {
            partial: lines.partial,
            ..Flags::default()
        },
    };
    complete(sender, record, now, inner, out);
}

/// Takes a finished record through the sender's state: boot estimate, msgid gaps, continuation
/// joining, then [`emit`].
pub(super) fn complete(
    sender: &mut Sender,
    mut record: Record,
    now: Instant,
    inner: &mut DecoderInner,
    out: &mut Vec<Event>,
) {
    if let Some(id) = record.sysdata.msgid
        && id == 1
        && sender.msgid.is_some_and(|prev| prev > 1)
    {
        // A configfs target numbers its messages from 1 after it is enabled: at boot.
        let previous = match record.seq {
            Some(seq) => sender.seq.restart(seq, record.timestamp_us.unwrap_or(0)),
            None => SeqVerdict::First,
        };
        let (previous_seq, previous_timestamp_us) = match previous {
            SeqVerdict::Reboot {
                previous_seq,
                previous_ts,
            } => (Some(previous_seq), Some(previous_ts)),
            _ => (None, sender.plain_ts),
        };
        new_boot(
            sender,
            NewBoot {
                received: record.received,
                ifindex: record.ifindex,
                previous_seq,
                seq: record.seq,
                previous_timestamp_us,
                timestamp_us: record.timestamp_us,
            },
            inner,
            out,
        );
    }
    if let Some(ts) = record.timestamp_us {
        record.kernel_time = sender.boot.observe(record.received, ts);
    }
    if let Some(id) = record.sysdata.msgid {
        msgid_check(sender, &record, id, inner, out);
    }
    if record.format == RecordFormat::Extended {
        if let Some(held) = sender.held.take() {
            if record.seq == Some(held.next_seq) {
                if chain_fits(&held.record, &record, &inner.config) {
                    add(&mut inner.stats.continuations_joined, 1);
                    let Held {
                        record: mut joined,
                        since,
                        ..
                    } = *held;
                    join(&mut joined, record);
                    if matches!(joined.cont, ContFlag::Cont | ContFlag::Plus) {
                        let next_seq = joined.seq.map_or(0, |s| s.saturating_add(1));
                        sender.held = Some(Box::new(Held {
                            record: joined,
                            next_seq,
                            deadline: now + inner.config.continuation_timeout,
                            since,
                        }));
                    } else {
                        emit(sender, joined, inner, out);
                    }
                    return;
                }
                // The chain reached its bound: out it goes, cut, and this piece starts anew.
                emit_cut(sender, held.record, inner, out);
            } else {
                emit(sender, held.record, inner, out);
            }
        }
        match record.cont {
            ContFlag::Cont => {
                record.flags.continued = true;
                if record.fields.len() > inner.config.max_continuation_fields
                    || record.content_len() > inner.config.max_continuation_bytes
                {
                    // One piece already past the bound: nothing may join it.
                    emit_cut(sender, record, inner, out);
                    return;
                }
                let next_seq = record.seq.map_or(0, |s| s.saturating_add(1));
                sender.held = Some(Box::new(Held {
                    record,
                    next_seq,
                    deadline: now + inner.config.continuation_timeout,
                    since: now,
                }));
                return;
            }
            ContFlag::Plus => record.flags.continued = true,
            ContFlag::None | ContFlag::Unknown(_) => {}
        }
    }
    emit(sender, record, inner, out);
}

/// Whether `next` may join the chain `held` within the chain's bounds: content bytes
/// ([`DecoderConfig::max_continuation_bytes`]) and fields
/// ([`DecoderConfig::max_continuation_fields`]).
fn chain_fits(held: &Record, next: &Record, config: &DecoderConfig) -> bool {
    held.fields.len() + next.fields.len() <= config.max_continuation_fields
        && held.content_len() + next.content_len() <= config.max_continuation_bytes
}

/// Emits a continuation chain cut short (at its bound, or by the memory budget): marked
/// partial, counted.
fn emit_cut(
    sender: &mut Sender,
    mut record: Record,
    inner: &mut DecoderInner,
    out: &mut Vec<Event>,
) {
    record.flags.partial = true;
    record.flags.continued = true;
    add(&mut inner.stats.continuations_cut, 1);
    emit(sender, record, inner, out);
}

/// Appends `next` to the held record `joined`. The joined record keeps the first record's
/// header, takes the last one's flag and seq (so that the next seq continues it), and the union
/// of their markings.
fn join(joined: &mut Record, next: Record) {
    joined.text.extend_from_slice(&next.text);
    joined.fields.extend(next.fields);
    if !next.sysdata.is_empty() {
        joined.sysdata = next.sysdata;
    }
    joined.cont = next.cont;
    joined.seq = next.seq.or(joined.seq);
    joined.flags.continued = true;
    joined.flags.fragmented |= next.flags.fragmented;
    if let Some(inc) = next.flags.incomplete {
        let prev = joined
            .flags
            .incomplete
            .map_or((0, 0), |i| (i.missing_bytes, i.total_bytes));
        joined.flags.incomplete = Some(Incomplete {
            missing_bytes: prev.0 + inc.missing_bytes,
            total_bytes: prev.1 + inc.total_bytes,
        });
    }
}

fn msgid_check(
    sender: &mut Sender,
    record: &Record,
    id: u32,
    inner: &mut DecoderInner,
    out: &mut Vec<Event>,
) {
    let Some(prev) = sender.msgid else {
        sender.msgid = Some(id);
        sender.msgid_seq = record.seq;
        return;
    };
    let expected = prev.wrapping_add(1);
    let gap = id.wrapping_sub(expected);
    // Half the u32 range ahead is a gap, the other half behind is a late or repeated message.
    if gap >= 1 << 31 {
        return;
    }
    // Every message a target sends is one printk record, so the msgid cannot move further than
    // the seq did: a msgid that does was forged, and taking it would make the real sender's
    // msgids look old (and its gaps unseen).
    let msgid_advance = u64::from(gap) + 1;
    if let (Some(seq), Some(prev_seq)) = (record.seq, sender.msgid_seq) {
        let seq_advance = seq.saturating_sub(prev_seq);
        if msgid_advance > seq_advance {
            add(&mut inner.stats.suspicious, 1);
            add(&mut inner.stats.malformed, 1);
            out.push(Event::Malformed(Malformed {
                received: record.received,
                sender: record.sender,
                ifindex: record.ifindex,
                error: DecodeError::MsgidJump {
                    previous: prev,
                    msgid: id,
                    seq,
                    msgid_advance,
                    seq_advance,
                },
                payload: Vec::new(),
            }));
            return;
        }
    }
    if gap > 0 {
        add(&mut inner.stats.msgid_lost, u64::from(gap));
        add(&mut sender.tally.msgid_lost, u64::from(gap));
        out.push(Event::Lost(Lost {
            received: record.received,
            sender: record.sender,
            ifindex: record.ifindex,
            kind: LossKind::Msgid,
            first: u64::from(expected),
            last: u64::from(id.wrapping_sub(1)),
            count: u64::from(gap),
        }));
    }
    sender.msgid = Some(id);
    sender.msgid_seq = record.seq.or(sender.msgid_seq);
}

/// Marks crash reports, counts, and hands the record out.
fn emit(sender: &mut Sender, mut record: Record, inner: &mut DecoderInner, out: &mut Vec<Event>) {
    sender.panic.mark(
        &mut record,
        inner.config.panic_context,
        &mut inner.next_panic_event,
    );
    add(&mut inner.stats.records, 1);
    add(&mut sender.tally.records, 1);
    if record.flags.panic.is_some_and(|p| p.begins) {
        add(&mut inner.stats.panics, 1);
        add(&mut sender.tally.panics, 1);
    }
    if record.flags.incomplete.is_some() {
        add(&mut inner.stats.incomplete_records, 1);
    }
    if record.flags.partial && record.format == RecordFormat::Plain {
        add(&mut inner.stats.partial_lines, 1);
    }
    out.push(Event::Record(record));
}

/// Fires the sender's due timers.
pub(super) fn fire(
    sender: &mut Sender,
    now: Instant,
    inner: &mut DecoderInner,
    out: &mut Vec<Event>,
) {
    let mut lines = Vec::new();
    sender.plain.poll(now, &mut lines);
    for l in lines {
        plain_record(sender, &l, now, inner, out);
    }
    if sender.held.as_ref().is_some_and(|h| h.deadline <= now)
        && let Some(held) = sender.held.take()
    {
        add(&mut inner.stats.continuation_timeouts, 1);
        emit(sender, held.record, inner, out);
    }
}

/// Why a sender's pending state goes out before its time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Release {
    /// Exit or eviction: the held continuation goes out as it is.
    Flush,
    /// The memory budget is full: the held continuation goes out marked partial (cut).
    Shed,
}

/// Emits what a sender holds for later: its held continuation, then its pending plain bytes.
pub(super) fn release_sender(
    sender: &mut Sender,
    now: Instant,
    why: Release,
    inner: &mut DecoderInner,
    out: &mut Vec<Event>,
) {
    if let Some(held) = sender.held.take() {
        match why {
            Release::Flush => emit(sender, held.record, inner, out),
            Release::Shed => emit_cut(sender, held.record, inner, out),
        }
    }
    flush_plain(sender, now, inner, out);
}

fn flush_plain(sender: &mut Sender, now: Instant, inner: &mut DecoderInner, out: &mut Vec<Event>) {
    let mut lines = Vec::new();
    sender.plain.flush(&mut lines);
    for l in lines {
        plain_record(sender, &l, now, inner, out);
    }
}
