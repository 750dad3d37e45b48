//! `cargo xtask vm-test`: real kernels' netconsole against netcon-sniff. (Being written.)

use std::path::Path;

use anyhow::{Result, bail};

/// Options of `vm-test`.
#[derive(Debug, clap::Args)]
pub struct VmTestArgs {}

pub fn run(_root: &Path, _args: &VmTestArgs) -> Result<()> {
    bail!("vm-test is not implemented yet")
}
