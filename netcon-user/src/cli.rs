//! The command line, as clap parses it. [`crate::Config::from_cli`] resolves it.
#![expect(
    clippy::doc_markdown,
    reason = "doc comments here are the --help text, read in a terminal"
)]

use clap::{Parser, ValueEnum};

/// Catch Linux netconsole messages off the wire.
///
/// netconsole sends kernel log lines, including the last words of a machine that is panicking,
/// as UDP datagrams, by default to the broadcast MAC. netcon-sniff sees them at the frame level
/// with an XDP program, so it also catches datagrams addressed to another host's IP on a shared
/// segment, and (with --promisc) traffic on a switch mirror port. The host's own traffic is never
/// changed: every frame goes on as before.
///
/// Examples:
///   netcon-sniff -i eth1                 capture on eth1, port 6666
///   netcon-sniff -i eth1 -p 6666 -p 6667 two ports
///   netcon-sniff -i mirror0 --promisc    a switch mirror port
///
/// Needs root (or CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON) and Linux 5.18 or later.
#[derive(Debug, Parser)]
#[command(
    name = "netcon-sniff",
    version,
    verbatim_doc_comment,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// Without a subcommand, netcon-sniff captures.
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub sniff: SniffArgs,
}

/// Subcommands besides capturing.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Print the netconsole configuration for this machine to send to a collector: run it on
    /// the machine to be logged.
    SenderConfig(crate::sender_config::SenderConfigArgs),
    /// Print what collectors forward to NATS (--forward nats://), the whole fleet in the
    /// format of a local capture: `netcon-sniff tail nats://HOST/PREFIX --stream NAME`.
    Tail(crate::tail::TailArgs),
    /// Print shell completions or the man page, generated from this very command line
    /// definition (e.g. `netcon-sniff generate man > netcon-sniff.1`).
    Generate {
        /// What to generate.
        #[arg(value_enum)]
        what: Generated,
    },
}

/// What `generate` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Generated {
    /// The man page (roff), for `man -l` or /usr/share/man/man1.
    Man,
    /// Completions for bash.
    Bash,
    /// Completions for zsh.
    Zsh,
    /// Completions for fish.
    Fish,
}

impl Generated {
    /// Writes the man page or completions for [`Cli`] to `out`.
    ///
    /// # Errors
    /// The writer's error.
    pub fn write(self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        use clap::CommandFactory;
        let mut command = Cli::command();
        let shell = match self {
            Self::Man => return clap_mangen::Man::new(command).render(out),
            Self::Bash => clap_complete::Shell::Bash,
            Self::Zsh => clap_complete::Shell::Zsh,
            Self::Fish => clap_complete::Shell::Fish,
        };
        clap_complete::generate(shell, &mut command, "netcon-sniff", out);
        Ok(())
    }
}

/// Capture options (the default command).
#[derive(Debug, clap::Args)]
#[expect(
    clippy::struct_excessive_bools,
    reason = "each bool is an independent command-line switch"
)]
pub struct SniffArgs {
    /// Interface to capture on; repeat for several. Default: every interface that is up,
    /// except loopback (name `lo` to capture there).
    #[arg(short = 'i', long = "interface", value_name = "IFACE")]
    pub interfaces: Vec<String>,

    /// UDP destination port to match; repeat for several. netconsole's default is 6666.
    #[arg(short = 'p', long = "port", value_name = "PORT", default_value = "6666",
          value_parser = clap::value_parser!(u16).range(1..))]
    pub ports: Vec<u16>,

    /// Put the interfaces into promiscuous mode while running, to see frames sent to other
    /// hosts' MAC addresses (a switch mirror port). Released when netcon-sniff exits, even if
    /// it is killed.
    #[arg(long)]
    pub promisc: bool,

    /// Capture backend. `auto`: XDP when it loads and attaches, else raw sockets, with one
    /// line on stderr saying why. `xdp`: the XDP program only. `raw`: AF_PACKET sockets with a
    /// kernel socket filter (any kernel; CAP_NET_RAW).
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto, value_name = "BACKEND")]
    pub backend: BackendChoice,

    /// Read frames from a pcap or pcapng capture file instead of interfaces (`-` for stdin,
    /// e.g. `tcpdump -w - ... | netcon-sniff -r -`). Link types Ethernet and Linux cooked
    /// (SLL, SLL2); the file's timestamps are the receive times. Needs no privileges.
    #[arg(short = 'r', long = "read", value_name = "FILE", conflicts_with_all = ["interfaces", "promisc"])]
    pub read: Option<std::path::PathBuf>,

    /// Also save every matched frame, with its capture time, to a pcap file (`-` for stdout)
    /// that tcpdump or Wireshark can open.
    #[arg(short = 'w', long = "write", value_name = "FILE")]
    pub write: Option<std::path::PathBuf>,

    /// How to attach XDP: `auto` tries native (in the driver) and falls back to generic (skb)
    /// with a notice; on veth it attaches in generic mode, which costs the host less there
    /// (native XDP makes veth copy every frame into a new page first, matching or not).
    /// `native` or `skb` force one.
    #[arg(long, value_enum, default_value_t = XdpModeChoice::Auto, value_name = "MODE")]
    pub xdp_mode: XdpModeChoice,

    /// Who stamps each frame with its receive time on the XDP backend. `kernel`: the XDP
    /// program, as the frame arrives (exact, for a clock read of ~28 ns in the receive path of
    /// every matching frame). `read`: netcon-sniff, as it reads a batch off the ring buffer
    /// (a coarse clock read in the kernel, no clock hardware; up to about half a millisecond
    /// late while records flow, and never more than two clock ticks when netcon-sniff falls
    /// behind).
    /// `auto`: `kernel` when saving frames with -w, whose point is packet timing, `read`
    /// otherwise. The raw backend always uses the kernel's socket timestamps.
    #[arg(long, value_enum, default_value_t = XdpTimestampChoice::Auto, value_name = "WHO")]
    pub xdp_timestamps: XdpTimestampChoice,

    /// Output format. `text`: one line per decoded record (receive time, sender,
    /// facility.level, kernel timestamp, text), with loss, reboot and incomplete records marked.
    /// `json`: one JSON object per line per record or event (schema in the README).
    /// `raw`: one line per datagram, undecoded (capture time, interface, addresses, payload),
    /// for debugging. Control characters are always shown escaped.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text, value_name = "FORMAT")]
    pub format: OutputFormat,

    /// Color the text output by level, as `dmesg --color` does: `auto` (default) when stdout
    /// is a terminal and NO_COLOR is not set.
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto, value_name = "WHEN")]
    pub color: ColorChoice,

    /// Size of the buffer between the kernel and netcon-sniff, in MiB (a power of two): the
    /// XDP ring buffer, or each raw socket's receive buffer. A larger one absorbs longer
    /// bursts, such as the log replay of a booting sender.
    #[arg(long, default_value_t = 8, value_name = "MIB",
          value_parser = parse_ring_mib)]
    pub ring_mib: u32,

    /// Decode only senders in this CIDR prefix (e.g. 10.77.0.0/24, fd00::/8, or one address);
    /// repeat for several. Others are counted (`denied`) and dropped.
    #[arg(long, value_name = "CIDR", value_parser = parse_cidr)]
    pub allow: Vec<ipnet::IpNet>,

    /// Print a stats line to stderr every SECONDS (one is always printed on exit, and on
    /// SIGUSR1).
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    pub stats: Option<u64>,

    /// Once capture is set up (XDP attached, sockets and files open), drop root: switch to USER
    /// and its group, with no capabilities left. Capture keeps working, and so does every
    /// output: a --log-dir netcon-sniff creates is given to USER; an existing one USER cannot
    /// write is refused at start, with the fix.
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,

    /// Also append each sender's records to its own file in DIR (named by address, or by host
    /// name with --resolve), flushed as they arrive; never truncated. Files are reopened on
    /// SIGHUP, so logrotate can move them.
    #[arg(long, value_name = "DIR", help_heading = "Outputs")]
    pub log_dir: Option<std::path::PathBuf>,

    /// Name --log-dir files by the sender's host name (reverse DNS, looked up once per sender,
    /// never on the packet path: records go to the address-named file until the name is known).
    #[arg(long, requires = "log_dir", help_heading = "Outputs")]
    pub resolve: bool,

    /// fsync every record written to --log-dir: a crashing machine's last lines survive the
    /// collector losing power too, at the cost of a disk flush per record.
    #[arg(long, requires = "log_dir", help_heading = "Outputs")]
    pub fsync: bool,

    /// Forward records to a syslog server: `syslog+udp://HOST:PORT` or `syslog+tcp://HOST:PORT`
    /// (RFC 5424; TCP framed by octet counting, RFC 6587); or to NATS:
    /// `nats://HOST[:PORT][,HOST[:PORT]...][/PREFIX]` (the servers of one cluster, default port
    /// 4222, default prefix `netcon`; `tls://` for TLS), each record as its JSON object on
    /// PREFIX.records.SENDER and each event on PREFIX.events.SENDER. Repeat for several.
    #[arg(long, value_name = "URL", help_heading = "Outputs")]
    pub forward: Vec<crate::sink::ForwardTarget>,

    /// Publish to NATS into the JetStream stream NAME, with acknowledgements: created over
    /// PREFIX.> when missing, with a 2-minute duplicate window, so that what two collectors
    /// both heard is stored once. Without it, --forward nats:// publishes with core NATS (only
    /// current subscribers get the messages).
    #[arg(long, value_name = "NAME", help_heading = "Outputs",
          value_parser = |s: &str| crate::sink::nats::parse_stream_name(s).map_err(|e| e.to_string()))]
    pub nats_stream: Option<String>,

    /// Replicas of the --nats-stream stream when netcon-sniff creates it (up to the cluster's
    /// size, at most 5).
    #[arg(long, value_name = "N", default_value_t = 1, requires = "nats_stream",
          help_heading = "Outputs", value_parser = clap::value_parser!(u8).range(1..=5))]
    pub nats_replicas: u8,

    /// Run CMD (no shell; split on whitespace) once for each kernel panic or oops, with
    /// NETCON_SENDER, NETCON_TEXT and NETCON_TIME in its environment.
    #[arg(long, value_name = "CMD", help_heading = "Outputs")]
    pub on_panic: Option<String>,

    /// Run --on-panic at most once per sender in this many seconds.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 60,
        requires = "on_panic",
        help_heading = "Outputs"
    )]
    pub on_panic_interval: u64,

    /// How the --stats, SIGUSR1 and exit summaries are written on stderr: `text`, one line of
    /// `name=value` pairs; `json`, one JSON object per line (for scripts).
    #[arg(long, value_enum, default_value_t = StatsFormat::Text, value_name = "FORMAT")]
    pub stats_format: StatsFormat,

    /// Serve Prometheus metrics at http://ADDR:PORT/metrics (e.g. 127.0.0.1:9469, [::]:9469):
    /// every counter of the stats line, the number of senders and the memory budget.
    #[arg(long, value_name = "ADDR:PORT", help_heading = "Monitoring")]
    pub metrics: Option<std::net::SocketAddr>,

    /// With --metrics, also one series per tracked sender (records, losses, panics, last
    /// heard), removed when the sender is evicted: up to 5 series for each of the up to 10,000
    /// senders tracked.
    #[arg(long, requires = "metrics", help_heading = "Monitoring")]
    pub metrics_per_sender: bool,

    /// Kill an --on-panic command (with every process it started) still running after this
    /// many seconds, so that hung or slow commands free their slots. At most 16 run at once, one
    /// per sender; a panic that finds every slot busy waits (up to 256 of them) and runs as one
    /// frees. Skipped, late and killed runs show in the output.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 60,
        value_parser = clap::value_parser!(u64).range(1..=86_400),
        requires = "on_panic",
        help_heading = "Outputs"
    )]
    pub on_panic_timeout: u64,

    /// Memory budget for everything held on behalf of senders, in MiB: partial lines,
    /// continuation chains, pending fragments, per-sender state, open files, queued hooks and
    /// forwards. When it is full, the oldest held state is written out (marked partial or
    /// incomplete) and counted, so that no sender can exhaust the collector. With the default
    /// of 24 and the process's fixed cost (about 32 MiB with the default ring buffer), peak
    /// RSS stays under 64 MiB whatever arrives.
    #[arg(long, value_name = "MIB", default_value_t = crate::budget::DEFAULT_MAX_MEMORY_MIB,
          value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub max_memory_mib: u32,
}

/// Which capture backend to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendChoice {
    /// XDP, else raw sockets.
    Auto,
    /// The XDP program only.
    Xdp,
    /// AF_PACKET sockets only.
    Raw,
}

/// How to attach the XDP program.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum XdpModeChoice {
    /// Native, then generic (skb) if the driver cannot.
    Auto,
    /// In the driver only.
    Native,
    /// Generic XDP only.
    Skb,
}

impl From<XdpModeChoice> for crate::capture::xdp::AttachPolicy {
    fn from(choice: XdpModeChoice) -> Self {
        match choice {
            XdpModeChoice::Auto => Self::Auto,
            XdpModeChoice::Native => Self::Native,
            XdpModeChoice::Skb => Self::Skb,
        }
    }
}

/// Who stamps frames on the XDP backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum XdpTimestampChoice {
    /// `kernel` with -w, `read` otherwise.
    Auto,
    /// The XDP program, per frame, as it arrives.
    Kernel,
    /// netcon-sniff, per batch, as it reads them.
    Read,
}

impl XdpTimestampChoice {
    /// What `auto` means for a run that saves frames to a pcap file (`writing_pcap`) or not.
    #[must_use]
    pub fn resolve(self, writing_pcap: bool) -> crate::capture::xdp::Timestamps {
        use crate::capture::xdp::Timestamps;
        match self {
            Self::Kernel => Timestamps::Kernel,
            Self::Auto if writing_pcap => Timestamps::Kernel,
            Self::Read | Self::Auto => Timestamps::Read,
        }
    }
}

/// When to color the text output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ColorChoice {
    /// On a terminal, unless NO_COLOR is set.
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

/// OutputFormat of the stats summaries on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StatsFormat {
    /// One line of `name=value` pairs.
    Text,
    /// One JSON object per line.
    Json,
}

/// Output format of records on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Decoded records, for people.
    Text,
    /// Decoded records and events as JSON lines, for log pipelines.
    Json,
    /// One line per datagram, the payload undecoded.
    Raw,
}

fn parse_cidr(s: &str) -> Result<ipnet::IpNet, String> {
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{s:?} is not an address or CIDR prefix (e.g. 10.0.0.0/8)"))
}

fn parse_ring_mib(s: &str) -> Result<u32, String> {
    let mib: u32 = s.parse().map_err(|e| format!("{e}"))?;
    if mib.is_power_of_two() && mib <= 1024 {
        Ok(mib)
    } else {
        Err("must be a power of two from 1 to 1024".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn generates_man_page_and_completions() {
        let mut man = Vec::new();
        Generated::Man.write(&mut man).unwrap();
        let man = String::from_utf8(man).unwrap();
        assert!(man.contains(".TH netcon-sniff"), "{man}");
        assert!(man.contains("promisc"));
        for shell in [Generated::Bash, Generated::Zsh, Generated::Fish] {
            let mut out = Vec::new();
            shell.write(&mut out).unwrap();
            let out = String::from_utf8(out).unwrap();
            assert!(
                out.contains("--xdp-mode") || out.contains("xdp-mode"),
                "{shell:?}"
            );
        }
    }

    #[test]
    fn ports_repeat_and_default() {
        let cli = Cli::try_parse_from(["netcon-sniff"]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.sniff.ports, vec![6666]);
        let cli = Cli::try_parse_from(["netcon-sniff", "-p", "6666", "-p", "6667"]).unwrap();
        assert_eq!(cli.sniff.ports, vec![6666, 6667]);
    }

    #[test]
    fn rejects_bad_port_and_ring() {
        assert!(Cli::try_parse_from(["netcon-sniff", "-p", "0"]).is_err());
        assert!(Cli::try_parse_from(["netcon-sniff", "-p", "70000"]).is_err());
        assert!(Cli::try_parse_from(["netcon-sniff", "--ring-mib", "3"]).is_err());
    }
}
