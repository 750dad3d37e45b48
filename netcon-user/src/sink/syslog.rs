//! `--forward`: records to a syslog server, RFC 5424 over UDP or TCP. (Being written.)

use std::str::FromStr;

use super::Sink;
use crate::netconsole::Event;

/// `syslog+udp://HOST:PORT` or `syslog+tcp://HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardUrl {
    /// The URL as given.
    pub url: String,
}

/// Why a forwarding URL or connection is not usable.
#[derive(Debug, thiserror::Error)]
pub enum SyslogError {
    /// The URL is not of a supported form.
    #[error("bad --forward URL {url:?}: expected syslog+udp://HOST:PORT or syslog+tcp://HOST:PORT")]
    BadUrl { url: String },
}

impl FromStr for ForwardUrl {
    type Err = SyslogError;
    fn from_str(url: &str) -> Result<Self, Self::Err> {
        if url.starts_with("syslog+udp://") || url.starts_with("syslog+tcp://") {
            Ok(Self {
                url: url.to_owned(),
            })
        } else {
            Err(SyslogError::BadUrl {
                url: url.to_owned(),
            })
        }
    }
}

/// Forwards records to one server from a background task.
pub struct Forwarder {
    _url: ForwardUrl,
}

impl Forwarder {
    /// Starts the background task (needs a tokio runtime).
    ///
    /// # Errors
    /// [`SyslogError`] when the URL cannot be used.
    pub fn start(url: &ForwardUrl) -> Result<Self, SyslogError> {
        Ok(Self { _url: url.clone() })
    }
}

impl Sink for Forwarder {
    fn event(&mut self, _event: &Event) {}
}
