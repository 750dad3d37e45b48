//! `cargo xtask bench`. (Being written.)

use std::path::Path;

use anyhow::{Result, bail};

/// Options of `bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {}

pub fn run(_root: &Path, _args: &BenchArgs) -> Result<()> {
    bail!("bench is not implemented yet")
}
