//! `--user`: give up root once everything privileged is done.
//!
//! Attaching XDP, opening packet sockets and promiscuous memberships need root (or `CAP_BPF`,
//! `CAP_NET_ADMIN`, `CAP_NET_RAW`); using the descriptors afterwards does not. So netcon-sniff sets
//! everything up, then becomes USER: supplementary groups, group, user, in that order (once the
//! user changes, the groups could no longer be). A change of real, effective and saved user ID
//! away from 0 clears every capability (capabilities(7), "Effect of user ID changes"), and
//! `PR_SET_NO_NEW_PRIVS` keeps an exec from gaining any back.

use nix::unistd::{Uid, User, setgroups, setresgid, setresuid};

/// Why root could not be dropped. Each is fatal: running on as root when asked not to is worse
/// than not running.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    /// No such user.
    #[error("--user {user}: no such user")]
    NoSuchUser { user: String },
    /// The user database could not be read.
    #[error("--user {user}: cannot look the user up: {source}")]
    Lookup {
        user: String,
        #[source]
        source: nix::Error,
    },
    /// A set*id call failed.
    #[error("--user {user}: {call} failed (needs root or CAP_SETUID/CAP_SETGID): {source}")]
    Switch {
        user: String,
        call: &'static str,
        #[source]
        source: nix::Error,
    },
    /// Root could be regained: the switch did not take.
    #[error("--user {user}: root could be regained after switching; refusing to run")]
    StillRoot { user: String },
}

/// The user database entry of `user`, for setting up what it must own before the switch.
///
/// # Errors
/// [`PrivilegeError`] when the user is unknown or cannot be looked up.
pub fn lookup(user: &str) -> Result<User, PrivilegeError> {
    User::from_name(user)
        .map_err(|source| PrivilegeError::Lookup {
            user: user.to_owned(),
            source,
        })?
        .ok_or_else(|| PrivilegeError::NoSuchUser {
            user: user.to_owned(),
        })
}

/// Switches the whole process (every thread: glibc's set*id calls apply to all) to `user`.
///
/// # Errors
/// [`PrivilegeError`] when the user is unknown or a switch fails.
pub fn drop_to(user: &str) -> Result<(), PrivilegeError> {
    let entry = lookup(user)?;
    let switch = |call, result: nix::Result<()>| {
        result.map_err(|source| PrivilegeError::Switch {
            user: user.to_owned(),
            call,
            source,
        })
    };
    switch("setgroups", setgroups(&[entry.gid]))?;
    switch("setresgid", setresgid(entry.gid, entry.gid, entry.gid))?;
    switch("setresuid", setresuid(entry.uid, entry.uid, entry.uid))?;
    // SAFETY: prctl with PR_SET_NO_NEW_PRIVS takes plain integers.
    let _ = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    let root = Uid::from_raw(0);
    if !entry.uid.is_root() && setresuid(root, root, root).is_ok() {
        return Err(PrivilegeError::StillRoot {
            user: user.to_owned(),
        });
    }
    Ok(())
}
