//! Headless Chromium driven over the DevTools protocol for the lab's browser tests. The
//! protocol runs on a pipe (`--remote-debugging-pipe`: commands on the browser's fd 3,
//! answers on fd 4, one JSON message per NUL), so no port is opened and no websocket client
//! is needed. Everything is synchronous and bounded by timeouts; dropping the browser kills
//! its whole process group.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The Chromium binary: `$CHROMIUM`, else Debian's `chromium`.
pub fn chromium_path() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

pub struct Browser {
    child: Child,
    to_browser: std::io::PipeWriter,
    from_browser: mpsc::Receiver<Value>,
    next_id: u64,
}

/// A page (tab) attached with its own CDP session.
pub struct Page {
    pub target_id: String,
    pub session: String,
}

impl Browser {
    /// Starts headless Chromium with a fresh profile under `dir` and a window of `size`.
    pub fn launch(dir: &Path, size: (u32, u32)) -> Browser {
        Self::launch_with(dir, size, &[])
    }

    /// [`Browser::launch`] with `extra` flags; QUIC stays enabled when they force it on for
    /// an origin (`--origin-to-force-quic-on=HOST:PORT`) or ask for it (`--enable-quic`), and
    /// is disabled otherwise.
    pub fn launch_with(dir: &Path, size: (u32, u32), extra: &[String]) -> Browser {
        let quic = extra
            .iter()
            .any(|a| a.starts_with("--origin-to-force-quic-on=") || a == "--enable-quic");
        let exe = chromium_path().expect("chromium is installed (.ci/run installs it)");
        let profile = dir.join("chromium-profile");
        let _ = std::fs::remove_dir_all(&profile);
        std::fs::create_dir_all(&profile).expect("profile dir");
        let (cmd_r, cmd_w) = std::io::pipe().expect("pipe");
        let (res_r, res_w) = std::io::pipe().expect("pipe");
        let (a, b) = (cmd_r.as_raw_fd(), res_w.as_raw_fd());
        let log = std::fs::File::create(dir.join("chromium.log")).expect("chromium.log");
        let mut cmd = Command::new(exe);
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--mute-audio",
            "--autoplay-policy=no-user-gesture-required",
            "--remote-debugging-pipe",
        ])
        .args((!quic).then_some("--disable-quic"))
        .args(extra)
        .arg(format!("--window-size={},{}", size.0, size.1))
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("about:blank")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .process_group(0);
        // SAFETY: between fork and exec only async-signal-safe calls: fcntl(2), dup2(2),
        // prctl(2). The pipe ends are first copied above fd 10 so that placing them on 3 and 4
        // cannot overwrite each other.
        unsafe {
            cmd.pre_exec(move || {
                let a2 = libc::fcntl(a, libc::F_DUPFD_CLOEXEC, 10);
                let b2 = libc::fcntl(b, libc::F_DUPFD_CLOEXEC, 10);
                if a2 < 0 || b2 < 0 || libc::dup2(a2, 3) < 0 || libc::dup2(b2, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().expect("chromium starts");
        drop(cmd_r);
        drop(res_w);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(res_r);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(0, &mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        if buf.last() == Some(&0) {
                            buf.pop();
                        }
                        if let Ok(v) = serde_json::from_slice::<Value>(&buf)
                            && tx.send(v).is_err()
                        {
                            return;
                        }
                    }
                }
            }
        });
        Browser {
            child,
            to_browser: cmd_w,
            from_browser: rx,
            next_id: 1,
        }
    }

    /// Sends a command (to a page when `session` is given) and waits for its answer.
    pub fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = s.into();
        }
        let mut bytes = serde_json::to_vec(&msg).expect("json");
        bytes.push(0);
        self.to_browser
            .write_all(&bytes)
            .unwrap_or_else(|e| panic!("chromium is gone ({e}) while sending {method}"));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = self
                .from_browser
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no answer from chromium to {method}"));
            if v["id"] == id {
                if let Some(e) = v.get("error") {
                    panic!("{method} failed: {e}");
                }
                return v["result"].clone();
            }
        }
    }

    /// Opens `url` in a new tab of `size`, in a fresh browser context (an empty HTTP cache),
    /// and attaches to it.
    pub fn open(&mut self, url: &str, size: (u32, u32)) -> Page {
        // Every page is a new viewer: a context of its own, with an empty HTTP cache.
        let c = self.call(None, "Target.createBrowserContext", json!({}));
        let context = c["browserContextId"].as_str().expect("context").to_owned();
        let t = self.call(
            None,
            "Target.createTarget",
            json!({"url": "about:blank", "browserContextId": context}),
        );
        let target_id = t["targetId"].as_str().expect("targetId").to_owned();
        let a = self.call(
            None,
            "Target.attachToTarget",
            json!({"targetId": target_id, "flatten": true}),
        );
        let session = a["sessionId"].as_str().expect("sessionId").to_owned();
        self.call(
            Some(&session),
            "Emulation.setDeviceMetricsOverride",
            json!({"width": size.0, "height": size.1, "deviceScaleFactor": 1, "mobile": false}),
        );
        self.call(Some(&session), "Page.navigate", json!({"url": url}));
        Page { target_id, session }
    }

    /// Evaluates `expr` in the page and returns its value (promises awaited).
    pub fn eval(&mut self, page: &Page, expr: &str) -> Value {
        let r = self.call(
            Some(&page.session),
            "Runtime.evaluate",
            json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
        );
        r["result"]["value"].clone()
    }

    /// A PNG of the page's viewport.
    pub fn screenshot(&mut self, page: &Page) -> Vec<u8> {
        use base64::Engine;
        let r = self.call(
            Some(&page.session),
            "Page.captureScreenshot",
            json!({"format": "png"}),
        );
        base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().expect("png data"))
            .expect("base64")
    }

    pub fn close_page(&mut self, page: Page) {
        self.call(
            None,
            "Target.closeTarget",
            json!({"targetId": page.target_id}),
        );
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The whole group: the browser and its renderer, GPU and utility processes.
        let pgid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) on our own child's process group; no memory-safety preconditions.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}
