//! Test data files, scratch directories, and running helper programs with a deadline.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A file of `netcon-user/tests/data/`: the real kernel captures and what they hold (copied
/// from `../shared/fixtures`, see the README there), shared with the library's own tests rather
/// than copied twice.
///
/// # Panics
/// If the file is missing.
#[must_use]
pub fn fixture(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../netcon-user/tests/data")
        .join(name);
    assert!(path.is_file(), "test data {} is missing", path.display());
    path
}

/// A fresh directory under the system temporary directory, removed with its contents on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `$TMPDIR/netcon-tests-<pid>-<counter>-<what>`.
    ///
    /// # Panics
    /// If it cannot be created.
    #[must_use]
    pub fn new(what: &str) -> TempDir {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("netcon-tests-{}-{n}-{what}", std::process::id()));
        std::fs::create_dir(&path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        TempDir { path }
    }

    /// The directory.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path inside it.
    #[must_use]
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            eprintln!("netcon-tests: cannot remove {}: {e}", self.path.display());
        }
    }
}

/// Runs `cmd` to completion with empty standard input and returns its output; kills it and
/// panics after `timeout` (a failure deadline, not a timing check).
///
/// # Panics
/// If it cannot be started or does not finish in time.
#[must_use]
pub fn run_bounded(cmd: &mut Command, timeout: Duration) -> Output {
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {shown}: {e}"));
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("piped")));
    let err = drain(Box::new(child.stderr.take().expect("piped")));
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{shown} did not finish within {timeout:?} (killed it)");
            }
            Err(e) => panic!("waiting for {shown}: {e}"),
        }
    };
    Output {
        status,
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    }
}

/// Spawns `cmd` (a server a test starts: rsyslogd, prometheus) so that the kernel kills it
/// when the test process dies without running destructors (SIGKILL, `PR_SET_PDEATHSIG`).
///
/// # Panics
/// If it cannot be started.
#[must_use]
pub fn spawn_tied(cmd: &mut Command) -> Child {
    // SAFETY: prctl is async-signal-safe, the only call between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"))
}

/// Spawns `cmd` as [`spawn_tied`] does, with no input and both its outputs into a new file
/// `log` (what [`assert_running`] shows when it exits).
///
/// # Panics
/// If the file cannot be created or the server cannot be started.
#[must_use]
pub fn spawn_logged(cmd: &mut Command, log: &Path) -> Child {
    let file = std::fs::File::create(log)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", log.display()));
    cmd.stdin(Stdio::null())
        .stdout(file.try_clone().expect("log file"))
        .stderr(file);
    spawn_tied(cmd)
}

/// Panics, with the server's own output (`log`), if `child` (`who`: a server a test started)
/// has exited: what a test then waits for would never come.
///
/// # Panics
/// As said.
pub fn assert_running(child: &mut Child, who: &str, log: &Path) {
    if let Ok(Some(status)) = child.try_wait() {
        panic!(
            "{who} exited ({status}); its output:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
    }
}

/// Calls `pending` every `interval` until it returns `None`; panics with what it last returned
/// once `timeout` has passed.
///
/// # Panics
/// After `timeout`.
pub fn wait_until(
    timeout: Duration,
    interval: Duration,
    mut pending: impl FnMut() -> Option<String>,
) {
    let deadline = Instant::now() + timeout;
    while let Some(what) = pending() {
        assert!(Instant::now() < deadline, "{what} (waited {timeout:?})");
        std::thread::sleep(interval);
    }
}

/// Stops `child` unless it already exited: SIGTERM, then SIGKILL after `timeout`; reaps it.
pub fn stop_child(child: &mut Child, timeout: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Writes `bytes` to a new file `path`.
///
/// # Panics
/// If that fails.
pub fn write_file(path: &Path, bytes: &[u8]) {
    std::fs::File::create(path)
        .and_then(|mut f| f.write_all(bytes))
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}
