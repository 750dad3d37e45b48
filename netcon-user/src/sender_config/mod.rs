//! `netcon-sniff sender-config`: the netconsole configuration for the machine to be logged.
//!
//! Run on the sender, it asks the kernel over rtnetlink for the route to the collector (source
//! address, output device, gateway) and for the next hop's MAC in the neighbour table, nudging
//! resolution when the entry is missing; then prints the `netconsole=` option string and the
//! commands that use it (modprobe, kernel command line, configfs), with warnings where the
//! result needs care.
//!
//! - [`target`]: the `--target IP[:PORT]` value.
//! - [`plan`]: the decision, sans I/O: kernel facts in, a [`SenderConfig`] and warnings out.
//! - [`render`]: the text and JSON output.
//! - `netlink`: the thin shell that gathers the facts.

#![expect(
    clippy::doc_markdown,
    reason = "doc comments on SenderConfigArgs are the --help text, read in a terminal"
)]

mod netlink;
pub mod plan;
pub mod render;
pub mod target;

use std::io::{self, Write as _};
use std::net::IpAddr;
use std::time::Duration;

use clap::ValueEnum;

pub use plan::{PlanError, SenderConfig, Warning, WarningKind};
pub use target::TargetArg;

/// netconsole's default UDP destination port (`drivers/net/netconsole.c`).
pub const DEFAULT_TARGET_PORT: u16 = 6666;

/// The end of `sender-config --help`: what it does and how.
pub const AFTER_HELP: &str = "\
Prints the netconsole configuration that sends this machine's kernel log to the collector:
the `modprobe netconsole netconsole=...` line, the kernel command-line form and the configfs
commands, ready to paste, then `dmesg -n 8` and a test line. The source address, the output
device and the MAC to send to (the collector's when on-link, the gateway's when routed) come
from the kernel's route and neighbour tables. A MAC not known yet is resolved by sending one
empty datagram to the next hop's discard port (9), waiting up to --resolve-ms; if it stays
unknown, the configuration broadcasts, with a warning.

Examples:
  netcon-sniff sender-config --target 10.0.0.5                 plain format, port 6666
  netcon-sniff sender-config --target 10.0.0.5:6666 --extended --release
  netcon-sniff sender-config --target '[fe80::5%eth0]:6666'    link-local, through eth0
  netcon-sniff sender-config --target 10.0.0.5 --format json   for scripts";

/// Options of `sender-config`. The subcommand's one-line help is its variant's doc comment in
/// [`crate::cli::Command`]; [`AFTER_HELP`] follows the options in `--help`.
#[derive(Debug, clap::Args)]
#[command(after_long_help = AFTER_HELP)]
pub struct SenderConfigArgs {
    /// The collector: IP[:PORT], port 6666 by default. IPv6 as fd00::5 or [fd00::5]:6666;
    /// a link-local address with its device: [fe80::5%eth0]:6666.
    #[arg(long, value_name = "IP[:PORT]")]
    pub target: TargetArg,

    /// Extended format (netconsole's `+`): every record with its level, sequence number and
    /// timestamp, long ones fragmented rather than cut.
    #[arg(long)]
    pub extended: bool,

    /// Prepend the kernel release to every record (netconsole's `r`). Needs --extended and
    /// Linux 6.6 or later.
    #[arg(long)]
    pub release: bool,

    /// netconsole's UDP source port.
    #[arg(long, default_value_t = 6665, value_name = "PORT",
          value_parser = clap::value_parser!(u16).range(1..))]
    pub src_port: u16,

    /// Send through this device instead of the one the route picks (the route lookup then
    /// runs for this device, as `ip route get TARGET oif DEV`).
    #[arg(long, value_name = "DEV")]
    pub dev: Option<String>,

    /// Name of the target directory in configfs (/sys/kernel/config/netconsole/NAME):
    /// letters, digits, `_`, `-` and `.`.
    #[arg(long, default_value = "netcon", value_name = "NAME", value_parser = parse_name)]
    pub name: String,

    /// How long to wait for the next hop's MAC to resolve when it is not in the neighbour
    /// table yet, in milliseconds (0: do not try).
    #[arg(long, default_value_t = 1000, value_name = "MS",
          value_parser = clap::value_parser!(u64).range(0..=10_000))]
    pub resolve_ms: u64,

    /// Output format: `text`, commented commands to read and paste; `json`, one object with
    /// every field, the commands and the warnings, for scripts.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text, value_name = "FORMAT")]
    pub format: OutputFormat,
}

/// Output format of `sender-config`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Commands to paste, with `#` comments.
    Text,
    /// One JSON object.
    Json,
}

fn parse_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s != "."
        && s != ".."
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
    if ok {
        Ok(s.to_owned())
    } else {
        Err("1 to 64 letters, digits, `_`, `-` or `.`".to_owned())
    }
}

/// Why no configuration could be produced.
#[derive(Debug, thiserror::Error)]
pub enum SenderConfigError {
    /// The facts allow no working configuration, or the options contradict each other.
    #[error(transparent)]
    Plan {
        /// What is wrong.
        #[from]
        source: PlanError,
    },
    /// `--dev` and the target's `%DEV` zone disagree.
    #[error("--dev {dev} and the target's zone %{zone} name different devices: give one")]
    DeviceConflict {
        /// `--dev`.
        dev: String,
        /// The zone.
        zone: String,
    },
    /// The named device does not exist.
    #[error("there is no network device named {dev} (see `ip link`)")]
    UnknownDevice {
        /// The name given.
        dev: String,
    },
    /// The kernel has no route to the target.
    #[error(
        "no usable route to {target} ({source}): check `ip route get {target}` and add a route to \
         the collector"
    )]
    NoRoute {
        /// The target.
        target: IpAddr,
        /// The kernel's answer (ENETUNREACH: no route; EHOSTUNREACH, EACCES, EINVAL: an
        /// unreachable, prohibit or blackhole route).
        #[source]
        source: io::Error,
    },
    /// A netlink request failed.
    #[error("{what}: {source} (sender-config reads the kernel's tables over rtnetlink)")]
    Netlink {
        /// What was being done.
        what: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The async runtime for the netlink socket could not start.
    #[error("cannot start the runtime for the netlink socket: {source}")]
    Runtime {
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Writing the configuration failed.
    #[error("cannot write the configuration: {source}")]
    Output {
        /// The error.
        #[source]
        source: io::Error,
    },
}

impl SenderConfigArgs {
    /// The request these options make, checked for contradictions.
    ///
    /// # Errors
    /// `--release` without `--extended`; `--dev` and a `%DEV` zone that differ.
    pub fn request(&self) -> Result<plan::Request, SenderConfigError> {
        if self.release && !self.extended {
            return Err(PlanError::ReleaseWithoutExtended.into());
        }
        let dev = match (&self.dev, &self.target.zone) {
            (Some(dev), Some(zone)) if dev != zone => {
                return Err(SenderConfigError::DeviceConflict {
                    dev: dev.clone(),
                    zone: zone.clone(),
                });
            }
            (dev, zone) => dev.clone().or_else(|| zone.clone()),
        };
        Ok(plan::Request {
            target: self.target.ip,
            target_port: self.target.port.unwrap_or(DEFAULT_TARGET_PORT),
            src_port: self.src_port,
            extended: self.extended,
            release: self.release,
            name: self.name.clone(),
            dev,
        })
    }
}

/// Looks up the route and the next hop, then prints the configuration on stdout.
///
/// # Errors
/// [`SenderConfigError`]: contradicting options, no route, a target or device netconsole
/// cannot use, netlink failures. A closed stdout is not an error.
pub fn run(args: &SenderConfigArgs) -> Result<(), SenderConfigError> {
    let request = args.request()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| SenderConfigError::Runtime { source })?;
    let facts = runtime.block_on(netlink::gather(
        request.target,
        request.dev.as_deref(),
        Duration::from_millis(args.resolve_ms),
    ))?;
    let config = plan::plan(&request, &facts)?;
    let mut output = match args.format {
        OutputFormat::Text => config.to_text(),
        OutputFormat::Json => config.to_json(),
    };
    if !output.ends_with('\n') {
        output.push('\n');
    }
    let mut stdout = io::stdout().lock();
    match stdout
        .write_all(output.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => {
            Err(SenderConfigError::Output { source: e })
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: SenderConfigArgs,
    }

    fn args(list: &[&str]) -> Result<SenderConfigArgs, clap::Error> {
        Wrapper::try_parse_from(std::iter::once("sender-config").chain(list.iter().copied()))
            .map(|w| w.args)
    }

    #[test]
    fn defaults() {
        let a = args(&["--target", "10.0.0.5"]).unwrap();
        let r = a.request().unwrap();
        assert_eq!(r.target_port, 6666);
        assert_eq!(r.src_port, 6665);
        assert_eq!(r.name, "netcon");
        assert_eq!(r.dev, None);
        assert!(!r.extended && !r.release);
        assert_eq!(a.resolve_ms, 1000);
        assert_eq!(a.format, OutputFormat::Text);
    }

    #[test]
    fn options() {
        let a = args(&[
            "--target",
            "[fe80::5%eth1]:7000",
            "--extended",
            "--release",
            "--src-port",
            "7001",
            "--name",
            "box-1",
            "--format",
            "json",
        ])
        .unwrap();
        let r = a.request().unwrap();
        assert_eq!(r.target_port, 7000);
        assert_eq!(r.src_port, 7001);
        assert_eq!(r.dev.as_deref(), Some("eth1"));
        assert!(r.extended && r.release);
        assert_eq!(a.format, OutputFormat::Json);
    }

    #[test]
    fn release_without_extended_is_refused() {
        let a = args(&["--target", "10.0.0.5", "--release"]).unwrap();
        let e = a.request().unwrap_err();
        assert!(
            e.to_string().starts_with("--release needs --extended"),
            "{e}"
        );
    }

    #[test]
    fn dev_and_zone_must_agree() {
        let a = args(&["--target", "fe80::5%eth1", "--dev", "eth1"]).unwrap();
        assert_eq!(a.request().unwrap().dev.as_deref(), Some("eth1"));
        let a = args(&["--target", "fe80::5%eth1", "--dev", "eth2"]).unwrap();
        assert!(matches!(
            a.request(),
            Err(SenderConfigError::DeviceConflict { .. })
        ));
    }

    #[test]
    fn rejects_bad_values() {
        assert!(args(&[]).is_err());
        assert!(args(&["--target", "nope"]).is_err());
        assert!(args(&["--target", "10.0.0.5", "--src-port", "0"]).is_err());
        assert!(args(&["--target", "10.0.0.5", "--name", "a/b"]).is_err());
        assert!(args(&["--target", "10.0.0.5", "--name", ".."]).is_err());
        assert!(args(&["--target", "10.0.0.5", "--resolve-ms", "20000"]).is_err());
        assert!(args(&["--target", "10.0.0.5", "--format", "yaml"]).is_err());
    }
}
