//! Set-up shared by the end-to-end test files: starting netcon-sniff on a topology's link and
//! stopping it, and the records the fixtures' guests wrote. Each test file is a crate of its own and uses only some of these.
#![allow(dead_code)]

pub mod expected;

use netcon_testkit::{Sniffer, Topology};

/// `netcon-sniff -i IF EXTRA...` in the collector namespace, IF the collector side of `topo`'s
/// link; it may still be starting (or failing to start) on return.
pub fn start_on_link(topo: &Topology, extra: &[&str]) -> Sniffer {
    let mut args = vec!["-i", topo.link().collector_if.as_str()];
    args.extend_from_slice(extra);
    Sniffer::start(&topo.collector, &args)
}

/// [`start_on_link`], then waits until it listens.
pub fn sniff_on_link(topo: &Topology, extra: &[&str]) -> Sniffer {
    let mut s = start_on_link(topo, extra);
    s.wait_ready();
    s
}

/// Stops `s` with SIGTERM, checks that it exited 0, and returns its stderr.
pub fn stop(s: &mut Sniffer) -> String {
    s.sigterm();
    let (status, stderr) = s.wait();
    assert!(status.success(), "{stderr}");
    stderr
}

/// Waits for `s` to end by itself, checks that it refused to run (exit code 2), and returns
/// its stderr.
pub fn refused(s: &mut Sniffer) -> String {
    let (status, stderr) = s.wait();
    assert_eq!(status.code(), Some(2), "{stderr}");
    stderr
}
