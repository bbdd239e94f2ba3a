//! Files under the root: safe resolution of URL paths (no traversal, no dotfiles unless
//! configured), validators per file version, the content digest computed once per version in
//! the background, and range streams read straight from disk.
//!
//! A *version* of a file is (canonical path, length, mtime). Its validators must be known
//! before any byte is sent, and must never change while the version lasts, or caches would
//! hold two "versions" of one content. Hashing a multi-gigabyte file takes seconds, so the
//! validators do not depend on the hash:
//!
//! - **ETag**: strong, `"<len hex>-<mtime ns hex>"`, known from one `stat` (what nginx does,
//!   with nanoseconds). It names exactly the version key, so it changes when and only when the
//!   version does. The inode is left out on purpose: replicas of the origin that copy files
//!   with their mtimes (`rsync -t`, `cp -p`) give the same ETag for the same file, and an
//!   edge revalidating against another replica gets a 304. A file rewritten in place with
//!   the same length within the same nanosecond keeps its ETag: the same blind spot every
//!   stat-based validator has.
//! - **Content-Digest** (SHA-256 of the whole file, sent on full 200s only): computed at most
//!   once per version, by one blocking task started by the first full request, which does
//!   not wait for it; every request arriving while it runs shares it (no second hash) and is
//!   answered without the field. Once known, full 200s carry it. A hash is kept only if the
//!   file still has the version's length and mtime after it was read, so a digest never
//!   describes bytes of another version. [`DigestStats`] counts hashes started and finished.
//!
//! Range streams check, on the file they opened, that it is still the version whose
//! validators were sent, and abort otherwise (a client sees a truncated transfer, never
//! another version's bytes under this version's ETag).

use std::io::SeekFrom;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::SystemTime;

use futures::{StreamExt, TryStreamExt};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::watch;
use tokio_util::io::ReaderStream;

use cdn_http::ByteStream;

/// One version of a file: what `stat` says, the validators derived from it, and its digest
/// once computed.
#[derive(Debug)]
pub struct FileVersion {
    pub path: PathBuf,
    pub len: u64,
    pub modified: SystemTime,
    /// Strong ETag from (len, mtime); see the module documentation.
    pub etag: String,
    /// `IDLE`, `RUNNING` or `DONE` (the digest computation).
    state: AtomicU8,
    digest: watch::Sender<Option<[u8; 32]>>,
}

const IDLE: u8 = 0;
const RUNNING: u8 = 1;
const DONE: u8 = 2;

impl FileVersion {
    fn new(path: PathBuf, len: u64, modified: SystemTime) -> Self {
        FileVersion {
            etag: stat_etag(len, modified),
            path,
            len,
            modified,
            state: AtomicU8::new(IDLE),
            digest: watch::Sender::new(None),
        }
    }

    /// The SHA-256 of the whole file, if it has been computed.
    pub fn digest(&self) -> Option<[u8; 32]> {
        *self.digest.borrow()
    }

    /// Waits until the digest is known (tests; a request never waits for it).
    pub async fn wait_digest(&self) -> [u8; 32] {
        let mut rx = self.digest.subscribe();
        loop {
            if let Some(d) = *rx.borrow_and_update() {
                return d;
            }
            if rx.changed().await.is_err() {
                // Unreachable while `self` holds the sender.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Whether `md` (of a file just opened or re-read) is still this version.
    fn same_version(&self, md: &std::fs::Metadata) -> bool {
        md.len() == self.len && md.modified().ok() == Some(self.modified)
    }
}

/// The strong ETag of a version: length and mtime (nanoseconds since the epoch, negative
/// before it), in hex.
pub fn stat_etag(len: u64, modified: SystemTime) -> String {
    let mtime = match modified.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => format!("{:x}", d.as_nanos()),
        Err(e) => format!("-{:x}", e.duration().as_nanos()),
    };
    format!("\"{len:x}-{mtime}\"")
}

/// Counts of digest computations (exported as `cdn_origin_digests_{started,completed,failed}_total`).
#[derive(Debug, Default)]
pub struct DigestStats {
    pub started: AtomicU64,
    pub completed: AtomicU64,
    pub failed: AtomicU64,
}

/// Maps a URL path to a file under `root` (canonical), or `None` for anything that is not a
/// plain file inside the root: `..` segments (plain or percent-encoded), encoded slashes or
/// backslashes, NUL, and symlinks whose target leaves the root. Unless `dotfiles` is true, any
/// segment starting with `.` (`/.env`, `/.git/config`, `/media/.hidden`, plain or
/// percent-encoded) is refused too: such files are configuration, credentials or version
/// control, not content.
pub async fn resolve(root: &Path, url_path: &str, dotfiles: bool) -> Option<PathBuf> {
    let lower = url_path.to_ascii_lowercase();
    if !url_path.starts_with('/') || lower.contains("%2f") || lower.contains("%5c") {
        return None;
    }
    let decoded = percent_encoding::percent_decode_str(url_path)
        .decode_utf8()
        .ok()?;
    if decoded.contains('\0') || decoded.contains('\\') {
        return None;
    }
    let mut path = root.to_path_buf();
    for segment in decoded.split('/') {
        match segment {
            "" => continue,
            "." | ".." => return None,
            s if !dotfiles && s.starts_with('.') => return None,
            s => path.push(s),
        }
    }
    let canonical = tokio::fs::canonicalize(&path).await.ok()?;
    let inside = canonical.strip_prefix(root).ok()?;
    // A symlink with a plain name may lead to a dotfile inside the root.
    if !dotfiles
        && inside
            .components()
            .any(|c| c.as_os_str().as_encoded_bytes().starts_with(b"."))
    {
        return None;
    }
    let meta = tokio::fs::metadata(&canonical).await.ok()?;
    meta.is_file().then_some(canonical)
}

/// File versions by (path, length, mtime): a changed file is a new key, with its own ETag and
/// its own (single) digest computation.
#[derive(Clone)]
pub struct MetaCache {
    cache: moka::future::Cache<(PathBuf, u64, SystemTime), Arc<FileVersion>>,
    stats: Arc<DigestStats>,
    /// Test hook: a digest computation waits for a permit of this semaphore before hashing.
    #[cfg(test)]
    gate: Option<Arc<tokio::sync::Semaphore>>,
}

impl Default for MetaCache {
    fn default() -> Self {
        MetaCache {
            cache: moka::future::Cache::new(100_000),
            stats: Arc::default(),
            #[cfg(test)]
            gate: None,
        }
    }
}

impl MetaCache {
    /// The file's current version, from one `stat`; never reads its content.
    pub async fn get(&self, path: &Path) -> std::io::Result<Arc<FileVersion>> {
        let md = tokio::fs::metadata(path).await?;
        let modified = md.modified()?;
        let key = (path.to_path_buf(), md.len(), modified);
        let version = FileVersion::new(path.to_path_buf(), md.len(), modified);
        Ok(self
            .cache
            .get_with(key, async move { Arc::new(version) })
            .await)
    }

    /// The version's digest if known; otherwise starts computing it in the background (unless
    /// that is already under way or done) and returns `None` at once.
    pub fn digest_or_start(&self, version: &Arc<FileVersion>) -> Option<[u8; 32]> {
        if let Some(d) = version.digest() {
            return Some(d);
        }
        if version
            .state
            .compare_exchange(IDLE, RUNNING, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.stats.started.fetch_add(1, Ordering::Relaxed);
            let (v, stats) = (version.clone(), self.stats.clone());
            #[cfg(test)]
            let gate = self.gate.clone();
            tokio::spawn(async move {
                #[cfg(test)]
                if let Some(g) = gate {
                    let _ = g.acquire().await;
                }
                let hashed = v.clone();
                let r = tokio::task::spawn_blocking(move || hash_version(&hashed))
                    .await
                    .map_err(std::io::Error::other)
                    .and_then(|r| r);
                match r {
                    Ok(d) => {
                        v.digest.send_replace(Some(d));
                        v.state.store(DONE, Ordering::Release);
                        stats.completed.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        tracing::warn!(path = %v.path.display(), error = %e, "cannot hash file");
                        v.state.store(IDLE, Ordering::Release);
                        stats.failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
        None
    }

    pub fn stats(&self) -> &DigestStats {
        &self.stats
    }
}

/// SHA-256 of the file, provided it is the version `v` before and after it was read.
fn hash_version(v: &FileVersion) -> std::io::Result<[u8; 32]> {
    use std::io::Read;
    let changed = || std::io::Error::other("file changed while it was hashed");
    let mut f = std::fs::File::open(&v.path)?;
    if !v.same_version(&f.metadata()?) {
        return Err(changed());
    }
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut len = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        len = len.saturating_add(n as u64);
        hasher.update(&buf[..n]);
    }
    if len != v.len || !v.same_version(&std::fs::metadata(&v.path)?) {
        return Err(changed());
    }
    Ok(hasher.finalize().into())
}

/// Streams `range` of the version, 64 KiB at a time; fails unless exactly that many bytes
/// come, and at once if the file opened is no longer that version.
pub fn range_stream(version: Arc<FileVersion>, range: RangeInclusive<u64>) -> ByteStream {
    let (start, len) = (*range.start(), range.end() - range.start() + 1);
    let opened = async move {
        let mut file = tokio::fs::File::open(&version.path).await?;
        if !version.same_version(&file.metadata().await?) {
            return Err(std::io::Error::other(format!(
                "{} changed since its validators were sent",
                version.path.display()
            )));
        }
        file.seek(SeekFrom::Start(start)).await?;
        Ok::<_, std::io::Error>(ReaderStream::with_capacity(file.take(len), 64 * 1024))
    };
    let stream = futures::stream::once(opened).try_flatten().boxed();
    cdn_http::represent::exact_len(stream, len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn traversal_forms_are_refused() {
        let dir = std::env::temp_dir().join(format!("cdn-origin-files-{}", std::process::id()));
        let root = dir.join("root");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/a.txt"), b"a").unwrap();
        std::fs::write(dir.join("secret.txt"), b"s").unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(dir.join("secret.txt"), root.join("link.txt")).ok();
        let root = std::fs::canonicalize(&root).unwrap();
        assert!(resolve(&root, "/sub/a.txt", false).await.is_some());
        assert!(resolve(&root, "/sub/%61.txt", false).await.is_some());
        for bad in [
            "/../secret.txt",
            "/sub/../../secret.txt",
            "/%2e%2e/secret.txt",
            "/sub%2f..%2f..%2fsecret.txt",
            "/sub%5ca.txt",
            "/link.txt",
            "/sub",
            "sub/a.txt",
            "/sub/a.txt%00",
        ] {
            assert!(resolve(&root, bad, false).await.is_none(), "{bad}");
        }
        std::fs::remove_dir_all(&dir).ok();
    }

    #[tokio::test]
    async fn dotfiles_are_refused_unless_configured() {
        let dir = std::env::temp_dir().join(format!("cdn-origin-dots-{}", std::process::id()));
        let root = dir.join("root");
        std::fs::create_dir_all(root.join(".git")).unwrap();
        std::fs::create_dir_all(root.join("media")).unwrap();
        std::fs::write(root.join(".env"), b"SECRET=1").unwrap();
        std::fs::write(root.join(".git/config"), b"[core]").unwrap();
        std::fs::write(root.join("media/.hidden"), b"h").unwrap();
        std::fs::write(root.join("media/a.mp4"), b"a").unwrap();
        std::os::unix::fs::symlink(root.join(".env"), root.join("env")).unwrap();
        let root = std::fs::canonicalize(&root).unwrap();
        for dot in [
            "/.env",
            "/%2eenv",
            "/.git/config",
            "/media/.hidden",
            "/media/%2Ehidden",
            "/env",
        ] {
            assert!(resolve(&root, dot, false).await.is_none(), "{dot}");
            assert!(resolve(&root, dot, true).await.is_some(), "{dot}");
        }
        assert!(resolve(&root, "/media/a.mp4", false).await.is_some());
        std::fs::remove_dir_all(&dir).ok();
    }

    /// The first request for a version does not wait for its hash: with the hash held back,
    /// the version (and its ETag) is there at once, without a digest; many requests start one
    /// computation; the digest, once released, is the file's SHA-256 and the ETag is unchanged.
    #[tokio::test]
    async fn digest_is_computed_once_in_the_background() {
        let dir = std::env::temp_dir().join(format!("cdn-origin-digest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("big.bin");
        let content: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &content).unwrap();
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let metas = MetaCache {
            gate: Some(gate.clone()),
            ..Default::default()
        };
        let mut etags = Vec::new();
        for _ in 0..8 {
            let v = metas.get(&path).await.unwrap();
            assert_eq!(metas.digest_or_start(&v), None);
            etags.push(v.etag.clone());
        }
        assert_eq!(metas.stats().started.load(Ordering::Relaxed), 1);
        assert_eq!(metas.stats().completed.load(Ordering::Relaxed), 0);
        gate.add_permits(1);
        let v = metas.get(&path).await.unwrap();
        let d = v.wait_digest().await;
        assert_eq!(d, cdn_http::digest::sha256(&content));
        assert_eq!(metas.digest_or_start(&v), Some(d));
        assert!(etags.iter().all(|e| *e == v.etag));
        assert_eq!(metas.stats().started.load(Ordering::Relaxed), 1);
        assert_eq!(metas.stats().completed.load(Ordering::Relaxed), 1);
        std::fs::remove_dir_all(&dir).ok();
    }
}
