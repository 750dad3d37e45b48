//! `--log-dir`: one append-only file per sender.
//!
//! Each sender's events go to `DIR/<name>.log`, as the same lines the text output prints
//! ([`super::text::write_event`]), so that `grep` and `tail -f` work on one machine's log.
//!
//! **Names.** `<name>` is the sender's IP address (`10.77.0.10.log`, `fd00:41::10.log`) without
//! the port: netconsole's source port is a configuration detail (6665 unless set otherwise), and
//! when one kernel has two targets pointing at this collector (say, one plain and one extended)
//! both carry the same log, which belongs in one file. With `--resolve` the name is the sender's
//! host name from reverse DNS (`getnameinfo` with `NI_NAMEREQD`), looked up once, when the
//! sender's first event arrives, and kept for as long as the sender stays in the table; when
//! there is no answer the address is used. Every name goes through [`safe_stem`]: only
//! `[A-Za-z0-9._:-]` (anything else becomes `_`), no leading `.`, at most [`MAX_STEM_BYTES`].
//! A host name that reads as an IP address is refused, so that a sender controlling its own
//! reverse zone cannot write into another sender's address-named file.
//!
//! **Lookups never block.** `getnameinfo` has no timeout of its own (the resolver's, from
//! `resolv.conf`, can add up to tens of seconds), and the pipeline must never wait on the
//! network. So a lookup runs on a thread of its own, and the sender's events go to its
//! address-named file until the answer arrives; from then on they go to the host-named file.
//! At most [`MAX_PENDING_LOOKUPS`] lookups run at once (a DNS server that stopped answering, or
//! a flood of new addresses); a sender that finds them all busy is looked up at a later event.
//!
//! **Durability.** Files are opened `O_APPEND|O_CREAT` (mode [`FILE_MODE`], less the umask),
//! never truncated, with `O_NOFOLLOW` and only if they are regular files (a symlink or FIFO
//! planted in the directory is refused). Each event is written with one `write` as it arrives:
//! nothing is buffered in this process, so a collector that crashes loses nothing it decoded.
//! With `--fsync` each write is followed by `fdatasync`, so that the lines survive the collector
//! losing power too.
//!
//! **Rotation.** [`Sink::reopen`] (SIGHUP) closes every file; the next event for a sender opens
//! its name again, creating a new file after logrotate moved the old one away.
//!
//! **Privileges.** The directory is opened when netcon-sniff starts, and every file is opened
//! relative to that descriptor (`openat`), so the directory cannot be swapped for another (a
//! symlink) while running. With `--user`, files are created after root is dropped, so the user
//! must be able to write the directory: one netcon-sniff creates is given to that user (mode
//! 0750); an existing one the user cannot write, or holding a `.log` file the user cannot
//! append to, is refused at start with the fix (`chown`), rather than losing every record.
//!
//! **Loss notices.** Frames lost before decoding (`capture_lost`) could have come from any
//! sender, so the notice line goes to every remembered sender's file; a panic hook's notice goes
//! to its sender's file.
//!
//! **Bounds.** At most [`DEFAULT_MAX_OPEN_FILES`] files are open; the least recently written is
//! closed when another must open, and reopened by name when its sender speaks again. At most
//! [`DEFAULT_MAX_SENDERS`] senders (with their names) are remembered, each charged to the memory
//! budget; the least recently heard is forgotten first, also when the budget is full. Each sender address creates a file, and the source address of UDP can be
//! forged: restrict senders (`--allow`) when the collector's network is not trusted.
//!
//! **Failures** (disk full, permissions) never stop the collector: each failed event is counted
//! (`files_errors`) and the first failure of a file is logged; the warning repeats only after the
//! file worked again or after SIGHUP.

use std::{
    collections::{BTreeMap, HashMap},
    ffi::CStr,
    fs::File,
    io::{self, Write as _},
    net::{IpAddr, SocketAddr},
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
        mpsc,
    },
};

use super::{Sink, text};
use crate::budget::MemoryBudget;
use crate::netconsole::Event;
use crate::notice::Notice;

/// Files open at once, at most: 256. Well below the usual soft limit of 1024 descriptors, which
/// capture and the other sinks share. Past it, the least recently written file is closed.
pub const DEFAULT_MAX_OPEN_FILES: usize = 256;
/// Senders remembered (with their file names) at most: 4096. Past it, the least recently heard
/// sender is forgotten (and, with `--resolve`, looked up again if it comes back).
pub const DEFAULT_MAX_SENDERS: usize = 4096;
/// Longest file name stem, in bytes: 200. With [`FILE_SUFFIX`] and what logrotate appends
/// (`.1.gz`, `-20261127`), this stays below `NAME_MAX` (255).
pub const MAX_STEM_BYTES: usize = 200;
/// What every file name ends with.
pub const FILE_SUFFIX: &str = ".log";
/// Permissions of a new file, before the umask: `rw-r-----`. Kernel logs can hold addresses
/// and secrets; the group (`adm` by convention) may read them, others may not.
pub const FILE_MODE: u32 = 0o640;
/// Reverse DNS lookups (`--resolve`) running at once, at most: 4. A new sender that finds them
/// all busy keeps its address-named file and is looked up at a later event.
pub const MAX_PENDING_LOOKUPS: usize = 4;
/// Bytes charged to the budget per remembered sender, besides its file name: the table entries,
/// the open file's bookkeeping, and a share of the kernel's file structure (about 1 KiB).
pub const SENDER_STATE_BYTES: usize = 1024;
/// Permissions of a log directory netcon-sniff creates for `--user`: `rwxr-x---`.
pub const DIR_MODE: u32 = 0o750;

/// What `--log-dir`, `--resolve` and `--fsync` asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogDirOptions {
    /// The directory.
    pub dir: PathBuf,
    /// Name files by reverse DNS.
    pub resolve: bool,
    /// fsync every record.
    pub fsync: bool,
}

/// The table bounds of a [`LogDir`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogDirLimits {
    /// Files open at once ([`DEFAULT_MAX_OPEN_FILES`]); at least 1 is used.
    pub max_open_files: usize,
    /// Senders remembered ([`DEFAULT_MAX_SENDERS`]); at least 1 is used.
    pub max_senders: usize,
}

impl Default for LogDirLimits {
    fn default() -> Self {
        Self {
            max_open_files: DEFAULT_MAX_OPEN_FILES,
            max_senders: DEFAULT_MAX_SENDERS,
        }
    }
}

/// Why the log directory, or one of its files, cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    /// The directory cannot be created or written.
    #[error("cannot use --log-dir {dir}: {source}")]
    Dir {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    /// `--user` could not write there: refused at start rather than losing every record.
    #[error(
        "--log-dir {path} is not writable by --user {user}; fix it with `chown -R {user} {dir}` \
         (or give a directory {user} owns, or one netcon-sniff may create)",
        dir = dir.display(), path = path.display()
    )]
    NotWritableBy {
        dir: PathBuf,
        /// The directory, or the file in it, the user cannot write.
        path: PathBuf,
        user: String,
    },
    /// A sender's file cannot be opened (or created).
    #[error("cannot open {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Something other than a regular file has the sender's file name.
    #[error("cannot write {path}: not a regular file")]
    NotRegular { path: PathBuf },
    /// Writing a line failed (disk full, I/O error).
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// `--fsync`: flushing to the disk failed.
    #[error("cannot fsync {path}: {source}")]
    Sync {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A sender's file name stem (no [`FILE_SUFFIX`]): its host name when `resolved` is a usable
/// one, else its address. Both go through [`safe_stem`]. Host names are lowercased (DNS does not
/// distinguish case, so neither do the files), and a name that reads as an IP address is
/// refused.
#[must_use]
pub fn stem_for(ip: IpAddr, resolved: Option<&str>) -> String {
    if let Some(host) = resolved {
        let stem = safe_stem(&host.trim_end_matches('.').to_ascii_lowercase());
        if stem.parse::<IpAddr>().is_err() && !stem.chars().all(|c| c == '_') {
            return stem;
        }
    }
    safe_stem(&ip.to_string())
}

/// `name` made into a file name stem: every character outside `[A-Za-z0-9._:-]` becomes `_`, a
/// leading `.` becomes `_` (no hidden files, no `.` or `..`), the result is cut to
/// [`MAX_STEM_BYTES`], and an empty name becomes `_`.
#[must_use]
pub fn safe_stem(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(MAX_STEM_BYTES)
        .collect();
    if out.starts_with('.') {
        out.replace_range(..1, "_");
    }
    if out.is_empty() {
        out.push('_');
    }
    out
}

/// A reverse DNS lookup, `None` when there is no name.
type LookupFn = fn(IpAddr) -> Option<String>;

/// Reverse DNS off the pipeline (see the module documentation).
struct Resolver {
    lookup: LookupFn,
    max_pending: usize,
    /// Lookup threads still running, counted down by each thread when it ends.
    pending: Arc<AtomicUsize>,
    answers_tx: mpsc::Sender<(IpAddr, Option<String>)>,
    answers: mpsc::Receiver<(IpAddr, Option<String>)>,
}

impl Resolver {
    fn new(lookup: LookupFn, max_pending: usize) -> Self {
        let (answers_tx, answers) = mpsc::channel();
        Self {
            lookup,
            max_pending,
            pending: Arc::new(AtomicUsize::new(0)),
            answers_tx,
            answers,
        }
    }

    /// Starts looking `ip` up; `false` when too many lookups are running (or no thread
    /// starts): try again later.
    fn start(&self, ip: IpAddr) -> bool {
        if self.pending.load(Ordering::Acquire) >= self.max_pending {
            return false;
        }
        let pending = Arc::clone(&self.pending);
        let answers = self.answers_tx.clone();
        let lookup = self.lookup;
        pending.fetch_add(1, Ordering::AcqRel);
        let spawned = std::thread::Builder::new()
            .name("netcon-resolve".into())
            .spawn(move || {
                // Sent before the count goes down; the receiver may be gone (exiting).
                let _ = answers.send((ip, lookup(ip)));
                pending.fetch_sub(1, Ordering::AcqRel);
            });
        if let Err(error) = spawned {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            tracing::warn!(%ip, %error, "cannot start a reverse DNS lookup; naming the file by address");
            return false;
        }
        true
    }

    /// The answers that arrived, without waiting.
    fn answers(&self) -> Vec<(IpAddr, Option<String>)> {
        self.answers.try_iter().collect()
    }
}

/// `getnameinfo(3)` with `NI_NAMEREQD`: the name from `/etc/hosts` or a PTR record, `None` when
/// there is none (or the lookup failed).
fn reverse_dns(ip: IpAddr) -> Option<String> {
    use nix::sys::socket::{SockaddrLike as _, SockaddrStorage};

    let addr = SockaddrStorage::from(SocketAddr::new(ip, 0));
    let mut host = [0 as libc::c_char; libc::NI_MAXHOST as usize];
    // SAFETY: `addr` is a valid socket address of `addr.len()` bytes; `host` is writable for
    // its full length, which is passed; no service buffer is asked for (null, length 0).
    let rc = unsafe {
        libc::getnameinfo(
            addr.as_ptr(),
            addr.len(),
            host.as_mut_ptr(),
            libc::NI_MAXHOST,
            std::ptr::null_mut(),
            0,
            libc::NI_NAMEREQD,
        )
    };
    if rc != 0 {
        // SAFETY: gai_strerror returns a static NUL-terminated string for any code.
        let why = unsafe { CStr::from_ptr(libc::gai_strerror(rc)) }.to_string_lossy();
        tracing::debug!(%ip, error = %why, "no reverse DNS name");
        return None;
    }
    // SAFETY: on success getnameinfo wrote a NUL-terminated string into `host`.
    let name = unsafe { CStr::from_ptr(host.as_ptr()) };
    let name = name.to_string_lossy().into_owned();
    (!name.is_empty()).then_some(name)
}

/// Where a sender's reverse DNS lookup is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lookup {
    /// Done, or not asked for.
    Settled,
    /// Running.
    Pending,
    /// Every lookup slot was busy: try at a later event.
    NotStarted,
}

/// One remembered sender.
struct SenderFile {
    /// The file's name in the directory.
    name: String,
    /// The file's path (directory and name), for messages.
    path: PathBuf,
    /// Its reverse DNS lookup.
    lookup: Lookup,
    /// Bytes charged to the budget for it.
    charged: usize,
    /// Open while it is among the most recently written.
    file: Option<File>,
    /// Tick of its last event: its key in [`LogDir::by_use`] (and [`LogDir::open_by_use`]).
    last_use: u64,
    /// A failure was logged and the file has not worked since: do not repeat the warning.
    warned: bool,
}

/// Per-sender files.
pub struct LogDir {
    options: LogDirOptions,
    limits: LogDirLimits,
    resolver: Resolver,
    /// The directory, opened at start: files are opened relative to it.
    dir: OwnedFd,
    budget: MemoryBudget,
    senders: HashMap<IpAddr, SenderFile>,
    /// Every remembered sender by last use, oldest first.
    by_use: BTreeMap<u64, IpAddr>,
    /// Senders whose file is open, by last use, oldest first.
    open_by_use: BTreeMap<u64, IpAddr>,
    /// Counts events; orders senders by use.
    tick: u64,
    /// The line(s) of the current event.
    line: String,
    /// Events written.
    written: u64,
    /// Events that could not be written.
    errors: u64,
}

impl LogDir {
    /// Checks the directory (creating it) and starts with no file open.
    ///
    /// # Errors
    /// [`FilesError`] when the directory cannot be created.
    pub fn open(options: LogDirOptions) -> Result<Self, FilesError> {
        Self::with_limits(options, LogDirLimits::default())
    }

    /// [`LogDir::open`] with other table bounds.
    ///
    /// # Errors
    /// [`FilesError`] when the directory cannot be created.
    pub fn with_limits(options: LogDirOptions, limits: LogDirLimits) -> Result<Self, FilesError> {
        Self::build(
            options,
            limits,
            Resolver::new(reverse_dns, MAX_PENDING_LOOKUPS),
            None,
            MemoryBudget::default(),
        )
    }

    /// [`LogDir::open`] for a collector that will drop root to `user` (`--user`), charging its
    /// per-sender state to `budget`. Called as root, before the drop: a directory it creates is
    /// given to `user`, and one `user` could not write is refused now.
    ///
    /// # Errors
    /// [`FilesError`] when the directory cannot be created, or `user` cannot write it.
    pub fn open_as(
        options: LogDirOptions,
        user: Option<&nix::unistd::User>,
        budget: MemoryBudget,
    ) -> Result<Self, FilesError> {
        Self::build(
            options,
            LogDirLimits::default(),
            Resolver::new(reverse_dns, MAX_PENDING_LOOKUPS),
            user,
            budget,
        )
    }

    fn build(
        options: LogDirOptions,
        limits: LogDirLimits,
        resolver: Resolver,
        user: Option<&nix::unistd::User>,
        budget: MemoryBudget,
    ) -> Result<Self, FilesError> {
        let dir_error = |source| FilesError::Dir {
            dir: options.dir.clone(),
            source,
        };
        let existed = options.dir.is_dir();
        std::fs::create_dir_all(&options.dir).map_err(dir_error)?;
        let dir = nix::fcntl::open(
            &options.dir,
            nix::fcntl::OFlag::O_RDONLY
                | nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|errno| dir_error(io::Error::from(errno)))?;
        match user {
            Some(user) if !existed => {
                // Ours: give it to the user the collector is about to become.
                nix::unistd::fchown(&dir, Some(user.uid), Some(user.gid))
                    .and_then(|()| {
                        nix::sys::stat::fchmod(
                            &dir,
                            nix::sys::stat::Mode::from_bits_truncate(DIR_MODE),
                        )
                    })
                    .map_err(|errno| dir_error(io::Error::from(errno)))?;
            }
            Some(user) => check_writable_by(&options.dir, &dir, user)?,
            // `create_dir_all` accepts an existing directory without looking at it: say now,
            // not at the first record, when files cannot be created there.
            None => nix::unistd::access(&options.dir, nix::unistd::AccessFlags::W_OK)
                .map_err(|errno| dir_error(io::Error::from(errno)))?,
        }
        Ok(Self {
            limits: LogDirLimits {
                max_open_files: limits.max_open_files.max(1),
                max_senders: limits.max_senders.max(1),
            },
            options,
            resolver,
            dir,
            budget,
            senders: HashMap::new(),
            by_use: BTreeMap::new(),
            open_by_use: BTreeMap::new(),
            tick: 0,
            line: String::with_capacity(1024),
            written: 0,
            errors: 0,
        })
    }

    /// Files open now.
    #[must_use]
    pub fn open_files(&self) -> usize {
        self.open_by_use.len()
    }

    /// The file `sender`'s events go to, if the sender is remembered.
    #[must_use]
    pub fn path_of(&self, sender: IpAddr) -> Option<&Path> {
        self.senders.get(&sender).map(|s| s.path.as_path())
    }

    /// Makes `ip` the most recently used sender, adding it (and naming its file) if new.
    fn touch(&mut self, ip: IpAddr) {
        self.tick += 1;
        let tick = self.tick;
        if let Some(sender) = self.senders.get_mut(&ip) {
            self.by_use.remove(&sender.last_use);
            if self.open_by_use.remove(&sender.last_use).is_some() {
                self.open_by_use.insert(tick, ip);
            }
            sender.last_use = tick;
            self.by_use.insert(tick, ip);
            return;
        }
        while self.senders.len() >= self.limits.max_senders && self.forget_oldest() {}
        let mut name = stem_for(ip, None);
        name.push_str(FILE_SUFFIX);
        let charged = SENDER_STATE_BYTES + 2 * name.len() + self.options.dir.as_os_str().len();
        // A full budget costs the least recently heard senders their place (their files are
        // reopened by name if they speak again), never this sender its record.
        while !self.budget.try_charge(charged) {
            if !self.forget_oldest() {
                self.budget.force_charge(charged);
                break;
            }
        }
        let lookup = if !self.options.resolve {
            Lookup::Settled
        } else if self.resolver.start(ip) {
            Lookup::Pending
        } else {
            Lookup::NotStarted
        };
        tracing::debug!(sender = %ip, file = %name, "new sender");
        self.senders.insert(
            ip,
            SenderFile {
                path: self.options.dir.join(&name),
                name,
                lookup,
                charged,
                file: None,
                last_use: tick,
                warned: false,
            },
        );
        self.by_use.insert(tick, ip);
    }

    /// Forgets the least recently heard sender; `false` when none is left.
    fn forget_oldest(&mut self) -> bool {
        let Some((_, oldest)) = self.by_use.pop_first() else {
            return false;
        };
        if let Some(gone) = self.senders.remove(&oldest) {
            self.open_by_use.remove(&gone.last_use);
            self.budget.release(gone.charged);
        }
        true
    }

    /// Takes the reverse DNS answers that arrived: a sender with a usable name writes to the
    /// host-named file from now on. Retries lookups that found every slot busy for `ip`.
    fn settle_lookups(&mut self, ip: Option<IpAddr>) {
        if !self.options.resolve {
            return;
        }
        for (answered, host) in self.resolver.answers() {
            let Some(sender) = self.senders.get_mut(&answered) else {
                continue;
            };
            sender.lookup = Lookup::Settled;
            let mut name = stem_for(answered, host.as_deref());
            name.push_str(FILE_SUFFIX);
            if name != sender.name {
                tracing::debug!(sender = %answered, file = %name, "named by reverse DNS");
                sender.path = self.options.dir.join(&name);
                sender.name = name;
                if sender.file.take().is_some() {
                    self.open_by_use.remove(&sender.last_use);
                }
            }
        }
        if let Some(ip) = ip
            && let Some(sender) = self.senders.get_mut(&ip)
            && sender.lookup == Lookup::NotStarted
            && self.resolver.start(ip)
        {
            sender.lookup = Lookup::Pending;
        }
    }

    /// Writes [`LogDir::line`] to `ip`'s file, opening it if needed. `ip` was just touched.
    fn write_line(&mut self, ip: IpAddr) -> Result<(), FilesError> {
        let needs_open = self.senders.get(&ip).is_some_and(|s| s.file.is_none());
        if needs_open {
            while self.open_by_use.len() >= self.limits.max_open_files {
                let Some((_, oldest)) = self.open_by_use.pop_first() else {
                    break;
                };
                if let Some(sender) = self.senders.get_mut(&oldest) {
                    sender.file = None;
                }
            }
        }
        let Some(sender) = self.senders.get_mut(&ip) else {
            // Only reachable with a table of size 0, which the limits rule out.
            return Ok(());
        };
        if needs_open {
            sender.file = Some(open_append(&self.dir, &sender.name, &sender.path)?);
            self.open_by_use.insert(sender.last_use, ip);
        }
        let Some(file) = &mut sender.file else {
            return Ok(());
        };
        file.write_all(self.line.as_bytes())
            .map_err(|source| FilesError::Write {
                path: sender.path.clone(),
                source,
            })?;
        if self.options.fsync {
            file.sync_data().map_err(|source| FilesError::Sync {
                path: sender.path.clone(),
                source,
            })?;
        }
        Ok(())
    }

    /// Closes `ip`'s file after a failure, so that the next event tries a fresh open.
    fn close(&mut self, ip: IpAddr) {
        if let Some(sender) = self.senders.get_mut(&ip)
            && sender.file.take().is_some()
        {
            self.open_by_use.remove(&sender.last_use);
        }
    }
}

/// Opens `name` in `dir` for appending, creating it with [`FILE_MODE`]; refuses symlinks and
/// anything that is not a regular file. `path` is for messages.
fn open_append(dir: &OwnedFd, name: &str, path: &Path) -> Result<File, FilesError> {
    use nix::fcntl::OFlag;
    let open_error = |errno: nix::Error| FilesError::Open {
        path: path.to_owned(),
        source: io::Error::from(errno),
    };
    let fd = nix::fcntl::openat(
        dir,
        name,
        OFlag::O_WRONLY
            | OFlag::O_APPEND
            | OFlag::O_CREAT
            | OFlag::O_CLOEXEC
            | OFlag::O_NOFOLLOW
            // A FIFO planted under the name must fail to open rather than wait for a reader;
            // on a regular file it changes nothing.
            | OFlag::O_NONBLOCK,
        nix::sys::stat::Mode::from_bits_truncate(FILE_MODE),
    )
    .map_err(open_error)?;
    let file = File::from(fd);
    let meta = file.metadata().map_err(|source| FilesError::Open {
        path: path.to_owned(),
        source,
    })?;
    if !meta.is_file() {
        return Err(FilesError::NotRegular {
            path: path.to_owned(),
        });
    }
    Ok(file)
}

/// Whether `user` (its uid and primary group: all `--user` keeps) may do `want` (a mask of
/// `rwx` bits as for "other") on a file of `stat`. Root may do anything; ACLs are not read.
fn permits(stat: &nix::sys::stat::FileStat, user: &nix::unistd::User, want: u32) -> bool {
    let mode = stat.st_mode;
    let bits = if user.uid.is_root() {
        return true;
    } else if stat.st_uid == user.uid.as_raw() {
        mode >> 6
    } else if stat.st_gid == user.gid.as_raw() {
        mode >> 3
    } else {
        mode
    };
    bits & want == want
}

/// Refuses an existing directory (open as `fd`) that `user` could not create files in, or that
/// holds a `.log` file `user` could not append to.
fn check_writable_by(dir: &Path, fd: &OwnedFd, user: &nix::unistd::User) -> Result<(), FilesError> {
    let refuse = |path: PathBuf| FilesError::NotWritableBy {
        dir: dir.to_owned(),
        path,
        user: user.name.clone(),
    };
    let stat = nix::sys::stat::fstat(fd).map_err(|errno| FilesError::Dir {
        dir: dir.to_owned(),
        source: io::Error::from(errno),
    })?;
    // Write and search: to create a file in it.
    if !permits(&stat, user, 0o3) {
        return Err(refuse(dir.to_owned()));
    }
    let entries = std::fs::read_dir(dir).map_err(|source| FilesError::Dir {
        dir: dir.to_owned(),
        source,
    })?;
    for entry in entries.flatten() {
        let path = entry.path();
        if path
            .extension()
            .is_none_or(|e| e != FILE_SUFFIX.trim_start_matches('.'))
        {
            continue;
        }
        if let Ok(stat) = nix::sys::stat::lstat(&path)
            && stat.st_mode & libc::S_IFMT == libc::S_IFREG
            && !permits(&stat, user, 0o2)
        {
            return Err(refuse(path));
        }
    }
    Ok(())
}

impl LogDir {
    /// Writes [`LogDir::line`] to `ip`'s file, counting the outcome and warning once per
    /// failing file.
    fn deliver(&mut self, ip: IpAddr) {
        match self.write_line(ip) {
            Ok(()) => {
                self.written += 1;
                if let Some(sender) = self.senders.get_mut(&ip) {
                    sender.warned = false;
                }
            }
            Err(error) => {
                self.errors += 1;
                self.close(ip);
                if let Some(sender) = self.senders.get_mut(&ip)
                    && !sender.warned
                {
                    sender.warned = true;
                    tracing::warn!(
                        sender = %ip,
                        error = %error,
                        "--log-dir: cannot write the sender's file; counting its records as \
                         files_errors until it works again"
                    );
                }
            }
        }
    }
}

impl Sink for LogDir {
    fn event(&mut self, event: &Event) {
        self.line.clear();
        text::write_event(event, &mut self.line);
        if self.line.is_empty() {
            // A duplicate: nothing to write.
            return;
        }
        let ip = event.sender().ip();
        self.settle_lookups(Some(ip));
        self.touch(ip);
        self.deliver(ip);
    }

    fn notice(&mut self, notice: &Notice) {
        self.line.clear();
        text::write_notice(notice, &mut self.line);
        match notice {
            // Any sender's frames may be among those lost: every file gets the line, without
            // refreshing anyone's place in the table.
            Notice::CaptureLost(_) => {
                let senders: Vec<IpAddr> = self.by_use.values().copied().collect();
                for ip in senders {
                    self.deliver(ip);
                }
            }
            Notice::Hook(hook) => {
                let ip = hook.sender.ip();
                self.touch(ip);
                self.deliver(ip);
            }
            // Nothing a sender's file misses: the messages were for another destination.
            Notice::ForwardLost(_) => {}
        }
    }

    fn flush(&mut self) {
        self.settle_lookups(None);
    }

    fn reopen(&mut self) {
        for sender in self.senders.values_mut() {
            sender.file = None;
            sender.warned = false;
        }
        self.open_by_use.clear();
        tracing::info!(dir = %self.options.dir.display(), "--log-dir: files closed, reopening by name");
    }

    fn counters(&self, out: &mut Vec<super::SinkCounter>) {
        use super::SinkCounter;
        out.push(SinkCounter::total(
            "files_written",
            "Records appended to --log-dir files.",
            self.written,
        ));
        out.push(SinkCounter::total(
            "files_errors",
            "Records that could not be written to their --log-dir file.",
            self.errors,
        ));
    }
}

impl Drop for LogDir {
    fn drop(&mut self) {
        for sender in self.senders.values() {
            self.budget.release(sender.charged);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::os::unix::fs::PermissionsExt as _;

    use std::time::Duration;

    use chrono::DateTime;

    use super::*;
    use crate::netconsole::{Duplicate, Record};

    use crate::testing::TempDir;

    fn options(dir: &TempDir) -> LogDirOptions {
        LogDirOptions {
            dir: dir.0.clone(),
            resolve: false,
            fsync: false,
        }
    }

    fn v4(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 41, 0, last))
    }

    fn record(ip: IpAddr, text: &str) -> Event {
        Event::Record(Record {
            sender: SocketAddr::new(ip, 6665),
            seq: Some(1),
            ..Record::example(text.as_bytes())
        })
    }

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap()
    }

    fn stats(sink: &LogDir) -> String {
        let mut s = String::new();
        sink.stats(&mut s);
        s
    }

    #[test]
    fn names_v4_and_v6_by_address() {
        assert_eq!(stem_for(v4(10), None), "10.41.0.10");
        let v6 = IpAddr::V6(Ipv6Addr::new(0xfd00, 0x41, 0, 0, 0, 0, 0, 0x10));
        assert_eq!(stem_for(v6, None), "fd00:41::10");
        let mapped: IpAddr = "::ffff:10.41.0.10".parse().unwrap();
        assert_eq!(stem_for(mapped, None), "::ffff:10.41.0.10");
    }

    #[test]
    fn names_by_resolved_host_lowercased() {
        assert_eq!(stem_for(v4(10), Some("Node-7.Example.")), "node-7.example");
    }

    #[test]
    fn hostile_names_are_made_safe() {
        assert_eq!(safe_stem("../../etc/passwd"), "_._.._etc_passwd");
        assert_eq!(safe_stem(".hidden"), "_hidden");
        assert_eq!(safe_stem(".."), "_.");
        assert_eq!(safe_stem(""), "_");
        assert_eq!(safe_stem("a b\n\x1b[31mc\0"), "a_b___31mc_");
        assert_eq!(safe_stem("日本"), "__");
        let long = "x".repeat(1000);
        assert_eq!(safe_stem(&long).len(), MAX_STEM_BYTES);
        for name in ["a/b", "\u{202e}evil", "..\\..", "x%y$z", "-rf *"] {
            let stem = safe_stem(name);
            assert!(
                stem.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._:-".contains(c)),
                "{stem}"
            );
            assert!(!stem.starts_with('.'), "{stem}");
        }
    }

    #[test]
    fn resolved_names_that_look_like_addresses_are_refused() {
        // A sender must not be able to name its file after another sender's address.
        assert_eq!(stem_for(v4(10), Some("10.41.0.11")), "10.41.0.10");
        assert_eq!(stem_for(v4(10), Some("fd00::1")), "10.41.0.10");
        assert_eq!(stem_for(v4(10), Some("")), "10.41.0.10");
        assert_eq!(stem_for(v4(10), Some("/")), "10.41.0.10");
        assert_eq!(stem_for(v4(10), Some("../x")), "_._x");
    }

    #[test]
    fn writes_text_lines_appends_and_never_truncates() {
        let dir = TempDir::new("append");
        let path = dir.0.join("10.41.0.10.log");
        std::fs::write(&path, "existing line\n").unwrap();
        let mut sink = LogDir::open(options(&dir)).unwrap();
        let event = record(v4(10), "one");
        sink.event(&event);
        sink.reopen();
        sink.event(&record(v4(10), "two"));
        let text = read(&path);
        assert_eq!(
            text,
            format!(
                "existing line\n{}{}",
                text::format_event(&event),
                text::format_event(&record(v4(10), "two"))
            )
        );
        // A second collector on the same directory appends too.
        drop(sink);
        let mut again = LogDir::open(options(&dir)).unwrap();
        again.event(&record(v4(10), "three"));
        let text = read(&path);
        assert!(text.starts_with("existing line\n"), "{text}");
        assert_eq!(text.lines().count(), 4);
        assert_eq!(stats(&again), " files_written=1 files_errors=0");
    }

    #[test]
    fn new_files_have_mode_0640_or_less() {
        let dir = TempDir::new("mode");
        let mut sink = LogDir::open(LogDirOptions {
            fsync: true,
            ..options(&dir)
        })
        .unwrap();
        sink.event(&record(v4(10), "x"));
        let mode = std::fs::metadata(dir.0.join("10.41.0.10.log"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777 & !FILE_MODE, 0, "{mode:o}");
        assert_eq!(stats(&sink), " files_written=1 files_errors=0");
    }

    #[test]
    fn reopen_after_rename_creates_the_file_again() {
        let dir = TempDir::new("rotate");
        let path = dir.0.join("10.41.0.10.log");
        let mut sink = LogDir::open(options(&dir)).unwrap();
        sink.event(&record(v4(10), "before"));
        std::fs::rename(&path, dir.0.join("10.41.0.10.log.1")).unwrap();
        // Until SIGHUP the open file follows the rename (logrotate's `create` mode expects that).
        sink.event(&record(v4(10), "still old"));
        sink.reopen();
        assert_eq!(sink.open_files(), 0);
        sink.event(&record(v4(10), "after"));
        let old = read(&dir.0.join("10.41.0.10.log.1"));
        assert!(old.contains("before") && old.contains("still old"), "{old}");
        let new = read(&path);
        assert!(new.contains("after") && new.lines().count() == 1, "{new}");
    }

    #[test]
    fn one_file_per_sender_and_duplicates_write_nothing() {
        let dir = TempDir::new("senders");
        let mut sink = LogDir::open(options(&dir)).unwrap();
        let v6 = IpAddr::V6(Ipv6Addr::new(0xfd00, 0x41, 0, 0, 0, 0, 0, 0x10));
        sink.event(&record(v4(10), "a"));
        sink.event(&record(v6, "b"));
        sink.event(&Event::Duplicate(Duplicate {
            received: DateTime::from_timestamp(0, 0).unwrap_or_default(),
            sender: SocketAddr::new(v4(10), 6665),
            ifindex: 2,
            len: 3,
        }));
        assert_eq!(read(&dir.0.join("10.41.0.10.log")).lines().count(), 1);
        assert_eq!(read(&dir.0.join("fd00:41::10.log")).lines().count(), 1);
        assert_eq!(stats(&sink), " files_written=2 files_errors=0");
    }

    #[test]
    fn open_files_are_bounded_least_recently_used_first() {
        let dir = TempDir::new("lru");
        let mut sink = LogDir::with_limits(
            options(&dir),
            LogDirLimits {
                max_open_files: 2,
                max_senders: 100,
            },
        )
        .unwrap();
        for round in 0..3 {
            for last in 1..=5 {
                sink.event(&record(v4(last), &format!("round {round}")));
                assert!(sink.open_files() <= 2);
            }
        }
        // Sender 5 and 4 were written last: their files are the open ones.
        sink.event(&record(v4(4), "again"));
        assert_eq!(sink.open_files(), 2);
        assert!(sink.senders[&v4(4)].file.is_some());
        assert!(sink.senders[&v4(5)].file.is_some());
        assert!(sink.senders[&v4(1)].file.is_none());
        for last in 1..=5 {
            let text = read(&dir.0.join(format!("10.41.0.{last}.log")));
            let want = if last == 4 { 4 } else { 3 };
            assert_eq!(text.lines().count(), want, "sender {last}: {text}");
        }
        assert_eq!(stats(&sink), " files_written=16 files_errors=0");
    }

    #[test]
    fn senders_table_is_bounded() {
        let dir = TempDir::new("senders-bound");
        let mut sink = LogDir::with_limits(
            options(&dir),
            LogDirLimits {
                max_open_files: 2,
                max_senders: 3,
            },
        )
        .unwrap();
        for last in 1..=10 {
            sink.event(&record(v4(last), "x"));
            assert!(sink.senders.len() <= 3);
            assert_eq!(sink.by_use.len(), sink.senders.len());
            assert!(sink.open_files() <= 2);
        }
        // A forgotten sender comes back: same file, appended.
        sink.event(&record(v4(1), "back"));
        assert_eq!(read(&dir.0.join("10.41.0.1.log")).lines().count(), 2);
    }

    #[test]
    fn errors_are_counted_not_fatal_and_recover() {
        let dir = TempDir::new("errors");
        let mut sink = LogDir::open(options(&dir)).unwrap();
        // A directory where the sender's file should be: opening it for writing fails.
        std::fs::create_dir(dir.0.join("10.41.0.10.log")).unwrap();
        sink.event(&record(v4(10), "a"));
        sink.event(&record(v4(10), "b"));
        sink.event(&record(v4(11), "other sender still works"));
        assert_eq!(stats(&sink), " files_written=1 files_errors=2");
        assert!(sink.senders[&v4(10)].warned);
        std::fs::remove_dir(dir.0.join("10.41.0.10.log")).unwrap();
        sink.event(&record(v4(10), "c"));
        assert_eq!(stats(&sink), " files_written=2 files_errors=2");
        assert!(!sink.senders[&v4(10)].warned);
        assert_eq!(read(&dir.0.join("10.41.0.10.log")).lines().count(), 1);
    }

    #[test]
    fn symlinks_and_fifos_are_refused() {
        let dir = TempDir::new("planted");
        let target = dir.0.join("target");
        std::fs::write(&target, "precious\n").unwrap();
        std::os::unix::fs::symlink(&target, dir.0.join("10.41.0.10.log")).unwrap();
        nix::unistd::mkfifo(
            &dir.0.join("10.41.0.11.log"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        let mut sink = LogDir::open(options(&dir)).unwrap();
        sink.event(&record(v4(10), "a"));
        sink.event(&record(v4(11), "b"));
        assert_eq!(read(&target), "precious\n");
        assert_eq!(stats(&sink), " files_written=0 files_errors=2");
    }

    #[test]
    fn unusable_directory_is_an_error_at_start() {
        let dir = TempDir::new("notadir");
        let file = dir.0.join("file");
        std::fs::write(&file, "").unwrap();
        let err = LogDir::open(LogDirOptions {
            dir: file.join("sub"),
            resolve: false,
            fsync: false,
        })
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(err.contains("cannot use --log-dir"), "{err}");
    }

    fn fake_lookup(ip: IpAddr) -> Option<String> {
        match ip {
            IpAddr::V4(v4) if v4.octets()[3] == 10 => Some("Node10.example".into()),
            IpAddr::V4(v4) if v4.octets()[3] == 12 => Some("10.41.0.10".into()),
            _ => None,
        }
    }

    /// Flushes until every lookup has answered; bounded.
    fn settle(sink: &mut LogDir) {
        for _ in 0..500 {
            sink.flush();
            if sink.senders.values().all(|s| s.lookup != Lookup::Pending) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("lookups still pending after 5 s");
    }

    #[test]
    fn resolve_names_files_by_host_once_known_and_falls_back_to_the_address() {
        let dir = TempDir::new("resolve");
        let mut sink = LogDir::build(
            LogDirOptions {
                resolve: true,
                ..options(&dir)
            },
            LogDirLimits::default(),
            Resolver::new(fake_lookup, 4),
            None,
            MemoryBudget::default(),
        )
        .unwrap();
        sink.event(&record(v4(10), "a"));
        sink.event(&record(v4(11), "b"));
        sink.event(&record(v4(12), "c"));
        // Until the answer is in, the address names the file.
        assert_eq!(read(&dir.0.join("10.41.0.10.log")).lines().count(), 1);
        settle(&mut sink);
        sink.event(&record(v4(10), "a2"));
        assert_eq!(
            sink.path_of(v4(10)),
            Some(dir.0.join("node10.example.log").as_path())
        );
        assert_eq!(
            sink.path_of(v4(11)),
            Some(dir.0.join("10.41.0.11.log").as_path())
        );
        assert_eq!(
            sink.path_of(v4(12)),
            Some(dir.0.join("10.41.0.12.log").as_path())
        );
        assert!(read(&dir.0.join("node10.example.log")).contains(" a2\n"));
    }

    #[expect(
        clippy::unnecessary_wraps,
        reason = "it stands in for a lookup, which has this signature"
    )]
    fn slow_lookup(_: IpAddr) -> Option<String> {
        std::thread::sleep(Duration::from_secs(2));
        Some("slow.example".into())
    }

    #[test]
    fn lookups_never_block_and_are_capped() {
        let dir = TempDir::new("resolve-slow");
        let mut sink = LogDir::build(
            LogDirOptions {
                resolve: true,
                ..options(&dir)
            },
            LogDirLimits::default(),
            Resolver::new(slow_lookup, 2),
            None,
            MemoryBudget::default(),
        )
        .unwrap();
        let start = std::time::Instant::now();
        for last in 1..=10 {
            sink.event(&record(v4(last), "x"));
        }
        // Blocking, the ten would have taken 20 s; capped, two threads run.
        assert!(
            start.elapsed() < Duration::from_millis(500),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(sink.resolver.pending.load(Ordering::Acquire), 2);
        let not_started = sink
            .senders
            .values()
            .filter(|s| s.lookup == Lookup::NotStarted)
            .count();
        assert_eq!(not_started, 8);
        for last in 1..=10 {
            assert!(dir.0.join(format!("10.41.0.{last}.log")).is_file());
        }
    }

    #[test]
    fn capture_lost_goes_to_every_file_and_hook_notices_to_the_sender() {
        use crate::notice::{CaptureLost, HookNotice, HookOutcome, LossReason, SkipReason};
        let dir = TempDir::new("notices");
        let mut sink = LogDir::with_limits(
            options(&dir),
            LogDirLimits {
                max_open_files: 1,
                max_senders: 100,
            },
        )
        .unwrap();
        for last in 1..=3 {
            sink.event(&record(v4(last), "x"));
        }
        let lost = Notice::CaptureLost(CaptureLost {
            noticed: DateTime::from_timestamp(0, 0).unwrap_or_default(),
            interface: "eth1".into(),
            reason: LossReason::RingFull,
            frames: 7,
            sender: None,
        });
        sink.notice(&lost);
        sink.notice(&Notice::Hook(HookNotice {
            at: DateTime::from_timestamp(0, 0).unwrap_or_default(),
            sender: SocketAddr::new(v4(2), 6665),
            outcome: HookOutcome::Skipped(SkipReason::QueueFull),
        }));
        for last in 1..=3 {
            let text = read(&dir.0.join(format!("10.41.0.{last}.log")));
            assert!(
                text.ends_with(&text::format_notice(&lost)) || last == 2,
                "{text}"
            );
            assert!(text.contains("CAPTURE LOST 7 frames on eth1"), "{text}");
        }
        assert!(read(&dir.0.join("10.41.0.2.log")).contains("PANIC HOOK SKIPPED"));
        assert!(sink.open_files() <= 1);
    }

    fn nobody() -> nix::unistd::User {
        nix::unistd::User::from_name("nobody").unwrap().unwrap()
    }

    #[test]
    fn a_new_directory_is_given_to_the_user() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let dir = TempDir::new("user-new");
        let new = dir.0.join("logs");
        let _sink = LogDir::open_as(
            LogDirOptions {
                dir: new.clone(),
                resolve: false,
                fsync: false,
            },
            Some(&nobody()),
            MemoryBudget::default(),
        )
        .unwrap();
        let stat = nix::sys::stat::stat(&new).unwrap();
        assert_eq!(stat.st_uid, nobody().uid.as_raw());
        assert_eq!(stat.st_mode & 0o777, DIR_MODE);
    }

    #[test]
    fn a_directory_the_user_cannot_write_is_refused_with_the_fix() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let dir = TempDir::new("user-old");
        let open = || {
            LogDir::open_as(options(&dir), Some(&nobody()), MemoryBudget::default())
                .err()
                .map(|e| e.to_string())
        };
        std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();
        let error = open().unwrap_or_default();
        assert!(
            error.contains("not writable by --user nobody") && error.contains("chown -R nobody"),
            "{error}"
        );
        // Writable by all, but a root-owned log file inside is not.
        std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o1777)).unwrap();
        std::fs::write(dir.0.join("10.41.0.1.log"), "old\n").unwrap();
        std::fs::set_permissions(
            dir.0.join("10.41.0.1.log"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let error = open().unwrap_or_default();
        assert!(error.contains("10.41.0.1.log"), "{error}");
        std::fs::remove_file(dir.0.join("10.41.0.1.log")).unwrap();
        assert_eq!(open(), None);
    }

    #[test]
    fn sender_state_is_charged_to_the_budget_and_released() {
        let dir = TempDir::new("budget");
        let budget = MemoryBudget::new(3 * (SENDER_STATE_BYTES + 100));
        let mut sink = LogDir::build(
            options(&dir),
            LogDirLimits::default(),
            Resolver::new(fake_lookup, 1),
            None,
            budget.clone(),
        )
        .unwrap();
        for last in 1..=10 {
            sink.event(&record(v4(last), "x"));
        }
        // The budget holds three senders; the least recently heard were forgotten, and every
        // record still reached its file.
        assert!(sink.senders.len() <= 3, "{}", sink.senders.len());
        assert!(budget.used() <= budget.limit());
        assert_eq!(stats(&sink), " files_written=10 files_errors=0");
        drop(sink);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn reverse_dns_of_loopback_does_not_fail() {
        // Whatever the host's resolver says (usually `localhost` from /etc/hosts), the answer is
        // a name or nothing, never an error.
        let name = reverse_dns(IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert!(name.as_ref().is_none_or(|n| !n.is_empty()), "{name:?}");
    }
}
