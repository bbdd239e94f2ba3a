//! The workspace's child-process toolkit, used by the lab (its nodes) and by the benchmarks
//! (origin, edge, nginx, varnishd): [`spawn`] starts a program with its output in its own log
//! file, killed when its handle is dropped and sent SIGTERM by the kernel when this process
//! dies, even by SIGKILL (`PR_SET_PDEATHSIG`); [`stop`] is SIGTERM, then SIGKILL after a
//! grace; [`wait_ready`] waits for a probe (a port, a health check) while watching the child
//! exit, with the log's last lines in the error; [`NodeProc`] is one lab node (this binary run
//! again as `cdn origin|edge|router`) that reports its addresses in its log.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::process::Child;

/// How to start a child process.
#[derive(Debug, Clone)]
pub struct ChildSpec<'a> {
    pub program: &'a Path,
    pub args: &'a [String],
    pub envs: &'a [(&'a str, String)],
    /// Its stdout and stderr.
    pub log: &'a Path,
    /// Append to the log (a restarted node keeps its history) instead of truncating it.
    pub append: bool,
    /// Its own process group: a Ctrl-C in the terminal reaches this process only, which then
    /// stops its children in order.
    pub own_group: bool,
}

impl<'a> ChildSpec<'a> {
    /// `program args`, output to `log` (truncated), in this process's group, no extra env.
    pub fn new(program: &'a Path, args: &'a [String], log: &'a Path) -> Self {
        ChildSpec {
            program,
            args,
            envs: &[],
            log,
            append: false,
            own_group: false,
        }
    }
}

/// Starts a child as `spec` says; returns it and the log's length before the start (where
/// this run's lines begin).
pub fn spawn(spec: &ChildSpec<'_>) -> anyhow::Result<(Child, u64)> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(spec.append)
        .truncate(!spec.append)
        .open(spec.log)
        .with_context(|| format!("cannot open {}", spec.log.display()))?;
    let offset = log.metadata().map(|m| m.len()).unwrap_or(0);
    let err = log.try_clone()?;
    let mut cmd = tokio::process::Command::new(spec.program);
    cmd.args(spec.args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(err))
        .kill_on_drop(true);
    for (k, v) in spec.envs {
        cmd.env(k, v);
    }
    if spec.own_group {
        cmd.process_group(0);
    }
    let parent = std::process::id();
    // SAFETY: the closure runs in the child between fork and exec, where only
    // async-signal-safe functions may be called: prctl(2), getppid(2) and reading errno
    // are. It allocates nothing and touches no lock.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent died before the prctl: nobody would ever stop this child.
            if libc::getppid() as u32 != parent {
                return Err(std::io::Error::other("the parent is gone"));
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", spec.program.display()))?;
    Ok((child, offset))
}

/// SIGTERM, then SIGKILL when `child` has not exited after `grace`; waits for the exit.
pub async fn stop(child: &mut Child, grace: Duration, what: &str) {
    if let Some(pid) = child.id() {
        signal(pid, libc::SIGTERM);
    }
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        tracing::warn!(node = what, "did not stop in time; killing it");
        let _ = child.kill().await;
    }
}

/// Waits until `probe` says yes (tried every 100 ms); fails when `child` exits first (with its
/// log's last lines) or after `timeout`.
pub async fn wait_ready<F, Fut>(
    child: &mut Child,
    what: &str,
    log: &Path,
    timeout: Duration,
    mut probe: F,
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            anyhow::bail!(
                "{what} exited ({status}) while starting; its log:\n{}",
                tail(&text, 15)
            );
        }
        if probe().await {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!(
                "{what} is not ready after {} s (log: {})",
                timeout.as_secs(),
                log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One node process, stopped or running.
pub struct NodeProc {
    pub name: String,
    pub args: Vec<String>,
    pub log: PathBuf,
    child: Option<tokio::process::Child>,
}

/// Sends `sig` to a child we started.
pub fn signal(pid: u32, sig: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill(2) has no memory-safety preconditions; `pid` is a child we spawned
        // and have not reaped yet, so the number cannot name another process.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

impl NodeProc {
    pub fn new(name: &str, args: Vec<String>, log: PathBuf) -> Self {
        NodeProc {
            name: name.to_owned(),
            args,
            log,
            child: None,
        }
    }

    /// Starts the process (appending to its log); returns the log's length before the start,
    /// where this run's lines begin.
    pub fn start(&mut self) -> anyhow::Result<u64> {
        let exe = std::env::current_exe().context("cannot find the cdn binary")?;
        let envs = [("NO_COLOR", "1".to_owned())];
        let (child, offset) = spawn(&ChildSpec {
            envs: &envs,
            append: true,
            own_group: true,
            ..ChildSpec::new(&exe, &self.args, &self.log)
        })
        .with_context(|| format!("cannot start {}", self.name))?;
        self.child = Some(child);
        Ok(offset)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    /// Whether the process runs; reaps it if it has exited.
    pub fn running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => match c.try_wait() {
                Ok(None) => true,
                Ok(Some(status)) => {
                    tracing::warn!(node = %self.name, %status, log = %self.log.display(), "node exited");
                    self.child = None;
                    false
                }
                Err(_) => false,
            },
            None => false,
        }
    }

    /// SIGTERM, then SIGKILL after `grace`; waits for the exit.
    pub async fn stop(&mut self, grace: Duration) {
        if let Some(mut child) = self.child.take() {
            stop(&mut child, grace, &self.name).await;
        }
    }

    /// Waits until this run's log shows `key=ADDR` (e.g. `listen=127.0.0.1:8091`); fails when
    /// the process exits first or after `timeout`, with the log's last lines.
    pub async fn learn_addr(
        &mut self,
        offset: u64,
        key: &str,
        timeout: Duration,
    ) -> anyhow::Result<SocketAddr> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let text = read_from(&self.log, offset).await;
            if let Some(a) = find_addr(&text, key) {
                return Ok(a);
            }
            if !self.running() {
                anyhow::bail!(
                    "{} exited while starting; its log ({}) ends with:\n{}",
                    self.name,
                    self.log.display(),
                    tail(&text, 12)
                );
            }
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!(
                    "{} did not report `{key}` within {timeout:?}; its log ({}) ends with:\n{}",
                    self.name,
                    self.log.display(),
                    tail(&text, 12)
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

async fn read_from(path: &Path, offset: u64) -> String {
    let Ok(mut f) = tokio::fs::File::open(path).await else {
        return String::new();
    };
    if f.seek(std::io::SeekFrom::Start(offset)).await.is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    let _ = f.take(4 << 20).read_to_end(&mut buf).await;
    String::from_utf8_lossy(&buf).into_owned()
}

/// The last `n` lines of a text.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Drops ANSI escape sequences.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The first `key=ADDR` token in a text log.
fn find_addr(text: &str, key: &str) -> Option<SocketAddr> {
    let prefix = format!("{key}=");
    text.lines().find_map(|l| {
        strip_ansi(l)
            .split_whitespace()
            .find_map(|t| t.strip_prefix(&prefix)?.trim_matches('"').parse().ok())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_read_from_log_lines() {
        let log = "2026-01-01T00:00:00Z  INFO cdn_edge: peering name=a peer_listen=127.0.0.1:4000 peers=2\n\
                   2026-01-01T00:00:00Z  INFO cdn_edge: edge serving name=a listen=127.0.0.1:4001 origin=x\n";
        assert_eq!(
            find_addr(log, "listen"),
            Some("127.0.0.1:4001".parse().expect("addr"))
        );
        assert_eq!(
            find_addr(log, "peer_listen"),
            Some("127.0.0.1:4000".parse().expect("addr"))
        );
        let ansi = "\u{1b}[3maddr\u{1b}[0m\u{1b}[2m=\u{1b}[0m127.0.0.1:5 x";
        assert_eq!(
            find_addr(ansi, "addr"),
            Some("127.0.0.1:5".parse().expect("addr"))
        );
        assert_eq!(find_addr("nothing here", "addr"), None);
    }
}
