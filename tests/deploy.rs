//! The deployment's contract with the `cdn` binary (deploy/, the Containerfile; issue 16):
//!
//! - `cdn edge|router|origin --check-config FILE` loads a config with the node's own loader,
//!   prints one line and exits 0 for a good file, 1 with the node's error (file, line, field)
//!   for a bad one, and binds nothing (it succeeds while the addresses it names are taken);
//!   the shipped configs (deploy/config, the Kubernetes base and overlays) pass.
//! - The edge runs under the container's constraints: the image's user (65532) with no
//!   capabilities and no new privileges, in a mount namespace where every file system is
//!   read-only but one directory (its HOME and TMPDIR), as readOnlyRootFilesystem gives it
//!   (when the test runs as root; otherwise as the user it runs as, with the reason printed),
//!   and the config read-only. It serves (miss, then hit, exact bytes),
//!   exports the metrics the autoscaler and the dashboard use, writes nothing anywhere, and on
//!   SIGTERM refuses new connections (so a readiness probe on /healthz fails at once) while
//!   the response in flight finishes byte for byte; then it exits 0.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use futures::StreamExt;
use tokio::io::{AsyncBufReadExt, BufReader};

const CDN: &str = env!("CARGO_BIN_EXE_cdn");
/// The user of the container image (Containerfile: USER 65532:65532, distroless nonroot).
const IMAGE_UID: u32 = 65532;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cdn-deploy-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// `cdn NODE --check-config FILE [extra...]`: (exit code, stdout, stderr).
fn check(node: &str, file: &Path, extra: &[&str]) -> (i32, String, String) {
    let out = Command::new(CDN)
        .arg(node)
        .arg("--check-config")
        .arg(file)
        .args(extra)
        .output()
        .expect("run cdn");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_ok(node: &str, file: &Path, extra: &[&str], says: &str) {
    let (code, out, err) = check(node, file, extra);
    assert_eq!(code, 0, "{node} {}: {out}{err}", file.display());
    assert!(err.is_empty(), "nothing on stderr: {err}");
    assert_eq!(out.lines().count(), 1, "one line: {out}");
    let want = format!("{}: OK: {says}", file.display());
    assert!(out.starts_with(&want), "{out:?} should start with {want:?}");
}

/// A bad file: exit 1, nothing on stdout, the node's own error on stderr (one line).
fn assert_bad(node: &str, file: &Path, want: &[&str]) {
    let (code, out, err) = check(node, file, &[]);
    assert_eq!(code, 1, "{node} {}: {out}{err}", file.display());
    assert!(out.is_empty(), "nothing on stdout: {out}");
    assert!(
        err.lines().count() == 1 || err.contains("TOML parse error at line"),
        "one line: {err}"
    );
    for w in want {
        assert!(err.contains(w), "{err:?} should contain {w:?}");
    }
}

#[test]
fn check_config_accepts_good_edge_files_and_names_the_line_of_bad_ones() {
    let dir = tempdir("check-edge");
    // Everything it names is taken: a check binds nothing.
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let good = dir.join("edge.toml");
    std::fs::write(
        &good,
        format!(
            "name = \"eu-1\"\nregion = \"europe\"\norigin = \"http://127.0.0.1:1\"\n\
             capacity = \"64MiB\"\npeer_listen = \"{}\"\n\n[peer_tls]\n\
             ca = \"/nonexistent/ca.pem\"\ncert = \"/nonexistent/c.pem\"\nkey = \"/nonexistent/k.pem\"\n",
            udp.local_addr().expect("addr")
        ),
    )
    .expect("write");
    let listen = tcp.local_addr().expect("addr").to_string();
    assert_ok(
        "edge",
        &good,
        &["--listen", &listen],
        "edge `eu-1` in region `europe`, origin http://127.0.0.1:1, capacity 64 MiB",
    );
    // The flags apply as they would at start: a name given on the command line wins.
    let (_, out, _) = check("edge", &good, &["--name", "edge-0.edge-peers"]);
    assert!(out.contains("edge `edge-0.edge-peers`"), "{out}");
    // And a flag that breaks the config is reported like a bad file.
    let (code, _, err) = check("edge", &good, &["--capacity", "1MiB"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("capacity") && err.contains("4 chunks"),
        "{err}"
    );

    // A type error, a value the edge's own check refuses, an unknown field, a missing file.
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "name = \"eu-1\"\n\ncapacity = \"lots\"\n").expect("write");
    assert_bad(
        "edge",
        &bad,
        &[&format!("{}:3:", bad.display()), "capacity"],
    );
    std::fs::write(&bad, "name = \"eu-1\"\nchunk_size = \"1KiB\"\n").expect("write");
    assert_bad(
        "edge",
        &bad,
        &[&format!("{}:2:", bad.display()), "chunk_size", "4KiB"],
    );
    std::fs::write(&bad, "name = \"eu-1\"\ncapasity = \"1GiB\"\n").expect("write");
    assert_bad(
        "edge",
        &bad,
        &[&format!("{}:2:", bad.display()), "capasity"],
    );
    assert_bad(
        "edge",
        &dir.join("missing.toml"),
        &["missing.toml", "cannot read"],
    );
    drop((tcp, udp));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn check_config_accepts_good_router_files_and_names_the_line_of_bad_ones() {
    let dir = tempdir("check-router");
    assert_ok(
        "router",
        &repo("testdata/geo/router.example.toml"),
        &[],
        "router, 4 edges in 3 regions (asia, europe, north-america)",
    );
    // No --geo-db and no --config needed to check.
    let bad = dir.join("router.toml");
    let text = std::fs::read_to_string(repo("testdata/geo/router.example.toml")).expect("read");
    let line = text
        .lines()
        .position(|l| l == "latitude = 1.29")
        .expect("asia's latitude")
        + 1;
    std::fs::write(&bad, text.replace("latitude = 1.29", "latitude = 100.0")).expect("write");
    assert_bad(
        "router",
        &bad,
        &[&format!("{}:{line}:", bad.display()), "edge[3].latitude"],
    );
    std::fs::write(&bad, "origin_url = \"http://o\"\nbogus = 1\n").expect("write");
    assert_bad(
        "router",
        &bad,
        &[&format!("{}:2:", bad.display()), "unknown field `bogus`"],
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn check_config_accepts_good_origin_files_and_names_the_line_of_bad_ones() {
    let dir = tempdir("check-origin");
    let good = dir.join("origin.toml");
    std::fs::write(
        &good,
        "[[cache_control]]\npattern = \"/live/**/*.m3u8\"\nvalue = \"max-age=1\"\n",
    )
    .expect("write");
    assert_ok("origin", &good, &[], "origin, 1 cache-control rules");
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "request_timeout_secs = \"soon\"\n").expect("write");
    assert_bad(
        "origin",
        &bad,
        &[&format!("{}:1:", bad.display()), "request_timeout_secs"],
    );
    std::fs::write(&bad, "[[cache_control]]\npattern = \"a[\"\nvalue = \"x\"\n").expect("write");
    assert_bad("origin", &bad, &["cache_control[0].pattern"]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The configs the deployment ships: the image's and systemd's defaults, the Kubernetes base
/// and every region's edge.toml (deploy/check.sh checks the rendered ConfigMaps too).
#[test]
fn the_shipped_configs_pass_their_check() {
    for node in ["edge", "router", "origin"] {
        assert_ok(
            node,
            &repo(&format!("deploy/config/{node}.toml")),
            &[],
            node,
        );
    }
    assert_ok(
        "edge",
        &repo("deploy/kubernetes/base/config/edge.toml"),
        &[],
        "edge",
    );
    assert_ok(
        "router",
        &repo("deploy/kubernetes/base/config/router.toml"),
        &[],
        "router, 0 edges and 3 DNS names in 3 regions (asia, europe, north-america)",
    );
    assert_ok(
        "origin",
        &repo("deploy/kubernetes/components/origin/origin.toml"),
        &[],
        "origin",
    );
    for region in ["europe", "north-america", "asia"] {
        assert_ok(
            "edge",
            &repo(&format!("deploy/kubernetes/overlays/{region}/edge.toml")),
            &[],
            &format!("edge `edge` in region `{region}`"),
        );
    }
}

/// Files owned by `uid` under `dirs` (not following symlinks, at most a few levels deep).
fn owned_by(uid: u32, dirs: &[&Path]) -> Vec<PathBuf> {
    fn walk(p: &Path, uid: u32, depth: u32, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(p) else {
            return;
        };
        for e in entries.flatten() {
            let Ok(m) = e.path().symlink_metadata() else {
                continue;
            };
            if m.uid() == uid {
                out.push(e.path());
            }
            if m.is_dir() && depth > 0 {
                walk(&e.path(), uid, depth - 1, out);
            }
        }
    }
    let mut out = Vec::new();
    for d in dirs {
        walk(d, uid, 3, &mut out);
    }
    out.sort();
    out
}

/// Run by `sh -c` in the edge's mount namespace with `$1` = the writable directory and the
/// command after it: makes `$1` a mount of its own, every other mount (but /proc and /sys)
/// read-only, then runs the command.
const READ_ONLY_SCRIPT: &str = r#"w=$1; shift
mount --bind "$w" "$w" || exit 111
for m in $(awk '{print $2}' /proc/self/mounts | sort -u); do
  case "$m" in /proc|/proc/*|/sys|/sys/*|"$w") continue;; esac
  mount -o remount,bind,ro "$m" 2>/dev/null
done
exec "$@""#;

/// The options of the mount at `target` as the process `pid` sees it (/proc/PID/mountinfo).
fn mount_options(pid: u32, target: &Path) -> Option<String> {
    let info = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).ok()?;
    info.lines().rev().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        (f.get(4).map(Path::new) == Some(target)).then(|| f.get(5).map(|o| o.to_string()))?
    })
}

fn proc_status(pid: u32, field: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!("{field}:"))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_runs_unprivileged_writes_nothing_and_drains_on_sigterm() {
    // SAFETY: getuid has no preconditions.
    let root = unsafe { libc::getuid() } == 0;
    let setpriv = Path::new("/usr/bin/setpriv").exists();
    let uid = if root && setpriv {
        IMAGE_UID
    } else {
        let why = if root {
            "setpriv is not installed"
        } else {
            "the test does not run as root"
        };
        // SAFETY: getuid has no preconditions.
        let me = unsafe { libc::getuid() };
        println!("running the edge as uid {me}, not {IMAGE_UID}: {why}");
        me
    };
    // A read-only root file system, as readOnlyRootFilesystem gives the container: needs root
    // (a mount namespace) and unshare.
    let read_only = uid == IMAGE_UID
        && std::process::Command::new("/usr/bin/unshare")
            .args(["--mount", "--propagation", "private", "--", "/bin/true"])
            .status()
            .is_ok_and(|s| s.success());
    if uid == IMAGE_UID && !read_only {
        println!("the file systems stay writable (no mount namespace: unshare failed)");
    }
    let origin = start_origin_with(&media_root(), "").await;
    let origin_url = format!("http://{}", origin.addr);

    // The container's layout: the config read-only (root's, 0444 in a 0555 directory), the
    // binary where the user can run it, and one writable directory (HOME, TMPDIR).
    let base = tempdir("container");
    std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let etc = base.join("etc");
    std::fs::create_dir(&etc).expect("mkdir");
    let config = etc.join("edge.toml");
    // drain_secs: long enough that the response held in flight below is never cut by the
    // drain deadline on a loaded machine.
    std::fs::write(
        &config,
        format!(
            "name = \"edge-0\"\nregion = \"europe\"\norigin = \"{origin_url}\"\n\
             capacity = \"64MiB\"\nchunk_size = \"1MiB\"\ndrain_secs = 120\n"
        ),
    )
    .expect("write config");
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o444)).expect("chmod");
    std::fs::set_permissions(&etc, std::fs::Permissions::from_mode(0o555)).expect("chmod");
    let writable = base.join("writable");
    std::fs::create_dir(&writable).expect("mkdir");
    std::fs::set_permissions(&writable, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    if uid == IMAGE_UID {
        let c = std::ffi::CString::new(writable.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::chown(c.as_ptr(), IMAGE_UID, IMAGE_UID) }, 0);
    }
    // Everywhere else a user may write (the world-writable temporary directories): what the
    // user owns there before, to compare with after.
    let tmp = std::env::temp_dir();
    let shared: Vec<&Path> = [tmp.as_path(), Path::new("/var/tmp"), Path::new("/dev/shm")]
        .into_iter()
        .filter(|p| p.exists())
        .collect();
    let before = owned_by(uid, &shared);

    let setpriv_args = [
        "--reuid=65532",
        "--regid=65532",
        "--clear-groups",
        "--no-new-privs",
        "--inh-caps=-all",
        "--bounding-set=-all",
        CDN,
    ];
    let mut cmd = if uid == IMAGE_UID && read_only {
        // A mount namespace of its own where every file system is read-only (remounted
        // read-only bind mounts) except the writable directory, then the image's user.
        let mut c = tokio::process::Command::new("/usr/bin/unshare");
        c.args(["--mount", "--propagation", "private", "--", "/bin/sh", "-c"])
            .arg(READ_ONLY_SCRIPT)
            .arg("sh")
            .arg(&writable)
            .arg("/usr/bin/setpriv")
            .args(setpriv_args);
        c
    } else if uid == IMAGE_UID {
        let mut c = tokio::process::Command::new("/usr/bin/setpriv");
        c.args(setpriv_args);
        c
    } else {
        tokio::process::Command::new(CDN)
    };
    cmd.env_clear()
        .env("HOME", &writable)
        .env("TMPDIR", &writable)
        .current_dir(&writable)
        .args(["--log", "info", "--log-json", "edge", "--config"])
        .arg(&config)
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("start the edge");
    let pid = child.id().expect("pid");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let listen = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.expect("log") {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if v["fields"]["message"] == "edge serving" {
                return v["fields"]["listen"].as_str().expect("listen").to_string();
            }
        }
        panic!("the edge exited before serving");
    })
    .await
    .expect("the edge serves in time");
    let log = tokio::spawn(async move {
        let mut all = Vec::new();
        while let Ok(Some(l)) = lines.next_line().await {
            all.push(l);
        }
        all
    });
    let url = format!("http://{listen}");

    // Who it runs as: the image's user, no capabilities, no way to gain privileges.
    if uid == IMAGE_UID {
        let uids = proc_status(pid, "Uid");
        assert!(uids.split_whitespace().all(|u| u == "65532"), "Uid: {uids}");
        assert_eq!(proc_status(pid, "CapEff"), "0000000000000000");
        assert_eq!(proc_status(pid, "CapBnd"), "0000000000000000");
        assert_eq!(proc_status(pid, "NoNewPrivs"), "1");
    }
    // What it may write: nothing but its own directory.
    if read_only {
        let root_fs = mount_options(pid, Path::new("/")).expect("root mount");
        assert!(root_fs.split(',').any(|o| o == "ro"), "/ is {root_fs}");
        let own = mount_options(pid, &writable).expect("writable mount");
        assert!(
            own.split(',').any(|o| o == "rw"),
            "{} is {own}",
            writable.display()
        );
    }

    // It serves: a miss, then a hit, the exact bytes.
    let c = client();
    let small = "/synthetic/container-small?size=300000";
    for want in ["edge-0; fwd=miss", "edge-0; hit"] {
        let r = c.get(format!("{url}{small}")).send().await.expect("get");
        assert_eq!(r.status(), 200);
        let status = r.headers()["cache-status"]
            .to_str()
            .expect("ascii")
            .to_string();
        assert!(status.starts_with(want), "{want}: {status}");
        let body = r.bytes().await.expect("body");
        assert_eq!(body, synthetic("container-small", 0..=299_999));
    }
    // The metrics the HorizontalPodAutoscaler (through the Prometheus Adapter) and the
    // dashboard use are there, under these names.
    let m = metrics_text(&url).await;
    for series in [
        "cdn_edge_requests_total{cache=\"hit\"} 1",
        "cdn_edge_requests_total{cache=\"miss\"} 1",
        "cdn_edge_inflight_requests ",
        "cdn_edge_origin_bytes_total ",
        "cdn_edge_bytes_served_total ",
        "cdn_edge_cache_capacity_bytes 67108864",
    ] {
        assert!(
            m.lines().any(|l| l.starts_with(series)),
            "no {series} in\n{m}"
        );
    }

    // A response in flight: a 32 MiB object, read a little, then not at all, so the edge
    // cannot finish sending it (the socket buffers hold far less).
    const BIG: u64 = 32 << 20;
    let big = format!("{url}/synthetic/container-big?size={BIG}");
    let r = c.get(&big).send().await.expect("get big");
    assert_eq!(r.status(), 200);
    let mut stream = r.bytes_stream();
    let mut body = Vec::with_capacity(BIG as usize);
    while body.len() < 1 << 20 {
        body.extend_from_slice(&stream.next().await.expect("more").expect("bytes"));
    }
    let health = c
        .get(format!("{url}/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status(), 200);

    // SIGTERM: new connections are refused at once (the readiness probe fails) while the
    // response in flight goes on.
    // SAFETY: kill with a pid of our own child.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGTERM) }, 0);
    cdn_http::tls::install_crypto_provider();
    let fresh = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    let refused = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match fresh.get(format!("{url}/healthz")).send().await {
                Err(e) if e.is_connect() => return,
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await;
    assert!(
        refused.is_ok(),
        "/healthz still answered 60 s after SIGTERM"
    );
    assert!(
        child.try_wait().expect("wait").is_none(),
        "the edge exited before its response in flight was read"
    );
    // The rest of the response, every byte.
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(60), stream.next())
        .await
        .expect("the response in flight goes on")
    {
        body.extend_from_slice(&chunk.expect("no cut while draining"));
    }
    assert_eq!(body.len() as u64, BIG);
    assert!(
        body == synthetic("container-big", 0..=BIG - 1),
        "the drained response's bytes differ"
    );
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("the edge exits after the drain")
        .expect("wait");
    assert!(status.success(), "exit after SIGTERM: {status:?}");
    let log = log.await.expect("log");
    assert!(
        log.iter().any(|l| l.contains("edge stopped")),
        "no 'edge stopped' in {log:?}"
    );

    // What it wrote: nothing in its own directory, nothing anywhere else a user can write.
    let written: Vec<_> = std::fs::read_dir(&writable)
        .expect("read dir")
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(written.is_empty(), "the edge wrote {written:?}");
    let after = owned_by(uid, &shared);
    let new: Vec<_> = after.iter().filter(|p| !before.contains(p)).collect();
    // Other tests running beside this one (as the same user when not root) may create files:
    // only when the edge has its own uid is every new file its.
    if uid == IMAGE_UID {
        assert!(new.is_empty(), "files of uid {IMAGE_UID} appeared: {new:?}");
    }
    let _ = std::fs::set_permissions(&etc, std::fs::Permissions::from_mode(0o755));
    let _ = std::fs::remove_dir_all(&base);
}

#[test]
fn check_config_validates_dns_membership_and_the_admin_listener() {
    let dir = tempdir("check-dns");
    let edge = dir.join("edge.toml");
    let base = "name = \"edge-0.edge-peers.cdn-europe.svc.cluster.local\"\nregion = \"europe\"\n\
                origin = \"http://127.0.0.1:1\"\ncapacity = \"64MiB\"\n\
                peer_listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\n\
                [peer_tls]\nca = \"/nonexistent/ca.pem\"\ncert = \"/nonexistent/c.pem\"\nkey = \"/nonexistent/k.pem\"\n\n";
    let good = "[[peers_dns]]\nsrv = \"_peer._udp.edge-peers.cdn-europe.svc.cluster.local\"\nregion = \"europe\"\n\n\
                [[peers_dns]]\nname = \"edge-peers.cdn-asia.svc.cluster.local\"\nport = 4433\nregion = \"asia\"\n\n\
                [dns]\nrefresh_min_ms = 500\ngrace_ms = 20000\n";
    std::fs::write(&edge, format!("{base}{good}")).expect("write");
    let (code, out, err) = check("edge", &edge, &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("2 peer names in DNS") && out.contains("admin listener 127.0.0.1:0"),
        "{out}"
    );
    // A name without the port, both kinds at once, a bad refresh bound, DNS peers without
    // a peer endpoint: each refused with its field.
    for (bad, field) in [
        (
            "[[peers_dns]]\nname = \"edge-peers\"\nregion = \"europe\"\n",
            "peers_dns[0].port",
        ),
        (
            "[[peers_dns]]\nname = \"a\"\nsrv = \"b\"\nregion = \"europe\"\n",
            "peers_dns[0].srv",
        ),
        (
            "[[peers_dns]]\nsrv = \"b\"\nregion = \"\"\n",
            "peers_dns[0].region",
        ),
        ("[dns]\nrefresh_min_ms = 0\n", "dns.refresh_min_ms"),
    ] {
        std::fs::write(&edge, format!("{base}{bad}")).expect("write");
        assert_bad("edge", &edge, &[field]);
    }
    std::fs::write(
        &edge,
        "origin = \"http://127.0.0.1:1\"\n[[peers_dns]]\nsrv = \"b\"\nregion = \"europe\"\n",
    )
    .expect("write");
    assert_bad("edge", &edge, &["peers_dns", "peer_listen"]);

    let router = dir.join("router.toml");
    let base =
        "origin_url = \"http://origin.example\"\n[geo_miss]\nlatitude = 0.0\nlongitude = 0.0\n\n";
    let good = "[[edges_dns]]\nsrv = \"_http._tcp.edge-peers.cdn-europe.svc.cluster.local\"\n\
                region = \"europe\"\nlatitude = 50.1\nlongitude = 8.7\n\
                url = \"http://{label}.europe.example.net\"\nhealth_url = \"http://{addr}/healthz\"\n";
    std::fs::write(&router, format!("{base}{good}")).expect("write");
    assert_ok(
        "router",
        &router,
        &[],
        "router, 0 edges and 1 DNS names in 1 regions (europe)",
    );
    for (from, to, field) in [
        ("{label}", "{pod}", "edges_dns[0].url"),
        (
            "http://{addr}/healthz",
            "{addr}/healthz",
            "edges_dns[0].health_url",
        ),
        (
            "latitude = 50.1",
            "latitude = 95.0",
            "edges_dns[0].latitude",
        ),
        ("srv = ", "name = ", "edges_dns[0].port"),
    ] {
        std::fs::write(&router, format!("{base}{}", good.replace(from, to))).expect("write");
        assert_bad("router", &router, &[field]);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--admin-listen`: purging is served there only (the viewers' listener answers 403, which
/// is what lets a NetworkPolicy on the admin port decide who may purge); the admin listener
/// serves nothing but health, metrics and purging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_is_served_on_the_admin_listener_only() {
    let dir = tempdir("admin");
    let origin = start_origin(&media_root(), &Default::default()).await;
    let config = dir.join("edge.toml");
    std::fs::write(
        &config,
        format!(
            "name = \"edge-admin\"\norigin = \"{}\"\ncapacity = \"64MiB\"\npurge_token = \"s3cret\"\n",
            origin.url()
        ),
    )
    .expect("write");
    let args = cdn_edge::EdgeArgs {
        config: Some(config),
        admin_listen: Some("127.0.0.1:0".parse().expect("addr")),
        ..cdn_edge::EdgeArgs::listening_at("127.0.0.1:0".parse().expect("addr"))
    };
    let node = cdn_edge::start(&args).await.expect("edge starts");
    let public = format!("http://{}", node.addr);
    let admin = format!("http://{}", node.admin_addr.expect("the admin listener"));
    let edge = node.edge.clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(node.serve(async move {
        let _ = stopped.await;
    }));

    let c = client();
    let path = "/synthetic/admin-purge?size=5000";
    let want = synthetic("admin-purge", 0..=4999);
    let get = async |c: &reqwest::Client| {
        let r = c.get(format!("{public}{path}")).send().await.expect("get");
        assert_eq!(r.status(), 200);
        r.bytes().await.expect("body")
    };
    assert_eq!(get(&c).await, want);
    let cached = origin_requests(&origin.url()).await;
    assert_eq!(get(&c).await, want);
    assert_eq!(origin_requests(&origin.url()).await, cached, "a hit");

    // The viewers' listener refuses both purge forms, even with the token.
    let purge = reqwest::Method::from_bytes(b"PURGE").expect("method");
    let r = c
        .request(purge.clone(), format!("{public}{path}"))
        .bearer_auth("s3cret")
        .send()
        .await
        .expect("purge");
    assert_eq!(r.status(), 403);
    assert!(r.text().await.expect("body").contains("admin listener"));
    let body = format!("{{\"path\": \"{path}\"}}");
    let r = c
        .post(format!("{public}/_admin/purge"))
        .bearer_auth("s3cret")
        .body(body.clone())
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 403);
    assert_eq!(get(&c).await, want);
    assert_eq!(
        origin_requests(&origin.url()).await,
        cached,
        "nothing was purged"
    );
    assert_eq!(
        cdn_http::metrics::sum(
            &edge.metrics.render(),
            cdn_edge::metric_names::ADMIN_REFUSED_TOTAL
        ),
        2.0
    );

    // The admin listener: the token still required, then both forms purge.
    let r = c
        .request(purge.clone(), format!("{admin}{path}"))
        .send()
        .await
        .expect("purge");
    assert_eq!(r.status(), 401);
    let r = c
        .request(purge.clone(), format!("{admin}{path}"))
        .bearer_auth("s3cret")
        .send()
        .await
        .expect("purge");
    assert_eq!(r.status(), 200);
    assert_eq!(get(&c).await, want);
    let refilled = origin_requests(&origin.url()).await;
    assert!(refilled > cached, "the purge dropped the object");
    let r = c
        .post(format!("{admin}/_admin/purge"))
        .bearer_auth("s3cret")
        .body(body)
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 200);
    assert_eq!(get(&c).await, want);
    assert!(origin_requests(&origin.url()).await > refilled);

    // Health and metrics on both; no viewer traffic on the admin port.
    for base in [&public, &admin] {
        for p in ["/healthz", "/metrics"] {
            let r = c.get(format!("{base}{p}")).send().await.expect("get");
            assert_eq!(r.status(), 200, "{base}{p}");
        }
    }
    let r = c.get(format!("{admin}{path}")).send().await.expect("get");
    assert_eq!(r.status(), 404);

    let _ = stop.send(());
    task.await.expect("join").expect("edge stops");
    let _ = std::fs::remove_dir_all(&dir);
}
