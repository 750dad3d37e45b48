//! Reverse DNS for `--resolve`, off the pipeline: one thread per lookup, a bounded number at
//! once, answers collected without waiting.

use std::ffi::CStr;
use std::net::{IpAddr, SocketAddr};
use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
    mpsc,
};

/// A reverse DNS lookup, `None` when there is no name.
pub(super) type LookupFn = fn(IpAddr) -> Option<String>;

/// Reverse DNS off the pipeline (see the module documentation).
pub(super) struct Resolver {
    lookup: LookupFn,
    max_pending: usize,
    /// Lookup threads still running, counted down by each thread when it ends.
    pub(super) pending: Arc<AtomicUsize>,
    answers_tx: mpsc::Sender<(IpAddr, Option<String>)>,
    answers: mpsc::Receiver<(IpAddr, Option<String>)>,
}

impl Resolver {
    pub(super) fn new(lookup: LookupFn, max_pending: usize) -> Self {
        let (answers_tx, answers) = mpsc::channel();
        Self {
            lookup,
            max_pending,
            pending: Arc::new(AtomicUsize::new(0)),
            answers_tx,
            answers,
        }
    }

    /// Starts looking `ip` up; `false` when too many lookups are running (or no thread
    /// starts): try again later.
    pub(super) fn start(&self, ip: IpAddr) -> bool {
        if self.pending.load(Ordering::Acquire) >= self.max_pending {
            return false;
        }
        let pending = Arc::clone(&self.pending);
        let answers = self.answers_tx.clone();
        let lookup = self.lookup;
        pending.fetch_add(1, Ordering::AcqRel);
        let spawned = std::thread::Builder::new()
            .name("netcon-resolve".into())
            .spawn(move || {
                // Sent before the count goes down; the receiver may be gone (exiting).
                let _ = answers.send((ip, lookup(ip)));
                pending.fetch_sub(1, Ordering::AcqRel);
            });
        if let Err(error) = spawned {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            tracing::warn!(%ip, %error, "cannot start a reverse DNS lookup; naming the file by address");
            return false;
        }
        true
    }

    /// The answers that arrived, without waiting.
    pub(super) fn answers(&self) -> Vec<(IpAddr, Option<String>)> {
        self.answers.try_iter().collect()
    }
}

/// `getnameinfo(3)` with `NI_NAMEREQD`: the name from `/etc/hosts` or a PTR record, `None` when
/// there is none (or the lookup failed).
pub(super) fn reverse_dns(ip: IpAddr) -> Option<String> {
    use nix::sys::socket::{SockaddrLike as _, SockaddrStorage};

    let addr = SockaddrStorage::from(SocketAddr::new(ip, 0));
    let mut host = [0 as libc::c_char; libc::NI_MAXHOST as usize];
    // SAFETY: `addr` is a valid socket address of `addr.len()` bytes; `host` is writable for
    // its full length, which is passed; no service buffer is asked for (null, length 0).
    let rc = unsafe {
        libc::getnameinfo(
            addr.as_ptr(),
            addr.len(),
            host.as_mut_ptr(),
            libc::NI_MAXHOST,
            std::ptr::null_mut(),
            0,
            libc::NI_NAMEREQD,
        )
    };
    if rc != 0 {
        // SAFETY: gai_strerror returns a static NUL-terminated string for any code.
        let why = unsafe { CStr::from_ptr(libc::gai_strerror(rc)) }.to_string_lossy();
        tracing::debug!(%ip, error = %why, "no reverse DNS name");
        return None;
    }
    // SAFETY: on success getnameinfo wrote a NUL-terminated string into `host`.
    let name = unsafe { CStr::from_ptr(host.as_ptr()) };
    let name = name.to_string_lossy().into_owned();
    (!name.is_empty()).then_some(name)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn reverse_dns_of_loopback_does_not_fail() {
        // Whatever the host's resolver says (usually `localhost` from /etc/hosts), the answer is
        // a name or nothing, never an error.
        let name = reverse_dns(IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert!(name.as_ref().is_none_or(|n| !n.is_empty()), "{name:?}");
    }
}
