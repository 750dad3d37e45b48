//! The virtio balloon's free page reporting, held off for the run and restored after.
//!
//! A virtual machine with it reports free memory to the host, which takes the pages back; the
//! first write to such a page afterwards traps to the host to be supplied again
//! (`mm/page_reporting.c`, `drivers/virtio/virtio_balloon.c`). Every trial writes its receiver's
//! output to fresh tmpfs pages, so with reporting on, a trial measures how long the machine sat
//! idle before it as much as the receiver: on this project's VM, 200 MB written to tmpfs after
//! 10 s idle went at 350–590 MB/s against 1.8–2.3 GB/s right after another write (~10 µs more
//! a 4 KiB page), and the first 0.5 s flat out after netcon-sniff started lost 10k–107k of
//! ~420k records in 6 of 7 tries, against 1,289 in 1 of 8 with reporting held off. The bench
//! measures receivers, not the host's reclaim of memory, so it holds reporting off for the run
//! as it pins CPUs, says so in the report, and `--keep-page-reporting` measures the machine as
//! it is.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// The reporting threshold: free blocks of this order and above are reported.
const ORDER: &str = "/sys/module/page_reporting/parameters/page_reporting_order";

/// An order above the buddy allocator's largest (`MAX_PAGE_ORDER`, 10 on x86-64): no free
/// block is that large, so nothing is reported. Kernels that bound the parameter to
/// `MAX_PAGE_ORDER` (upstream's `page_order_update_notify`) refuse it, and reporting stays on.
const OFF: &str = "11";

/// What the bench found and did, for the report; restores the setting on drop.
#[derive(Debug)]
pub struct PageReporting {
    /// The parameter's file.
    param: PathBuf,
    /// The order found at the start, to restore; `None` when nothing was changed.
    restore: Option<String>,
    /// One line for the report's machine table.
    pub state: String,
}

impl PageReporting {
    /// Holds reporting off unless `keep`; where the machine has none, does nothing.
    pub fn hold_off(keep: bool) -> Self {
        Self::hold_off_at(Path::new(ORDER), keep)
    }

    fn hold_off_at(param: &Path, keep: bool) -> Self {
        let unchanged = |state: String| Self {
            param: param.to_owned(),
            restore: None,
            state,
        };
        let Ok(found) = std::fs::read_to_string(param) else {
            return unchanged("none (no virtio-balloon)".into());
        };
        let found = found.trim().to_owned();
        if keep {
            return unchanged(format!(
                "on, as found (order {found}; --keep-page-reporting)"
            ));
        }
        if found == OFF {
            // Left so by a run killed before it could restore, or by the machine's owner.
            return unchanged(format!("off, as found (order {OFF})"));
        }
        match std::fs::write(param, OFF)
            .with_context(|| format!("writing {OFF} to {}", param.display()))
        {
            Ok(()) => Self {
                param: param.to_owned(),
                state: format!("held off for the run (order {found} → {OFF}, restored after)"),
                restore: Some(found),
            },
            Err(error) => {
                eprintln!("xtask bench: free page reporting stays on: {error:#}");
                unchanged(format!(
                    "on (order {found}; the kernel refused order {OFF})"
                ))
            }
        }
    }
}

impl Drop for PageReporting {
    fn drop(&mut self) {
        if let Some(order) = self.restore.take()
            && let Err(error) = std::fs::write(&self.param, &order)
        {
            eprintln!(
                "xtask bench: could not restore free page reporting: writing {order} to \
                 {}: {error}; write it back by hand",
                self.param.display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_off_for_the_run_then_restored() {
        let dir = tempfile::tempdir().unwrap();
        let param = dir.path().join("page_reporting_order");
        std::fs::write(&param, "9\n").unwrap();
        let held = PageReporting::hold_off_at(&param, false);
        assert_eq!(std::fs::read_to_string(&param).unwrap(), OFF);
        assert!(held.state.contains("9 → 11"), "{}", held.state);
        drop(held);
        assert_eq!(std::fs::read_to_string(&param).unwrap(), "9");
    }

    #[test]
    fn kept_or_already_off_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let param = dir.path().join("page_reporting_order");
        std::fs::write(&param, "9\n").unwrap();
        drop(PageReporting::hold_off_at(&param, true));
        assert_eq!(std::fs::read_to_string(&param).unwrap(), "9\n");
        std::fs::write(&param, OFF).unwrap();
        let found_off = PageReporting::hold_off_at(&param, false);
        assert!(
            found_off.state.starts_with("off, as found"),
            "{}",
            found_off.state
        );
        drop(found_off);
        assert_eq!(std::fs::read_to_string(&param).unwrap(), OFF);
    }

    #[test]
    fn a_machine_without_it_is_said_to_have_none() {
        let dir = tempfile::tempdir().unwrap();
        let absent = PageReporting::hold_off_at(&dir.path().join("absent"), false);
        assert!(absent.state.starts_with("none"), "{}", absent.state);
    }
}
