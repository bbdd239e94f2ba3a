//! `cdn bench capacity`'s outputs: `edge-capacity.json` (what `cdn plan --from-lab` and the
//! lab's autoscaler read), its parts, and the table of steps.

use super::*;

/// What the capacity file holds: the three fields `cdn plan` reads, then the evidence.
#[derive(Debug, Serialize)]
pub(super) struct CapacityFile {
    pub(super) requests_per_sec: f64,
    pub(super) p99_ms_target: f64,
    /// RFC 3339, UTC.
    pub(super) measured: String,
    /// The step the capacity comes from.
    pub(super) concurrency: usize,
    pub(super) p99_ms: f64,
    pub(super) mix: MixInfo,
    pub(super) step_secs: f64,
    pub(super) max_concurrency: usize,
    pub(super) steps: Vec<Step>,
    /// Why stepping stopped.
    pub(super) stopped: String,
    pub(super) warm_up: WarmUp,
    pub(super) edge: EdgeInfo,
    pub(super) machine: Machine,
    pub(super) command: String,
}

#[derive(Debug, Serialize)]
pub(super) struct MixInfo {
    pub(super) name: &'static str,
    pub(super) description: String,
    pub(super) objects_1m: usize,
    pub(super) chunks_per_object: u64,
    pub(super) objects_16k: usize,
    pub(super) small_pct: f64,
    pub(super) verify_every: u64,
    pub(super) seed: u64,
}

#[derive(Debug, Serialize)]
pub(super) struct WarmUp {
    pub(super) objects: usize,
    pub(super) origin_requests: f64,
    /// One origin fetch per 1 MiB chunk.
    pub(super) expected_origin_requests: u64,
    pub(super) seconds: f64,
}

#[derive(Debug, Serialize)]
pub(super) struct EdgeInfo {
    pub(super) url: String,
    pub(super) origin_url: String,
    /// Started by this benchmark (else a running edge given with --edge).
    pub(super) started: bool,
    /// Runtime worker threads of a started edge.
    pub(super) threads: Option<usize>,
}

#[derive(Debug, Serialize)]
pub(super) struct Machine {
    pub(super) cores: usize,
    pub(super) description: String,
    pub(super) load_average_before: String,
    pub(super) load_average_after: String,
}

pub(super) const TABLE_HEAD: &str = "| concurrency | requests | req/s | MB/s | p50 ms | p99 ms | \
    errors / bad / corrupt (verified) | origin req | edge CPU µs/req | generator CPU µs/req | \
    within target |\n|---|---|---|---|---|---|---|---|---|---|---|";

pub(super) fn table_row(s: &Step) -> String {
    format!(
        "| {} | {} | {:.0} | {:.1} | {:.2} | {:.2} | {} / {} / {} ({}) | {:.0} | {} | {:.0} | {} |",
        s.concurrency,
        s.requests,
        s.requests_per_sec,
        s.mb_per_sec,
        s.p50_ms,
        s.p99_ms,
        s.errors,
        s.bad_status,
        s.corrupt,
        s.verified,
        s.origin_requests,
        s.edge_cpu_us_per_req
            .map_or("–".into(), |c| format!("{c:.0}")),
        s.generator_cpu_us_per_req,
        if s.within_target { "yes" } else { "no" }
    )
}

/// This process's command line, quoted for a POSIX shell where needed.
pub(super) fn command_line() -> String {
    shell_words(std::env::args())
}

pub(super) fn shell_words(args: impl Iterator<Item = String>) -> String {
    args.map(|a| {
        if !a.is_empty()
            && a.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@%+".contains(c))
        {
            a
        } else {
            format!("'{}'", a.replace('\'', r"'\''"))
        }
    })
    .collect::<Vec<_>>()
    .join(" ")
}

/// Now, RFC 3339 in UTC, whole seconds.
pub(super) fn now_rfc3339() -> anyhow::Result<String> {
    let now = time::OffsetDateTime::now_utc();
    let now = now.replace_nanosecond(0).unwrap_or(now);
    now.format(&time::format_description::well_known::Rfc3339)
        .context("formatting the time")
}

/// Writes `text` to `path` through a temporary file in the same directory (never a partly
/// written capacity file), creating the parent directories.
pub(super) fn write_file(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let name = path
        .file_name()
        .with_context(|| format!("{}: not a file name", path.display()))?;
    let mut tmp_name = name.to_owned();
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("writing {}", path.display()));
    }
    Ok(())
}
