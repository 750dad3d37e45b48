//! The processes a bench runs: receivers (netcon-sniff with either backend, socat) in the
//! receiver namespace, and netcon-load runs in the sender namespace. Every child is stopped
//! and reaped on drop, also when the bench fails.

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Seek as _};
use std::os::fd::{AsRawFd as _, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, ensure};
use netcon_bench::load::{LoadReport, monotonic_ns};
use netcon_bench::pcap::PcapStream;
use netcon_bench::verify::Verifier;
use netcon_testkit::{Sniffer, Stats, StdoutTo};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::topo::{RX_IF, RX_MAC, TX_IF, Topology};

/// UDP port netconsole sends to by default, and every receiver listens on.
pub const PORT: u16 = 6666;
/// How long a receiver may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a receiver may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A receiver under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum Rx {
    /// `netcon-sniff --backend xdp`.
    Xdp,
    /// `netcon-sniff --backend raw`.
    Raw,
    /// `tcpdump -w`: capture only (the `AF_PACKET` ring, written to a file undecoded), what
    /// a capture tool costs at the least.
    Tcpdump,
    /// `socat -u UDP-RECV:6666 -`, the kernel documentation's suggestion.
    Socat,
    /// `netcon-sniff --backend xdp` forwarding to a local `nats-server -js`
    /// (`--forward nats://127.0.0.1 --nats-stream BENCH`, one replica): the NATS scenario only.
    XdpNats,
}

impl Rx {
    /// Every receiver, in table order (the baselines last).
    pub const ALL: [Rx; 4] = [Rx::Xdp, Rx::Raw, Rx::Tcpdump, Rx::Socat];

    /// Column title.
    pub fn label(self) -> &'static str {
        match self {
            Rx::Xdp => "netcon xdp",
            Rx::Raw => "netcon raw",
            Rx::Tcpdump => "tcpdump -w",
            Rx::Socat => "socat (baseline)",
            Rx::XdpNats => "netcon xdp + NATS JetStream",
        }
    }

    /// Short name for logs.
    pub fn short(self) -> &'static str {
        match self {
            Rx::Xdp => "xdp",
            Rx::Raw => "raw",
            Rx::Tcpdump => "tcpdump",
            Rx::Socat => "socat",
            Rx::XdpNats => "xdp-nats",
        }
    }
}

/// Where the binaries are and where output goes.
#[derive(Debug, Clone)]
pub struct Paths {
    /// netcon-sniff (release).
    pub sniff: PathBuf,
    /// netcon-load (release).
    pub load: PathBuf,
    /// A scratch directory on tmpfs for receiver output.
    pub work: PathBuf,
}

/// How a receiver's stdout is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Appended to a file on tmpfs, read after each trial (throughput: no reader competes for
    /// the two cores, as with socat writing to a file).
    File,
    /// A pipe read in real time by a thread that feeds the verifier (latency).
    Pipe,
}

enum Reader {
    File {
        path: PathBuf,
        file: File,
        buf: Vec<u8>,
        /// tcpdump's output: pcap, turned into payloads.
        pcap: Option<PcapStream>,
    },
    Pipe {
        shared: Arc<Mutex<Option<Verifier>>>,
        thread: Option<JoinHandle<()>>,
    },
}

/// How a receiver runs.
#[derive(Debug, Clone, Copy)]
pub struct RxOptions {
    /// Where its output goes.
    pub output: Output,
    /// socat listens on `UDP6-RECV` (which takes IPv4 too), for IPv6 senders.
    pub ipv6: bool,
    /// The CPU it is pinned to, if any.
    pub cpu: Option<usize>,
    /// The UDP port it listens on.
    pub port: u16,
    /// More arguments for netcon-sniff (ignored by the baselines).
    pub netcon_args: &'static [&'static str],
}

impl RxOptions {
    /// Output to `output`, IPv4, unpinned, [`PORT`].
    pub fn new(output: Output) -> Self {
        Self {
            output,
            ipv6: false,
            cpu: None,
            port: PORT,
            netcon_args: &[],
        }
    }
}

/// A running receiver: its process run by the test kit's runner (which reads its stderr, and
/// netcon-sniff's counters), its stdout read by the bench.
pub struct Receiver {
    kind: Rx,
    /// `None` once stopped.
    process: Option<Sniffer>,
    reader: Reader,
    topo_rx_ns: String,
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("kind", &self.kind)
            .field("pid", &self.pid())
            .finish_non_exhaustive()
    }
}

/// A command that runs on `cpu` only, if given (the pinned scenarios).
pub fn pin(command: &mut Command, cpu: Option<usize>) {
    let Some(cpu) = cpu else { return };
    let mut set = nix::sched::CpuSet::new();
    let built = set.set(cpu);
    // SAFETY: sched_setaffinity is async-signal-safe; the set is built before the fork.
    unsafe {
        command.pre_exec(move || {
            built.map_err(std::io::Error::from)?;
            nix::sched::sched_setaffinity(Pid::from_raw(0), &set).map_err(std::io::Error::from)
        });
    }
}

/// Where [`Rx::XdpNats`] forwards to: the [`NatsServer`] in the receiver namespace.
pub const NATS_URL: &str = "nats://127.0.0.1:4222/bench";
/// The stream [`Rx::XdpNats`] publishes into.
pub const NATS_STREAM: &str = "BENCH";

/// `nats-server -js` in the receiver namespace, its store on disk (not tmpfs: a confirming run
/// at 100k records/s stores a few hundred MB), stopped and removed on drop.
pub struct NatsServer {
    child: Child,
    dir: PathBuf,
}

impl NatsServer {
    /// Starts it and waits until it is ready.
    pub fn start(topo: &Topology) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("netcon-bench-nats-{}", monotonic_ns()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let log = dir.join("nats.log");
        let mut command = Command::new("nats-server");
        command
            .args(["-js", "-a", "127.0.0.1", "-p", "4222", "-sd"])
            .arg(dir.join("store"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log)?);
        let ns = topo.receiver.file()?;
        in_netns(&mut command, &ns);
        let child = command
            .spawn()
            .context("starting nats-server (apt-get install nats-server)")?;
        let server = Self { child, dir };
        let deadline = Instant::now() + START_TIMEOUT;
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("Server is ready")
        {
            ensure!(
                Instant::now() < deadline,
                "nats-server not ready within {START_TIMEOUT:?}: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(server)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A command that enters `ns` (an open `/run/netns` file) between fork and exec.
fn in_netns(command: &mut Command, ns: &File) {
    let raw = ns.as_raw_fd();
    // SAFETY: setns is async-signal-safe; `raw` stays open in the parent until spawn returns,
    // and the child gets its own copy of the descriptor table.
    unsafe {
        command.pre_exec(move || {
            let fd = BorrowedFd::borrow_raw(raw);
            nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)
        });
    }
}

impl Receiver {
    /// Starts `kind` in the receiver namespace and waits until it listens.
    pub fn start(kind: Rx, topo: &Topology, paths: &Paths, options: RxOptions) -> Result<Self> {
        let RxOptions {
            output,
            ipv6,
            cpu,
            port,
            netcon_args,
        } = options;
        let tag = format!("{}-{}", kind.short(), monotonic_ns());
        let mut command = match kind {
            Rx::Xdp | Rx::Raw => {
                let mut c = Command::new(&paths.sniff);
                c.args(["--backend", kind.short(), "-i", RX_IF, "-p"])
                    .arg(port.to_string())
                    .args(["--format", "text", "--stats-format", "json"])
                    .args(netcon_args);
                c
            }
            Rx::Tcpdump => {
                let mut c = Command::new("tcpdump");
                c.args(["-i", RX_IF, "-n", "-w", "-"]);
                if output == Output::Pipe {
                    // Packet-buffered, for latency; otherwise stdio's buffer, flushed on
                    // SIGUSR2 when the bench reads.
                    c.arg("-U");
                }
                c.args(["udp", "dst", "port", &port.to_string()]);
                c
            }
            Rx::XdpNats => {
                let mut c = Command::new(&paths.sniff);
                c.args(["--backend", "xdp", "-i", RX_IF, "-p"])
                    .arg(port.to_string())
                    .args(["--format", "text", "--stats-format", "json"])
                    .args(["--forward", NATS_URL])
                    .args(["--nats-stream", NATS_STREAM]);
                c
            }
            Rx::Socat => {
                let mut c = Command::new("socat");
                let address = if ipv6 { "UDP6-RECV" } else { "UDP-RECV" };
                c.args(["-u", &format!("{address}:{port}"), "-"]);
                c
            }
        };
        let ns = topo.receiver.file()?;
        in_netns(&mut command, &ns);
        pin(&mut command, cpu);
        command.stdin(Stdio::null());
        let spawn = |command: Command, stdout: StdoutTo| {
            let shown = format!("{command:?}");
            Sniffer::spawn_command(command, stdout).with_context(|| format!("starting {shown}"))
        };
        let (reader, process) = match output {
            Output::File => {
                let path = paths.work.join(format!("{tag}.out"));
                // O_APPEND: the bench truncates the file between trials, and the receiver's
                // next write lands at the new end rather than at its old offset.
                let out = OpenOptions::new()
                    .create_new(true)
                    .append(true)
                    .mode(0o600)
                    .open(&path)
                    .with_context(|| format!("creating {}", path.display()))?;
                let process = spawn(command, StdoutTo::Elsewhere(out.into()))?;
                let file = File::open(&path)?;
                (
                    Reader::File {
                        path,
                        file,
                        buf: vec![0; 4 << 20],
                        pcap: (kind == Rx::Tcpdump).then(PcapStream::new),
                    },
                    process,
                )
            }
            Output::Pipe => {
                let mut process = spawn(command, StdoutTo::Pipe)?;
                let stdout = process.take_stdout().context("the child's stdout pipe")?;
                let shared = Arc::new(Mutex::new(None));
                let thread = spawn_pipe_reader(stdout, Arc::clone(&shared), kind == Rx::Tcpdump);
                (
                    Reader::Pipe {
                        shared,
                        thread: Some(thread),
                    },
                    process,
                )
            }
        };
        let mut rx = Self {
            kind,
            process: Some(process),
            reader,
            topo_rx_ns: topo.receiver.name().to_owned(),
        };
        rx.wait_listening(topo, ipv6, port)?;
        Ok(rx)
    }

    /// Its process id.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(Sniffer::pid)
    }

    fn process(&mut self) -> Result<&mut Sniffer> {
        self.process.as_mut().context("receiver already stopped")
    }

    fn wait_listening(&mut self, topo: &Topology, ipv6: bool, port: u16) -> Result<()> {
        let kind = self.kind;
        let rx_ns = self.topo_rx_ns.clone();
        let process = self.process()?;
        let listening = match kind {
            // netcon-sniff takes over SIGUSR1 before it says `listening on`: counters may be
            // asked for at once.
            Rx::Xdp | Rx::Raw | Rx::XdpNats => process.try_wait_ready(START_TIMEOUT).map(|_| ()),
            Rx::Tcpdump => process
                .try_stderr_containing("listening on", 0, START_TIMEOUT)
                .map(drop),
            Rx::Socat => {
                let deadline = Instant::now() + START_TIMEOUT;
                loop {
                    if let Some(status) = process.try_status().map_err(|e| anyhow!(e))? {
                        break Err(format!("exited ({status})"));
                    }
                    if udp_bound(topo, ipv6, port)? {
                        break Ok(());
                    }
                    if Instant::now() >= deadline {
                        break Err(format!("did not bind UDP {port} within {START_TIMEOUT:?}"));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        };
        listening.map_err(|e| anyhow!("{} did not start listening in {rx_ns}: {e}", kind.label()))
    }

    /// Forgets the output so far (file mode) and hands the verifier of the next trial to the
    /// reader (pipe mode).
    pub fn begin(&mut self, verifier: Verifier) -> Result<Option<Verifier>> {
        match &mut self.reader {
            Reader::File {
                path, file, pcap, ..
            } => {
                // What was cut off at the end of the last trial belongs to no record now.
                if let Some(p) = pcap {
                    p.reset();
                }
                // The receiver appends (O_APPEND): truncating is safe while it is idle.
                OpenOptions::new()
                    .write(true)
                    .open(&*path)
                    .and_then(|f| f.set_len(0))
                    .with_context(|| format!("truncating {}", path.display()))?;
                file.rewind()?;
                Ok(Some(verifier))
            }
            Reader::Pipe { shared, .. } => {
                *shared.lock().unwrap_or_else(PoisonError::into_inner) = Some(verifier);
                Ok(None)
            }
        }
    }

    /// Reads what the receiver wrote since the last call into `verifier` (file mode), or
    /// looks at the pipe reader's verifier (pipe mode), and returns `f` of it.
    pub fn poll<R>(
        &mut self,
        local: &mut Option<Verifier>,
        f: impl FnOnce(&Verifier) -> R,
    ) -> Result<R> {
        if self.kind == Rx::Tcpdump
            && let Some(pid) = self.pid()
            && matches!(self.reader, Reader::File { .. })
        {
            // tcpdump flushes its output file on SIGUSR2 (tcpdump(1)).
            kill(Pid::from_raw(i32::try_from(pid)?), Signal::SIGUSR2)?;
            std::thread::sleep(Duration::from_millis(5));
        }
        match &mut self.reader {
            Reader::File {
                file, buf, pcap, ..
            } => {
                let v = local.as_mut().context("no verifier for this trial")?;
                loop {
                    let n = file.read(buf)?;
                    if n == 0 {
                        break;
                    }
                    feed(v, pcap.as_mut(), &buf[..n], monotonic_ns());
                }
                Ok(f(v))
            }
            Reader::Pipe { shared, .. } => {
                let guard = shared.lock().unwrap_or_else(PoisonError::into_inner);
                Ok(f(guard.as_ref().context("no verifier for this trial")?))
            }
        }
    }

    /// Takes the trial's verifier back.
    pub fn end(&mut self, local: Option<Verifier>) -> Result<Verifier> {
        match &mut self.reader {
            Reader::File { .. } => {
                let mut v = local.context("no verifier for this trial")?;
                v.finish(monotonic_ns());
                Ok(v)
            }
            Reader::Pipe { shared, .. } => shared
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take()
                .context("no verifier for this trial"),
        }
    }

    /// Records the receiver itself says it lost so far: netcon's `lost=` (ring buffer full,
    /// or the kernel's drops on its packet sockets), socat's socket `RcvbufErrors`.
    pub fn drops(&mut self, topo: &Topology) -> Result<u64> {
        match self.kind {
            Rx::Xdp | Rx::Raw | Rx::XdpNats => self.netcon_counter("lost"),
            // tcpdump reports its drops only when it exits.
            Rx::Tcpdump => Ok(0),
            Rx::Socat => {
                let v4 = snmp_counter(&topo.receiver.proc_net("snmp")?, "Udp:", "RcvbufErrors");
                let v6 = topo
                    .receiver
                    .proc_net("snmp6")?
                    .lines()
                    .find_map(|l| l.strip_prefix("Udp6RcvbufErrors"))
                    .and_then(|v| v.trim().parse::<u64>().ok());
                Ok(v4.unwrap_or(0) + v6.unwrap_or(0))
            }
        }
    }

    /// The counter `name` (e.g. `wakeups`) of fresh netcon-sniff stats (SIGUSR1).
    pub fn netcon_counter(&mut self, name: &str) -> Result<u64> {
        let label = self.kind.label();
        // A failure deadline: a receiver still working through a flood's backlog (the
        // hostile scenario) answers between batches, late.
        let stats = self
            .process()?
            .try_stats(Duration::from_secs(30))
            .map_err(|e| anyhow!("{label}: {e}"))?;
        stats
            .try_counter(name)
            .with_context(|| format!("{label} printed no {name} in its stats: {stats}"))
    }

    /// CPU time (user and system) the receiver used so far, seconds.
    pub fn cpu_seconds(&self) -> Result<f64> {
        let pid = self.pid().context("receiver already stopped")?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // Fields after the command name (which may hold spaces) in parentheses: utime and
        // stime are the 14th and 15th of the line (proc_pid_stat(5)).
        let rest = stat
            .rsplit_once(')')
            .map(|(_, r)| r)
            .context("malformed stat")?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = fields
            .get(11..13)
            .context("short stat")?
            .iter()
            .map(|f| f.parse::<u64>().unwrap_or(0))
            .sum();
        // SAFETY: sysconf with a constant name only reads configuration.
        let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1);
        Ok(netcon_bench::count_f64(ticks) / netcon_bench::count_f64(per_second.unsigned_abs()))
    }

    /// Peak resident set (`VmHWM`), KiB.
    pub fn peak_rss_kib(&self) -> Result<u64> {
        let pid = self.pid().context("receiver already stopped")?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmHWM in /proc/PID/status")
    }

    /// `(run_time_ns, run_cnt)` of the XDP programs this receiver holds, from
    /// `/proc/PID/fdinfo` (with `kernel.bpf_stats_enabled=1`; no bpftool needed).
    pub fn xdp_prog_stats(&self) -> Result<(u64, u64)> {
        let pid = self.pid().context("receiver already stopped")?;
        let mut total = (0, 0);
        let mut found = false;
        for entry in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))? {
            let Ok(text) = std::fs::read_to_string(entry?.path()) else {
                continue;
            };
            // BPF_PROG_TYPE_XDP = 6 (include/uapi/linux/bpf.h).
            if field(&text, "prog_type:") != Some(6) {
                continue;
            }
            if let (Some(t), Some(n)) = (field(&text, "run_time_ns:"), field(&text, "run_cnt:")) {
                total.0 += t;
                total.1 += n;
                found = true;
            }
        }
        ensure!(found, "no XDP program among the fds of pid {pid}");
        Ok(total)
    }

    /// SIGTERM, wait, and return netcon-sniff's exit summary (`None` for the baselines).
    pub fn stop(mut self) -> Result<Option<Stats>> {
        let stderr = self.terminate()?;
        Ok(Stats::all(stderr.lines())
            .into_iter()
            .find(Stats::is_summary))
    }

    /// Stops the process (SIGTERM, then SIGKILL after [`STOP_TIMEOUT`]) and the pipe reader;
    /// returns the process's stderr.
    fn terminate(&mut self) -> Result<String> {
        let mut stderr = String::new();
        if let Some(mut process) = self.process.take() {
            process
                .try_stop(Signal::SIGTERM, STOP_TIMEOUT)
                .map_err(|e| anyhow!("{}: {e}", self.kind.label()))?;
            stderr = process.stderr_text();
        }
        if let Reader::Pipe { thread, .. } = &mut self.reader
            && let Some(t) = thread.take()
        {
            let _ = t.join();
        }
        Ok(stderr)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Err(e) = self.terminate() {
            eprintln!("xtask bench: {e:#}");
        }
        if let Reader::File { path, .. } = &self.reader {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Feeds receiver output to `v`: as it is, or the UDP payloads of a pcap stream.
fn feed(v: &mut Verifier, pcap: Option<&mut PcapStream>, bytes: &[u8], now: u64) {
    match pcap {
        Some(p) => p.feed(bytes, |payload| v.feed(payload, now)),
        None => v.feed(bytes, now),
    }
}

fn spawn_pipe_reader(
    mut stdout: ChildStdout,
    shared: Arc<Mutex<Option<Verifier>>>,
    pcap: bool,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 20];
        let mut pcap = pcap.then(PcapStream::new);
        loop {
            let n = match stdout.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            // The moment the line is read: that is the latency's end.
            let now = monotonic_ns();
            let mut verifier = shared.lock().unwrap_or_else(PoisonError::into_inner);
            match (pcap.as_mut(), verifier.as_mut()) {
                // The pcap stream is read whole, trial or not: its global header comes first,
                // before any trial.
                (Some(p), mut v) => p.feed(&buf[..n], |payload| {
                    if let Some(v) = v.as_deref_mut() {
                        v.feed(payload, now);
                    }
                }),
                (None, Some(v)) => v.feed(&buf[..n], now),
                (None, None) => {}
            }
        }
    })
}

/// Whether something listens on UDP `port` in the receiver namespace.
fn udp_bound(topo: &Topology, ipv6: bool, port: u16) -> Result<bool> {
    let file = if ipv6 { "udp6" } else { "udp" };
    let table = topo.receiver.proc_net(file)?;
    let port = format!(":{port:04X}");
    Ok(table.lines().skip(1).any(|l| {
        l.split_whitespace()
            .nth(1)
            .is_some_and(|a| a.ends_with(&port))
    }))
}

/// The number after `key` in `text` (`key=N` or `key:\tN`).
pub fn field(text: &str, key: &str) -> Option<u64> {
    let at = text.find(key)? + key.len();
    let digits: String = text[at..]
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// A counter of `/proc/net/snmp`: a header line and a value line share a prefix.
fn snmp_counter(text: &str, prefix: &str, name: &str) -> Option<u64> {
    let mut lines = text.lines().filter(|l| l.starts_with(prefix));
    let header = lines.next()?;
    let values = lines.next()?;
    let i = header.split_whitespace().position(|h| h == name)?;
    values.split_whitespace().nth(i)?.parse().ok()
}

/// One netcon-load run.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Simulated senders.
    pub senders: u32,
    /// IPv6 senders (`fd00:N::1:0` + k) instead of IPv4 (`10.N.1.0` + k).
    pub ipv6: bool,
    /// Payload bytes (with fragments: of the last fragment's chunk).
    pub size: usize,
    /// Fragments per record.
    pub fragments: u8,
    /// Only the first fragment of each record.
    pub first_fragment_only: bool,
    /// Records per second, or flat out.
    pub rate: Option<f64>,
    /// Time bound.
    pub duration: Duration,
    /// Count bound.
    pub count: Option<u64>,
    /// Destination UDP port.
    pub port: u16,
    /// The CPU the sender runs on, if pinned.
    pub cpu: Option<usize>,
    /// Hostile continuation chains (`c`-flagged records of empty dictionary lines) instead of
    /// ordinary records.
    pub continuation: bool,
    /// Address of sender 0, instead of [`Topology::src_base`].
    pub src_base: Option<std::net::IpAddr>,
}

impl LoadSpec {
    /// `senders` senders of 200-byte extended records, flat out for `duration`.
    pub fn flat(senders: u32, duration: Duration) -> Self {
        Self {
            senders,
            ipv6: false,
            size: 200,
            fragments: 1,
            first_fragment_only: false,
            rate: None,
            duration,
            count: None,
            port: PORT,
            cpu: None,
            continuation: false,
            src_base: None,
        }
    }
}

/// Runs netcon-load in the sender namespace and returns its report.
pub fn run_load(
    paths: &Paths,
    topo: &Topology,
    spec: &LoadSpec,
    run: u32,
    seq_start: u64,
) -> Result<LoadReport> {
    let dst = if spec.ipv6 {
        format!("[{}]:{}", Topology::rx_v6(), spec.port)
    } else {
        format!("{}:{}", Topology::rx_v4(), spec.port)
    };
    let mut command = Command::new(&paths.load);
    command
        .args(["--netns", topo.sender.name(), "-i", TX_IF, "--dst", &dst])
        .args(["--dst-mac", RX_MAC])
        .args([
            "--src-base",
            &spec
                .src_base
                .unwrap_or_else(|| Topology::src_base(spec.ipv6))
                .to_string(),
        ])
        .args(["-H", &spec.senders.to_string()])
        .args(["--size", &spec.size.to_string()])
        .args(["--fragments", &spec.fragments.to_string()])
        .args(["--duration", &format!("{:.3}", spec.duration.as_secs_f64())])
        .args(["--run", &run.to_string()])
        .args(["--seq-start", &seq_start.to_string()]);
    if let Some(rate) = spec.rate {
        command.args(["--rate", &format!("{rate:.0}")]);
    }
    if let Some(count) = spec.count {
        command.args(["--count", &count.to_string()]);
    }
    if spec.first_fragment_only {
        command.arg("--first-fragment-only");
    }
    pin(&mut command, spec.cpu);
    if spec.continuation {
        command.args(["--format", "continuation"]);
    }
    let out = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", paths.load.display()))?;
    ensure!(
        out.status.success(),
        "netcon-load failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    LoadReport::parse(stdout.trim()).with_context(|| format!("netcon-load printed {stdout:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fields_and_snmp() {
        let fdinfo = "pos:\t0\nprog_type:\t6\nrun_time_ns:\t12345\nrun_cnt:\t10\n";
        assert_eq!(field(fdinfo, "prog_type:"), Some(6));
        assert_eq!(field(fdinfo, "run_time_ns:"), Some(12345));
        let snmp = "Ip: a b\nIp: 1 2\nUdp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors\nUdp: 10 0 3 0 3\n";
        assert_eq!(snmp_counter(snmp, "Udp:", "RcvbufErrors"), Some(3));
        assert_eq!(snmp_counter(snmp, "Udp:", "Nope"), None);
    }
}
