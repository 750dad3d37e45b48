//! `netcon-sniff sender-config`: the netconsole configuration for the machine to be logged.
//! (Being written.)

/// Options of `sender-config`.
#[derive(Debug, clap::Args)]
pub struct SenderConfigArgs {}

/// Why no configuration could be produced.
#[derive(Debug, thiserror::Error)]
pub enum SenderConfigError {
    /// Not built yet.
    #[error("sender-config is not implemented yet")]
    NotImplemented,
}

/// Prints the configuration.
///
/// # Errors
/// [`SenderConfigError`].
pub fn run(_args: &SenderConfigArgs) -> Result<(), SenderConfigError> {
    Err(SenderConfigError::NotImplemented)
}
