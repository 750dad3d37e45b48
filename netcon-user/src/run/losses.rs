//! Capture losses: the loss counters read while capturing live, turned into notices.

use std::time::Duration;

use super::{Pipeline, RunError, wake::interval_from_now};
use crate::{
    capture::{Backend, CaptureCounters},
    config::Config,
    notice::LossReason,
};

/// How often capture loss counters are read, so that a loss shows in the output within about
/// this long of happening: 1 s.
pub const LOSS_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Reads the loss counters (the backend's and the interfaces') every [`LOSS_POLL_INTERVAL`]
/// while capturing live, and hands them to the pipeline, which turns growth into notices.
pub(super) struct LossWatch {
    pub(super) timer: Option<tokio::time::Interval>,
    interfaces: Option<crate::capture::ifstats::InterfaceDrops>,
    /// What the backend's counters cover: its interfaces' names, comma-separated.
    label: String,
    /// The backend's counters could not be read last time (and that was logged).
    unreadable: bool,
    /// The backend's counters as last read.
    last: Option<CaptureCounters>,
}

impl LossWatch {
    pub(super) async fn start(config: &Config, backend: &mut Backend) -> Self {
        if matches!(backend, Backend::File(_)) {
            return Self {
                timer: None,
                interfaces: None,
                label: String::new(),
                unreadable: false,
                last: None,
            };
        }
        let interfaces =
            match crate::capture::ifstats::InterfaceDrops::open(&config.interfaces).await {
                Ok(reader) => Some(reader),
                Err(error) => {
                    tracing::warn!(%error, "frames the interfaces drop will not be reported");
                    None
                }
            };
        Self {
            timer: Some(interval_from_now(LOSS_POLL_INTERVAL)),
            interfaces,
            label: config
                .interfaces
                .iter()
                .map(|i| i.name.as_str())
                .collect::<Vec<_>>()
                .join(","),
            unreadable: false,
            last: backend.counters().ok(),
        }
    }

    /// The counters for the exit summary: read now, else (unreadable after `--user`) the last
    /// ones read, since everything went out already.
    pub(super) fn final_counters(
        &self,
        backend: &mut Backend,
    ) -> Result<CaptureCounters, RunError> {
        match (backend.counters(), self.last) {
            (Ok(counters), _) => Ok(counters),
            (Err(error), Some(last)) => {
                tracing::warn!(
                    %error,
                    "capture counters unreadable at exit; the summary shows the last ones read"
                );
                Ok(last)
            }
            (Err(error), None) => Err(error.into()),
        }
    }

    pub(super) async fn check(
        &mut self,
        backend: &mut Backend,
        pipeline: &mut Pipeline<'_>,
    ) -> Result<(), RunError> {
        if self.timer.is_none() {
            return Ok(());
        }
        // Counters that cannot be read (BPF maps after --user where reading them needs CAP_BPF)
        // cost the loss notices, never the run.
        let mut losses: Vec<(LossReason, String, u64)> = match backend.counters() {
            Ok(counters) => {
                self.unreadable = false;
                self.last = Some(counters);
                counters
                    .losses()
                    .into_iter()
                    .map(|(reason, frames)| (reason, self.label.clone(), frames))
                    .collect()
            }
            Err(error) => {
                if !self.unreadable {
                    self.unreadable = true;
                    tracing::warn!(%error, "capture counters unreadable: losses are not reported");
                }
                Vec::new()
            }
        };
        if let Some(interfaces) = &mut self.interfaces {
            losses.extend(
                interfaces
                    .read()
                    .await
                    .into_iter()
                    .map(|(name, frames)| (LossReason::Interface, name.to_owned(), frames)),
            );
        }
        pipeline.capture_lost(backend.take_queue_losses());
        pipeline.capture_losses(losses)
    }
}
