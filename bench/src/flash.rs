//! The flash-crowd scenario of `cdn bench load` (issue #14): every region's viewers start the
//! same new video at the same moment (`--flash-crowd`: one barrier for every viewer of the
//! mode, and every session plays the catalogue's first video). What it reports beside the
//! load tables: origin egress over the unique bytes the viewers asked for (1.0 is the ideal:
//! the origin sent each byte once), and the time to first byte of each session's *first*
//! chunk per region (the wait a viewer sees when the video starts). `--kill-shield-after-ms`
//! adds the failover run: that long after the start, the first edge of the shield region (the
//! origin's) is killed with SIGKILL, and the report shows what it cost (origin egress,
//! failed requests).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::load::{LoadReport, Mode};

/// What one viewer saw of a flash crowd: the chunks it asked for (video id, index) and the
/// TTFB of the first chunk of each of its sessions.
pub struct FirstChunks {
    pub chunks: BTreeSet<(String, u64)>,
    pub first_ttfb: Histogram<u64>,
}

impl Default for FirstChunks {
    fn default() -> Self {
        FirstChunks {
            chunks: BTreeSet::new(),
            first_ttfb: super::loadgen::histogram(),
        }
    }
}

impl FirstChunks {
    /// Records chunk `index` of `video`; `ttfb` when it is a session's first chunk.
    pub fn record(&mut self, video: &str, index: u64, first_ttfb: Option<Duration>) {
        self.chunks.insert((video.to_string(), index));
        if let Some(t) = first_ttfb {
            super::loadgen::record(&mut self.first_ttfb, t);
        }
    }
}

/// Bytes of the distinct chunks the viewers asked for: what an ideal CDN fetches once.
pub fn unique_bytes<'a>(
    sizes: &BTreeMap<String, u64>,
    chunk: u64,
    seen: impl Iterator<Item = &'a FirstChunks>,
) -> u64 {
    let mut all: BTreeSet<&(String, u64)> = BTreeSet::new();
    for s in seen {
        all.extend(s.chunks.iter());
    }
    all.into_iter()
        .filter_map(|(id, i)| {
            let size = *sizes.get(id)?;
            let start = i.checked_mul(chunk)?;
            (start < size).then(|| (size - start).min(chunk))
        })
        .sum()
}

/// The p50 and p99 of the first chunks' TTFB of `parts`, ms.
pub fn first_ttfb_ms<'a>(parts: impl Iterator<Item = &'a FirstChunks>) -> (f64, f64) {
    let mut h = super::loadgen::histogram();
    for p in parts {
        let _ = h.add(&p.first_ttfb);
    }
    (super::loadgen::ms(&h, 0.5), super::loadgen::ms(&h, 0.99))
}

/// SIGKILLs the first edge of the shield region (the origin's) of the lab whose run directory
/// is `dir`; returns its name.
pub fn kill_shield(dir: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(dir.join("state.json"))?;
    let state: serde_json::Value = serde_json::from_str(&text)?;
    let region = state["origin_region"].as_str().unwrap_or_default();
    let edge = state["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["kind"] == "edge" && n["region"] == region && n["pid"].is_u64())
        .ok_or_else(|| anyhow::anyhow!("no running edge in the shield region {region}"))?;
    let pid = edge["pid"].as_u64().unwrap_or_default();
    let pid = libc::pid_t::try_from(pid)?;
    // SAFETY: kill(2) has no memory-safety preconditions; the pid is a node of our lab.
    if unsafe { libc::kill(pid, libc::SIGKILL) } != 0 {
        anyhow::bail!("kill {pid}: {}", std::io::Error::last_os_error());
    }
    Ok(edge["name"].as_str().unwrap_or_default().to_string())
}

/// The flash-crowd table: per mode, origin egress over unique bytes, and the first chunk's
/// TTFB per region.
pub fn markdown(r: &LoadReport) -> String {
    let mut s = String::new();
    s.push_str("| mode | origin egress MB | unique MB | egress / unique | origin requests | failed requests | first-chunk TTFB p50 / p99 ms, per region |\n");
    s.push_str("|---|---|---|---|---|---|---|\n");
    for m in &r.modes {
        let regions: Vec<String> = m
            .regions
            .iter()
            .map(|g| {
                format!(
                    "{} {:.0} / {:.0}",
                    g.region, g.first_ttfb_p50_ms, g.first_ttfb_p99_ms
                )
            })
            .collect();
        let failed = m.total.errors + m.total.bad_status + m.total.corrupt;
        let killed = match &m.killed {
            Some(k) => format!(" (killed {k})"),
            None => String::new(),
        };
        let _ = writeln!(
            s,
            "| {}{killed} | {:.1} | {:.1} | {:.2}x | {:.0} | {failed} | {} |",
            m.mode.name(),
            m.origin_bytes / 1e6,
            m.unique_bytes as f64 / 1e6,
            m.origin_bytes / (m.unique_bytes.max(1) as f64),
            m.origin_requests,
            regions.join("; "),
        );
    }
    s
}

/// Whether `mode` runs the CDN with peering (cdn-peers and cdn-tiered).
pub fn peering(mode: Mode) -> bool {
    matches!(mode, Mode::CdnPeers | Mode::CdnTiered)
}
