//! Runs the whole lab for a test: `cdn lab --port-base 0 --run-dir DIR` as a child process
//! (every port chosen by the OS), waits for the `state.json` it writes once every node is
//! healthy, and reads the nodes' URLs, pids and links from it. Dropping the handle kills the
//! lab (and so its nodes); the lab also dies if the test process does.
#![allow(dead_code)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cdn_lab::state::{LabState, LinkState, NodeInfo};

/// How long a lab may take to come up (debug build, shared machine).
const LAB_START: Duration = Duration::from_secs(90);

pub struct LabRun {
    pub child: Child,
    pub dir: PathBuf,
    pub state: LabState,
}

/// A fresh directory under the target dir.
pub fn scratch(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("lab-tests")
        .join(format!("{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// Sends a signal to a process.
pub fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// Whether `pid` is a live lab process (a zombie, dead but not reaped, counts as gone).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // pid (comm) STATE ...: the state follows the last ')'.
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .unwrap_or("");
            // A reused pid runs something else than a lab node.
            let ours = std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains("cdn"));
            state != "Z" && state != "X" && ours
        }
        Err(_) => false,
    }
}

impl LabRun {
    /// Starts a lab with every port chosen by the OS and waits until it is up.
    pub fn start(test: &str) -> LabRun {
        Self::start_with(test, |_| None)
    }

    /// Like [`LabRun::start`], with the lab file that `config` writes into the run directory
    /// (`None`: the shipped testdata/lab.toml).
    pub fn start_with(test: &str, config: impl FnOnce(&Path) -> Option<PathBuf>) -> LabRun {
        let dir = scratch(test);
        let config = config(&dir);
        let out = std::fs::File::create(dir.join("lab.out")).expect("lab.out");
        let err = out.try_clone().expect("clone");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cdn"));
        cmd.args(["lab", "--port-base", "0", "--run-dir"]).arg(&dir);
        if let Some(c) = &config {
            cmd.arg("--config").arg(c);
        }
        cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        // SAFETY: prctl(2) is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("cdn lab starts");
        let state_path = dir.join("state.json");
        let started = Instant::now();
        loop {
            if let Ok(state) = LabState::read(&state_path) {
                return LabRun { child, dir, state };
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "cdn lab exited ({status}) before it was up:\n{}",
                    std::fs::read_to_string(dir.join("lab.out")).unwrap_or_default()
                );
            }
            if started.elapsed() > LAB_START {
                let _ = child.kill();
                panic!(
                    "cdn lab was not up after {LAB_START:?}:\n{}",
                    std::fs::read_to_string(dir.join("lab.out")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn router(&self) -> String {
        self.state.router.clone()
    }

    pub fn control(&self) -> String {
        self.state.control.clone()
    }

    pub fn node(&self, name: &str) -> &NodeInfo {
        self.state
            .node(name)
            .unwrap_or_else(|| panic!("no node {name} in state.json"))
    }

    /// The pids of every node process.
    pub fn node_pids(&self) -> Vec<u32> {
        self.state.nodes.iter().filter_map(|n| n.pid).collect()
    }

    /// The relay of a link.
    pub fn link(&self, kind: &str, from: &str, to: &str) -> &LinkState {
        self.state
            .link(kind, from, to)
            .unwrap_or_else(|| panic!("no {kind} link {from} -> {to}"))
    }

    pub fn link_url(&self, kind: &str, from: &str, to: &str) -> String {
        format!("http://{}", self.link(kind, from, to).addr)
    }

    /// What the lab printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(self.dir.join("lab.out")).unwrap_or_default()
    }

    /// Waits for the lab to exit, at most `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for LabRun {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            signal(self.child.id(), libc::SIGTERM);
            if self.wait_exit(Duration::from_secs(10)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}

/// Waits until every pid is gone; returns the survivors after `timeout`.
pub fn wait_gone(pids: &[u32], timeout: Duration) -> Vec<u32> {
    let start = Instant::now();
    loop {
        let left: Vec<u32> = pids.iter().copied().filter(|p| alive(*p)).collect();
        if left.is_empty() || start.elapsed() > timeout {
            return left;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
