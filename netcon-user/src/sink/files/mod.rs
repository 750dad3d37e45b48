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

mod name;
mod open;
mod resolver;
#[cfg(test)]
mod tests;

use std::{
    collections::{BTreeMap, HashMap},
    fs::File,
    io::{self, Write as _},
    net::IpAddr,
    os::fd::OwnedFd,
    path::{Path, PathBuf},
};

pub use self::name::{safe_stem, stem_for};
use self::open::{check_writable_by, open_append};
use self::resolver::{Resolver, reverse_dns};
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
        out.extend([
            SinkCounter::total(
                "files_written",
                "Records appended to --log-dir files.",
                self.written,
            ),
            SinkCounter::total(
                "files_errors",
                "Records that could not be written to their --log-dir file.",
                self.errors,
            ),
        ]);
    }
}

impl Drop for LogDir {
    fn drop(&mut self) {
        for sender in self.senders.values() {
            self.budget.release(sender.charged);
        }
    }
}
