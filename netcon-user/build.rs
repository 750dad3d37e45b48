//! Builds the XDP program (`../netcon-ebpf`) with nightly and bpf-linker, and leaves the object
//! in `OUT_DIR/netcon.bpf.o` for `include_bytes_aligned!`.
//!
//! bpf-linker is not on PATH on a fresh machine: `cargo xtask setup` builds it against nightly's
//! own libLLVM and caches it in `~/.cache/netcon/bpf-linker-<version>-llvm-<llvm version>/bin`,
//! which this script finds the same way. `NETCON_BPF_LINKER` names another one;
//! `NETCON_SKIP_EBPF=1` builds without the XDP program (the XDP backend then says so at run time).

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

include!("../xtask/src/bpf_linker_version.rs");

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    let ebpf_dir = manifest_dir.join("../netcon-ebpf");
    let object = out_dir.join("netcon.bpf.o");
    for path in [
        ebpf_dir.join("src"),
        ebpf_dir.join("Cargo.toml"),
        ebpf_dir.join(".cargo/config.toml"),
        manifest_dir.join("../netcon-common/src"),
    ] {
        println!("cargo::rerun-if-changed={}", path.display());
    }
    println!("cargo::rerun-if-env-changed=NETCON_SKIP_EBPF");
    println!("cargo::rerun-if-env-changed=NETCON_BPF_LINKER");

    if env::var_os("NETCON_SKIP_EBPF").is_some_and(|v| !v.is_empty() && v != "0") {
        fs::write(&object, b"").expect("write empty eBPF object");
        return;
    }
    if let Err(message) = build(&ebpf_dir, &out_dir, &object) {
        println!("cargo::error={message}");
    }
}

fn build(ebpf_dir: &Path, out_dir: &Path, object: &Path) -> Result<(), String> {
    let linker = find_bpf_linker()?;
    // Shared across profiles so the nested build stays incremental: <target>/netcon-ebpf.
    let target_dir = out_dir
        .ancestors()
        .nth(4)
        .map_or_else(|| out_dir.join("netcon-ebpf"), |t| t.join("netcon-ebpf"));
    let path = env::join_paths(
        std::iter::once(linker.parent().unwrap_or(Path::new(".")).to_path_buf())
            .chain(env::split_paths(&env::var_os("PATH").unwrap_or_default())),
    )
    .map_err(|e| format!("PATH: {e}"))?;
    let mut cargo = Command::new("rustup");
    cargo
        .args([
            "run",
            "nightly",
            "cargo",
            "build",
            "--release",
            "--target-dir",
        ])
        .arg(&target_dir)
        .current_dir(ebpf_dir)
        .env("PATH", path);
    // The outer (stable) cargo's settings must not leak into the nested nightly build.
    for (key, _) in env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_")
            || key.starts_with("RUSTC")
            || matches!(&*key, "RUSTUP_TOOLCHAIN" | "RUSTFLAGS" | "RUSTDOCFLAGS")
        {
            cargo.env_remove(&*key);
        }
    }
    let output = cargo.output().map_err(|e| {
        format!("cannot run `rustup run nightly cargo` ({e}); run `cargo xtask setup` first")
    })?;
    if !output.status.success() {
        return Err(format!(
            "building the XDP program failed (try `cargo xtask setup`):\n{}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let built = target_dir.join("bpfel-unknown-none/release/netcon");
    fs::copy(&built, object).map_err(|e| format!("copy {}: {e}", built.display()))?;
    Ok(())
}

fn find_bpf_linker() -> Result<PathBuf, String> {
    if let Some(path) = env::var_os("NETCON_BPF_LINKER") {
        return Ok(PathBuf::from(path));
    }
    let llvm = nightly_llvm_version()?;
    let cache = env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .ok_or("neither XDG_CACHE_HOME nor HOME is set")?;
    let linker = cache
        .join("netcon")
        .join(format!("bpf-linker-{BPF_LINKER_VERSION}-llvm-{llvm}"))
        .join("bin/bpf-linker");
    println!("cargo::rerun-if-changed={}", linker.display());
    if linker.is_file() {
        Ok(linker)
    } else {
        Err(format!(
            "bpf-linker {BPF_LINKER_VERSION} for LLVM {llvm} not found at {}: run `cargo xtask setup` \
             (or set NETCON_SKIP_EBPF=1 to build without the XDP program)",
            linker.display()
        ))
    }
}

fn nightly_llvm_version() -> Result<String, String> {
    let output = Command::new("rustup")
        .args(["run", "nightly", "rustc", "-vV"])
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .output()
        .map_err(|e| {
            format!("cannot run `rustup run nightly rustc` ({e}): run `cargo xtask setup`")
        })?;
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version: "))
        .map(|v| v.trim().to_owned())
        .ok_or_else(|| "nightly toolchain missing: run `cargo xtask setup`".to_owned())
}
