//! Opening the directory's files safely, and checking at start that the `--user` the
//! collector becomes can write them.

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use super::{FILE_MODE, FILE_SUFFIX, FilesError};

/// Opens `name` in `dir` for appending, creating it with [`FILE_MODE`]; refuses symlinks and
/// anything that is not a regular file. `path` is for messages.
pub(super) fn open_append(dir: &OwnedFd, name: &str, path: &Path) -> Result<File, FilesError> {
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
pub(super) fn check_writable_by(
    dir: &Path,
    fd: &OwnedFd,
    user: &nix::unistd::User,
) -> Result<(), FilesError> {
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
