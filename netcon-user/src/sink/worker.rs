//! A network sink's worker thread: one task on a small current-thread tokio runtime of its own,
//! stopped with a grace period.
//!
//! A thread rather than a task on the caller's runtime, because that runtime is current-thread:
//! while a capture file is read it never yields, and when `run` returns it drops its tasks with
//! their queues. With a thread, messages go out while capture runs, and [`WorkerThread::stop`]
//! gives the task a bounded time to deliver what is queued.

use std::io;
use std::time::Duration;

use tokio::sync::oneshot;

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

impl<T> Worker<T> {
    /// Closes the queue, so that the task finishes as soon as it is empty, and stops the
    /// thread: blocks for at most about its grace period.
    pub fn stop(self) {
        drop(self.queue);
        self.thread.stop();
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
