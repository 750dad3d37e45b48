//! `cargo xtask`: everything a fresh clone needs, idempotently.
//!
//! - `setup`: nightly's `rust-src` and bpf-linker, built against nightly's own libLLVM and
//!   cached in `~/.cache/netcon` (keyed by bpf-linker and LLVM version). Silent when present.
//! - `build`, `run -- ARGS`, `test`: setup first, then the cargo commands.

use std::{
    env,
    ffi::OsString,
    fs,
    os::unix::{fs::symlink, process::CommandExt as _},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail, ensure};
use clap::{Parser, Subcommand};

mod bench;
mod vm;

include!("bpf_linker_version.rs");

/// netcon's build tasks.
#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what the eBPF build needs (nightly rust-src, bpf-linker). Idempotent.
    Setup,
    /// Setup, then build the workspace (release).
    Build,
    /// Setup, build, and run netcon-sniff (release) with ARGS; needs root.
    Run {
        /// Arguments for netcon-sniff, after `--`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Setup, build, clippy, fmt check, unit tests, the end-to-end tests, then vm-test
    /// (needs root).
    Test {
        /// Pass vm-test's opt-out: on a machine where qemu cannot be installed, say SKIPPED
        /// loudly instead of failing.
        #[arg(long)]
        skip_if_no_qemu: bool,
    },
    /// Boot real Linux kernels under qemu whose netconsole sends to netcon-sniff (needs root).
    VmTest(vm::VmTestArgs),
    /// Benchmarks: decoder micro-benchmarks and netcon against the baselines, side by side;
    /// writes BENCHMARKS.md (needs root).
    Bench(bench::BenchArgs),
}

fn main() -> Result<()> {
    let args = Args::parse();
    let root = workspace_root();
    env::set_current_dir(&root).with_context(|| format!("cd {}", root.display()))?;
    match args.task {
        Task::Setup => setup(),
        Task::Build => {
            setup()?;
            cargo(&["build", "--release", "--workspace"])
        }
        Task::Run { args } => {
            setup()?;
            cargo(&["build", "--release", "--quiet", "-p", "netcon-user"])?;
            let error = Command::new(root.join("target/release/netcon-sniff"))
                .args(args)
                .exec();
            Err(error).context("starting target/release/netcon-sniff")
        }
        Task::Test { skip_if_no_qemu } => test(&root, skip_if_no_qemu),
        Task::Bench(args) => {
            setup()?;
            bench::run(&root, &args)
        }
        Task::VmTest(args) => {
            setup()?;
            vm::run(&root, &args)
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn cargo(args: &[&str]) -> Result<()> {
    run(Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into())).args(args))
}

fn run(command: &mut Command) -> Result<()> {
    let status = command
        .status()
        .with_context(|| format!("starting {command:?}"))?;
    ensure!(status.success(), "{command:?} failed ({status})");
    Ok(())
}

/// Debian packages the end-to-end tests run: tcpdump opens the pcap files netcon writes;
/// rsyslog receives what `--forward` sends; prometheus (with promtool) scrapes `--metrics`;
/// `nats-server` (`JetStream`) receives what `--forward nats://` sends.
const TEST_PACKAGES: &[&str] = &["tcpdump", "rsyslog", "prometheus", "nats-server"];

/// Installs the Debian packages that are missing, idempotently: silent when all are present.
///
/// # Errors
/// When apt-get fails (not root, no mirror reachable, unknown package).
pub fn apt_install(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing {} (apt-get)", missing.join(" "));
    run(Command::new("apt-get").args(["update", "-qq"]))
        .context("apt-get update (needs root and Debian's package mirrors)")?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        // Another apt (a parallel test run, unattended upgrades) may hold the lock for a while.
        .args(["-o", "DPkg::Lock::Timeout=600"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
    .with_context(|| format!("installing {}", missing.join(" ")))
}

fn test(root: &Path, skip_if_no_qemu: bool) -> Result<()> {
    setup()?;
    apt_install(TEST_PACKAGES)?;
    cargo(&["fmt", "--all", "--check"])?;
    run(nightly("cargo")
        .args(["fmt", "--check"])
        .current_dir(root.join("netcon-ebpf")))?;
    cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    cargo(&["test", "--workspace", "--exclude", "netcon-tests"])?;
    // The fuzz targets build with nightly (libFuzzer); checking them keeps them in step with the
    // decoder's API without a fuzzing run.
    run(nightly("cargo")
        .args(["check", "--quiet", "--manifest-path"])
        .arg(root.join("fuzz/Cargo.toml"))
        .env("NETCON_SKIP_EBPF", "1")
        .env("CARGO_TARGET_DIR", root.join("fuzz/target")))?;
    cargo(&["build", "-p", "netcon-user"])?;
    // The end-to-end tests run the binary just built, in network namespaces of their own.
    run(
        Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .args(["test", "-p", "netcon-tests"])
            .env("NETCON_SNIFF", root.join("target/debug/netcon-sniff")),
    )?;
    // Real kernels' netconsole against the same binary.
    vm::run(
        root,
        &vm::VmTestArgs {
            sniff: Some(root.join("target/debug/netcon-sniff")),
            skip_if_no_qemu,
            ..vm::VmTestArgs::default()
        },
    )
}

/// A command run with the nightly toolchain, free of the outer cargo's settings.
fn nightly(program: &str) -> Command {
    let mut command = Command::new("rustup");
    command.args(["run", "nightly", program]);
    for (key, _) in env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_") || key.starts_with("RUSTC") || key == "RUSTUP_TOOLCHAIN" {
            command.env_remove(&*key);
        }
    }
    command
}

fn output(command: &mut Command) -> Result<String> {
    let out = command
        .output()
        .with_context(|| format!("starting {command:?}"))?;
    ensure!(
        out.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn setup() -> Result<()> {
    let version = output(nightly("rustc").arg("-vV")).context(
        "the nightly toolchain is needed for the eBPF program (`rustup toolchain install nightly`)",
    )?;
    let llvm = version
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .context("`rustc +nightly -vV` printed no LLVM version")?
        .trim()
        .to_owned();
    let llvm_major = llvm.split('.').next().unwrap_or_default().to_owned();

    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))?;
    if !installed.lines().any(|l| l.starts_with("rust-src")) {
        eprintln!("xtask: adding rust-src to the nightly toolchain");
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }

    let cache = cache_dir()?;
    let linker_root = cache.join(format!("bpf-linker-{BPF_LINKER_VERSION}-llvm-{llvm}"));
    if linker_root.join("bin/bpf-linker").is_file() {
        return Ok(());
    }
    // bpf-linker links libLLVM dynamically; nightly ships one (lib/libLLVM.so.<ver>-rust-...).
    // LLVM_PREFIX must hold lib/libLLVM.so and that exact name, both pointing at it.
    let sysroot = PathBuf::from(output(nightly("rustc").args(["--print", "sysroot"]))?.trim());
    let libllvm = fs::read_dir(sysroot.join("lib"))
        .with_context(|| format!("reading {}/lib", sysroot.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so.") && p.is_file())
        })
        .with_context(|| format!("no libLLVM.so.* in {}/lib", sysroot.display()))?;
    let prefix = cache.join(format!("llvm-{llvm}"));
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    let file_name = libllvm.file_name().context("libLLVM has a name")?;
    for link in [lib.join("libLLVM.so"), lib.join(file_name)] {
        if fs::read_link(&link).ok().as_deref() != Some(libllvm.as_path()) {
            let _ = fs::remove_file(&link);
            symlink(&libllvm, &link).with_context(|| format!("linking {}", link.display()))?;
        }
    }
    eprintln!(
        "xtask: building bpf-linker {BPF_LINKER_VERSION} against nightly's LLVM {llvm} (once; a few minutes)"
    );
    let status = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["install", "bpf-linker", "--locked", "--no-default-features"])
        .args(["--version", BPF_LINKER_VERSION])
        .args(["--features", &format!("llvm-{llvm_major}")])
        .arg("--root")
        .arg(&linker_root)
        .env("LLVM_PREFIX", &prefix)
        .env_remove("RUSTUP_TOOLCHAIN")
        .status()
        .context("running cargo install bpf-linker")?;
    if !status.success() {
        let _ = fs::remove_dir_all(&linker_root);
        bail!("cargo install bpf-linker failed ({status})");
    }
    Ok(())
}

fn cache_dir() -> Result<PathBuf> {
    let base = env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .context("neither XDG_CACHE_HOME nor HOME is set")?;
    Ok(base.join("netcon"))
}
