//! `--log-dir`: one append-only file per sender. (Being written.)

use std::{io, path::PathBuf};

use super::Sink;
use crate::netconsole::Event;

/// What `--log-dir`, `--resolve` and `--fsync` asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogDirOptions {
    /// The directory.
    pub dir: PathBuf,
    /// Name files by reverse DNS.
    pub resolve: bool,
    /// fsync every record.
    pub fsync: bool,
}

/// Why the log directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    /// The directory cannot be created or written.
    #[error("cannot use --log-dir {dir}: {source}")]
    Dir {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Per-sender files.
pub struct LogDir {
    _options: LogDirOptions,
}

impl LogDir {
    /// Checks the directory (creating it) and starts with no file open.
    ///
    /// # Errors
    /// [`FilesError`] when the directory cannot be created.
    pub fn open(options: LogDirOptions) -> Result<Self, FilesError> {
        std::fs::create_dir_all(&options.dir).map_err(|source| FilesError::Dir {
            dir: options.dir.clone(),
            source,
        })?;
        Ok(Self { _options: options })
    }
}

impl Sink for LogDir {
    fn event(&mut self, _event: &Event) {}
}
