//! Request traces for the hit-ratio benchmark: the in-memory request list, readers for
//! libCacheSim's oracleGeneral binary format and for CSV (both optionally zstd-compressed),
//! the next-access pre-pass the Belady policies need, the group (the object a chunk belongs
//! to, and its place in it) of each request, and trace statistics.

use std::fs::File;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::{BufRead, BufReader, ErrorKind, Read};
use std::path::Path;

use anyhow::{Context, bail};

use super::queue::IdMap;

/// `Request::next` of an object that is never requested again.
pub const NEVER: u64 = u64::MAX;

/// One request of a trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub id: u64,
    /// Object size in bytes.
    pub size: u64,
    /// Index (0-based virtual time) of the next request for the same object, or [`NEVER`].
    pub next: u64,
    /// The group the requested item belongs to: for a chunk, its object (video); `id`
    /// itself when the trace does not say (every item its own group).
    pub group: u64,
    /// The item's place in its group (a chunk's index; 0 when the trace does not say).
    pub index: u32,
}

impl Request {
    /// A request of an item that is its own group.
    pub fn new(id: u64, size: u64) -> Self {
        Request {
            id,
            size,
            next: NEVER,
            group: id,
            index: 0,
        }
    }

    pub fn next_access(&self) -> Option<u64> {
        (self.next != NEVER).then_some(self.next)
    }
}

/// A whole trace, held in memory (40 bytes per request).
#[derive(Debug, Clone)]
pub struct Trace {
    /// Short name (file name, or synthetic workload summary) for titles and CSV rows.
    pub name: String,
    /// The full generator parameters of a synthetic workload (empty for files).
    pub spec: String,
    pub requests: Vec<Request>,
    /// Where the next-access times came from (for the run summary).
    pub next_access_source: String,
    /// Where the groups came from (for the run summary): "none" when every item is its
    /// own group.
    pub group_source: String,
}

/// Aggregate numbers of a trace.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TraceStats {
    pub requests: u64,
    pub objects: u64,
    /// Sum of each distinct object's size (at its first request).
    pub working_set_bytes: u64,
    pub requested_bytes: u64,
    /// Objects requested exactly once.
    pub one_hit_objects: u64,
    pub min_size: u64,
    pub max_size: u64,
}

impl Trace {
    /// A trace from requests whose `next` is unknown: computes it.
    pub fn from_requests(name: impl Into<String>, mut requests: Vec<Request>) -> Self {
        fill_next_access(&mut requests, None);
        Self {
            name: name.into(),
            spec: String::new(),
            requests,
            next_access_source: "computed".into(),
            group_source: "none".into(),
        }
    }

    /// Sets each request's group to `id / div` and its index to `id % div` (how chunked
    /// CDN logs are often flattened into ids: chunk `i` of object `o` is `o × div + i`).
    pub fn group_by_division(&mut self, div: u64) -> anyhow::Result<()> {
        anyhow::ensure!(div >= 1, "--group-div must be at least 1");
        for r in &mut self.requests {
            r.group = r.id / div;
            r.index = u32::try_from(r.id % div).unwrap_or(u32::MAX);
        }
        self.group_source = format!("object = id / {div}, chunk index = id % {div}");
        Ok(())
    }

    /// Distinct groups requested (equal to the objects when the trace has no groups).
    pub fn groups(&self) -> u64 {
        let mut seen: IdMap<()> = IdMap::default();
        for r in &self.requests {
            seen.insert(r.group, ());
        }
        seen.len() as u64
    }

    pub fn stats(&self) -> TraceStats {
        let mut counts: IdMap<u32> = IdMap::default();
        let mut working_set_bytes = 0;
        let mut requested_bytes = 0;
        let (mut min_size, mut max_size) = (u64::MAX, 0);
        for r in &self.requests {
            let c = counts.entry(r.id).or_insert(0);
            if *c == 0 {
                working_set_bytes += r.size;
            }
            *c = c.saturating_add(1);
            requested_bytes += r.size;
            min_size = min_size.min(r.size);
            max_size = max_size.max(r.size);
        }
        TraceStats {
            requests: self.requests.len() as u64,
            objects: counts.len() as u64,
            working_set_bytes,
            requested_bytes,
            one_hit_objects: counts.values().filter(|&&c| c == 1).count() as u64,
            min_size: if self.requests.is_empty() {
                0
            } else {
                min_size
            },
            max_size,
        }
    }
}

/// On-disk trace formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TraceFormat {
    /// From the file name (`.csv`, `.oracleGeneral`, `.bin`, optionally `.zst`), else sniffed.
    Auto,
    /// `time, object, size[, next_access_vtime]`; `#` lines are comments.
    Csv,
    /// libCacheSim oracleGeneral: packed little-endian u32 time, u64 id, u32 size,
    /// i64 next_access_vtime (24 bytes per request).
    OracleGeneral,
}

const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
const ORACLE_RECORD: usize = 24;

/// Reads a trace file (plain or zstd-compressed) into memory and fills in next-access times.
pub fn read_trace(path: &Path, format: TraceFormat) -> anyhow::Result<Trace> {
    let shown = path.display();
    let mut reader = open_maybe_zstd(path)?;
    let format = match format {
        TraceFormat::Auto => detect_format(path, &mut reader)
            .with_context(|| format!("detecting the format of {shown}"))?,
        f => f,
    };
    let (mut requests, trace_next, group_source) = match format {
        TraceFormat::Csv => {
            read_csv(reader).with_context(|| format!("reading CSV trace {shown}"))?
        }
        _ => read_oracle(reader).with_context(|| format!("reading oracleGeneral trace {shown}"))?,
    };
    if requests.is_empty() {
        bail!("trace {shown} has no requests");
    }
    let next_access_source = fill_next_access(&mut requests, trace_next.as_deref());
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| shown.to_string());
    Ok(Trace {
        name,
        spec: String::new(),
        requests,
        next_access_source,
        group_source,
    })
}

fn open_maybe_zstd(path: &Path) -> anyhow::Result<Box<dyn BufRead>> {
    let shown = path.display();
    let file = File::open(path).with_context(|| format!("opening trace {shown}"))?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let head = reader
        .fill_buf()
        .with_context(|| format!("reading trace {shown}"))?;
    if head.starts_with(&ZSTD_MAGIC) {
        let decoder = zstd::stream::read::Decoder::with_buffer(reader)
            .with_context(|| format!("starting zstd decompression of {shown}"))?;
        Ok(Box::new(BufReader::with_capacity(1 << 20, decoder)))
    } else {
        Ok(Box::new(reader))
    }
}

fn detect_format(path: &Path, reader: &mut Box<dyn BufRead>) -> anyhow::Result<TraceFormat> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let name = name.strip_suffix(".zst").unwrap_or(&name);
    if name.ends_with(".csv") || name.ends_with(".txt") {
        return Ok(TraceFormat::Csv);
    }
    if name.contains("oraclegeneral") || name.ends_with(".bin") {
        return Ok(TraceFormat::OracleGeneral);
    }
    // Sniff: CSV starts with text; oracleGeneral records hold binary ids.
    let head = reader.fill_buf()?;
    let sample = &head[..head.len().min(256)];
    let texty = sample
        .iter()
        .all(|&b| b.is_ascii_graphic() || b == b' ' || b == b'\n' || b == b'\r' || b == b'\t');
    Ok(if texty {
        TraceFormat::Csv
    } else {
        TraceFormat::OracleGeneral
    })
}

/// Requests, the trace's own next-access column if any, where the groups came from.
type RawTrace = (Vec<Request>, Option<Vec<i64>>, String);

fn read_oracle(mut reader: Box<dyn BufRead>) -> anyhow::Result<RawTrace> {
    let mut requests = Vec::new();
    let mut next = Vec::new();
    let mut rec = [0u8; ORACLE_RECORD];
    loop {
        let mut filled = 0;
        while filled < ORACLE_RECORD {
            match reader.read(&mut rec[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        if filled == 0 {
            break;
        }
        if filled < ORACLE_RECORD {
            bail!(
                "truncated record {} ({filled} of {ORACLE_RECORD} bytes)",
                requests.len()
            );
        }
        let id = u64::from_le_bytes(rec[4..12].try_into().expect("8 bytes"));
        let size = u32::from_le_bytes(rec[12..16].try_into().expect("4 bytes"));
        let nx = i64::from_le_bytes(rec[16..24].try_into().expect("8 bytes"));
        requests.push(Request::new(id, u64::from(size)));
        next.push(nx);
    }
    Ok((requests, Some(next), "none".into()))
}

/// CSV rows: `time, id, size[, next_access[, group[, index]]]`. The next-access field may be
/// empty (`1, 7, 100, , 3`) in a trace that gives groups but no next access. Without an
/// index column, a chunk's index is its order of first appearance in its group (the order a
/// sequential reader asks for them).
fn read_csv(mut reader: Box<dyn BufRead>) -> anyhow::Result<RawTrace> {
    let mut requests = Vec::new();
    let mut next: Vec<i64> = Vec::new();
    let mut has_next: Option<bool> = None;
    // Whether rows carry (group, index): set by the first row, then the same for all.
    let mut shape: Option<(bool, bool)> = None;
    let mut line = String::new();
    let mut lineno = 0u64;
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            break;
        }
        lineno += 1;
        let text = line.trim();
        if text.is_empty() || text.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = text.split(',').map(str::trim).collect();
        // A header line without `#` (e.g. `time,object,size`) is skipped.
        if requests.is_empty() && fields.get(2).is_some_and(|f| f.parse::<f64>().is_err()) {
            continue;
        }
        if fields.len() < 3 || fields.len() > 6 {
            bail!(
                "line {lineno}: expected `time, id, size[, next[, group[, index]]]`, got {text:?}"
            );
        }
        let id = parse_object(fields[1]);
        let size: u64 = fields[2]
            .parse()
            .with_context(|| format!("line {lineno}: bad size {:?}", fields[2]))?;
        let row_has_next = fields.len() >= 4 && !fields[3].is_empty();
        match has_next {
            None => has_next = Some(row_has_next),
            Some(h) if h != row_has_next => {
                bail!("line {lineno}: some rows have a next-access column and some do not")
            }
            _ => {}
        }
        if row_has_next {
            let nx: i64 = fields[3]
                .parse()
                .with_context(|| format!("line {lineno}: bad next access {:?}", fields[3]))?;
            next.push(nx);
        }
        let row_shape = (fields.len() >= 5, fields.len() >= 6);
        match shape {
            None => shape = Some(row_shape),
            Some(s) if s != row_shape => {
                bail!("line {lineno}: rows differ in their group and index columns")
            }
            _ => {}
        }
        let mut r = Request::new(id, size);
        if row_shape.0 {
            r.group = parse_object(fields[4]);
        }
        if row_shape.1 {
            r.index = fields[5]
                .parse()
                .with_context(|| format!("line {lineno}: bad chunk index {:?}", fields[5]))?;
        }
        requests.push(r);
    }
    let group_source = match shape {
        Some((true, true)) => "trace columns (group, index)".to_string(),
        Some((true, false)) => {
            // Index = order of first appearance of the id within its group.
            let mut seen: IdMap<u32> = IdMap::default();
            let mut per_group: IdMap<u32> = IdMap::default();
            for r in &mut requests {
                r.index = *seen.entry(r.id).or_insert_with(|| {
                    let n = per_group.entry(r.group).or_insert(0);
                    let i = *n;
                    *n = n.saturating_add(1);
                    i
                });
            }
            "trace column (group); index = order of first request within the group".into()
        }
        _ => "none".into(),
    };
    Ok((
        requests,
        has_next.unwrap_or(false).then_some(next),
        group_source,
    ))
}

/// Writes a trace as CSV (`time, id, size, next, group, index`; time = request index,
/// next = libCacheSim's 1-based virtual time of the next request or -1), zstd-compressed
/// when the name ends in `.zst`. Reading it back gives the same requests.
pub fn write_csv(trace: &Trace, path: &Path) -> anyhow::Result<()> {
    use std::io::Write;
    let shown = path.display();
    let mut text = String::with_capacity(trace.requests.len() * 32);
    text.push_str("# time, id, size, next_access_vtime, group, index\n");
    for (t, r) in trace.requests.iter().enumerate() {
        let next = r.next_access().map_or(-1, |n| n as i64 + 1);
        let _ = std::fmt::Write::write_fmt(
            &mut text,
            format_args!("{t},{},{},{next},{},{}\n", r.id, r.size, r.group, r.index),
        );
    }
    let bytes = if path.extension().is_some_and(|e| e == "zst") {
        zstd::encode_all(text.as_bytes(), 19).with_context(|| format!("compressing {shown}"))?
    } else {
        text.into_bytes()
    };
    let mut f = File::create(path).with_context(|| format!("creating {shown}"))?;
    f.write_all(&bytes)
        .with_context(|| format!("writing {shown}"))
}

/// Numeric object ids are used as they are; others are hashed (deterministically).
fn parse_object(field: &str) -> u64 {
    field.parse().unwrap_or_else(|_| {
        let mut h = DefaultHasher::new();
        field.hash(&mut h);
        h.finish()
    })
}

/// Fills `Request::next` with the 0-based index of each object's next request, computed in a
/// backward pass. When the trace carries its own next-access column (libCacheSim writes the
/// 1-based virtual time, `-1` for none) and it agrees with the computed one, its values are
/// also used for objects whose next request lies beyond the end of the trace, so that dead
/// objects are ordered as libCacheSim orders them. Returns a description of the source.
fn fill_next_access(requests: &mut [Request], from_trace: Option<&[i64]>) -> String {
    let n = requests.len();
    let mut last_seen: IdMap<u64> = IdMap::default();
    for i in (0..n).rev() {
        let id = requests[i].id;
        requests[i].next = last_seen.insert(id, i as u64).unwrap_or(NEVER);
    }
    let Some(tn) = from_trace else {
        return "computed (trace has none)".into();
    };
    // Find the trace's offset (0 or 1) and check that it agrees everywhere.
    let offset = requests
        .iter()
        .zip(tn)
        .find(|(r, _)| r.next != NEVER)
        .map(|(r, &t)| t - r.next as i64);
    let Some(offset @ (0 | 1)) = offset else {
        return "computed (the trace's column does not match; ignored)".into();
    };
    let agrees = requests.iter().zip(tn).all(|(r, &t)| {
        if r.next != NEVER {
            t - offset == r.next as i64
        } else {
            t < 0 || t - offset >= n as i64
        }
    });
    if !agrees {
        return "computed (the trace's column does not match; ignored)".into();
    }
    let mut beyond = 0u64;
    for (r, &t) in requests.iter_mut().zip(tn) {
        if r.next == NEVER && t >= 0 {
            r.next = (t - offset) as u64;
            beyond += 1;
        }
    }
    format!(
        "trace column (matches a recomputation; {beyond} requests' next access lies beyond the trace)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn tmp(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("cdn-bench-trace-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir.join(name)
    }

    #[test]
    fn csv_and_zstd_csv_with_libcachesim_next_access() {
        // ids: 7 5 7 9 5 ; libCacheSim's next access is 1-based, -1 or beyond-end for none.
        let csv = "# time, object, size, next_access_vtime\n\
                   0, 7, 10, 3\n0, 5, 20, 5\n1, 7, 10, -1\n2, 9, 30, 100\n3, 5, 20, -1\n";
        let plain = tmp("t.csv");
        std::fs::write(&plain, csv).expect("write");
        let zst = tmp("t.csv.zst");
        std::fs::write(&zst, zstd::encode_all(csv.as_bytes(), 3).expect("zstd")).expect("write");
        for path in [&plain, &zst] {
            let t = read_trace(path, TraceFormat::Auto).expect("read");
            let next: Vec<u64> = t.requests.iter().map(|r| r.next).collect();
            assert_eq!(next, vec![2, 4, NEVER, 99, NEVER], "{}", path.display());
            assert!(t.next_access_source.starts_with("trace column"));
            let s = t.stats();
            assert_eq!((s.requests, s.objects, s.working_set_bytes), (5, 3, 60));
            assert_eq!(s.one_hit_objects, 1);
        }
    }

    #[test]
    fn csv_without_next_access_is_computed() {
        let path = tmp("nonext.csv");
        std::fs::write(&path, "time,object,size\n1,a,5\n2,b,6\n3,a,5\n").expect("write");
        let t = read_trace(&path, TraceFormat::Csv).expect("read");
        assert_eq!(t.requests[0].id, t.requests[2].id);
        let next: Vec<u64> = t.requests.iter().map(|r| r.next).collect();
        assert_eq!(next, vec![2, NEVER, NEVER]);
    }

    #[test]
    fn csv_group_and_index_columns() {
        // group and index given: taken as they are; the next-access field may be empty.
        let path = tmp("groups.csv");
        std::fs::write(&path, "1,10,5,,7,3\n2,11,5,,7,4\n3,10,5,,7,3\n").expect("write");
        let t = read_trace(&path, TraceFormat::Csv).expect("read");
        let g: Vec<(u64, u64, u32, u64)> = t
            .requests
            .iter()
            .map(|r| (r.id, r.group, r.index, r.next))
            .collect();
        assert_eq!(g, vec![(10, 7, 3, 2), (11, 7, 4, NEVER), (10, 7, 3, NEVER)]);
        assert!(
            t.group_source.contains("group, index"),
            "{}",
            t.group_source
        );
        // group alone: index = order of first request within the group.
        let path = tmp("groups2.csv");
        std::fs::write(
            &path,
            "1,20,5,,a\n2,21,5,,a\n3,30,5,,b\n4,20,5,,a\n5,22,5,,a\n",
        )
        .expect("write");
        let t = read_trace(&path, TraceFormat::Csv).expect("read");
        let idx: Vec<u32> = t.requests.iter().map(|r| r.index).collect();
        assert_eq!(idx, vec![0, 1, 0, 0, 2]);
        assert_eq!(t.requests[0].group, t.requests[1].group);
        assert_ne!(t.requests[0].group, t.requests[2].group);
        // Rows must agree on their shape; a bad index is an error naming the line.
        let path = tmp("groups3.csv");
        std::fs::write(&path, "1,20,5,,a\n2,21,5\n").expect("write");
        let err = format!("{:#}", read_trace(&path, TraceFormat::Csv).unwrap_err());
        assert!(err.contains("line 2"), "{err}");
        std::fs::write(&path, "1,20,5,,a,x\n").expect("write");
        let err = format!("{:#}", read_trace(&path, TraceFormat::Csv).unwrap_err());
        assert!(err.contains("line 1") && err.contains("index"), "{err}");
    }

    #[test]
    fn oracle_general_binary() {
        let path = tmp("t.oracleGeneral.zst");
        let mut raw = Vec::new();
        for (t, id, size, next) in [(0u32, 1u64, 100u32, 2i64), (1, 2, 200, -1), (2, 1, 100, -1)] {
            raw.extend_from_slice(&t.to_le_bytes());
            raw.extend_from_slice(&id.to_le_bytes());
            raw.extend_from_slice(&size.to_le_bytes());
            raw.extend_from_slice(&next.to_le_bytes());
        }
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 1).expect("encoder");
        enc.write_all(&raw).expect("encode");
        std::fs::write(&path, enc.finish().expect("finish")).expect("write");
        let t = read_trace(&path, TraceFormat::Auto).expect("read");
        let next: Vec<(u64, u64, u64)> =
            t.requests.iter().map(|r| (r.id, r.size, r.next)).collect();
        assert_eq!(next, vec![(1, 100, 2), (2, 200, NEVER), (1, 100, NEVER)]);
        assert!(t.requests.iter().all(|r| r.group == r.id && r.index == 0));
        assert_eq!(t.group_source, "none");
        // --group-div: object = id / N, index = id % N.
        let mut g = t.clone();
        g.group_by_division(2).expect("div");
        let groups: Vec<(u64, u32)> = g.requests.iter().map(|r| (r.group, r.index)).collect();
        assert_eq!(groups, vec![(0, 1), (1, 0), (0, 1)]);
        assert!(g.group_by_division(0).is_err());
        // A truncated record is an error that names the file.
        let bad = tmp("bad.oracleGeneral");
        std::fs::write(&bad, &raw[..30]).expect("write");
        let err = format!("{:#}", read_trace(&bad, TraceFormat::Auto).unwrap_err());
        assert!(
            err.contains("bad.oracleGeneral") && err.contains("truncated"),
            "{err}"
        );
    }

    #[test]
    fn missing_file_error_names_it() {
        let err = format!(
            "{:#}",
            read_trace(Path::new("/nonexistent/x.csv"), TraceFormat::Auto).unwrap_err()
        );
        assert!(err.contains("/nonexistent/x.csv"), "{err}");
    }
}
