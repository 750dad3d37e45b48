//! Helpers shared by the unit tests.

use std::{
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
};

/// A fresh directory under the system temporary directory, removed on drop (also when the test
/// panics).
pub(crate) struct TempDir(pub PathBuf);

impl TempDir {
    /// Creates `netcon-test-<pid>-<n>-<what>`.
    pub(crate) fn new(what: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("netcon-test-{}-{n}-{what}", std::process::id()));
        std::fs::create_dir(&path).unwrap();
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
