//! Debian kernels, fetched with `apt-get download` through a private apt configuration and
//! unpacked into the cache (`~/.cache/netcon/vm/<release>/`); nothing touches the host's apt
//! sources or /boot.

use std::{
    cell::OnceCell,
    fmt::Write as _,
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
};

use anyhow::{Context as _, Result, bail, ensure};

use super::{cmd_output, cmd_status};

/// A kernel line to test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum Series {
    /// bullseye's 5.10 (`linux-image-amd64` from bullseye, -updates or -security): older than
    /// the XDP backend needs.
    #[value(name = "5.10")]
    V5_10,
    /// bookworm's 6.1 (`linux-image-amd64` from bookworm, -updates or -security).
    #[value(name = "6.1")]
    V6_1,
    /// bookworm-backports' 6.12.
    #[value(name = "6.12")]
    V6_12,
    /// The newest kernel Debian ships: unstable's (7.x when written). From 7.x on,
    /// `linux-image-<abi>` is empty and depends on `linux-binary-<abi>` (the kernel),
    /// `linux-modules-<abi>` and `linux-base-<abi>` (`modules.builtin`), all under /usr.
    #[value(name = "unstable")]
    Unstable,
}

impl Series {
    /// Every series, oldest first.
    pub const ALL: [Self; 4] = [Self::V5_10, Self::V6_1, Self::V6_12, Self::Unstable];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::V5_10 => "5.10",
            Self::V6_1 => "6.1",
            Self::V6_12 => "6.12",
            Self::Unstable => "unstable",
        }
    }

    /// The `r` flag (release prefix) exists from 6.6 on; 6.1 rejects it.
    pub fn has_release_flag(self) -> bool {
        self >= Self::V6_12
    }

    /// Whether an apt suite (`bookworm-backports`) carries this series' metapackage.
    fn wants_suite(self, suite: &str) -> bool {
        let (codename, pocket) = suite.split_once('-').unwrap_or((suite, ""));
        match self {
            Self::V5_10 => codename == "bullseye" && pocket != "backports",
            Self::V6_1 => codename == "bookworm" && pocket != "backports",
            Self::V6_12 => codename == "bookworm" && pocket == "backports",
            Self::Unstable => matches!(codename, "sid" | "unstable"),
        }
    }
}

/// An unpacked kernel package.
#[derive(Debug, Clone)]
pub struct Kernel {
    pub series: Series,
    /// `uname -r`, e.g. `6.12.95+deb12-amd64`.
    pub release: String,
    /// Where the package is unpacked (`boot/`, `lib/modules/<release>/`).
    pub root: PathBuf,
}

impl Kernel {
    pub fn modules_dir(&self) -> PathBuf {
        modules_dir(&self.root, &self.release)
    }

    /// The compressed image, as the package ships it.
    pub fn bzimage(&self) -> PathBuf {
        bzimage(&self.root, &self.release)
    }

    /// The uncompressed ELF image with its PVH entry note, extracted from the bzImage: qemu
    /// boots it directly, without the decompressor, about 6 s faster under TCG.
    pub fn vmlinux(&self) -> PathBuf {
        self.root.join("vmlinux")
    }
}

/// The cache of kernels and of the private apt state.
pub struct Cache {
    dir: PathBuf,
    apt: OnceCell<Apt>,
}

impl Cache {
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            apt: OnceCell::new(),
        }
    }

    /// The kernel of `series`: from the cache when it is there (no network), else the newest
    /// package, downloaded and unpacked. `refresh` looks for a newer package even when cached.
    pub fn kernel(&self, series: Series, refresh: bool) -> Result<Kernel> {
        let index = self.dir.join(format!("kernel-{}", series.as_str()));
        if !refresh && let Ok(release) = fs::read_to_string(&index) {
            let kernel = Kernel {
                series,
                release: release.trim().to_owned(),
                root: self.dir.join(release.trim()),
            };
            if kernel.root.join(".complete").is_file() {
                return Ok(kernel);
            }
        }
        let apt = self.apt()?;
        let (package, version) = apt.resolve(series)?;
        let release = package
            .strip_prefix("linux-image-")
            .context("kernel package name")?
            .to_owned();
        let root = self.dir.join(&release);
        if !root.join(".complete").is_file() {
            // From 7.x on the image package is empty: the kernel and modules are in packages
            // it depends on, of the same version.
            let mut packages = vec![package.clone()];
            packages.extend(apt.split_parts(&package, &version, &release)?);
            let mut debs = Vec::new();
            for package in &packages {
                eprintln!("vm-test: fetching {package} {version}");
                debs.push(apt.download(package, &version)?);
            }
            unpack(&debs, &root, &release)?;
            for deb in debs {
                let _ = fs::remove_file(&deb);
            }
        }
        fs::write(&index, format!("{release}\n"))
            .with_context(|| format!("writing {}", index.display()))?;
        Ok(Kernel {
            series,
            release,
            root,
        })
    }

    /// The private apt configuration, its package lists fetched once per `Cache`.
    fn apt(&self) -> Result<&Apt> {
        if let Some(apt) = self.apt.get() {
            return Ok(apt);
        }
        let dir = self.dir.join("apt");
        for sub in [
            "lists/partial",
            "archives/partial",
            "cache",
            "sources.list.d",
            "debs",
        ] {
            fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("creating {}", dir.join(sub).display()))?;
        }
        let keyring = "/usr/share/keyrings/debian-archive-keyring.gpg";
        ensure!(
            Path::new(keyring).is_file(),
            "{keyring} is missing (package debian-archive-keyring)"
        );
        let mut sources = String::new();
        for (archive, suite) in [
            ("debian", "bullseye"),
            ("debian", "bullseye-updates"),
            ("debian-security", "bullseye-security"),
            ("debian", "bookworm"),
            ("debian", "bookworm-updates"),
            ("debian-security", "bookworm-security"),
            ("debian", "bookworm-backports"),
            ("debian", "sid"),
        ] {
            let _ = writeln!(
                sources,
                "deb [signed-by={keyring}] http://deb.debian.org/{archive} {suite} main"
            );
        }
        fs::write(dir.join("sources.list"), sources).context("writing the private sources.list")?;
        let apt = Apt { dir };
        cmd_status(apt.command("apt-get").args(["update", "-qq"])).context(
            "apt-get update in the private apt configuration (is deb.debian.org reachable?)",
        )?;
        Ok(self.apt.get_or_init(|| apt))
    }
}

struct Apt {
    dir: PathBuf,
}

impl Apt {
    /// `program` (`apt-get`, `apt-cache`) with every state and source path private.
    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        let d = |sub: &str| self.dir.join(sub).display().to_string();
        for (key, value) in [
            ("Dir::Etc::sourcelist", d("sources.list")),
            ("Dir::Etc::sourceparts", d("sources.list.d")),
            ("Dir::State::Lists", d("lists")),
            ("Dir::Cache", d("cache")),
            ("Dir::Cache::archives", d("archives")),
            ("APT::Architecture", "amd64".to_owned()),
            ("Acquire::Languages", "none".to_owned()),
            // The download lands in a root-owned folder that apt's `_apt` user cannot write.
            ("APT::Sandbox::User", "root".to_owned()),
        ] {
            c.arg("-o").arg(format!("{key}={value}"));
        }
        c.env("DEBIAN_FRONTEND", "noninteractive");
        c
    }

    /// The image package that `series`' `linux-image-amd64` metapackage points at, and its
    /// version: e.g. `linux-image-6.1.0-56-amd64`, `6.1.192-2`.
    fn resolve(&self, series: Series) -> Result<(String, String)> {
        let madison = cmd_output(
            self.command("apt-cache")
                .args(["madison", "linux-image-amd64"]),
        )?;
        // `linux-image-amd64 | 6.12.95-1~bpo12+1 | http://deb.debian.org/debian bookworm-backports/main amd64 Packages`
        let meta_version = madison
            .lines()
            .filter_map(|line| {
                let mut cols = line.split('|').map(str::trim);
                let version = cols.nth(1)?;
                let suite = cols.next()?.split_whitespace().nth(1)?.split('/').next()?;
                series.wants_suite(suite).then(|| version.to_owned())
            })
            .max_by(|a, b| compare_versions(a, b))
            .with_context(|| {
                format!(
                    "no linux-image-amd64 for {} in:\n{madison}",
                    series.as_str()
                )
            })?;
        let depends = self.depends("linux-image-amd64", &meta_version)?;
        // `linux-image-6.1.0-56-amd64 (= 6.1.192-2)`; 7.x lists `linux-base-amd64` first.
        let (package, version) = exact_depends(&depends)
            .find(|(p, _)| p.starts_with("linux-image-"))
            .with_context(|| format!("no linux-image-* in Depends: {depends}"))?;
        Ok((package.to_owned(), version.to_owned()))
    }

    /// The `Depends:` field of `package` at `version`.
    fn depends(&self, package: &str, version: &str) -> Result<String> {
        let show = cmd_output(
            self.command("apt-cache")
                .args(["show", &format!("{package}={version}")]),
        )?;
        show.lines()
            .find_map(|l| l.strip_prefix("Depends:"))
            .map(str::to_owned)
            .with_context(|| format!("{package} {version} has no Depends"))
    }

    /// The packages that hold the kernel and modules of an image package that has none itself
    /// (7.x on: `linux-binary-<release>`, `linux-modules-<release>`, and `linux-base-<release>`
    /// for `modules.builtin`); empty before 7.x.
    fn split_parts(&self, package: &str, version: &str, release: &str) -> Result<Vec<String>> {
        let depends = self.depends(package, version)?;
        Ok(exact_depends(&depends)
            .filter(|(p, v)| {
                *v == version
                    && ["binary", "modules", "base"]
                        .iter()
                        .any(|part| *p == format!("linux-{part}-{release}"))
            })
            .map(|(p, _)| p.to_owned())
            .collect())
    }

    fn download(&self, package: &str, version: &str) -> Result<PathBuf> {
        let debs = self.dir.join("debs");
        let prefix = format!("{package}_");
        let find = || -> Result<Option<PathBuf>> {
            Ok(fs::read_dir(&debs)?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .find(|p| {
                    p.extension().is_some_and(|e| e == "deb")
                        && p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with(&prefix))
                }))
        };
        // A download that finished before an interrupted unpack is not fetched again (the
        // modules package of 7.x is over 100 MB).
        if let Some(deb) = find()? {
            return Ok(deb);
        }
        cmd_status(
            self.command("apt-get")
                .args(["download", "-qq", &format!("{package}={version}")])
                .current_dir(&debs),
        )
        .with_context(|| format!("apt-get download {package}={version}"))?;
        find()?.with_context(|| format!("apt-get download left no {prefix}*.deb"))
    }
}

/// The `name (= version)` entries of a `Depends:` field (alternatives and ranges skipped).
fn exact_depends(depends: &str) -> impl Iterator<Item = (&str, &str)> {
    depends.split(',').filter_map(|entry| {
        let (package, version) = entry.trim().split_once(" (= ")?;
        Some((package.trim(), version.strip_suffix(')')?))
    })
}

/// `lib/modules/<release>`, or `usr/lib/modules/<release>` (merged /usr, 7.x on).
fn modules_dir(root: &Path, release: &str) -> PathBuf {
    let classic = root.join("lib/modules").join(release);
    if classic.is_dir() {
        classic
    } else {
        root.join("usr/lib/modules").join(release)
    }
}

/// `boot/vmlinuz-<release>`, or wherever under `root` a package put `vmlinuz-<release>`.
fn bzimage(root: &Path, release: &str) -> PathBuf {
    let name = format!("vmlinuz-{release}");
    let classic = root.join("boot").join(&name);
    if classic.is_file() {
        return classic;
    }
    ["usr/lib/linux", "usr/boot", "usr/lib/modules"]
        .iter()
        .map(|dir| root.join(dir))
        .flat_map(|dir| {
            [
                dir.join(&name),
                dir.join(release).join(&name),
                dir.join(release).join("vmlinuz"),
            ]
        })
        .find(|p| p.is_file())
        .unwrap_or(classic)
}

/// `dpkg --compare-versions`, for the few versions madison lists.
fn compare_versions(a: &str, b: &str) -> std::cmp::Ordering {
    let greater = Command::new("dpkg")
        .args(["--compare-versions", a, "gt", b])
        .status()
        .is_ok_and(|s| s.success());
    if greater {
        std::cmp::Ordering::Greater
    } else if a == b {
        std::cmp::Ordering::Equal
    } else {
        std::cmp::Ordering::Less
    }
}

/// Unpacks `debs` into `root` (through a temporary folder, so that a half-done unpack is never
/// taken for a cached one), makes `modules.dep` and extracts the uncompressed image.
fn unpack(debs: &[PathBuf], root: &Path, release: &str) -> Result<()> {
    // Not `with_extension`: `7.2.13+deb14-amd64` would become `7.2.partial`.
    let tmp = root.with_file_name(format!("{release}.partial"));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    for deb in debs {
        cmd_status(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&tmp))?;
    }
    let modules = modules_dir(&tmp, release);
    ensure!(
        modules.is_dir(),
        "{debs:?} have no lib/modules/{release} (nor usr/lib/modules/{release})"
    );
    // Debian's postinst runs depmod; the package itself has no modules.dep. depmod looks in
    // `<base>/lib/modules`: give it a base whose lib/modules is the one the package filled.
    let base = modules
        .parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .context("modules path")?;
    cmd_status(Command::new("depmod").arg("-b").arg(base).arg(release))?;
    let bzimage = bzimage(&tmp, release);
    ensure!(bzimage.is_file(), "{debs:?} have no vmlinuz-{release}");
    match extract_vmlinux(&bzimage, &tmp.join("vmlinux")) {
        Ok(()) => {}
        Err(error) => {
            eprintln!(
                "vm-test: warning: cannot extract vmlinux from {} ({error:#}); booting the bzImage (slower)",
                bzimage.display()
            );
        }
    }
    fs::write(tmp.join(".complete"), "")?;
    let _ = fs::remove_dir_all(root);
    fs::rename(&tmp, root).with_context(|| format!("renaming to {}", root.display()))?;
    Ok(())
}

/// Decompresses the payload of an x86 bzImage: the stripped ELF vmlinux, whose PVH note lets
/// qemu boot it directly. The boot protocol's header gives the payload's place
/// (`Documentation/arch/x86/boot.rst`: `setup_sects` at 0x1f1, `payload_offset` and
/// `payload_length` at 0x248), and the build appends the decompressed size as 4 bytes
/// (`arch/x86/boot/compressed/Makefile`, `*_with_size`).
fn extract_vmlinux(bzimage: &Path, out: &Path) -> Result<()> {
    let image = fs::read(bzimage).with_context(|| format!("reading {}", bzimage.display()))?;
    let u32_at = |at: usize| -> Option<usize> {
        let bytes: [u8; 4] = image.get(at..at + 4)?.try_into().ok()?;
        usize::try_from(u32::from_le_bytes(bytes)).ok()
    };
    ensure!(image.get(0x202..0x206) == Some(b"HdrS"), "not a bzImage");
    let setup_sects = match image.get(0x1f1) {
        Some(0) => 4,
        Some(&n) => usize::from(n),
        None => bail!("truncated"),
    };
    let offset = u32_at(0x248).context("truncated")?;
    let length = u32_at(0x24c).context("truncated")?;
    let start = (setup_sects + 1) * 512 + offset;
    let payload = image
        .get(start..start + length.saturating_sub(4))
        .context("payload outside the file")?;
    let tool: &[&str] = if payload.starts_with(b"\xfd7zXZ\0") {
        &["xz", "-dc", "--single-stream"]
    } else if payload.starts_with(b"\x28\xb5\x2f\xfd") {
        &["zstd", "-dcq"]
    } else if payload.starts_with(b"\x1f\x8b") {
        &["gzip", "-dc"]
    } else {
        bail!(
            "unknown compression (magic {:02x?})",
            &payload[..payload.len().min(6)]
        );
    };
    let mut child = Command::new(tool[0])
        .args(&tool[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", tool[0]))?;
    let mut stdin = child.stdin.take().context("stdin")?;
    let elf = thread::scope(|s| {
        s.spawn(move || stdin.write_all(payload));
        child.wait_with_output()
    })?;
    ensure!(
        elf.stdout.starts_with(b"\x7fELF"),
        "{} gave no ELF image",
        tool[0]
    );
    fs::write(out, &elf.stdout).with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}
