//! What the host needs: Debian packages, an accelerator, the netcon-sniff binary.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail, ensure};

use super::cmd_output;

/// Debian packages the test runs: qemu; busybox-static for the guest's userland; kmod for
/// `depmod` (kernel packages ship no `modules.dep`: their postinst makes it); xz-utils and zstd
/// to unpack the kernel image and modules.
const PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "busybox-static",
    "kmod",
    "xz-utils",
    "zstd",
];

/// Installs the missing ones of [`PACKAGES`] with apt-get. Silent when all are there.
pub fn ensure_packages() -> Result<()> {
    crate::apt_install(PACKAGES)?;
    ensure!(
        which("qemu-system-x86_64").is_some(),
        "qemu-system-x86_64 is not on PATH after installing qemu-system-x86"
    );
    Ok(())
}

/// The path of `program` on `PATH`.
pub fn which(program: &str) -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// How qemu runs the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum Accel {
    /// KVM when /dev/kvm is usable hardware virtualisation, else TCG.
    #[default]
    Auto,
    /// Hardware virtualisation.
    Kvm,
    /// Emulation (slower, works everywhere).
    Tcg,
}

/// Resolves [`Accel::Auto`]. `/dev/kvm` backed by PVM (`kvm_pvm`, a paravirtual KVM for nested
/// guests) hangs a stock kernel early in boot, so only Intel's or AMD's KVM counts.
pub fn resolve_accel(choice: Accel) -> (Accel, &'static str) {
    match choice {
        Accel::Kvm => (Accel::Kvm, "asked for"),
        Accel::Tcg => (Accel::Tcg, "asked for"),
        Accel::Auto => {
            let module = |m: &str| Path::new("/sys/module").join(m).exists();
            if !Path::new("/dev/kvm").exists() {
                (Accel::Tcg, "no /dev/kvm")
            } else if module("kvm_pvm") {
                (Accel::Tcg, "/dev/kvm is PVM, which hangs stock kernels")
            } else if module("kvm_intel") || module("kvm_amd") {
                (Accel::Kvm, "/dev/kvm")
            } else {
                (Accel::Tcg, "/dev/kvm is neither kvm_intel nor kvm_amd")
            }
        }
    }
}

/// The netcon-sniff binary under test and what its command line offers.
#[derive(Debug, Clone)]
pub struct Sniff {
    pub path: PathBuf,
    /// It has `--backend` (`xdp`, `raw`).
    pub backends: bool,
    /// `--format json` exists.
    pub json: bool,
    /// `-w FILE` (save a pcap) exists.
    pub write_pcap: bool,
}

/// `explicit` (`--sniff`), else `$NETCON_SNIFF`, else the newer of
/// `target/{debug,release}/netcon-sniff`.
pub fn find_sniff(root: &Path, explicit: Option<&Path>) -> Result<Sniff> {
    let path = if let Some(path) = explicit {
        path.to_path_buf()
    } else if let Some(path) = env::var_os("NETCON_SNIFF") {
        PathBuf::from(path)
    } else {
        let target =
            env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
        let mut candidates: Vec<(std::time::SystemTime, PathBuf)> = ["debug", "release"]
            .iter()
            .map(|p| target.join(p).join("netcon-sniff"))
            .chain(
                ["debug", "release"]
                    .iter()
                    .map(|p| root.join("target").join(p).join("netcon-sniff")),
            )
            .filter_map(|p| Some((fs::metadata(&p).ok()?.modified().ok()?, p)))
            .collect();
        candidates.sort();
        match candidates.pop() {
            Some((_, p)) => p,
            None => bail!(
                "no netcon-sniff binary: build it (`cargo build -p netcon-user`) or set NETCON_SNIFF"
            ),
        }
    };
    ensure!(
        path.is_file(),
        "{} does not exist (NETCON_SNIFF?)",
        path.display()
    );
    let help = cmd_output(Command::new(&path).arg("--help"))
        .with_context(|| format!("{} --help", path.display()))?;
    Ok(Sniff {
        backends: help.contains("--backend"),
        // clap lists possible values as `- json: ...`; only --format has that one.
        json: help.contains("- json"),
        write_pcap: help.contains("--write"),
        path,
    })
}
