//! The decoder micro-benchmarks (`netcon-user/benches/decode.rs`, criterion): run them and keep
//! their throughput figures.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, ensure};

/// One criterion benchmark's throughput: the lower bound, estimate and upper bound of its
/// confidence interval, elements per second.
#[derive(Debug, Clone, PartialEq)]
pub struct Throughput {
    /// `group/function`.
    pub name: String,
    /// Lower bound, elements/s.
    pub low: f64,
    /// Estimate, elements/s.
    pub estimate: f64,
    /// Upper bound, elements/s.
    pub high: f64,
}

/// Runs `cargo bench -p netcon-user --bench decode` and parses its `thrpt:` lines. `quick`:
/// 1 s warm-up, 2 s of measurement per benchmark.
pub fn run(root: &Path, quick: bool) -> Result<Vec<Throughput>> {
    let bench = root.join("netcon-user/benches/decode.rs");
    ensure!(bench.is_file(), "{} is missing", bench.display());
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command
        .current_dir(root)
        .args(["bench", "-p", "netcon-user", "--bench", "decode", "--"])
        .arg("--noplot");
    if quick {
        command.args(["--warm-up-time", "1", "--measurement-time", "2"]);
    }
    eprintln!("xtask bench: decoder micro-benchmarks (criterion)");
    let out = command
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo bench")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "cargo bench failed ({}):\n{stdout}",
        out.status
    );
    let figures = parse(&stdout);
    ensure!(
        !figures.is_empty(),
        "no throughput lines in cargo bench's output:\n{stdout}"
    );
    Ok(figures)
}

/// Parses criterion's report: a `group/name` line, later `thrpt:  [a unit b unit c unit]`.
pub fn parse(text: &str) -> Vec<Throughput> {
    let mut out = Vec::new();
    let mut name: Option<String> = None;
    for line in text.lines() {
        let trimmed = line.trim();
        // The name starts a line; criterion puts the figures on the same line when it is short.
        if !line.starts_with(char::is_whitespace)
            && let Some(first) = trimmed.split_whitespace().next()
            && first.contains('/')
        {
            name = Some(first.to_owned());
        }
        let Some((_, rest)) = trimmed.split_once("thrpt:") else {
            continue;
        };
        let inner = rest.trim().trim_start_matches('[').trim_end_matches(']');
        let words: Vec<&str> = inner.split_whitespace().collect();
        let values: Vec<f64> = words
            .chunks(2)
            .filter_map(|pair| match pair {
                [n, unit] => Some(n.parse::<f64>().ok()? * scale(unit)?),
                _ => None,
            })
            .collect();
        if let (Some(n), [low, estimate, high]) = (name.take(), values.as_slice()) {
            out.push(Throughput {
                name: n,
                low: *low,
                estimate: *estimate,
                high: *high,
            });
        }
    }
    out
}

fn scale(unit: &str) -> Option<f64> {
    Some(match unit {
        "elem/s" => 1.0,
        "Kelem/s" => 1e3,
        "Melem/s" => 1e6,
        "Gelem/s" => 1e9,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_criterion_output() {
        let text = "decode/extended_100_byte_records\n                        time:   [3.8283 ms 4.0484 ms 4.2755 ms]\n                        thrpt:  [2.3389 Melem/s 2.4701 Melem/s 2.6121 Melem/s]\nFound 1 outliers among 100 measurements (1.00%)\ndecode/extended_4_fragment_records\n                        time:   [4.5778 ms 4.8372 ms 5.1079 ms]\n                        thrpt:  [195.77 Kelem/s 206.73 Kelem/s 218.44 Kelem/s]\nshort/x                 time:   [1 ms 1 ms 1 ms]\n                        thrpt:  [1.0 elem/s 2.0 elem/s 3.0 elem/s]\n";
        let f = parse(text);
        assert_eq!(f.len(), 3);
        assert_eq!(f[0].name, "decode/extended_100_byte_records");
        assert!((f[0].estimate - 2_470_100.0).abs() < 1.0);
        assert!((f[1].low - 195_770.0).abs() < 1e-6);
        assert_eq!(f[2].name, "short/x");
        assert!((f[2].high - 3.0).abs() < 1e-9);
    }
}
