//! The one runner of the real `netcon-sniff` (the end-to-end tests, xtask vm-test and bench):
//! starting it in a namespace, offline or as the caller built the command, reading what it
//! prints, and reading its counters from `--stats-format json`.

mod counters;
mod expect;
mod launch;
mod lines;
mod run;

use std::path::PathBuf;
use std::time::Duration;

pub use counters::{
    CaptureBackend, FileCounters, RawCounters, STATS_PREFIX, Stats, Summary, XdpCounters,
    without_stats,
};
pub use lines::{RawLine, rfc3339_micros, unescape};
pub use run::{FileRun, Sniffer, StdoutTo};

/// How long the sniffer may take to print its `listening on` lines (the first start after a
/// build loads and verifies the BPF program; the machine is shared), a failure deadline only.
pub const READY_TIMEOUT: Duration = Duration::from_mins(1);
/// A generous default deadline for an expected stdout line.
pub const LINE_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the sniffer may take to exit after a signal before the test fails.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the `netcon-sniff` binary is: `$NETCON_SNIFF`, else `<workspace>/target/debug/netcon-sniff`.
///
/// # Panics
/// If the file does not exist.
#[must_use]
pub fn sniff_binary() -> PathBuf {
    let path = std::env::var_os("NETCON_SNIFF").map_or_else(
        || {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join("target/debug/netcon-sniff")
        },
        PathBuf::from,
    );
    assert!(
        path.is_file(),
        "netcon-sniff not built: run `cargo build -p netcon-user` (cargo xtask test does this); \
         looked for {} (set NETCON_SNIFF to use another build)",
        path.display()
    );
    path
}
