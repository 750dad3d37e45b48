//! What a forwarder (`--forward` syslog or NATS) dropped, told twice: as a `forward_lost`
//! [`Notice`] in the collector's own output stream (stdout, per-sender files stay untouched,
//! the other forwarders), at most once per [`NOTICE_INTERVAL`] while drops go on, so that an
//! outage of an hour is a line a second and not one per record; and, once the forwarder's queue
//! has room again, as one report of the whole gap in the forwarder's own stream, ahead of the
//! messages that follow it. One implementation for both forwarders.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::notice::{ForwardLost, Notice};

/// Least time between two `forward_lost` notices of one forwarder: 1 s, like `capture_lost`.
pub const NOTICE_INTERVAL: Duration = Duration::from_secs(1);

/// Drops not yet told, since a time.
#[derive(Debug, Default, Clone, Copy)]
struct Untold {
    messages: u64,
    first: Option<DateTime<Utc>>,
}

impl Untold {
    fn add(&mut self, messages: u64, at: DateTime<Utc>) {
        self.messages += messages;
        self.first.get_or_insert(at);
    }
}

/// One forwarder's drops, for its notices and its in-stream report.
#[derive(Debug)]
pub struct ForwardDrops {
    url: String,
    /// Not yet in a notice.
    unnoticed: Untold,
    /// When the last notice was taken.
    last_notice: Option<Instant>,
    /// Not yet in a report the forwarder queued downstream.
    unreported: Untold,
    /// The forwarder is closed: the next notice goes out at once.
    closed: bool,
}

impl ForwardDrops {
    /// No drops yet, for the forwarder at `url`.
    #[must_use]
    pub fn new(url: String) -> Self {
        Self {
            url,
            unnoticed: Untold::default(),
            last_notice: None,
            unreported: Untold::default(),
            closed: false,
        }
    }

    /// One message dropped at `at`.
    pub fn dropped(&mut self, at: DateTime<Utc>) {
        self.unnoticed.add(1, at);
        self.unreported.add(1, at);
    }

    /// The forwarder closed with `abandoned` messages still queued: they go into the last
    /// notice (there is no stream left to report them in), which is taken at once.
    pub fn closed(&mut self, abandoned: u64) {
        if abandoned > 0 {
            self.unnoticed.add(abandoned, Utc::now());
        }
        self.closed = true;
    }

    /// Whether drops wait for their report downstream: until it is queued, the forwarder
    /// queues nothing else, so that the report comes right after the gap.
    #[must_use]
    pub fn reporting(&self) -> bool {
        self.unreported.messages > 0
    }

    /// The report of the gap so far, to be queued downstream.
    #[must_use]
    pub fn report(&self) -> Option<Notice> {
        let first = self.unreported.first?;
        Some(Notice::ForwardLost(ForwardLost {
            noticed: Utc::now(),
            url: self.url.clone(),
            messages: self.unreported.messages,
            first_dropped: first,
        }))
    }

    /// The report was queued.
    pub fn reported(&mut self) {
        self.unreported = Untold::default();
    }

    /// Whether `notice` is this forwarder's own `forward_lost` (which it reports with
    /// [`ForwardDrops::report`] instead).
    #[must_use]
    pub fn is_own(&self, notice: &Notice) -> bool {
        matches!(notice, Notice::ForwardLost(lost) if lost.url == self.url)
    }

    /// Moves a notice of the drops not yet noticed to `out`, when one is due at `now`.
    pub fn take_notice(&mut self, now: Instant, out: &mut Vec<Notice>) {
        let Some(first) = self.unnoticed.first else {
            return;
        };
        if !self.closed && self.last_notice.is_some_and(|t| now < t + NOTICE_INTERVAL) {
            return;
        }
        out.push(Notice::ForwardLost(ForwardLost {
            noticed: Utc::now(),
            url: self.url.clone(),
            messages: self.unnoticed.messages,
            first_dropped: first,
        }));
        self.unnoticed = Untold::default();
        self.last_notice = Some(now);
    }

    /// When the next notice is due, if drops wait for one.
    #[must_use]
    pub fn poll_at(&self) -> Option<Instant> {
        self.unnoticed.first?;
        Some(
            self.last_notice
                .map_or_else(Instant::now, |t| t + NOTICE_INTERVAL),
        )
    }
}

/// What a forwarder's queue took, refused and gave up on: with the worker's own counts of
/// messages sent and failed, this says how many were dropped and how many still wait.
#[derive(Debug, Default, Clone, Copy)]
pub struct QueueLedger {
    /// Messages queued.
    pub accepted: u64,
    /// Messages refused: the queue (or the budget) was full, or the worker gone.
    pub refused: u64,
    /// Messages still queued when the worker was given up on at close.
    pub abandoned: u64,
}

impl QueueLedger {
    /// Messages lost: refused, failed in the worker, or abandoned at close.
    #[must_use]
    pub fn dropped(&self, failed: u64) -> u64 {
        self.refused + failed + self.abandoned
    }

    /// Messages queued and not yet sent, failed or abandoned.
    #[must_use]
    pub fn queued(&self, sent: u64, failed: u64) -> u64 {
        self.accepted.saturating_sub(sent + failed + self.abandoned)
    }
}

/// Logs how forwarding to `url` ended (`what`: "forwarding", "NATS forwarding").
pub fn log_stopped(what: &str, url: &dyn std::fmt::Display, sent: u64, dropped: u64, errors: u64) {
    if dropped > 0 {
        tracing::warn!(
            url = %url,
            sent,
            dropped,
            errors,
            "{what} stopped; some messages were not delivered"
        );
    } else {
        tracing::info!(url = %url, sent, "{what} stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ledger_counts_refused_failed_and_abandoned_as_dropped() {
        let mut ledger = QueueLedger {
            accepted: 10,
            refused: 2,
            abandoned: 0,
        };
        assert_eq!(ledger.queued(6, 1), 3);
        ledger.abandoned = ledger.queued(6, 1);
        assert_eq!(ledger.queued(6, 1), 0);
        assert_eq!(ledger.dropped(1), 2 + 1 + 3);
    }

    fn messages(notices: &[Notice]) -> Vec<u64> {
        notices
            .iter()
            .map(|n| match n {
                Notice::ForwardLost(l) => l.messages,
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn notices_at_most_once_per_interval_and_at_close() {
        let mut drops = ForwardDrops::new("nats://a:4222/netcon".to_owned());
        let t0 = Instant::now();
        let mut out = Vec::new();
        drops.take_notice(t0, &mut out);
        assert!(out.is_empty(), "no drops, no notice");
        assert_eq!(drops.poll_at(), None);
        drops.dropped(Utc::now());
        drops.dropped(Utc::now());
        drops.take_notice(t0, &mut out);
        assert_eq!(messages(&out), [2], "the first at once");
        drops.dropped(Utc::now());
        drops.take_notice(t0 + Duration::from_millis(500), &mut out);
        assert_eq!(messages(&out), [2], "not within the interval");
        assert_eq!(drops.poll_at(), Some(t0 + NOTICE_INTERVAL));
        drops.take_notice(t0 + NOTICE_INTERVAL, &mut out);
        assert_eq!(messages(&out), [2, 1]);
        drops.closed(5);
        drops.take_notice(t0 + NOTICE_INTERVAL, &mut out);
        assert_eq!(messages(&out), [2, 1, 5], "abandoned at close, at once");
        assert!(drops.is_own(&out[0]));
    }

    #[test]
    fn the_report_covers_the_whole_gap_until_queued() {
        let mut drops = ForwardDrops::new("syslog+udp://b:514".to_owned());
        assert!(!drops.reporting());
        drops.dropped(Utc::now());
        drops.take_notice(Instant::now(), &mut Vec::new());
        drops.dropped(Utc::now());
        assert!(drops.reporting());
        let Some(Notice::ForwardLost(report)) = drops.report() else {
            panic!("a report");
        };
        assert_eq!(report.messages, 2, "notices do not shorten the report");
        drops.reported();
        assert!(!drops.reporting());
        assert_eq!(drops.report(), None);
    }
}
