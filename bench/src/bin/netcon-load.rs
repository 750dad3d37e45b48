//! `netcon-load`: sends netconsole records from many simulated senders out of one interface.
//!
//! Prints one line when done: `records=N frames=N rounds=N elapsed_s=S rate=R retries=N calls=N`.
#![expect(
    clippy::doc_markdown,
    reason = "doc comments here are the --help text, read in a terminal"
)]

use std::fs::File;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::{Parser, ValueEnum};
use netcon_bench::load::{self, DEFAULT_BATCH, LoadConfig};
use netcon_bench::record::{Format, RecordShape};
use netcon_testkit::Mac;
use netcon_testkit::frame::parse_mac;

/// Send netconsole records from H simulated senders, as raw frames out of IFACE.
///
/// Sender k sends from SRC_BASE + k, port SRC_PORT; records go round-robin over the senders,
/// each sender with its own sequence starting at SEQ_START. Every record carries a token
/// (`@nb:RUN:SENDER:SEQ:SENT_NS:FRAG/N@`) that netcon-verify counts in a receiver's output.
/// Stops after --duration (on a whole round) or --count records, whichever comes first.
///
/// Only ever send into network namespaces you created: the frames go out of IFACE as they are.
#[derive(Debug, Parser)]
#[command(name = "netcon-load", version, verbatim_doc_comment)]
struct Cli {
    /// Interface to send from.
    #[arg(short = 'i', long = "interface", value_name = "IFACE")]
    interface: String,
    /// Enter this network namespace (a name under /run/netns) first.
    #[arg(long, value_name = "NAME")]
    netns: Option<String>,
    /// Destination address and port, e.g. 10.91.0.1:6666 or [fd00:91::1]:6666.
    #[arg(long, value_name = "ADDR:PORT")]
    dst: SocketAddr,
    /// Destination MAC (the collector's, a foreign unicast one, or ff:ff:ff:ff:ff:ff).
    #[arg(long, value_name = "MAC", value_parser = parse_mac, default_value = "ff:ff:ff:ff:ff:ff")]
    dst_mac: Mac,
    /// Source MAC. Default: IFACE's own.
    #[arg(long, value_name = "MAC", value_parser = parse_mac)]
    src_mac: Option<Mac>,
    /// Address of sender 0; sender k uses this plus k (all within its /16 or /64).
    #[arg(long, value_name = "ADDR")]
    src_base: IpAddr,
    /// Source port of every sender.
    #[arg(long, value_name = "PORT", default_value_t = 6665)]
    src_port: u16,
    /// Simulated senders.
    #[arg(short = 'H', long, value_name = "H", default_value_t = 1)]
    senders: u32,
    /// Record format.
    #[arg(long, value_enum, default_value_t = FormatArg::Extended)]
    format: FormatArg,
    /// Payload bytes per record (with --fragments: bytes of the last fragment's chunk).
    #[arg(long, value_name = "BYTES", default_value_t = 200)]
    size: usize,
    /// Fragments per record (ncfrag; every one but the last a full 1000-byte payload).
    #[arg(long, value_name = "N", default_value_t = 1)]
    fragments: u8,
    /// Send only the first fragment of each record (records stay pending at the receiver).
    #[arg(long)]
    first_fragment_only: bool,
    /// Records per second. Default: as fast as possible.
    #[arg(long, value_name = "PER_SECOND")]
    rate: Option<f64>,
    /// Time bound, seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0)]
    duration: f64,
    /// Count bound, records.
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// Frames per sendmmsg call.
    #[arg(long, value_name = "FRAMES", default_value_t = DEFAULT_BATCH)]
    batch: usize,
    /// Run id written into every token.
    #[arg(long, value_name = "ID", default_value_t = 1)]
    run: u32,
    /// Every sender's first sequence number.
    #[arg(long, value_name = "SEQ", default_value_t = 0)]
    seq_start: u64,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum FormatArg {
    /// `<pri>,<seq>,<ts>,-;text` (netconsole `+` targets).
    Extended,
    /// `[    t.tttttt] text`.
    Plain,
    /// Hostile: `<pri>,<seq>,<ts>,c;` continuation records whose body is empty dictionary
    /// lines (` \n`) up to --size.
    Continuation,
}

fn main() -> ExitCode {
    match run(&Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("netcon-load: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: &Cli) -> Result<()> {
    if let Some(name) = &cli.netns {
        let path = format!("/run/netns/{name}");
        let file = File::open(&path).with_context(|| format!("opening {path}"))?;
        enter_netns(&file).with_context(|| format!("entering {path} (needs root)"))?;
    }
    let src_mac = match cli.src_mac {
        Some(mac) => mac,
        None => interface_mac(&cli.interface)
            .with_context(|| format!("reading the MAC of {}", cli.interface))?,
    };
    anyhow::ensure!(
        cli.duration.is_finite() && cli.duration > 0.0,
        "--duration must be positive"
    );
    let config = LoadConfig {
        interface: cli.interface.clone(),
        src_mac,
        dst_mac: cli.dst_mac,
        dst: cli.dst,
        src_base: cli.src_base,
        src_port: cli.src_port,
        senders: cli.senders,
        shape: RecordShape {
            format: match cli.format {
                FormatArg::Extended => Format::Extended,
                FormatArg::Plain => Format::Plain,
                FormatArg::Continuation => Format::Continuation,
            },
            size: cli.size,
            fragments: cli.fragments,
        },
        first_fragment_only: cli.first_fragment_only,
        rate: cli.rate,
        duration: Duration::from_secs_f64(cli.duration),
        count: cli.count,
        batch: cli.batch,
        run: cli.run,
        seq_start: cli.seq_start,
    };
    let report = load::run(&config)?;
    println!("{}", report.to_line());
    Ok(())
}

fn enter_netns(file: &File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    // SAFETY: setns on an open namespace file; this process is single-threaded here.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The interface's MAC, by `SIOCGIFHWADDR` (sysfs would show the namespace this process
/// started in, not the one it entered).
fn interface_mac(name: &str) -> std::io::Result<Mac> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    // SAFETY: plain socket(2), checked.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: all-zero is a valid ifreq.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.as_bytes();
    if bytes.len() >= req.ifr_name.len() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "interface name too long",
        ));
    }
    for (dst, &b) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = libc::c_char::from_ne_bytes([b]);
    }
    // SAFETY: req is a valid ifreq with a NUL-terminated name.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFHWADDR, &raw mut req) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFHWADDR filled the hwaddr member of the union.
    let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
    let mut mac = [0u8; 6];
    for (m, d) in mac.iter_mut().zip(data) {
        *m = d.to_ne_bytes()[0];
    }
    Ok(mac)
}
