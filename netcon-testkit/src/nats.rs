//! Debian's `nats-server` with `JetStream`, started inside a test's namespace, alone or as one
//! node of a cluster, and read through its monitoring endpoint (`/jsz`, `/connz`).

use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::files::{TempDir, wait_until, write_file};
use crate::netns::{Netns, require_root};

/// How long a server may take to answer `/healthz` with `JetStream` ready (a failure deadline;
/// a cluster elects its meta leader within a few seconds).
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Deadline for one monitoring request.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

/// `nats-server` on PATH, or Debian's.
///
/// # Panics
/// If it is not installed (the message says how to install it).
#[must_use]
pub fn nats_server_binary() -> PathBuf {
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let path = PathBuf::from(dir).join("nats-server");
        if path.is_file() {
            return path;
        }
    }
    let debian = PathBuf::from("/usr/sbin/nats-server");
    assert!(
        debian.is_file(),
        "nats-server is not installed: `apt-get install nats-server` (or `cargo xtask test`)"
    );
    debian
}

/// One node's ports and, in a cluster, its peers' route ports.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// `server_name`, unique in a cluster.
    pub name: String,
    /// Client port (all addresses of the namespace).
    pub client_port: u16,
    /// Monitoring port (HTTP, all addresses).
    pub monitor_port: u16,
    /// Cluster route port and the other nodes' route ports; `None` for a single server.
    pub cluster: Option<(u16, Vec<u16>)>,
}

impl NodeConfig {
    /// A single server on 4222, monitoring on 8222.
    #[must_use]
    pub fn single() -> NodeConfig {
        NodeConfig {
            name: "n1".to_owned(),
            client_port: 4222,
            monitor_port: 8222,
            cluster: None,
        }
    }

    /// Node `i` (0-based) of an `n`-node cluster on loopback: client 4222+i, monitoring 8222+i,
    /// routes 6222+i.
    #[must_use]
    pub fn cluster_node(i: u16, n: u16) -> NodeConfig {
        NodeConfig {
            name: format!("n{}", i + 1),
            client_port: 4222 + i,
            monitor_port: 8222 + i,
            cluster: Some((
                6222 + i,
                (0..n).filter(|&k| k != i).map(|k| 6222 + k).collect(),
            )),
        }
    }
}

/// A running `nats-server -js`, killed on drop. Its store lives in a temporary directory.
#[derive(Debug)]
pub struct NatsServer {
    child: Option<Child>,
    netns: String,
    /// Its configuration.
    pub config: NodeConfig,
    dir: TempDir,
}

impl NatsServer {
    /// Starts the server in `ns` (does not wait: see [`NatsServer::wait_ready`]).
    ///
    /// # Panics
    /// If not root or the server cannot be started.
    #[must_use]
    pub fn start(ns: &Netns, config: NodeConfig) -> NatsServer {
        require_root();
        let dir = TempDir::new(&format!("nats-{}", config.name));
        let mut text = format!(
            "server_name: {name}\nlisten: 0.0.0.0:{client}\nhttp: 0.0.0.0:{monitor}\n\
             jetstream {{\n  store_dir: \"{store}\"\n  max_memory_store: 64MB\n  \
             max_file_store: 512MB\n}}\n",
            name = config.name,
            client = config.client_port,
            monitor = config.monitor_port,
            store = dir.join("store").display(),
        );
        if let Some((route, peers)) = &config.cluster {
            let routes: Vec<String> = peers
                .iter()
                .map(|p| format!("nats-route://127.0.0.1:{p}"))
                .collect();
            let _ = write!(
                text,
                "cluster {{\n  name: netcon-test\n  listen: 127.0.0.1:{route}\n  routes: [{}]\n}}\n",
                routes.join(", ")
            );
        }
        let file = dir.join("nats.conf");
        write_file(&file, text.as_bytes());
        let log = std::fs::File::create(dir.join("nats.log")).expect("a log file");
        let child = Command::new("ip")
            .args(["netns", "exec", ns.name()])
            .arg(nats_server_binary())
            .arg("-c")
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start nats-server in {}: {e}", ns.name()));
        NatsServer {
            child: Some(child),
            netns: ns.name().to_owned(),
            config,
            dir,
        }
    }

    /// Waits until `/healthz` says ok (`JetStream` ready).
    ///
    /// # Panics
    /// After [`READY_TIMEOUT`], with the server's log.
    pub fn wait_ready(&self, ns: &Netns) {
        wait_until(READY_TIMEOUT, Duration::from_millis(100), || {
            let healthy = self
                .try_get(ns, "/healthz")
                .is_some_and(|body| body.contains("\"ok\""));
            (!healthy).then(|| {
                format!(
                    "nats-server {} not healthy; log:\n{}",
                    self.config.name,
                    self.log()
                )
            })
        });
    }

    /// The server's log so far.
    #[must_use]
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("nats.log")).unwrap_or_default()
    }

    /// `GET PATH` on the monitoring port, from inside `ns`; `None` when it does not answer.
    ///
    /// # Panics
    /// If `ns` is not the server's namespace.
    #[must_use]
    pub fn try_get(&self, ns: &Netns, path: &str) -> Option<String> {
        assert_eq!(
            ns.name(),
            self.netns,
            "the server runs in another namespace"
        );
        let port = self.config.monitor_port;
        ns.run_in(|| {
            let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).ok()?;
            stream.set_read_timeout(Some(HTTP_TIMEOUT)).ok()?;
            write!(
                stream,
                "GET {path} HTTP/1.0\r\nHost: localhost\r\nConnection: close\r\n\r\n"
            )
            .ok()?;
            let mut response = String::new();
            stream.read_to_string(&mut response).ok()?;
            let (head, body) = response.split_once("\r\n\r\n")?;
            head.starts_with("HTTP/1.").then(|| body.to_owned())
        })
    }

    /// The number of messages stream `name` holds, as `/jsz` reports it on this node (`None`
    /// when it does not know the stream yet).
    #[must_use]
    pub fn stream_messages(&self, ns: &Netns, name: &str) -> Option<u64> {
        let body = self.try_get(ns, "/jsz?accounts=true&streams=true")?;
        let jsz: serde_json::Value = serde_json::from_str(&body).ok()?;
        jsz["account_details"]
            .as_array()?
            .iter()
            .filter_map(|a| a["stream_detail"].as_array())
            .flatten()
            .find(|s| s["name"] == name)
            .and_then(|s| s["state"]["messages"].as_u64())
    }

    /// Waits until stream `name` holds `want` messages on this node.
    ///
    /// # Panics
    /// After `timeout`, with the last count.
    pub fn wait_stream_messages(&self, ns: &Netns, name: &str, want: u64, timeout: Duration) {
        wait_until(timeout, Duration::from_millis(100), || {
            let got = self.stream_messages(ns, name);
            (got != Some(want)).then(|| {
                format!(
                    "stream {name} on {} holds {got:?} messages, expected {want}",
                    self.config.name
                )
            })
        });
    }

    /// Client connections named `name` (`/connz`).
    #[must_use]
    pub fn connections_named(&self, ns: &Netns, name: &str) -> usize {
        let Some(body) = self.try_get(ns, "/connz") else {
            return 0;
        };
        let connz: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        connz["connections"]
            .as_array()
            .map_or(0, |c| c.iter().filter(|c| c["name"] == name).count())
    }

    /// Waits until a client connection named `name` has a subscription (`/connz?subs=1`).
    ///
    /// # Panics
    /// After [`READY_TIMEOUT`].
    pub fn wait_subscribed(&self, ns: &Netns, name: &str) {
        wait_until(READY_TIMEOUT, Duration::from_millis(50), || {
            let connz: serde_json::Value = self
                .try_get(ns, "/connz?subs=1")
                .and_then(|body| serde_json::from_str(&body).ok())
                .unwrap_or_default();
            let subscribed = connz["connections"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["name"] == name && c["subscriptions"].as_u64() > Some(0))
            });
            (!subscribed).then(|| format!("no subscription from {name:?} on {}", self.config.name))
        });
    }

    /// Kills the server at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}
