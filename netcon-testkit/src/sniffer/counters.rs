//! netcon-sniff's counters, read from `--stats-format json`: every `--stats`, SIGUSR1 and exit
//! summary is one JSON object on a stderr line (`{"type":"stats"|"summary","backend":...,
//! "capture":{...},"datagrams":N,...}`, `netcon-user/src/metrics.rs`), so no harness parses the
//! prose stats line.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::{Map, Value};

/// Start of the prose stats line (`--stats-format text`, the default of the binary), which
/// repeats the counters with the pipeline's and the decoder's.
pub const STATS_PREFIX: &str = "netcon-sniff: stats: ";

/// `lines` without the stats lines of either format ([`STATS_PREFIX`], and the JSON `stats`
/// and `summary` objects), for exact comparisons of the rest of stderr.
#[must_use]
pub fn without_stats(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .filter(|l| !l.starts_with(STATS_PREFIX) && Stats::from_line(l).is_none())
        .cloned()
        .collect()
}

/// One counters object netcon-sniff printed on stderr with `--stats-format json`: a `stats`
/// object (`--stats`, SIGUSR1) or the exit `summary`.
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    object: Map<String, Value>,
}

impl Stats {
    /// The counters object on `line`, or `None` when the line is something else (a notice,
    /// `listening on`, prose).
    #[must_use]
    pub fn from_line(line: &str) -> Option<Stats> {
        if !line.starts_with('{') {
            return None;
        }
        let Ok(Value::Object(object)) = serde_json::from_str(line) else {
            return None;
        };
        matches!(
            object.get("type").and_then(Value::as_str),
            Some("stats" | "summary")
        )
        .then_some(Stats { object })
    }

    /// Every counters object among `lines`, in order.
    pub fn all<'a>(lines: impl IntoIterator<Item = &'a str>) -> Vec<Stats> {
        lines.into_iter().filter_map(Stats::from_line).collect()
    }

    /// The last counters object in `stderr`: the exit summary once the process has ended.
    ///
    /// # Panics
    /// If there is none.
    #[must_use]
    pub fn last(stderr: &str) -> Stats {
        Stats::all(stderr.lines())
            .pop()
            .unwrap_or_else(|| panic!("no --stats-format json counters in stderr:\n{stderr}"))
    }

    /// `"summary"` for the one at exit, `"stats"` for the others.
    #[must_use]
    pub fn kind(&self) -> &str {
        self.object
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }

    /// Whether this is the exit summary.
    #[must_use]
    pub fn is_summary(&self) -> bool {
        self.kind() == "summary"
    }

    /// The capture backend that counted.
    #[must_use]
    pub fn backend(&self) -> Option<CaptureBackend> {
        CaptureBackend::from_name(self.object.get("backend")?.as_str()?)
    }

    /// The counter `name`: a top-level one (`datagrams`, `records`, `lost`, a sink's
    /// `files_written`, ...), else one of the backend's (`matched`, `received`, `read`, ...).
    #[must_use]
    pub fn try_counter(&self, name: &str) -> Option<u64> {
        self.object
            .get(name)
            .or_else(|| self.object.get("capture")?.get(name))?
            .as_u64()
    }

    /// As [`Stats::try_counter`].
    ///
    /// # Panics
    /// If there is no such counter.
    #[must_use]
    pub fn counter(&self, name: &str) -> u64 {
        self.try_counter(name)
            .unwrap_or_else(|| panic!("no counter {name:?} in {self}"))
    }

    /// The whole object.
    #[must_use]
    pub fn json(&self) -> &Map<String, Value> {
        &self.object
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", Value::Object(self.object.clone()))
    }
}

/// The capture backend named by a counters object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaptureBackend {
    /// [`XdpCounters`].
    Xdp,
    /// [`RawCounters`].
    Raw,
    /// [`FileCounters`].
    File,
}

impl CaptureBackend {
    /// Its `backend` in JSON.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            CaptureBackend::Xdp => "xdp",
            CaptureBackend::Raw => "raw",
            CaptureBackend::File => "file",
        }
    }

    /// Every counter its `capture` object must carry.
    #[must_use]
    pub fn counter_names(self) -> &'static [&'static str] {
        match self {
            CaptureBackend::Xdp => XdpCounters::NAMES,
            CaptureBackend::Raw => RawCounters::NAMES,
            CaptureBackend::File => FileCounters::NAMES,
        }
    }

    /// Levels its `capture` object may carry besides the counters.
    fn gauge_names(self) -> &'static [&'static str] {
        match self {
            // The ring buffer's fill, where it could be read.
            CaptureBackend::Xdp => &["ringbuf_used", "ringbuf_size"],
            CaptureBackend::Raw | CaptureBackend::File => &[],
        }
    }

    fn from_name(name: &str) -> Option<CaptureBackend> {
        [
            CaptureBackend::Xdp,
            CaptureBackend::Raw,
            CaptureBackend::File,
        ]
        .into_iter()
        .find(|b| b.name() == name)
    }
}

/// A backend's counters as a struct with one `u64` field per counter, and the list of their
/// names, from one list.
macro_rules! backend_counters {
    ($(#[$doc:meta])* $ty:ident = $backend:ident { $($(#[$field_doc:meta])* $field:ident),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub struct $ty {
            $($(#[$field_doc])* pub $field: u64,)+
        }

        impl $ty {
            /// The counters' names, as JSON and the stats line give them.
            pub const NAMES: &'static [&'static str] = &[$(stringify!($field)),+];

            fn of(summary: &Summary) -> $ty {
                summary.expect_backend(CaptureBackend::$backend);
                $ty { $($field: summary.counter(stringify!($field)),)+ }
            }
        }
    };
}

backend_counters! {
    /// Counters of the XDP backend.
    XdpCounters = Xdp {
        /// Frames the XDP program saw.
        seen,
        /// Frames that matched (UDP to a configured port).
        matched,
        /// Records dropped because the ring buffer was full.
        ringbuf_full,
        /// Frames cut to the capture length.
        truncated,
        /// Frames the program failed to copy.
        copy_failed,
        /// Records after which the program woke the reader (it was parked, or behind).
        wakeups,
    }
}

backend_counters! {
    /// Counters of the raw (`AF_PACKET`) backend.
    RawCounters = Raw {
        /// Frames read from the sockets.
        received,
        /// Frames the kernel queued to the sockets, dropped ones included (`PACKET_STATISTICS`).
        kernel_received,
        /// Frames the kernel dropped because a socket's buffer was full.
        kernel_dropped,
        /// Frames cut to the read buffer.
        truncated,
        /// Frames read but dropped because the queue to the pipeline was full.
        queue_full,
    }
}

backend_counters! {
    /// Counters of a capture file (`-r`).
    FileCounters = File {
        /// Frames read.
        read,
        /// Frames of a link type the binary cannot decode.
        skipped,
    }
}

/// The exit summary's capture counters, checked against its backend, and the datagrams
/// printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Which backend counted.
    pub backend: CaptureBackend,
    /// Every counter of that backend by name (exactly [`CaptureBackend::counter_names`]).
    pub counters: BTreeMap<String, u64>,
    /// Datagrams printed by userspace.
    pub printed: u64,
}

impl Summary {
    /// Finds and checks the exit summary (exactly one `{"type":"summary",...}` line, of a known
    /// backend, with exactly that backend's counters) in `stderr`.
    ///
    /// # Panics
    /// If it is missing, repeated or malformed.
    #[must_use]
    pub fn parse(stderr: &str) -> Summary {
        Summary::try_parse(stderr).unwrap_or_else(|e| panic!("{e}"))
    }

    /// As [`Summary::parse`], with the reason as an error rather than a panic.
    ///
    /// # Errors
    /// If the summary is missing, repeated or malformed.
    pub fn try_parse(stderr: &str) -> Result<Summary, String> {
        let found: Vec<Stats> = Stats::all(stderr.lines())
            .into_iter()
            .filter(Stats::is_summary)
            .collect();
        let [summary] = &found[..] else {
            return Err(format!(
                "expected one {{\"type\":\"summary\"}} line, found {} in stderr:\n{stderr}",
                found.len()
            ));
        };
        Summary::from_stats(summary)
    }

    /// The summary `stats` carries.
    ///
    /// # Errors
    /// If it names no known backend, or its counters are not exactly that backend's.
    pub fn from_stats(stats: &Stats) -> Result<Summary, String> {
        let backend = stats
            .backend()
            .ok_or_else(|| format!("no known backend in {stats}"))?;
        let capture = stats
            .json()
            .get("capture")
            .and_then(Value::as_object)
            .ok_or_else(|| format!("no capture counters in {stats}"))?;
        let names = backend.counter_names();
        let mut counters = BTreeMap::new();
        for (name, value) in capture {
            if backend.gauge_names().contains(&name.as_str()) {
                continue;
            }
            if !names.contains(&name.as_str()) {
                return Err(format!(
                    "unknown {} counter {name:?} in {stats}",
                    backend.name()
                ));
            }
            let value = value
                .as_u64()
                .ok_or_else(|| format!("counter {name} is {value}, not a count, in {stats}"))?;
            counters.insert(name.clone(), value);
        }
        if let Some(missing) = names.iter().find(|n| !counters.contains_key(**n)) {
            return Err(format!("no {missing} in {stats}"));
        }
        let printed = stats
            .try_counter("datagrams")
            .ok_or_else(|| format!("no datagrams in {stats}"))?;
        Ok(Summary {
            backend,
            counters,
            printed,
        })
    }

    /// One counter by name.
    ///
    /// # Panics
    /// If this backend has no such counter.
    #[must_use]
    pub fn counter(&self, name: &str) -> u64 {
        *self.counters.get(name).unwrap_or_else(|| {
            panic!(
                "no counter {name:?} for the {} backend: {self:?}",
                self.backend.name()
            )
        })
    }

    fn expect_backend(&self, want: CaptureBackend) {
        assert_eq!(
            self.backend,
            want,
            "expected {} counters, got {self:?}",
            want.name()
        );
    }

    /// The XDP counters.
    ///
    /// # Panics
    /// If the summary is of another backend.
    #[must_use]
    pub fn xdp(&self) -> XdpCounters {
        XdpCounters::of(self)
    }

    /// The raw backend's counters.
    ///
    /// # Panics
    /// If the summary is of another backend.
    #[must_use]
    pub fn raw(&self) -> RawCounters {
        RawCounters::of(self)
    }

    /// The capture file's counters.
    ///
    /// # Panics
    /// If the summary is of another backend.
    #[must_use]
    pub fn file(&self) -> FileCounters {
        FileCounters::of(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A summary line as netcon-sniff prints it, with `capture` and the datagrams.
    fn summary_line(backend: &str, capture: &str, datagrams: u64) -> String {
        format!(
            r#"{{"type":"summary","time":"2026-12-01T18:00:00.000000Z","backend":"{backend}","capture":{{{capture}}},"lost":0,"datagrams":{datagrams},"records":{datagrams},"files_written":2,"memory":{{"used":1}}}}"#
        )
    }

    #[test]
    fn parses_xdp_summary() {
        let stderr = format!(
            "listening on x\n{}\n",
            summary_line(
                "xdp",
                r#""seen":10,"matched":3,"ringbuf_full":0,"truncated":1,"copy_failed":0,"wakeups":2,"ringbuf_used":0,"ringbuf_size":4096"#,
                3
            )
        );
        let s = Summary::parse(&stderr);
        assert_eq!(s.backend, CaptureBackend::Xdp);
        assert_eq!(s.printed, 3);
        assert_eq!(
            s.xdp(),
            XdpCounters {
                seen: 10,
                matched: 3,
                ringbuf_full: 0,
                truncated: 1,
                copy_failed: 0,
                wakeups: 2,
            }
        );
        assert_eq!(s.counter("seen"), 10);
    }

    #[test]
    fn parses_raw_summary() {
        let s = Summary::parse(&summary_line(
            "raw",
            r#""received":5,"kernel_received":6,"kernel_dropped":1,"truncated":0,"queue_full":2"#,
            3,
        ));
        assert_eq!(
            s.raw(),
            RawCounters {
                received: 5,
                kernel_received: 6,
                kernel_dropped: 1,
                truncated: 0,
                queue_full: 2,
            }
        );
        assert_eq!(s.printed, 3);
    }

    #[test]
    fn parses_file_summary() {
        let stderr = format!(
            "reading f.pcap, ports 6666\n{}\n",
            summary_line("file", r#""read":590,"skipped":2"#, 588)
        );
        let s = Summary::parse(&stderr);
        assert_eq!(
            s.file(),
            FileCounters {
                read: 590,
                skipped: 2
            }
        );
        assert_eq!(s.printed, 588);
    }

    #[test]
    fn stats_objects_and_their_counters() {
        let stats = r#"{"type":"stats","backend":"raw","capture":{"received":4},"records":3,"nats_sent":2}"#;
        let summary = summary_line("file", r#""read":1,"skipped":0"#, 1);
        let stderr =
            format!("listening on eth0 (raw)\n{stats}\n{{\"type\":\"record\"}}\n{summary}\n");
        let all = Stats::all(stderr.lines());
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].kind(), "stats");
        assert_eq!(all[0].backend(), Some(CaptureBackend::Raw));
        assert_eq!(all[0].counter("received"), 4);
        assert_eq!(all[0].counter("nats_sent"), 2);
        assert_eq!(all[0].try_counter("nats_dropped"), None);
        assert!(Stats::last(&stderr).is_summary());
        assert_eq!(Stats::last(&stderr).counter("files_written"), 2);
        let lines: Vec<String> = stderr.lines().map(str::to_owned).collect();
        assert_eq!(
            without_stats(&lines),
            ["listening on eth0 (raw)", "{\"type\":\"record\"}"]
        );
        let prose = vec![
            format!("{STATS_PREFIX}file counters: read=1"),
            "x".to_owned(),
        ];
        assert_eq!(without_stats(&prose), ["x"]);
    }

    #[test]
    #[should_panic(expected = "expected xdp counters")]
    fn typed_accessor_checks_the_backend() {
        let _ = Summary::parse(&summary_line("file", r#""read":1,"skipped":0"#, 1)).xdp();
    }

    #[test]
    fn summary_needs_exactly_the_backends_counters() {
        let missing = summary_line(
            "xdp",
            r#""seen":1,"matched":1,"ringbuf_full":0,"truncated":0,"wakeups":0"#,
            1,
        );
        assert!(
            Summary::try_parse(&missing)
                .unwrap_err()
                .starts_with("no copy_failed")
        );
        let foreign = summary_line(
            "raw",
            r#""received":1,"kernel_received":1,"kernel_dropped":0,"truncated":0,"queue_full":0,"seen":1"#,
            1,
        );
        assert!(
            Summary::try_parse(&foreign)
                .unwrap_err()
                .starts_with("unknown raw counter \"seen\"")
        );
        let unknown = summary_line("afxdp", r#""x":1"#, 1);
        assert!(
            Summary::try_parse(&unknown)
                .unwrap_err()
                .starts_with("no known backend")
        );
        let one = summary_line("file", r#""read":1,"skipped":0"#, 1);
        assert!(
            Summary::try_parse(&format!("{one}\n{one}\n"))
                .unwrap_err()
                .contains("found 2")
        );
        assert!(
            Summary::try_parse("netcon-sniff: file counters: read=1 skipped=0\n")
                .unwrap_err()
                .contains("found 0")
        );
    }
}
