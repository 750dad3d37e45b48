//! Debian's Prometheus for the `--metrics` tests: `promtool check metrics` on scraped text, a
//! real `prometheus` server scraping netcon-sniff inside a namespace, and a small HTTP GET to
//! read both.
//!
//! The server runs with a configuration and storage of the test's own (a temporary directory),
//! on a loopback address inside the namespace it is started in, and is stopped on drop (also
//! when the test panics; `PR_SET_PDEATHSIG` when the test process is killed).

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use crate::files::{TempDir, run_bounded, spawn_logged, stop_child};
use crate::netns::Netns;

/// The server's own output, in its directory.
const LOG: &str = "prometheus.log";

/// How long one HTTP exchange may take (a failure deadline only).
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long prometheus may take to answer its readiness endpoint.
pub const START_TIMEOUT: Duration = Duration::from_mins(1);
/// How long prometheus may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest HTTP response read: 16 MiB.
const MAX_RESPONSE: u64 = 16 << 20;

/// Where a Debian binary of the `prometheus` package is: `$VAR` if set, else `/usr/bin/NAME`.
///
/// # Panics
/// If it is not there.
#[must_use]
pub fn prometheus_binary(name: &str, var: &str) -> PathBuf {
    let path =
        std::env::var_os(var).map_or_else(|| PathBuf::from("/usr/bin").join(name), PathBuf::from);
    assert!(
        path.is_file(),
        "{name} not found at {}: install Debian's `prometheus` (apt-get install -y prometheus; \
         cargo xtask test does), or set {var}",
        path.display()
    );
    path
}

/// `GET path` from `addr` (HTTP/1.1, one request, connection closed): the status code and the
/// body.
///
/// # Panics
/// If the server cannot be reached or the response is not HTTP.
#[must_use]
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect_timeout(&addr, HTTP_TIMEOUT)
        .unwrap_or_else(|e| panic!("cannot connect to {addr}: {e}"));
    stream
        .set_read_timeout(Some(HTTP_TIMEOUT))
        .expect("timeout");
    stream
        .set_write_timeout(Some(HTTP_TIMEOUT))
        .expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap_or_else(|e| panic!("sending GET {path} to {addr}: {e}"));
    let mut bytes = Vec::new();
    stream
        .take(MAX_RESPONSE)
        .read_to_end(&mut bytes)
        .unwrap_or_else(|e| panic!("reading the response to GET {path} from {addr}: {e}"));
    let text = String::from_utf8(bytes).expect("a UTF-8 response");
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in the response: {text:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    // Chunked bodies are not expected: both servers here send Content-Length.
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{head}"
    );
    (status, body.to_owned())
}

/// `promtool check metrics` on `text`: `Ok` when it exits 0, else its output.
///
/// # Errors
/// What promtool said when it found problems.
///
/// # Panics
/// If promtool is missing or does not finish within a minute.
pub fn promtool_check_metrics(text: &str) -> Result<(), String> {
    let bin = prometheus_binary("promtool", "PROMTOOL");
    let dir = TempDir::new("promtool");
    let input = dir.join("metrics.prom");
    std::fs::write(&input, text).expect("write the metrics");
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("exec \"$0\" check metrics < \"$1\"")
        .arg(&bin)
        .arg(&input);
    let out = run_bounded(&mut cmd, Duration::from_mins(1));
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A running `prometheus` inside a namespace.
pub struct Prometheus {
    child: Child,
    addr: SocketAddr,
    ns_name: String,
    // Last, so that storage outlives the process.
    dir: TempDir,
}

impl Prometheus {
    /// Starts prometheus in `ns`, listening on `listen`, scraping `target` (`HOST:PORT`, path
    /// `/metrics`) every `interval`, and waits until it is ready.
    ///
    /// # Panics
    /// If it is not installed, does not start, or is not ready within [`START_TIMEOUT`].
    #[must_use]
    pub fn start(
        ns: &Netns,
        listen: SocketAddr,
        target: SocketAddr,
        interval: Duration,
    ) -> Prometheus {
        let bin = prometheus_binary("prometheus", "PROMETHEUS");
        let dir = TempDir::new("prometheus");
        let secs = interval.as_secs().max(1);
        let conf = dir.join("prometheus.yml");
        std::fs::write(
            &conf,
            format!(
                "global:\n  scrape_interval: {secs}s\n  scrape_timeout: {secs}s\n\
                 scrape_configs:\n  - job_name: netcon\n    static_configs:\n      \
                 - targets: ['{target}']\n"
            ),
        )
        .expect("write prometheus.yml");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns.name()])
            .arg(&bin)
            .arg(format!("--config.file={}", conf.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={listen}"));
        let child = spawn_logged(&mut cmd, &dir.join(LOG));
        let mut prometheus = Prometheus {
            child,
            addr: listen,
            ns_name: ns.name().to_owned(),
            dir,
        };
        prometheus.wait_ready(ns);
        prometheus
    }

    /// What prometheus printed itself.
    #[must_use]
    pub fn own_output(&self) -> String {
        std::fs::read_to_string(self.dir.join(LOG)).unwrap_or_default()
    }

    fn assert_running(&mut self) {
        let who = format!("prometheus (in {})", self.ns_name);
        crate::files::assert_running(&mut self.child, &who, &self.dir.join(LOG));
    }

    fn wait_ready(&mut self, ns: &Netns) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            self.assert_running();
            let addr = self.addr;
            let ready = ns.run_in(move || {
                TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
                    && http_get(addr, "/-/ready").0 == 200
            });
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus was not ready within {START_TIMEOUT:?}; its output:\n{}",
                self.own_output()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The value of the instant query `expr` (URL-safe as given), if it has exactly one sample.
    ///
    /// # Panics
    /// If the API answers with an error.
    #[must_use]
    pub fn query_scalar(&mut self, ns: &Netns, expr: &str) -> Option<f64> {
        self.assert_running();
        let addr = self.addr;
        let path = format!("/api/v1/query?query={expr}");
        let (status, body) = ns.run_in(move || http_get(addr, &path));
        assert_eq!(status, 200, "query {expr}: {body}");
        let json: serde_json::Value = serde_json::from_str(&body).expect("JSON from the API");
        assert_eq!(json["status"], "success", "{body}");
        let result = json["data"]["result"].as_array()?;
        match result.as_slice() {
            [one] => one["value"][1].as_str()?.parse().ok(),
            _ => None,
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        stop_child(&mut self.child, STOP_TIMEOUT);
    }
}
