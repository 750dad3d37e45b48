//! The run: capture → wire → netconsole decoder → sinks, and its async shell.
//!
//! [`Pipeline`] routes frames and events to the sinks; [`run`] opens the capture and the
//! outputs, drops root, and drives the pipeline from what wakes it ([`wake`]) until shutdown.

mod backend;
mod losses;
mod pipeline;
mod wake;

use std::{future::Future, io};

pub use losses::LOSS_POLL_INTERVAL;
pub use pipeline::Pipeline;

use crate::{
    capture::{Backend, CaptureCounters, CaptureError, pcap::PcapFileError, promisc::PromiscError},
    config::{Config, OutputFormat, Source},
    metrics::{MetricsServer, Snapshot},
    netconsole::DecoderStats,
    sink::{
        self, OutputError,
        stdout::{StdoutFormat, StdoutSink},
    },
    systemd::Systemd,
};
use backend::{open_backend, promisc_guards};
use losses::LossWatch;
use wake::{Signals, Wake, interval_from_now, scrape_request, sleep_until, tick};

/// Why `run` stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Capture failed to start or to read.
    #[error(transparent)]
    Capture(#[from] CaptureError),
    /// Promiscuous mode was refused.
    #[error(transparent)]
    Promisc(#[from] PromiscError),
    /// --log-dir cannot be used.
    #[error(transparent)]
    LogDir(#[from] sink::files::FilesError),
    /// --forward cannot be used.
    #[error(transparent)]
    Forward(#[from] sink::syslog::SyslogError),
    /// --forward nats:// cannot be used.
    #[error(transparent)]
    Nats(#[from] sink::nats::NatsError),
    /// --metrics cannot serve.
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
    /// `-w` cannot be written.
    #[error(transparent)]
    Save(#[from] sink::pcap::PcapWriteError),
    /// Dropping root failed.
    #[error(transparent)]
    Privileges(#[from] crate::privileges::PrivilegeError),
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers: {source}")]
    Signals {
        #[source]
        source: io::Error,
    },
    /// Writing records failed (a closed pipe is reported as this too; `main` exits 0 on it).
    #[error("writing output: {source}")]
    Output {
        #[source]
        source: io::Error,
    },
}

impl From<PcapFileError> for RunError {
    fn from(error: PcapFileError) -> Self {
        Self::Capture(error.into())
    }
}

impl From<OutputError> for RunError {
    fn from(error: OutputError) -> Self {
        match error {
            OutputError::Stdout { source } => Self::Output { source },
            OutputError::Pcap(error) => Self::Save(error),
        }
    }
}

/// What a run did, for the exit summary.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// The capture backend's counters.
    pub capture: CaptureCounters,
    /// Datagrams printed.
    pub datagrams: u64,
    /// Frames that were not well-formed UDP.
    pub malformed: u64,
    /// Well-formed UDP to a port not configured (capture files, many-port raw filters).
    pub other_ports: u64,
    /// Datagrams from senders outside `--allow`.
    pub denied: u64,
    /// The decoder's counters.
    pub decoder: DecoderStats,
    /// The stats line (as printed on SIGUSR1), for the exit summary.
    pub stats_line: String,
    /// Every counter, for `--stats-format json`.
    pub snapshot: Snapshot,
}

/// The pipeline with every output `config` asks for, files opened (still privileged, before
/// any drop). A new output is one more sink here.
fn open_pipeline(config: &Config) -> Result<Pipeline<'_>, RunError> {
    let mut pipeline = Pipeline::new(config);
    if let Some(path) = &config.write {
        pipeline.add_sink(Box::new(sink::pcap::PcapSink::create(path)?));
    }
    if let Some(options) = &config.log_dir {
        // Before the drop: what the user will need is created for it, or refused now.
        let user = config
            .user
            .as_deref()
            .map(crate::privileges::lookup)
            .transpose()?;
        pipeline.add_sink(Box::new(sink::files::LogDir::open_as(
            options.clone(),
            user.as_ref(),
            config.budget.clone(),
        )?));
    }
    for url in &config.forward {
        pipeline.add_sink(Box::new(sink::syslog::Forwarder::start(url)?));
    }
    for url in &config.nats.urls {
        pipeline.add_sink(Box::new(sink::nats::NatsForwarder::start(
            url,
            config.nats.stream.as_ref(),
            config.budget.clone(),
        )?));
    }
    if let Some(options) = &config.on_panic {
        pipeline.add_sink(Box::new(sink::hook::PanicHook::new(
            options.clone(),
            config.budget.clone(),
        )));
    }
    let format = match config.format {
        OutputFormat::Text => StdoutFormat::Text {
            color: config.color,
        },
        OutputFormat::Json => StdoutFormat::Json,
        OutputFormat::Raw => StdoutFormat::Raw(pipeline::interface_labels(config)),
    };
    pipeline.add_sink(Box::new(StdoutSink::new(io::stdout(), format)));
    Ok(pipeline)
}

/// Captures from `config`'s source and writes records to stdout until `shutdown` completes
/// (or a capture file ends); then drains what is already captured and returns the summary.
///
/// # Errors
/// [`RunError`] when capture cannot start or fails, or output cannot be written.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<RunSummary, RunError> {
    // Handlers first: opening the backend prints `listening on`, and a SIGUSR1 sent on seeing
    // that line must ask for stats, not kill the process (the default action).
    let mut signals = Signals::new().map_err(|source| RunError::Signals { source })?;
    let _promisc = promisc_guards(&config)?;
    let mut backend = open_backend(&config)?;
    let mut pipeline = open_pipeline(&config)?;
    // Bound before root is dropped: the port may be privileged.
    let mut metrics = config.metrics.map(MetricsServer::start).transpose()?;
    // Still privileged: the first read of the counters works even where reading BPF maps
    // will need CAP_BPF once root is dropped.
    let mut losses = LossWatch::start(&config, &mut backend).await;
    // Everything privileged is done: the descriptors keep working without root.
    if let Some(user) = &config.user {
        crate::privileges::drop_to(user)?;
    }
    let mut stats_timer = config.stats_interval.map(interval_from_now);

    let mut systemd = Systemd::from_env();
    systemd.ready(&ready_status(&config, metrics.as_ref()));

    let mut batch = Vec::with_capacity(crate::capture::MAX_BATCH);
    tokio::pin!(shutdown);
    let ended: Result<(), RunError> = loop {
        batch.clear();
        let timer = pipeline.poll_at();
        // The select only says what woke us; the work happens below, free of its borrows.
        let wake = tokio::select! {
            biased;
            () = &mut shutdown => Wake::Shutdown,
            _ = signals.hangup.recv() => Wake::Hangup,
            _ = signals.user1.recv() => Wake::Stats,
            () = tick(stats_timer.as_mut()) => Wake::Stats,
            () = systemd.watchdog_due() => Wake::Watchdog,
            reply = scrape_request(metrics.as_mut()) => Wake::Scrape(reply),
            // Ahead of frames: a flood that loses frames must not delay saying so.
            () = tick(losses.timer.as_mut()) => Wake::Losses,
            () = sleep_until(timer) => Wake::Timer,
            more = backend.recv(&mut batch) => match more {
                Ok(more) => Wake::Frames { more },
                Err(error) => Wake::Failed(error),
            },
        };
        let done = match wake {
            Wake::Shutdown => break Ok(()),
            Wake::Hangup => {
                pipeline.reopen();
                Ok(())
            }
            Wake::Stats => {
                with_counters(&mut backend, "no stats line", |counters| {
                    eprintln!("{}", pipeline.stats_report(counters));
                });
                Ok(())
            }
            Wake::Watchdog => {
                systemd.watchdog();
                Ok(())
            }
            Wake::Scrape(reply) => {
                // The scrape may have given up waiting: nothing to do then.
                with_counters(&mut backend, "scrape not answered", |counters| {
                    drop(reply.send(pipeline.snapshot(counters)));
                });
                Ok(())
            }
            Wake::Losses => losses.check(&mut backend, &mut pipeline).await,
            Wake::Timer => pipeline.tick(),
            Wake::Frames { more } => {
                let done = pipeline.process(&batch);
                if done.is_ok() && !more {
                    break Ok(());
                }
                done
            }
            Wake::Failed(error) => break Err(error.into()),
        };
        if let Err(error) = done {
            break Err(error);
        }
    };
    systemd.stopping();
    drop(metrics);
    // Whatever ended the loop, what is captured and held still goes to every output that works:
    // a closed stdout or a failed -w must not cost the files, syslog or the hook their records.
    let mut finishing = Vec::new();
    if ended.is_ok() {
        batch.clear();
        if let Err(error) = backend.drain(&mut batch) {
            tracing::warn!(%error, "cannot read what was left in the capture buffer");
        }
        finishing.push(pipeline.process(&batch));
    }
    finishing.push(losses.check(&mut backend, &mut pipeline).await);
    finishing.push(pipeline.finish());
    finishing.push(pipeline.close());
    // The run's own error, if any, is the one reported; else the first met while finishing.
    let finished = first_error(finishing);
    ended?;
    finished?;
    let counters = losses.final_counters(&mut backend)?;
    Ok(pipeline.summary(counters))
}

/// Hands the backend's counters to `report`. A report is not worth the run: counters that cannot
/// be read (BPF maps after --user where reading them needs `CAP_BPF`) are only logged, and a
/// scrape left unanswered fails with 503.
fn with_counters(backend: &mut Backend, what: &'static str, report: impl FnOnce(CaptureCounters)) {
    match backend.counters() {
        Ok(counters) => report(counters),
        Err(error) => tracing::warn!(%error, "{what}"),
    }
}

/// The first error of `steps`; the others are logged.
fn first_error(steps: Vec<Result<(), RunError>>) -> Result<(), RunError> {
    let mut first = Ok(());
    for step in steps {
        match (step, &first) {
            (Err(error), Ok(())) => first = Err(error),
            (Err(error), Err(_)) => tracing::debug!(%error, "while finishing"),
            (Ok(()), _) => {}
        }
    }
    first
}

/// The status systemd shows once capture is attached.
fn ready_status(config: &Config, metrics: Option<&MetricsServer>) -> String {
    let mut status = match &config.source {
        Source::File(path) => format!("reading {}", path.display()),
        Source::Live => {
            let names: Vec<&str> = config.interfaces.iter().map(|i| i.name.as_str()).collect();
            format!("capturing on {}", names.join(", "))
        }
    };
    if let Some(server) = metrics {
        use std::fmt::Write as _;
        let _ = write!(
            status,
            "; metrics at http://{}/metrics",
            server.local_addr()
        );
    }
    status
}
