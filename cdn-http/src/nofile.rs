//! The process's open-file limit (`RLIMIT_NOFILE`): raised once, soft to hard, when a node
//! starts, and read by [`crate::server::serve`] to fit `max_connections` to it (see
//! [`crate::limits::connection_budget`]). Every socket and open file is one descriptor; a
//! node that runs out cannot even accept a connection to answer it 503.

use std::sync::OnceLock;

/// The limit before and after [`raise`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NofileLimit {
    /// Soft limit found at start.
    pub before: u64,
    /// Soft limit now (the hard limit, unless raising failed).
    pub soft: u64,
    pub hard: u64,
}

static RAISED: OnceLock<Option<NofileLimit>> = OnceLock::new();

/// Raises the soft limit to the hard one (once per process; later calls return the first
/// result) and logs it. `None` where the limit cannot be read (not Unix).
pub fn raise() -> Option<NofileLimit> {
    *RAISED.get_or_init(raise_now)
}

// `rlim_t` is u64 here but narrower on some targets: the casts are needed there.
#[cfg(unix)]
#[allow(clippy::unnecessary_cast)]
fn get() -> Option<(u64, u64)> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `r` is a valid, writable `rlimit` that outlives the call; getrlimit only
    // writes into it.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) };
    (rc == 0).then_some((r.rlim_cur as u64, r.rlim_max as u64))
}

#[cfg(unix)]
#[allow(clippy::unnecessary_cast)]
fn raise_now() -> Option<NofileLimit> {
    let (before, hard) = get()?;
    // An infinite hard limit cannot be the soft one for descriptors (Linux caps it at
    // fs.nr_open): aim at 1 Mi then.
    let target = if hard == libc::RLIM_INFINITY as u64 {
        1 << 20
    } else {
        hard
    };
    if before >= target {
        tracing::info!(soft = before, hard, "open-file limit (RLIMIT_NOFILE)");
        return Some(NofileLimit {
            before,
            soft: before,
            hard,
        });
    }
    let r = libc::rlimit {
        rlim_cur: target as libc::rlim_t,
        rlim_max: hard as libc::rlim_t,
    };
    // SAFETY: `r` is a valid `rlimit` that outlives the call; setrlimit only reads it.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        tracing::warn!(soft = before, hard, error = %e, "cannot raise the open-file limit (RLIMIT_NOFILE)");
    }
    let (soft, hard) = get().unwrap_or((before, hard));
    if soft > before {
        tracing::info!(
            from = before,
            to = soft,
            hard,
            "raised the open-file limit (RLIMIT_NOFILE)"
        );
    }
    Some(NofileLimit { before, soft, hard })
}

#[cfg(not(unix))]
fn raise_now() -> Option<NofileLimit> {
    None
}
