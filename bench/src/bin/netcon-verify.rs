//! `netcon-verify`: counts one netcon-load run's records in a receiver's output.

use std::fs::File;
use std::io::{self, Read};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::Parser;
use netcon_bench::load::monotonic_ns;
use netcon_bench::verify::{Expectation, Verifier};

/// Count one netcon-load run's records in a receiver's output, per sender: received, missing,
/// incomplete, duplicated, out of order; with --timed, the latency from each record's send
/// stamp to the moment this program read it (read stdin from the receiver, in real time:
/// `netcon-sniff ... | netcon-verify --timed ...`).
///
/// Exits 0 when every record arrived whole, 1 otherwise.
#[derive(Debug, Parser)]
#[command(name = "netcon-verify", version, verbatim_doc_comment)]
struct Cli {
    /// The run id given to netcon-load.
    #[arg(long, value_name = "ID", default_value_t = 1)]
    run: u32,
    /// Senders of the run.
    #[arg(short = 'H', long, value_name = "H", default_value_t = 1)]
    senders: u32,
    /// Records the run sent (netcon-load's `records=`).
    #[arg(long, value_name = "N")]
    records: u64,
    /// Every sender's first sequence number.
    #[arg(long, value_name = "SEQ", default_value_t = 0)]
    seq_start: u64,
    /// Fragments per record that were sent.
    #[arg(long, value_name = "N", default_value_t = 1)]
    fragments: u8,
    /// Time every record (read the receiver's output live, from stdin).
    #[arg(long)]
    timed: bool,
    /// Also print one line per sender with a loss, duplicate or reordering.
    #[arg(long)]
    per_sender: bool,
    /// Output to read; default stdin.
    file: Option<PathBuf>,
}

fn main() -> ExitCode {
    match run(&Cli::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(error) => {
            eprintln!("netcon-verify: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: &Cli) -> Result<bool> {
    let mut verifier = Verifier::new(
        Expectation {
            run: cli.run,
            senders: cli.senders,
            seq_start: cli.seq_start,
            records: cli.records,
            fragments: cli.fragments,
        },
        cli.timed,
    );
    let mut input: Box<dyn Read> = match &cli.file {
        Some(path) => {
            Box::new(File::open(path).with_context(|| format!("opening {}", path.display()))?)
        }
        None => Box::new(io::stdin().lock()),
    };
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("reading the receiver's output"),
        };
        verifier.feed(&buf[..n], monotonic_ns());
    }
    verifier.finish(monotonic_ns());
    if cli.per_sender {
        for (k, c) in verifier.senders().iter().enumerate() {
            if c.missing + c.incomplete + c.duplicated + c.out_of_order > 0 {
                println!(
                    "sender {k}: expected={} received={} missing={} incomplete={} duplicated={} out_of_order={}",
                    c.expected, c.received, c.missing, c.incomplete, c.duplicated, c.out_of_order
                );
            }
        }
    }
    println!("{}", verifier.summary().to_line());
    Ok(verifier.all_received())
}
