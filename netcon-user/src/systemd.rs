//! systemd's service notification protocol (`sd_notify(3)`): `READY=1` once capture is
//! attached, `STOPPING=1` at shutdown, and `WATCHDOG=1` every half `WATCHDOG_USEC` while the
//! pipeline loop turns.
//!
//! Messages are datagrams to the unix socket named by `NOTIFY_SOCKET` (the `sd-notify` crate
//! speaks the protocol; no libsystemd). Without `NOTIFY_SOCKET` (not under systemd, or a unit
//! that is not `Type=notify`) nothing is sent. The watchdog is kept from the pipeline loop
//! itself ([`Systemd::watchdog_due`] is one of the things the loop waits for), so a loop that
//! stops turning stops the pings and systemd restarts the service after `WatchdogSec=`.

use std::time::Duration;

use sd_notify::NotifyState;

/// The notifier; a no-op outside systemd.
#[derive(Debug)]
pub struct Systemd {
    watchdog: Option<tokio::time::Interval>,
    /// A send failed and was logged: later failures go to debug.
    failed: bool,
}

impl Systemd {
    /// Reads `WATCHDOG_USEC` (and `WATCHDOG_PID`, which must be this process if set). Must be
    /// called within the tokio runtime.
    #[must_use]
    pub fn from_env() -> Self {
        let watchdog = sd_notify::watchdog_enabled()
            .filter(|timeout| !timeout.is_zero())
            .map(|timeout| {
                let every = ping_interval(timeout);
                tracing::debug!(?every, "systemd watchdog enabled");
                let mut timer = tokio::time::interval(every);
                timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                timer
            });
        Self {
            watchdog,
            failed: false,
        }
    }

    /// Capture is attached: `READY=1`, with a status line for `systemctl status`.
    pub fn ready(&mut self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// Shutting down: `STOPPING=1`.
    pub fn stopping(&mut self) {
        self.send(&[NotifyState::Stopping]);
    }

    /// Completes when the next `WATCHDOG=1` is due; never without a watchdog.
    pub async fn watchdog_due(&mut self) {
        match &mut self.watchdog {
            Some(timer) => {
                timer.tick().await;
            }
            None => std::future::pending().await,
        }
    }

    /// `WATCHDOG=1`.
    pub fn watchdog(&mut self) {
        self.send(&[NotifyState::Watchdog]);
    }

    fn send(&mut self, states: &[NotifyState<'_>]) {
        if let Err(error) = sd_notify::notify(states) {
            if self.failed {
                tracing::debug!(%error, "cannot notify systemd");
            } else {
                self.failed = true;
                tracing::warn!(%error, "cannot notify systemd (NOTIFY_SOCKET)");
            }
        }
    }
}

/// Half the watchdog timeout, as `sd_watchdog_enabled(3)` recommends, and at least 1 ms.
fn ping_interval(timeout: Duration) -> Duration {
    (timeout / 2).max(Duration::from_millis(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pings_at_half_the_timeout() {
        assert_eq!(
            ping_interval(Duration::from_secs(30)),
            Duration::from_secs(15)
        );
        assert_eq!(
            ping_interval(Duration::from_micros(1)),
            Duration::from_millis(1)
        );
    }
}
