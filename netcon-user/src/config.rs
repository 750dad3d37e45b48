//! The resolved configuration: what `run` needs, with names turned into interface indexes.

use std::{collections::BTreeSet, ffi::CString, path::PathBuf};

pub use crate::capture::Interface;
use crate::cli::SniffArgs;
pub use crate::cli::{BackendChoice, OutputFormat, StatsFormat, XdpModeChoice};

/// Why the command line could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `-i` named an interface this host (namespace) does not have.
    #[error("no interface named {name:?} (see `ip link`)")]
    UnknownInterface { name: String },
    /// No `-i` and no interface is up.
    #[error("no interface is up to capture on; name one with -i")]
    NoInterfaces,
    /// The interface list could not be read.
    #[error("cannot list interfaces: {source}")]
    ListInterfaces {
        #[source]
        source: nix::Error,
    },
}

/// Where frames come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The configured interfaces.
    Live,
    /// A capture file (`-` for stdin).
    File(PathBuf),
}

/// Everything `run` needs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where frames come from.
    pub source: Source,
    /// Save matched frames to this pcap file.
    pub write: Option<PathBuf>,
    /// Interfaces to capture on (empty when reading a file).
    pub interfaces: Vec<Interface>,
    /// UDP destination ports to match.
    pub ports: Vec<u16>,
    /// Hold the interfaces in promiscuous mode.
    pub promisc: bool,
    /// Live capture backend.
    pub backend: BackendChoice,
    /// How to attach XDP.
    pub xdp_mode: XdpModeChoice,
    /// Who stamps frames on the XDP backend.
    pub xdp_timestamps: crate::capture::xdp::Timestamps,
    /// Output format.
    pub format: OutputFormat,
    /// Color the text output.
    pub color: bool,
    /// Ring buffer size, bytes.
    pub ring_bytes: u32,
    /// Senders to decode (empty: all).
    pub allow: Vec<ipnet::IpNet>,
    /// Seconds between stats lines.
    pub stats_interval: Option<std::time::Duration>,
    /// Drop root to this user after setup.
    pub user: Option<String>,
    /// Per-sender log files.
    pub log_dir: Option<crate::sink::files::LogDirOptions>,
    /// Syslog servers to forward to.
    pub forward: Vec<crate::sink::syslog::ForwardUrl>,
    /// NATS clusters to forward to.
    pub nats: crate::sink::nats::NatsForwarding,
    /// The panic hook.
    pub on_panic: Option<crate::sink::hook::PanicHookOptions>,
    /// The one budget for all state held on behalf of senders.
    pub budget: crate::budget::MemoryBudget,
    /// How stats summaries are written.
    pub stats_format: StatsFormat,
    /// Where to serve Prometheus metrics.
    pub metrics: Option<std::net::SocketAddr>,
    /// Per-sender metric series.
    pub metrics_per_sender: bool,
}

impl Config {
    /// Resolves interface names and defaults.
    ///
    /// # Errors
    /// [`ConfigError`] for an unknown interface, or when none is up.
    pub fn from_cli(cli: SniffArgs) -> Result<Self, ConfigError> {
        let names = if cli.read.is_some() {
            Vec::new()
        } else if cli.interfaces.is_empty() {
            interfaces_up()?
        } else {
            cli.interfaces
        };
        let mut interfaces = Vec::with_capacity(names.len());
        for name in names {
            let ifindex =
                ifindex(&name).ok_or(ConfigError::UnknownInterface { name: name.clone() })?;
            if !interfaces.iter().any(|i: &Interface| i.ifindex == ifindex) {
                interfaces.push(Interface { name, ifindex });
            }
        }
        let (mut forward, mut nats_urls) = (Vec::new(), Vec::new());
        for target in cli.forward {
            match target {
                crate::sink::ForwardTarget::Syslog(url) => forward.push(url),
                crate::sink::ForwardTarget::Nats(url) => nats_urls.push(url),
            }
        }
        let nats = crate::sink::nats::NatsForwarding {
            urls: nats_urls,
            stream: cli
                .nats_stream
                .map(|name| crate::sink::nats::StreamOptions {
                    name,
                    replicas: usize::from(cli.nats_replicas),
                }),
        };
        let mut ports = cli.ports;
        ports.sort_unstable();
        ports.dedup();
        let writing_pcap = cli.write.is_some();
        Ok(Self {
            source: cli.read.map_or(Source::Live, Source::File),
            write: cli.write,
            backend: cli.backend,
            interfaces,
            ports,
            promisc: cli.promisc,
            xdp_mode: cli.xdp_mode,
            xdp_timestamps: cli.xdp_timestamps.resolve(writing_pcap),
            format: cli.format,
            color: match cli.color {
                crate::cli::ColorChoice::Always => true,
                crate::cli::ColorChoice::Never => false,
                crate::cli::ColorChoice::Auto => {
                    use std::io::IsTerminal as _;
                    // https://no-color.org: set and not empty means no color.
                    std::io::stdout().is_terminal()
                        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
                }
            },
            ring_bytes: cli.ring_mib << 20,
            allow: cli.allow,
            stats_interval: cli.stats.map(std::time::Duration::from_secs),
            user: cli.user,
            log_dir: cli.log_dir.map(|dir| crate::sink::files::LogDirOptions {
                dir,
                resolve: cli.resolve,
                fsync: cli.fsync,
            }),
            forward,
            nats,
            on_panic: cli
                .on_panic
                .map(|command| crate::sink::hook::PanicHookOptions {
                    command: command.split_whitespace().map(str::to_owned).collect(),
                    min_interval: std::time::Duration::from_secs(cli.on_panic_interval),
                    timeout: std::time::Duration::from_secs(cli.on_panic_timeout),
                }),
            budget: crate::budget::MemoryBudget::from_mib(cli.max_memory_mib),
            stats_format: cli.stats_format,
            metrics: cli.metrics,
            metrics_per_sender: cli.metrics_per_sender,
        })
    }

    /// The name of interface `ifindex`, if it is one of ours.
    #[must_use]
    pub fn interface_name(&self, ifindex: u32) -> Option<&str> {
        self.interfaces
            .iter()
            .find(|i| i.ifindex == ifindex)
            .map(|i| i.name.as_str())
    }
}

fn ifindex(name: &str) -> Option<u32> {
    let name = CString::new(name).ok()?;
    // SAFETY: name is a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

/// Names of the interfaces that are up, loopback excepted, in a stable order.
fn interfaces_up() -> Result<Vec<String>, ConfigError> {
    use nix::net::if_::InterfaceFlags;
    let names: BTreeSet<String> = nix::ifaddrs::getifaddrs()
        .map_err(|source| ConfigError::ListInterfaces { source })?
        .filter(|a| {
            a.flags.contains(InterfaceFlags::IFF_UP)
                && !a.flags.contains(InterfaceFlags::IFF_LOOPBACK)
        })
        .map(|a| a.interface_name)
        .collect();
    if names.is_empty() {
        return Err(ConfigError::NoInterfaces);
    }
    Ok(names.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Cli;
    use clap::Parser;

    #[test]
    fn resolves_loopback_and_dedups() {
        let cli = Cli::parse_from(["netcon-sniff", "-i", "lo", "-i", "lo", "-p", "7", "-p", "7"]);
        let config = Config::from_cli(cli.sniff).unwrap();
        assert_eq!(config.interfaces.len(), 1);
        assert_eq!(config.interfaces[0].name, "lo");
        assert_eq!(
            config.interface_name(config.interfaces[0].ifindex),
            Some("lo")
        );
        assert_eq!(config.ports, vec![7]);
        assert_eq!(config.ring_bytes, 8 << 20);
    }

    #[test]
    fn xdp_timestamps_are_the_kernel_s_with_a_pcap_file_only() {
        use crate::capture::xdp::Timestamps;
        let timestamps = |args: &[&str]| {
            let cli = Cli::parse_from(["netcon-sniff", "-i", "lo"].iter().chain(args));
            Config::from_cli(cli.sniff).unwrap().xdp_timestamps
        };
        assert_eq!(timestamps(&[]), Timestamps::Read);
        assert_eq!(timestamps(&["-w", "/dev/null"]), Timestamps::Kernel);
        assert_eq!(
            timestamps(&["--xdp-timestamps", "kernel"]),
            Timestamps::Kernel
        );
        assert_eq!(
            timestamps(&["-w", "/dev/null", "--xdp-timestamps", "read"]),
            Timestamps::Read
        );
    }

    #[test]
    fn forward_splits_syslog_and_nats() {
        let cli = Cli::parse_from([
            "netcon-sniff",
            "-i",
            "lo",
            "--forward",
            "nats://a,b:4223/site1",
            "--forward",
            "syslog+udp://127.0.0.1",
            "--nats-stream",
            "NETCON",
            "--nats-replicas",
            "3",
        ]);
        let config = Config::from_cli(cli.sniff).unwrap();
        assert_eq!(config.forward.len(), 1);
        assert_eq!(config.nats.urls.len(), 1);
        assert_eq!(config.nats.urls[0].servers, vec!["a:4222", "b:4223"]);
        assert_eq!(
            config.nats.stream,
            Some(crate::sink::nats::StreamOptions {
                name: "NETCON".into(),
                replicas: 3
            })
        );
        let error = Cli::try_parse_from(["netcon-sniff", "--forward", "http://x"]).unwrap_err();
        assert!(error.to_string().contains("nats://"), "{error}");
        assert!(Cli::try_parse_from(["netcon-sniff", "--nats-replicas", "3"]).is_err());
        assert!(Cli::try_parse_from(["netcon-sniff", "--nats-stream", "a.b"]).is_err());
    }

    #[test]
    fn unknown_interface_is_an_error() {
        let cli = Cli::parse_from(["netcon-sniff", "-i", "nonexistent-if0"]);
        let err = Config::from_cli(cli.sniff).unwrap_err();
        assert!(err.to_string().contains("nonexistent-if0"), "{err}");
    }
}
