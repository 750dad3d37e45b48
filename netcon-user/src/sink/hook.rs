//! `--on-panic`: run a command for each kernel panic or oops. (Being written.)

use std::time::Duration;

use super::Sink;
use crate::netconsole::Event;

/// What `--on-panic` and `--on-panic-interval` asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PanicHookOptions {
    /// Program and arguments.
    pub command: Vec<String>,
    /// At most one run per sender in this interval.
    pub min_interval: Duration,
}

/// Runs the command.
pub struct PanicHook {
    _options: PanicHookOptions,
}

impl PanicHook {
    /// A hook for `options`.
    #[must_use]
    pub fn new(options: PanicHookOptions) -> Self {
        Self { _options: options }
    }
}

impl Sink for PanicHook {
    fn event(&mut self, _event: &Event) {}
}
