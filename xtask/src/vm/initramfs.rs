//! The guest's initramfs: busybox, the guest kernel's netconsole and NIC modules, `/init`
//! (`vm/init.sh`, or the script of another guest) with the start they share
//! (`/init-common.sh`) and the records, as an uncompressed `newc` cpio archive written here (so no
//! staging tree, `mknod` or cpio binary is needed, and the archive is the same every time).

use std::{
    collections::{HashMap, HashSet},
    fmt::Write as _,
    fs,
    path::Path,
    process::Command,
};

use anyhow::{Context as _, Result, bail, ensure};

use super::{kernel::Kernel, records::Record};

/// Modules the guest loads, by name: the NIC (qemu's `virtio-net-pci`) and netconsole. Their
/// dependencies (configfs, virtio, failover) come from the guest's `modules.dep`; the ones built
/// into the kernel are skipped.
const MODULES: &[&str] = &["virtio_pci", "virtio_net", "netconsole"];

/// The host's static busybox (package busybox-static).
const BUSYBOX: &str = "/bin/busybox";

/// What every guest's `/init` sources first (`vm/init-common.sh`): compiled in, so that no
/// caller can pack an `/init` without it.
const INIT_COMMON: &[u8] = include_bytes!("../../../vm/init-common.sh");

/// Writes the initramfs for `kernel` to `out`: `/init` is `init`, `/records/NNNN` the records.
pub fn build(kernel: &Kernel, init: &[u8], records: &[Record], out: &Path) -> Result<()> {
    let files: Vec<File> = records
        .iter()
        .enumerate()
        .map(|(i, record)| File {
            path: format!("records/{}", super::records::file_name(i)),
            mode: 0o644,
            bytes: record.kmsg_bytes(),
        })
        .collect();
    build_with(kernel, init, MODULES, &files, out)
}

/// A file to put in an initramfs (its folders are made as needed).
pub struct File {
    /// Relative, e.g. `lib/x86_64-linux-gnu/libc.so.6`.
    pub path: String,
    pub mode: u32,
    pub bytes: Vec<u8>,
}

/// Writes an initramfs for `kernel` to `out`: busybox, `/init` and `/init-common.sh`, `modules` (by name, with their
/// dependencies; `/modules/order` lists them) and `files`.
pub fn build_with(
    kernel: &Kernel,
    init: &[u8],
    modules: &[&str],
    files: &[File],
    out: &Path,
) -> Result<()> {
    let busybox = fs::read(BUSYBOX).with_context(|| format!("reading {BUSYBOX}"))?;
    ensure!(
        is_static_elf(&busybox),
        "{BUSYBOX} is not statically linked (install busybox-static)"
    );
    let mut cpio = Cpio::default();
    let mut dirs = HashSet::new();
    for dir in [
        "bin", "dev", "etc", "proc", "sys", "tmp", "sbin", "usr", "usr/bin", "usr/sbin", "modules",
        "records",
    ] {
        cpio.dir(dir);
        dirs.insert(dir.to_owned());
    }
    // The kernel opens /dev/console for init's stdio before init mounts devtmpfs.
    cpio.char_device("dev/console", 5, 1);
    cpio.file("bin/busybox", 0o755, &busybox);
    cpio.symlink("bin/sh", "busybox");
    cpio.file("init", 0o755, init);
    cpio.file("init-common.sh", 0o644, INIT_COMMON);

    let mut order = String::new();
    for (name, bytes) in self::modules(kernel, modules)? {
        let _ = writeln!(order, "{name}");
        cpio.file(&format!("modules/{name}"), 0o644, &bytes);
    }
    cpio.file("modules/order", 0o644, order.as_bytes());
    for file in files {
        // Parents first: `a`, then `a/b`.
        let parents: Vec<&str> = file
            .path
            .match_indices('/')
            .map(|(i, _)| &file.path[..i])
            .collect();
        for parent in parents {
            if dirs.insert(parent.to_owned()) {
                cpio.dir(parent);
            }
        }
        cpio.file(&file.path, file.mode, &file.bytes);
    }
    fs::write(out, cpio.finish()).with_context(|| format!("writing {}", out.display()))
}

fn is_static_elf(bytes: &[u8]) -> bool {
    // A dynamically linked ELF names its interpreter; a static one has no PT_INTERP, and no
    // `ld-linux` string to speak of.
    bytes.starts_with(b"\x7fELF")
        && !bytes
            .windows(b"/lib64/ld-linux".len())
            .any(|w| w == b"/lib64/ld-linux")
}

/// `wanted` and their dependencies, dependencies first, as (`name.ko`, uncompressed bytes).
fn modules(kernel: &Kernel, wanted: &[&str]) -> Result<Vec<(String, Vec<u8>)>> {
    let dir = kernel.modules_dir();
    let dep_text = fs::read_to_string(dir.join("modules.dep"))
        .with_context(|| format!("reading {}/modules.dep", dir.display()))?;
    let builtin = fs::read_to_string(dir.join("modules.builtin")).unwrap_or_default();
    let builtin: HashSet<String> = builtin.lines().map(module_name).collect();
    // name -> (path, dependency paths), from `kernel/drivers/net/netconsole.ko.xz: kernel/fs/...`
    let mut deps: HashMap<String, (String, Vec<String>)> = HashMap::new();
    for line in dep_text.lines() {
        let Some((path, rest)) = line.split_once(':') else {
            continue;
        };
        deps.insert(
            module_name(path),
            (
                path.to_owned(),
                rest.split_whitespace().map(str::to_owned).collect(),
            ),
        );
    }
    let mut ordered: Vec<String> = Vec::new();
    for &wanted in wanted {
        let Some((path, list)) = deps.get(wanted) else {
            if builtin.contains(wanted) {
                continue;
            }
            bail!(
                "{} has no module {wanted} (neither in modules.dep nor built in)",
                kernel.release
            );
        };
        // modules.dep lists the whole closure, the modules needed last first (as modprobe
        // loads them in reverse).
        for p in list.iter().rev().chain(std::iter::once(path)) {
            if !ordered.contains(p) {
                ordered.push(p.clone());
            }
        }
    }
    ordered
        .iter()
        .map(|path| {
            let bytes = read_module(&dir.join(path))?;
            Ok((format!("{}.ko", module_name(path)), bytes))
        })
        .collect()
}

/// `kernel/drivers/net/virtio_net.ko.xz` -> `virtio_net` (module names use `_` for `-`).
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

/// A module file, decompressed on the host: the guest's busybox insmod takes plain ELF.
fn read_module(path: &Path) -> Result<Vec<u8>> {
    let name = path.display().to_string();
    let tool = match path.extension().and_then(|e| e.to_str()) {
        Some("ko") => return fs::read(path).with_context(|| format!("reading {name}")),
        Some("xz") => "xz",
        Some("zst") => "zstd",
        Some("gz") => "gzip",
        _ => bail!("{name}: unknown module compression"),
    };
    let out = Command::new(tool)
        .args(["-dc"])
        .arg(path)
        .output()
        .with_context(|| format!("starting {tool}"))?;
    ensure!(
        out.status.success() && out.stdout.starts_with(b"\x7fELF"),
        "{tool} -dc {name} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out.stdout)
}

/// A `newc` cpio archive (`Documentation/driver-api/early-userspace/buffer-format.rst`).
#[derive(Default)]
struct Cpio {
    out: Vec<u8>,
    ino: u32,
}

impl Cpio {
    const DIR: u32 = 0o040_000;
    const FILE: u32 = 0o100_000;
    const LINK: u32 = 0o120_000;
    const CHAR: u32 = 0o020_000;

    fn dir(&mut self, name: &str) {
        self.entry(name, Self::DIR | 0o755, (0, 0), &[]);
    }

    fn file(&mut self, name: &str, perm: u32, data: &[u8]) {
        self.entry(name, Self::FILE | perm, (0, 0), data);
    }

    fn symlink(&mut self, name: &str, target: &str) {
        self.entry(name, Self::LINK | 0o777, (0, 0), target.as_bytes());
    }

    fn char_device(&mut self, name: &str, major: u32, minor: u32) {
        self.entry(name, Self::CHAR | 0o600, (major, minor), &[]);
    }

    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        self.ino += 1;
        let size = u32::try_from(data.len()).expect("initramfs files are small");
        let name_size = u32::try_from(name.len() + 1).expect("short names");
        let nlink = if mode & Self::DIR == Self::DIR { 2 } else { 1 };
        let mut header = String::from("070701");
        for field in [
            self.ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev.0, rdev.1, name_size, 0,
        ] {
            let _ = write!(header, "{field:08x}");
        }
        self.out.extend_from_slice(header.as_bytes());
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        self.ino = 0;
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names() {
        assert_eq!(
            module_name("kernel/drivers/net/virtio_net.ko.xz"),
            "virtio_net"
        );
        assert_eq!(module_name("kernel/fs/configfs/configfs.ko"), "configfs");
        assert_eq!(module_name("kernel/drivers/x/snd-foo.ko.zst"), "snd_foo");
    }

    #[test]
    fn cpio_entries_are_aligned() {
        let mut c = Cpio::default();
        c.file("a", 0o644, b"xyz");
        c.dir("bb");
        let out = c.finish();
        assert!(out.starts_with(b"070701"));
        assert_eq!(out.len() % 4, 0);
        assert_eq!(&out[110..112], b"a\0");
        // 110 + 2 -> 112, then "xyz" padded to 116.
        assert_eq!(&out[112..116], b"xyz\0");
        assert_eq!(&out[116..122], b"070701");
    }
}
