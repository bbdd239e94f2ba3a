//! What the benchmarks know of the machine they run on: the packages a benchmark needs
//! (`which`, `apt-get install`), program versions, the machine's CPUs, memory and load for
//! the reports, and CPU time used by a process tree or by this process.

use std::path::Path;

use anyhow::Context;

use crate::servers::Server;

fn which(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|d| d.join(program).is_file())
            || ["/usr/sbin", "/sbin"]
                .iter()
                .any(|d| Path::new(d).join(program).is_file())
    })
}

/// The Debian packages `servers` (and wrk, with `wrk`) need that are not installed.
pub(crate) fn missing_packages(servers: &[Server], wrk: bool) -> Vec<&'static str> {
    let mut want = Vec::new();
    if servers.contains(&Server::Nginx) && !which("nginx") {
        want.push("nginx");
    }
    if servers.contains(&Server::Varnish) && !which("varnishd") {
        want.push("varnish");
    }
    if wrk && !which("wrk") {
        want.push("wrk");
    }
    want
}

/// `apt-get install -y --no-install-recommends PACKAGES`.
pub(crate) fn apt_install(want: &[&str]) -> anyhow::Result<()> {
    eprintln!("installing {} with apt-get ...", want.join(" "));
    let status = std::process::Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends"])
        .args(want)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get")?;
    anyhow::ensure!(
        status.success(),
        "apt-get install {} failed",
        want.join(" ")
    );
    Ok(())
}

pub(crate) fn version(program: &str, arg: &str) -> String {
    std::process::Command::new(program)
        .arg(arg)
        .output()
        .map(|o| {
            let s = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            s.lines().next().unwrap_or("").trim().to_owned()
        })
        .unwrap_or_else(|_| "not installed".into())
}

/// `nproc`, the CPU model and the load average, for the report.
pub(crate) fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_default();
    let n = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().next().and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|k| k.parse::<u64>().ok())
            })
        })
        .map_or(String::new(), |kb| format!(", {} GiB", kb / 1024 / 1024));
    format!("{n} CPUs ({cpu}){mem}, load average {}", load_average())
}

/// The head every benchmark report starts with: its title, the command line that made it,
/// the machine and the load average before the run and now.
pub(crate) fn report_head(title: &str, load_before: &str) -> String {
    let cmd: Vec<String> = std::env::args().collect();
    format!(
        "# {title}\n\nCommand: `{}`\n\nMachine: {}; load average before / after: {load_before} / {}\n\n",
        cmd.join(" "),
        machine(),
        load_average()
    )
}

pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// CPU seconds (user + system) used so far by process `root` and its live descendants
/// (nginx's workers, Varnish's cache process), from /proc.
pub(crate) fn tree_cpu(root: u32) -> f64 {
    // SAFETY: sysconf(3) has no preconditions.
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let mut procs = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // pid (comm) state ppid ... utime(14) stime(15): fields after the last ')'.
            let Some((_, rest)) = stat.rsplit_once(')') else {
                continue;
            };
            let f: Vec<&str> = rest.split_whitespace().collect();
            let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            procs.push((pid, num(1) as u32, num(11) + num(12)));
        }
    }
    let mut tree = vec![root];
    let mut total = 0u64;
    let mut i = 0;
    while i < tree.len() {
        let p = tree[i];
        for (pid, ppid, ticks) in &procs {
            if *pid == p {
                total += ticks;
            }
            if *ppid == p && !tree.contains(pid) {
                tree.push(*pid);
            }
        }
        i += 1;
    }
    total as f64 / tick
}

/// CPU seconds used so far by this process (the load generator) alone.
pub(crate) fn self_cpu() -> f64 {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage(2) writes a `rusage` into the pointer it is given, which is valid.
    let ru = unsafe {
        if libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr()) != 0 {
            return 0.0;
        }
        ru.assume_init()
    };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}
