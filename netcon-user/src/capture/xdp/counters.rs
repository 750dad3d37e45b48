//! Reading the program's per-CPU counters and the ring buffer's fill.

use netcon_common::counter;

use super::{XdpCapture, XdpError, root_cause, root_errno};
use crate::capture::XdpCounters;

impl XdpCapture {
    /// The program's counters, summed over CPUs. Where they cannot be read (after `--user` on
    /// a kernel that lets only `CAP_BPF` use `bpf(2)` at all while
    /// `kernel.unprivileged_bpf_disabled` is set, as Debian sets it: 5.18, as map access through
    /// a descriptor is allowed from 5.19 on; or where an LSM refuses it), says so once on stderr
    /// and gives the last values read from then on: capture and output go on without them.
    ///
    /// # Errors
    /// None at present; kept for callers that treat counters as fallible.
    ///
    /// The ring buffer's fill is read afresh each time (from its mapped positions, no syscall),
    /// even where the program's counters cannot be.
    pub fn counters(&self) -> Result<XdpCounters, XdpError> {
        let ring = Some(self.ring.get_ref().fill());
        if self.counters_unavailable.get() {
            return Ok(XdpCounters {
                ring,
                ..self.last_counters.get()
            });
        }
        match self.read_counters() {
            Ok(counters) => {
                self.last_counters.set(counters);
                Ok(XdpCounters { ring, ..counters })
            }
            Err(error) => {
                self.counters_unavailable.set(true);
                let why = if root_errno(&error) == Some(libc::EPERM) {
                    " (this kernel lets only CAP_BPF read BPF maps, see kernel.unprivileged_bpf_disabled, and it was dropped)"
                } else {
                    ""
                };
                eprintln!(
                    "netcon-sniff: XDP counters unavailable from now on: reading them failed ({}){why}; the stats show the last values read",
                    root_cause(&error)
                );
                Ok(XdpCounters {
                    ring,
                    ..self.last_counters.get()
                })
            }
        }
    }

    fn read_counters(&self) -> Result<XdpCounters, XdpError> {
        let sum = |index: u32| -> Result<u64, XdpError> {
            let values = self
                .counters
                .get(&index, 0)
                .map_err(|source| XdpError::Map {
                    name: "COUNTERS",
                    source,
                })?;
            Ok(values.iter().copied().fold(0u64, u64::wrapping_add))
        };
        Ok(XdpCounters {
            seen: sum(counter::SEEN)?,
            matched: sum(counter::MATCHED)?,
            ringbuf_full: sum(counter::RINGBUF_FULL)?,
            truncated: sum(counter::TRUNCATED)?,
            copy_failed: sum(counter::COPY_FAILED)?,
            wakeups: sum(counter::WAKEUPS)?,
            ring: None,
        })
    }
}
