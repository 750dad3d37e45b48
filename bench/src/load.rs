//! The load generator: netconsole records from many simulated senders, as raw Ethernet frames
//! out of one interface (`AF_PACKET`, `sendmmsg` batches), paced or flat out, bounded in count
//! and time.
//!
//! Records go round-robin over the senders: record `i` of a run is sender `i % H`'s record number
//! `seq_start + i / H`. So a run needs no per-sender state (100,000 senders cost nothing), and
//! what each sender sent follows from three numbers, which the verifier uses ([`crate::verify`]).
//! A time-bounded run ends on a whole round (finishing it at the same pace), so every sender
//! sent the same count and the next run can continue every sequence at `seq_start + rounds`
//! without a gap.
//!
//! Raw frames rather than UDP sockets: any source address without configuring it, any
//! destination MAC (netconsole's broadcast default, a foreign unicast MAC as on a mirror port),
//! and no routing or neighbour work on the sending side.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use netcon_testkit::frame::{self, MAX_NETCONSOLE_FRAME, NETCONSOLE_SRC_PORT, Vlan};
use netcon_testkit::{FrameSender, Mac, SendError, SendScratch};

use crate::record::{Format, RecordBuilder, RecordShape, Token};

/// Frames per `sendmmsg` call by default. Unit: frames. Default 64.
pub const DEFAULT_BATCH: usize = 64;
/// Shortest sleep of a paced run, so that a high rate sends in batches instead of spending its
/// CPU on timer wake-ups: 50 µs.
pub const MIN_SLEEP: Duration = Duration::from_micros(50);
/// How long after its time bound a run may take to finish its last round before it fails: 30 s.
pub const OVERRUN_LIMIT: Duration = Duration::from_secs(30);

/// One run of the generator.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Interface to send from (in the current network namespace).
    pub interface: String,
    /// Source MAC (the interface's own, usually).
    pub src_mac: Mac,
    /// Destination MAC: the collector's, broadcast, or a foreign unicast one.
    pub dst_mac: Mac,
    /// Destination address and port (the collector's, or any other: the frames go out anyway).
    pub dst: SocketAddr,
    /// Address of sender 0; sender `k` uses this address plus `k`.
    pub src_base: IpAddr,
    /// Source port of every sender (netconsole's default is 6665).
    pub src_port: u16,
    /// Simulated senders, at least 1.
    pub senders: u32,
    /// Record format, size and fragments.
    pub shape: RecordShape,
    /// Send only the first fragment of each record (leaves records pending in a reassembler).
    pub first_fragment_only: bool,
    /// Records per second, or `None` for as fast as possible.
    pub rate: Option<f64>,
    /// Time bound: the run stops at the first round boundary after this.
    pub duration: Duration,
    /// Count bound: at most this many records (may end mid-round).
    pub count: Option<u64>,
    /// Frames per `sendmmsg`.
    pub batch: usize,
    /// Run id carried in every token.
    pub run: u32,
    /// Sequence number of every sender's first record.
    pub seq_start: u64,
}

impl LoadConfig {
    /// A run with `netcon-load`'s defaults: one sender on netconsole's source port, 200-byte
    /// extended records in one fragment, flat out for 10 s in batches of [`DEFAULT_BATCH`],
    /// run 1, sequences from 0.
    #[must_use]
    pub fn new(
        interface: impl Into<String>,
        (src_mac, dst_mac): (Mac, Mac),
        src_base: IpAddr,
        dst: SocketAddr,
    ) -> LoadConfig {
        LoadConfig {
            interface: interface.into(),
            src_mac,
            dst_mac,
            dst,
            src_base,
            src_port: NETCONSOLE_SRC_PORT,
            senders: 1,
            shape: RecordShape {
                format: Format::Extended,
                size: 200,
                fragments: 1,
            },
            first_fragment_only: false,
            rate: None,
            duration: Duration::from_secs(10),
            count: None,
            batch: DEFAULT_BATCH,
            run: 1,
            seq_start: 0,
        }
    }

    /// The address of sender `k`.
    #[must_use]
    pub fn sender_addr(&self, k: u32) -> SocketAddr {
        SocketAddr::new(offset_addr(self.src_base, k), self.src_port)
    }

    /// Checks the bounds and that every sender's address stays in the base's /16 (IPv4) or /64
    /// (IPv6), so a run never sends from outside the subnet it was given.
    ///
    /// # Errors
    /// What is wrong, for the command line.
    pub fn validate(&self) -> Result<(), String> {
        self.shape.validate()?;
        if self.senders == 0 {
            return Err("at least 1 sender".into());
        }
        if self.batch == 0 || self.batch > 1024 {
            return Err("batch must be 1 to 1024 frames".into());
        }
        if self.rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
            return Err("rate must be positive".into());
        }
        if self.src_base.is_ipv4() != self.dst.is_ipv4() {
            return Err("source and destination must be of one address family".into());
        }
        let last = offset_addr(self.src_base, self.senders - 1);
        let same_subnet = match (self.src_base, last) {
            (IpAddr::V4(a), IpAddr::V4(b)) => u32::from(a) >> 16 == u32::from(b) >> 16,
            (IpAddr::V6(a), IpAddr::V6(b)) => u128::from(a) >> 64 == u128::from(b) >> 64,
            _ => false,
        };
        if !same_subnet {
            return Err(format!(
                "{} senders from {} leave its /16 (IPv4) or /64 (IPv6); use a lower base or IPv6",
                self.senders, self.src_base
            ));
        }
        Ok(())
    }

    /// Frames sent per record.
    #[must_use]
    pub fn frames_per_record(&self) -> usize {
        if self.first_fragment_only {
            1
        } else {
            usize::from(self.shape.fragments)
        }
    }
}

fn offset_addr(base: IpAddr, k: u32) -> IpAddr {
    match base {
        IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a).wrapping_add(k))),
        IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a).wrapping_add(u128::from(k)))),
    }
}

/// What a run sent.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LoadReport {
    /// Records sent (each with all its fragments, or the first only).
    pub records: u64,
    /// Frames sent.
    pub frames: u64,
    /// Whole rounds over all senders (every sender's next seq is `seq_start + rounds` when
    /// `records` is a multiple of the sender count).
    pub rounds: u64,
    /// From the first send to the last, seconds.
    pub elapsed_s: f64,
    /// Sends refused for a full queue (`ENOBUFS`) and retried.
    pub retries: u64,
    /// `sendmmsg` calls.
    pub calls: u64,
}

impl LoadReport {
    /// Records per second over the run.
    #[must_use]
    pub fn rate(&self) -> f64 {
        if self.elapsed_s > 0.0 {
            crate::count_f64(self.records) / self.elapsed_s
        } else {
            0.0
        }
    }

    /// One line, `key=value` pairs, which [`LoadReport::parse`] reads back.
    #[must_use]
    pub fn to_line(&self) -> String {
        let mut s = String::new();
        let _ = write!(
            s,
            "records={} frames={} rounds={} elapsed_s={:.6} rate={:.0} retries={} calls={}",
            self.records,
            self.frames,
            self.rounds,
            self.elapsed_s,
            self.rate(),
            self.retries,
            self.calls
        );
        s
    }

    /// Parses [`LoadReport::to_line`]'s output.
    #[must_use]
    pub fn parse(line: &str) -> Option<LoadReport> {
        let mut r = LoadReport::default();
        let mut seen = 0;
        for (key, value) in line.split_whitespace().filter_map(|kv| kv.split_once('=')) {
            match key {
                "records" => r.records = value.parse().ok()?,
                "frames" => r.frames = value.parse().ok()?,
                "rounds" => r.rounds = value.parse().ok()?,
                "elapsed_s" => r.elapsed_s = value.parse().ok()?,
                "retries" => r.retries = value.parse().ok()?,
                "calls" => r.calls = value.parse().ok()?,
                _ => continue,
            }
            seen += 1;
        }
        (seen == 6).then_some(r)
    }
}

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The packet socket could not be opened, or sending failed or stalled.
    #[error(transparent)]
    Send(#[from] SendError),
    /// The configuration is inconsistent.
    #[error("invalid load: {0}")]
    Config(String),
    /// The last round did not finish in time.
    #[error("sending stalled: {0}")]
    Stalled(String),
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock [`Token::sent_ns`] is stamped with (the same in
/// every process and network namespace on the machine).
#[must_use]
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

/// Builds the frames of records into one buffer.
#[derive(Debug)]
pub struct FrameBatch {
    builder: RecordBuilder,
    buffer: Vec<u8>,
    frames: Vec<(usize, usize)>,
}

impl FrameBatch {
    /// Room for `batch` frames of records of `shape`.
    #[must_use]
    pub fn new(shape: RecordShape, batch: usize) -> Self {
        Self {
            builder: RecordBuilder::new(shape),
            buffer: Vec::with_capacity(batch * MAX_NETCONSOLE_FRAME),
            frames: Vec::with_capacity(batch),
        }
    }

    /// Empties the batch.
    pub fn clear(&mut self) {
        self.buffer.clear();
        self.frames.clear();
    }

    /// Appends the frames of record `index` of `config`'s run, stamped `sent_ns`.
    pub fn push_record(&mut self, config: &LoadConfig, index: u64, sent_ns: u64) {
        let senders = u64::from(config.senders);
        let sender = u32::try_from(index % senders).unwrap_or(0);
        let token = Token {
            run: config.run,
            sender,
            seq: config.seq_start + index / senders,
            sent_ns,
            frag: 0,
            nfrag: 1,
        };
        let src = config.sender_addr(sender);
        let first_only = config.first_fragment_only;
        let (buffer, frames) = (&mut self.buffer, &mut self.frames);
        let mut sent_one = false;
        // The kernel timestamp: the sender's monotonic clock, which starts at boot too.
        self.builder.build(token, sent_ns / 1000, |payload| {
            if first_only && sent_one {
                return;
            }
            sent_one = true;
            let start = buffer.len();
            let macs = (config.src_mac, config.dst_mac);
            frame::write_udp(buffer, macs, Vlan::None, src, config.dst, payload);
            frames.push((start, buffer.len() - start));
        });
    }

    /// The frames built so far: the buffer and `(offset, len)` of each.
    #[must_use]
    pub fn frames(&self) -> (&[u8], &[(usize, usize)]) {
        (&self.buffer, &self.frames)
    }
}

/// Runs the load.
///
/// # Errors
/// [`LoadError`] when the configuration is inconsistent or sending fails.
pub fn run(config: &LoadConfig) -> Result<LoadReport, LoadError> {
    config.validate().map_err(LoadError::Config)?;
    let mut socket = FrameSender::open_here(&config.interface)?;
    socket.tune_for_load()?;
    // Sleeps of a paced run end within a microsecond of their deadline, not the default 50 µs.
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1000, 0, 0, 0) };

    let per_record = config.frames_per_record();
    let records_per_batch = (config.batch / per_record).max(1);
    let mut batch = FrameBatch::new(config.shape, records_per_batch * per_record);
    let records_per_batch = records_per_batch as u64;
    let mut scratch = SendScratch::default();
    let senders = u64::from(config.senders);
    let limit = config.count.unwrap_or(u64::MAX);
    let start = Instant::now();
    let deadline = start + config.duration;
    let mut report = LoadReport::default();
    let mut sent: u64 = 0;
    loop {
        if sent >= limit {
            break;
        }
        let now = Instant::now();
        let overtime = now >= deadline;
        if overtime && sent.is_multiple_of(senders) {
            break;
        }
        if now > deadline + OVERRUN_LIMIT {
            return Err(LoadError::Stalled(format!(
                "the last round of {senders} senders did not finish within {OVERRUN_LIMIT:?}"
            )));
        }
        let mut want = records_per_batch.min(limit - sent);
        if overtime {
            // Past the time bound: finish the round (at the same pace).
            want = want.min(senders - sent % senders);
        }
        if let Some(rate) = config.rate {
            let elapsed = now.duration_since(start).as_secs_f64();
            // Record i is due at i / rate: the first goes at once.
            let due = crate::f64_count(elapsed * rate) + 1;
            if due <= sent {
                let next = start + Duration::from_secs_f64(crate::count_f64(sent) / rate);
                let mut wake = next.max(now + MIN_SLEEP);
                if !overtime {
                    wake = wake.min(deadline);
                }
                std::thread::sleep(wake.saturating_duration_since(now));
                continue;
            }
            want = want.min(due - sent);
        }
        batch.clear();
        let sent_ns = monotonic_ns();
        for i in sent..sent + want {
            batch.push_record(config, i, sent_ns);
        }
        let (buffer, frames) = batch.frames();
        let took = socket.send_batch(buffer, frames, &mut scratch)?;
        report.calls += took.calls;
        report.retries += took.retries;
        report.frames += frames.len() as u64;
        sent += want;
    }
    report.elapsed_s = start.elapsed().as_secs_f64();
    report.records = sent;
    report.rounds = sent / senders;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> LoadConfig {
        LoadConfig {
            senders: 3,
            seq_start: 10,
            ..LoadConfig::new(
                "lo",
                ([2, 0, 0, 0, 0x91, 2], netcon_testkit::BROADCAST_MAC),
                "10.91.1.0".parse().unwrap(),
                "10.91.0.1:6666".parse().unwrap(),
            )
        }
    }

    #[test]
    fn senders_get_consecutive_addresses_within_the_subnet() {
        let c = config();
        assert_eq!(c.sender_addr(0).to_string(), "10.91.1.0:6665");
        assert_eq!(c.sender_addr(300).to_string(), "10.91.2.44:6665");
        assert!(c.validate().is_ok());
        let too_many = LoadConfig {
            senders: 70_000,
            ..c.clone()
        };
        assert!(too_many.validate().is_err());
        let v6 = LoadConfig {
            senders: 100_000,
            src_base: "fd00:91::1:0".parse().unwrap(),
            dst: "[fd00:91::1]:6666".parse().unwrap(),
            ..c.clone()
        };
        assert!(v6.validate().is_ok());
        assert_eq!(v6.sender_addr(65_536).ip().to_string(), "fd00:91::2:0");
        let mixed = LoadConfig {
            src_base: "fd00:91::1:0".parse().unwrap(),
            ..c
        };
        assert!(mixed.validate().is_err());
    }

    #[test]
    fn report_round_trips() {
        let r = LoadReport {
            records: 1000,
            frames: 4000,
            rounds: 10,
            elapsed_s: 0.5,
            retries: 3,
            calls: 70,
        };
        let line = r.to_line();
        assert!(line.contains("rate=2000"));
        assert_eq!(LoadReport::parse(&line), Some(r));
        assert_eq!(LoadReport::parse("records=1"), None);
    }

    #[test]
    fn batch_assigns_round_robin_seqs() {
        let c = config();
        let mut b = FrameBatch::new(c.shape, 8);
        for i in 0..4 {
            b.push_record(&c, i, 5_000);
        }
        let (buffer, frames) = b.frames();
        assert_eq!(frames.len(), 4);
        let tokens: Vec<(u32, u64)> = frames
            .iter()
            .map(|&(o, l)| {
                let t = crate::record::tokens(&buffer[o..o + l]).next().unwrap();
                (t.sender, t.seq)
            })
            .collect();
        assert_eq!(tokens, vec![(0, 10), (1, 10), (2, 10), (0, 11)]);
    }
}
