//! A real rsyslogd (Debian's package `rsyslog`) for the `--forward` tests, started on loopback
//! with a configuration of the test's own and stopped on drop (also when the test panics).
//!
//! Nothing of the system's rsyslog is used: no `/etc/rsyslog.conf`, no work directory outside
//! the test's temporary directory, no `/dev/log`. It listens with imudp and imtcp on two
//! loopback ports picked free at start, and writes what each [`Input`] receives to its own file
//! ([`Rsyslog::lines`]), one line per message in the form [`TEMPLATE`] gives. Messages with
//! structured data are also parsed by `mmpstrucdata` and written as one JSON object each
//! ([`Rsyslog::sd_lines`]), the way an operator reads SD parameters back in rsyslog.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{Ipv4Addr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use crate::files::{TempDir, spawn_logged, stop_child};

/// The server's own output, in its directory.
const LOG: &str = "rsyslogd.log";

/// How long rsyslogd may take to start listening (a failure deadline only).
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long rsyslogd may take to exit after SIGTERM before it is killed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// imudp's socket receive buffer, bytes: 16 MiB (rsyslog forces it past `rmem_max` as root).
const UDP_RECEIVE_BUFFER: &str = "16m";
/// Pause between two looks at rsyslogd's output files.
const POLL: Duration = Duration::from_millis(50);

/// The line rsyslog writes per message: host, `facility.severity`, the structured data, the
/// message (rsyslog shows control characters in it as `#` and three octal digits: LF is
/// `#012`, TAB `#011`).
pub const TEMPLATE: &str =
    "%HOSTNAME% %syslogfacility-text%.%syslogseverity-text% %structured-data% %msg%\\n";

/// What rsyslog writes per message with structured data, after `mmpstrucdata` (with
/// `sd_name.lowercase="off"`) parsed it into `$!rfc5424-sd`.
pub const SD_TEMPLATE: &str = "%$!rfc5424-sd%\\n";

/// Where rsyslogd is: `$RSYSLOGD`, else `/usr/sbin/rsyslogd`.
///
/// # Panics
/// If it is not there.
#[must_use]
pub fn rsyslogd_binary() -> PathBuf {
    let path = std::env::var_os("RSYSLOGD")
        .map_or_else(|| PathBuf::from("/usr/sbin/rsyslogd"), PathBuf::from);
    assert!(
        path.is_file(),
        "rsyslogd not found at {}: install Debian's `rsyslog` (apt-get install -y rsyslog; \
         cargo xtask test does), or set RSYSLOGD",
        path.display()
    );
    path
}

/// One of rsyslog's two inputs, each written to its own files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// Syslog over UDP (RFC 5426).
    Udp,
    /// Octet-counted syslog over TCP (RFC 6587).
    Tcp,
}

impl Input {
    /// Its name, in the names of its files.
    fn name(self) -> &'static str {
        match self {
            Self::Udp => "udp",
            Self::Tcp => "tcp",
        }
    }
}

/// A running rsyslogd on loopback.
pub struct Rsyslog {
    child: Child,
    udp_port: u16,
    tcp_port: u16,
    // Last, so that the files outlive the process that writes them.
    dir: TempDir,
}

impl Rsyslog {
    /// Starts rsyslogd and waits until both inputs deliver a probe message to their files.
    ///
    /// # Panics
    /// If it is not installed, does not start, or does not deliver within [`START_TIMEOUT`].
    #[must_use]
    pub fn start() -> Rsyslog {
        let bin = rsyslogd_binary();
        let dir = TempDir::new("rsyslog");
        let udp_port = free_port(|| UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr());
        let tcp_port = free_port(|| TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr());
        let conf = dir.join("rsyslog.conf");
        std::fs::write(&conf, config(dir.path(), udp_port, tcp_port))
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", conf.display()));
        let mut cmd = Command::new(&bin);
        cmd.arg("-n")
            .arg("-f")
            .arg(&conf)
            .arg("-i")
            .arg(dir.join("rsyslogd.pid"));
        let child = spawn_logged(&mut cmd, &dir.join(LOG));
        let mut rsyslog = Rsyslog {
            child,
            udp_port,
            tcp_port,
            dir,
        };
        rsyslog.wait_ready();
        rsyslog
    }

    /// The loopback port `input` listens on.
    #[must_use]
    pub fn port(&self, input: Input) -> u16 {
        match input {
            Input::Udp => self.udp_port,
            Input::Tcp => self.tcp_port,
        }
    }

    /// Every line written so far for messages received on `input` (probes excluded).
    #[must_use]
    pub fn lines(&self, input: Input) -> Vec<String> {
        read_lines(&self.dir.join(&format!("{}.log", input.name())))
    }

    /// The structured data of every message received on `input` that has some, as
    /// `mmpstrucdata` parses it: one JSON object per line, `{"SD-ID": {"NAME": "value", ...},
    /// ...}` (the [`SD_TEMPLATE`]).
    #[must_use]
    pub fn sd_lines(&self, input: Input) -> Vec<String> {
        read_lines(&self.dir.join(&format!("{}.sd.log", input.name())))
    }

    /// Polls `lines` (e.g. `|r| r.lines(Input::Udp)`) until `done` holds for them, and returns
    /// them.
    ///
    /// # Panics
    /// If it does not within `timeout`, with the lines and rsyslogd's own output.
    pub fn wait_for(
        &mut self,
        lines: impl Fn(&Rsyslog) -> Vec<String>,
        done: impl Fn(&[String]) -> bool,
        timeout: Duration,
    ) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = lines(self);
            if done(&got) {
                return got;
            }
            self.assert_running();
            assert!(
                Instant::now() < deadline,
                "rsyslog did not write the expected lines within {timeout:?}; it wrote {} \
                 lines, the last ones: {:#?}\nrsyslogd's output:\n{}",
                got.len(),
                &got[got.len().saturating_sub(5)..],
                self.own_output()
            );
            std::thread::sleep(POLL);
        }
    }

    /// What rsyslogd printed itself.
    #[must_use]
    pub fn own_output(&self) -> String {
        std::fs::read_to_string(self.dir.join(LOG)).unwrap_or_default()
    }

    fn assert_running(&mut self) {
        crate::files::assert_running(&mut self.child, "rsyslogd", &self.dir.join(LOG));
    }

    /// Sends probes over both inputs until rsyslog has written one of each.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("probe socket");
        let mut tcp: Option<TcpStream> = None;
        let (mut udp_seen, mut tcp_seen) = (false, false);
        for attempt in 0u32.. {
            self.assert_running();
            assert!(
                Instant::now() < deadline,
                "rsyslogd did not take messages within {START_TIMEOUT:?} (udp {udp_seen}, tcp \
                 {tcp_seen}); its output:\n{}",
                self.own_output()
            );
            let probe = format!("<14>1 - probe netcon-tests - - - {PROBE} {attempt}");
            if !udp_seen {
                // Lost while rsyslog is not listening yet: sent again next round.
                let _ = udp.send_to(probe.as_bytes(), (Ipv4Addr::LOCALHOST, self.udp_port));
            }
            if !tcp_seen {
                if tcp.is_none() {
                    tcp = TcpStream::connect((Ipv4Addr::LOCALHOST, self.tcp_port)).ok();
                }
                if let Some(stream) = &mut tcp {
                    let frame = format!("{} {probe}", probe.len());
                    if stream.write_all(frame.as_bytes()).is_err() {
                        tcp = None;
                    }
                }
            }
            std::thread::sleep(POLL * 2);
            udp_seen = udp_seen || probed(&self.dir.join("udp.log"));
            tcp_seen = tcp_seen || probed(&self.dir.join("tcp.log"));
            if udp_seen && tcp_seen {
                return;
            }
        }
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        stop_child(&mut self.child, STOP_TIMEOUT);
    }
}

/// Text of the readiness probes, left out of [`Rsyslog::lines`].
const PROBE: &str = "netcon-tests-rsyslog-probe";

/// The configuration: one ruleset and output file per input, nothing else.
fn config(dir: &Path, udp_port: u16, tcp_port: u16) -> String {
    let dir = dir.display();
    let mut conf = String::new();
    let _ = writeln!(conf, "global(workDirectory=\"{dir}\")");
    let _ = writeln!(conf, "module(load=\"imudp\")");
    let _ = writeln!(conf, "module(load=\"imtcp\")");
    let _ = writeln!(conf, "module(load=\"mmpstrucdata\")");
    let _ = writeln!(
        conf,
        "template(name=\"netcon_sd\" type=\"string\" string=\"{SD_TEMPLATE}\")"
    );
    let _ = writeln!(
        conf,
        "template(name=\"netcon\" type=\"string\" string=\"{TEMPLATE}\")"
    );
    for (proto, port) in [("udp", udp_port), ("tcp", tcp_port)] {
        let _ = writeln!(
            conf,
            "ruleset(name=\"{proto}\") {{ action(type=\"omfile\" file=\"{dir}/{proto}.log\" \
             template=\"netcon\") if $structured-data != \"-\" then {{ \
             action(type=\"mmpstrucdata\" sd_name.lowercase=\"off\") \
             action(type=\"omfile\" file=\"{dir}/{proto}.sd.log\" template=\"netcon_sd\") }} }}"
        );
        // A capture file is forwarded as fast as it is read: give UDP a receive buffer that
        // holds a whole boot log while rsyslog writes (the default drops datagrams then).
        let buffer = if proto == "udp" {
            format!(" rcvbufSize=\"{UDP_RECEIVE_BUFFER}\"")
        } else {
            String::new()
        };
        let _ = writeln!(
            conf,
            "input(type=\"im{proto}\" address=\"127.0.0.1\" port=\"{port}\" \
             ruleset=\"{proto}\"{buffer})"
        );
    }
    conf
}

/// A loopback port that was free a moment ago (bound, then released for rsyslogd).
fn free_port(bind: impl Fn() -> std::io::Result<std::net::SocketAddr>) -> u16 {
    bind().expect("bind a loopback port").port()
}

fn probed(path: &Path) -> bool {
    std::fs::read_to_string(path).is_ok_and(|text| text.contains(PROBE))
}

/// The complete lines of `path` (a line rsyslog is still writing has no `\n` yet).
fn read_lines(path: &Path) -> Vec<String> {
    let bytes = std::fs::read(path).unwrap_or_default();
    let complete = bytes
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(&[][..], |end| &bytes[..end]);
    if complete.is_empty() {
        return Vec::new();
    }
    String::from_utf8_lossy(complete)
        .split('\n')
        .filter(|l| !l.contains(PROBE))
        .map(str::to_owned)
        .collect()
}
