//! `netcon-sniff`: parse the command line, resolve it, run, map the outcome to an exit code.

use std::{io, process::ExitCode};

use clap::Parser as _;
use netcon::{
    Config,
    cli::{Cli, Command, StatsFormat},
    run::RunError,
};
use tokio::signal::unix::{SignalKind, signal};

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(io::stderr)
        .with_ansi(io::IsTerminal::is_terminal(&io::stderr()))
        // NETCON_LOG, else the usual RUST_LOG (`RUST_LOG=debug` shows a verifier's whole log).
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("NETCON_LOG")
                .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version print to stdout and exit 0.
        Err(error) if !error.use_stderr() => error.exit(),
        Err(error) => {
            // One line, like every other error: clap's first line is the message, and the
            // indented lines under it (the missing arguments) complete it.
            let text = error.to_string();
            let mut lines = text.lines();
            let first = lines.next().unwrap_or_default();
            let mut message = first.strip_prefix("error: ").unwrap_or(first).to_owned();
            let details: Vec<&str> = lines
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect();
            if !details.is_empty() {
                message.push(' ');
                message.push_str(&details.join(", "));
            }
            eprintln!("netcon-sniff: error: {message} (see --help)");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Some(Command::SenderConfig(args)) => {
            return match netcon::sender_config::run(&args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => fail(&error),
            };
        }
        Some(Command::Tail(args)) => return tail(&args),
        Some(Command::Generate { what }) => {
            return match what.write(&mut io::stdout().lock()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) if error.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
                Err(error) => fail(&error),
            };
        }
        None => {}
    }
    let config = match Config::from_cli(cli.sniff) {
        Ok(config) => config,
        Err(error) => return fail(&error),
    };
    let stats_format = config.stats_format;
    match until_signal(|shutdown| netcon::run(config, shutdown)) {
        Err(code) => code,
        Ok(Ok(summary)) => {
            match stats_format {
                StatsFormat::Text => {
                    eprintln!("netcon-sniff: {}", summary.capture);
                    eprintln!("netcon-sniff: printed {} datagrams", summary.datagrams);
                    eprintln!("netcon-sniff: stats: {}", summary.stats_line);
                }
                StatsFormat::Json => eprintln!("{}", summary.snapshot.to_json("summary")),
            }
            let lost = summary.capture.lost();
            if lost > 0 {
                eprintln!(
                    "netcon-sniff: warning: {lost} matched frames lost before they could be read (try a larger --ring-mib)"
                );
            }
            ExitCode::SUCCESS
        }
        // A closed pipe (`netcon-sniff | head`) is a normal way to stop.
        Ok(Err(RunError::Output { source })) if source.kind() == io::ErrorKind::BrokenPipe => {
            ExitCode::SUCCESS
        }
        Ok(Err(error)) => fail(&error),
    }
}

/// `netcon-sniff tail`: until SIGINT or SIGTERM (or the end of the stream with --no-follow).
fn tail(args: &netcon::tail::TailArgs) -> ExitCode {
    match until_signal(|shutdown| netcon::tail::run(args, shutdown)) {
        Err(code) => code,
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(netcon::tail::TailError::Output { source }))
            if source.kind() == io::ErrorKind::BrokenPipe =>
        {
            ExitCode::SUCCESS
        }
        Ok(Err(error)) => fail(&error),
    }
}

/// Runs `task` on a single-threaded runtime, handing it the future that completes on the
/// first SIGINT or SIGTERM. `Err` is the exit code when the runtime or the signal handlers
/// cannot be set up (already reported).
fn until_signal<F, T>(task: impl FnOnce(ShutdownSignal) -> F) -> Result<T, ExitCode>
where
    F: Future<Output = T>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| fail(&error))?;
    runtime
        .block_on(async {
            let shutdown = shutdown_signal()?;
            Ok::<_, io::Error>(task(shutdown).await)
        })
        .map_err(|error| fail(&error))
}

/// What [`shutdown_signal`] returns.
type ShutdownSignal = std::pin::Pin<Box<dyn Future<Output = ()>>>;

/// Completes on the first SIGINT or SIGTERM.
fn shutdown_signal() -> io::Result<ShutdownSignal> {
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(Box::pin(async move {
        tokio::select! {
            _ = interrupt.recv() => {},
            _ = terminate.recv() => {},
        }
    }))
}

/// One line on stderr and exit code 2: the error and its causes, no backtrace.
fn fail(error: &dyn std::error::Error) -> ExitCode {
    let mut message = format!("netcon-sniff: error: {error}");
    let mut source = error.source();
    while let Some(cause) = source {
        // Many errors already include their cause in their own message.
        let cause_text = cause.to_string();
        if !message.contains(&cause_text) {
            message.push_str(": ");
            message.push_str(&cause_text);
        }
        source = cause.source();
    }
    eprintln!("{}", message.replace('\n', " "));
    ExitCode::from(2)
}
