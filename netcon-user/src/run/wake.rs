//! What wakes the main loop: signals, timers, scrapes, frames.

use std::{
    io,
    time::{Duration, Instant},
};

use crate::{
    capture::CaptureError,
    metrics::{MetricsServer, ScrapeRequest},
};

/// What woke the main loop.
pub(super) enum Wake {
    Shutdown,
    Hangup,
    Stats,
    Watchdog,
    Scrape(ScrapeRequest),
    Timer,
    Losses,
    Frames { more: bool },
    Failed(CaptureError),
}

/// The signals `run` handles itself (SIGINT and SIGTERM come through `shutdown`).
pub(super) struct Signals {
    /// SIGHUP: reopen log files.
    pub(super) hangup: tokio::signal::unix::Signal,
    /// SIGUSR1: print a stats line.
    pub(super) user1: tokio::signal::unix::Signal,
}

impl Signals {
    pub(super) fn new() -> io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            hangup: signal(SignalKind::hangup())?,
            user1: signal(SignalKind::user_defined1())?,
        })
    }
}

/// Waits for the next tick of `timer`, or forever without one.
pub(super) async fn tick(timer: Option<&mut tokio::time::Interval>) {
    match timer {
        Some(timer) => {
            timer.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// The next scrape to answer, or never without `--metrics`.
pub(super) async fn scrape_request(server: Option<&mut MetricsServer>) -> ScrapeRequest {
    match server {
        Some(server) => server.request().await,
        None => std::future::pending().await,
    }
}

/// A timer that first fires `every` from now, then every `every`, never catching up in bursts.
pub(super) fn interval_from_now(every: Duration) -> tokio::time::Interval {
    let mut timer = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    timer
}

/// Sleeps until `deadline`, or forever without one.
pub(super) async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}
