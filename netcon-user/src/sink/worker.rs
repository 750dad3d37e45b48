//! A network sink's worker thread: one task on a small current-thread tokio runtime of its own,
//! stopped with a grace period.
//!
//! A thread rather than a task on the caller's runtime, because that runtime is current-thread:
//! while a capture file is read it never yields, and when `run` returns it drops its tasks with
//! their queues. With a thread, messages go out while capture runs, and [`WorkerThread::stop`]
//! gives the task a bounded time to deliver what is queued.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::oneshot;

use super::SinkCounter;
use super::drops::{ForwardDrops, QueueLedger, log_stopped};
use crate::notice::Notice;

/// How long [`WorkerThread::stop`] waits beyond the grace period for the thread's last steps.
const STOP_MARGIN: Duration = Duration::from_millis(500);

/// A running worker thread. Dropping it without [`WorkerThread::stop`] starts the grace period
/// without waiting for it.
#[derive(Debug)]
pub struct WorkerThread {
    /// Dropped to start the grace period.
    stop: oneshot::Sender<()>,
    /// Says (or hangs up) when the thread is done.
    done: std::sync::mpsc::Receiver<()>,
    grace: Duration,
}

impl WorkerThread {
    /// Starts thread `name`, which runs the future `task()` returns until it completes, or until
    /// `grace` has passed after [`WorkerThread::stop`]. `task` is called on the thread, so its
    /// future need not be `Send`.
    ///
    /// # Errors
    /// When the thread or its runtime cannot be started.
    pub fn spawn<T, F>(name: &str, grace: Duration, task: T) -> io::Result<Self>
    where
        T: FnOnce() -> F + Send + 'static,
        F: Future<Output = ()>,
    {
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = name.to_owned();
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                // Built (and dropped) here: dropping a runtime on the caller's thread, which may
                // be inside another runtime, would panic.
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_io()
                    .enable_time()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(error) => {
                        let _ = ready_tx.send(Err(error));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                runtime.block_on(async {
                    let grace = async {
                        // A send (never done) or the sender dropped: both mean "stopping".
                        let _ = stop_rx.await;
                        tokio::time::sleep(grace).await;
                    };
                    tokio::select! {
                        () = task() => {}
                        () = grace => tracing::debug!(thread, "shutdown grace period over"),
                    }
                });
                let _ = done_tx.send(());
            })?;
        ready_rx
            .recv()
            .unwrap_or_else(|_| Err(io::Error::other("the worker thread ended at start")))?;
        Ok(Self {
            stop: stop_tx,
            done: done_rx,
            grace,
        })
    }

    /// Starts the grace period and waits for the thread to finish: at most about the grace.
    pub fn stop(self) {
        drop(self.stop);
        let _ = self.done.recv_timeout(self.grace + STOP_MARGIN);
    }
}

/// A forwarder's end of its worker: the queue into the task, and the thread running it.
#[derive(Debug)]
pub struct Worker<T> {
    /// Messages for the task.
    pub queue: tokio::sync::mpsc::Sender<T>,
    /// The thread the task runs on.
    pub thread: WorkerThread,
}

impl<T: Send + 'static> Worker<T> {
    /// Starts thread `name` (see [`WorkerThread::spawn`]) running the future `task` makes of
    /// the receiving end of a queue of `capacity` messages.
    ///
    /// # Errors
    /// When the thread or its runtime cannot be started.
    pub fn spawn<F, Fut>(name: &str, grace: Duration, capacity: usize, task: F) -> io::Result<Self>
    where
        F: FnOnce(tokio::sync::mpsc::Receiver<T>) -> Fut + Send + 'static,
        Fut: Future<Output = ()>,
    {
        let (queue, receiver) = tokio::sync::mpsc::channel(capacity);
        let thread = WorkerThread::spawn(name, grace, move || task(receiver))?;
        Ok(Self { queue, thread })
    }
}

impl<T> Worker<T> {
    /// Closes the queue, so that the task finishes as soon as it is empty, and stops the
    /// thread: blocks for at most about its grace period.
    pub fn stop(self) {
        drop(self.queue);
        self.thread.stop();
    }
}

/// The counts a forwarder's worker keeps that both forwarders share.
#[derive(Debug, Default)]
pub struct DeliveryCounters {
    /// Messages sent (see each forwarder for what that proves).
    pub sent: AtomicU64,
    /// Messages taken from the queue that will never be sent.
    pub failed: AtomicU64,
    /// Transport errors.
    pub errors: AtomicU64,
}

impl DeliveryCounters {
    /// `n` messages sent.
    pub fn count_sent(&self, n: u64) {
        self.sent.fetch_add(n, Ordering::Relaxed);
    }

    /// `n` messages that will never be sent.
    pub fn count_failed(&self, n: u64) {
        self.failed.fetch_add(n, Ordering::Relaxed);
    }

    /// One transport error.
    pub fn count_error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts now.
    #[must_use]
    pub fn delivered(&self) -> Delivered {
        Delivered {
            sent: self.sent.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
        }
    }
}

/// What a forwarder's worker has done, read from its counters.
#[derive(Debug, Clone, Copy, Default)]
pub struct Delivered {
    /// Messages sent.
    pub sent: u64,
    /// Messages taken from the queue that will never be sent.
    pub failed: u64,
    /// Transport errors.
    pub errors: u64,
}

/// A forwarder's side of its worker and the bookkeeping both forwarders share: what the queue
/// took, refused and gave up on ([`QueueLedger`]), and the drops not yet told in a
/// `forward_lost` notice or report ([`ForwardDrops`]).
#[derive(Debug)]
pub struct Outbox<T> {
    /// `None` once closed.
    worker: Option<Worker<T>>,
    /// What the queue took, refused and gave up on.
    pub ledger: QueueLedger,
    /// Drops not yet told.
    pub drops: ForwardDrops,
    /// The destination, for the log and the counters' `url` label.
    url: String,
    /// What the forwarding is called in the log: "forwarding", "NATS forwarding".
    what: &'static str,
    /// The queue's capacity, for the log.
    capacity: usize,
}

impl<T> Outbox<T> {
    /// The outbox of `worker`, whose queue holds `capacity` messages, forwarding to `url`.
    #[must_use]
    pub fn new(worker: Worker<T>, capacity: usize, url: String, what: &'static str) -> Self {
        Self {
            worker: Some(worker),
            ledger: QueueLedger::default(),
            drops: ForwardDrops::new(url.clone()),
            url,
            what,
            capacity,
        }
    }

    /// Whether the worker still takes messages (the outbox is not closed).
    #[must_use]
    pub fn is_open(&self) -> bool {
        self.worker.is_some()
    }

    /// Free places in the queue now (for tests that must know the worker took a message).
    #[cfg(test)]
    #[must_use]
    pub fn free_slots(&self) -> usize {
        self.worker
            .as_ref()
            .map_or(0, |worker| worker.queue.capacity())
    }

    /// Hands one message to the worker; `false` when the queue is full or the worker gone.
    pub fn try_queue(&mut self, message: T) -> bool {
        let queued = self
            .worker
            .as_ref()
            .is_some_and(|worker| worker.queue.try_send(message).is_ok());
        if queued {
            self.ledger.accepted += 1;
        }
        queued
    }

    /// One message (of an event at `at`) could not be queued: counts and tells the drop.
    fn refused(&mut self, at: DateTime<Utc>) {
        self.ledger.refused += 1;
        // Drops while the report waits are part of a gap already told.
        if !self.drops.reporting() {
            tracing::warn!(
                url = %self.url,
                queue = self.capacity,
                "{}: dropping messages, the queue is full (or the worker thread is gone)",
                self.what
            );
        }
        self.drops.dropped(at);
    }

    /// The report of the drops was queued.
    fn reported(&mut self, report: &Notice) {
        if let Notice::ForwardLost(lost) = report {
            tracing::info!(
                url = %self.url,
                dropped = lost.messages,
                "{} queue has room again",
                self.what
            );
        }
        self.drops.reported();
    }

    /// Appends `counters`, each labelled with this forwarder's URL.
    pub fn counters<const N: usize>(&self, counters: [SinkCounter; N], out: &mut Vec<SinkCounter>) {
        out.extend(counters.map(|c| c.of("url", self.url.clone())));
    }

    /// Stops taking messages and gives the worker its grace period to deliver what is queued;
    /// what is left is counted as dropped, from what `delivered` says after. Blocks for at
    /// most about the grace period. Calling it again does nothing.
    pub fn close(&mut self, delivered: impl Fn() -> Delivered) {
        let Some(worker) = self.worker.take() else {
            return;
        };
        worker.stop();
        let d = delivered();
        self.ledger.abandoned = self.ledger.queued(d.sent, d.failed);
        self.drops.closed(self.ledger.abandoned);
        let d = delivered();
        log_stopped(
            self.what,
            &self.url,
            d.sent,
            self.ledger.dropped(d.failed),
            d.errors,
        );
    }

    /// Moves a `forward_lost` notice to `out` when one is due.
    pub fn take_notices(&mut self, out: &mut Vec<Notice>) {
        self.drops.take_notice(Instant::now(), out);
    }
}

/// A forwarder with an [`Outbox`]: how it queues a notice of its own, and from that the order
/// both forwarders keep, that the report of a gap comes right after the gap.
pub trait Forwarding {
    /// What its queue carries.
    type Message;

    /// Its outbox.
    fn outbox(&mut self) -> &mut Outbox<Self::Message>;

    /// Queues one of the collector's notices as a message; `false` when it does not fit.
    fn queue_notice(&mut self, notice: &Notice) -> bool;

    /// Queues the `forward_lost` report of the drops so far, if one waits and fits now; `true`
    /// when none waits any more.
    fn report_drops(&mut self) -> bool {
        let Some(report) = self.outbox().drops.report() else {
            return true;
        };
        if !self.queue_notice(&report) {
            return false;
        }
        self.outbox().reported(&report);
        true
    }

    /// Queues what `queue` queues (a message of an event at `at`), unless drops wait for their
    /// report and it does not fit first; counts a drop otherwise.
    fn offer(&mut self, at: DateTime<Utc>, queue: impl FnOnce(&mut Self) -> bool)
    where
        Self: Sized,
    {
        if !(self.report_drops() && queue(self)) {
            self.outbox().refused(at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn a_task_that_finishes_stops_at_once_and_one_that_hangs_after_the_grace() {
        let started = Instant::now();
        WorkerThread::spawn("t-done", Duration::from_secs(5), || async {})
            .unwrap()
            .stop();
        assert!(started.elapsed() < Duration::from_secs(4));
        let started = Instant::now();
        WorkerThread::spawn("t-hang", Duration::from_millis(100), || {
            std::future::pending::<()>()
        })
        .unwrap()
        .stop();
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(100), "{took:?}");
        assert!(took < Duration::from_secs(2), "{took:?}");
    }
}
