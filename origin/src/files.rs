//! Files under the root: safe resolution of URL paths, validators computed once per file
//! version, and range streams read straight from disk.

use std::io::SeekFrom;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use futures::{StreamExt, TryStreamExt};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

use cdn_http::ByteStream;

/// What is computed once per file version: length, modification time and content digest.
#[derive(Debug, Clone)]
pub struct FileMeta {
    pub path: PathBuf,
    pub len: u64,
    pub modified: SystemTime,
    pub sha256: [u8; 32],
}

/// Maps a URL path to a file under `root` (canonical), or `None` for anything that is not a
/// plain file inside the root: `..` segments (plain or percent-encoded), encoded slashes or
/// backslashes, NUL, and symlinks whose target leaves the root.
pub async fn resolve(root: &Path, url_path: &str) -> Option<PathBuf> {
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
            s => path.push(s),
        }
    }
    let canonical = tokio::fs::canonicalize(&path).await.ok()?;
    if !canonical.starts_with(root) {
        return None;
    }
    let meta = tokio::fs::metadata(&canonical).await.ok()?;
    meta.is_file().then_some(canonical)
}

/// Validators cached by (path, length, mtime): a changed file is a new key, hashed once.
#[derive(Clone)]
pub struct MetaCache {
    cache: moka::future::Cache<(PathBuf, u64, SystemTime), Arc<FileMeta>>,
}

impl Default for MetaCache {
    fn default() -> Self {
        MetaCache {
            cache: moka::future::Cache::new(100_000),
        }
    }
}

impl MetaCache {
    /// Returns the file's metadata, hashing it at most once per version even when many
    /// requests for it arrive together.
    pub async fn get(&self, path: &Path) -> std::io::Result<Arc<FileMeta>> {
        let md = tokio::fs::metadata(path).await?;
        let modified = md.modified()?;
        let key = (path.to_path_buf(), md.len(), modified);
        let path = path.to_path_buf();
        self.cache
            .try_get_with(key, async move {
                let p = path.clone();
                let (len, sha256) = tokio::task::spawn_blocking(move || hash_file(&p))
                    .await
                    .map_err(std::io::Error::other)??;
                Ok::<_, std::io::Error>(Arc::new(FileMeta {
                    path,
                    len,
                    modified,
                    sha256,
                }))
            })
            .await
            .map_err(|e: Arc<std::io::Error>| std::io::Error::new(e.kind(), e.to_string()))
    }
}

fn hash_file(path: &Path) -> std::io::Result<(u64, [u8; 32])> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut len = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        len += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok((len, hasher.finalize().into()))
}

/// Streams `range` of the file, 64 KiB at a time; fails unless exactly that many bytes come.
pub fn range_stream(path: PathBuf, range: RangeInclusive<u64>) -> ByteStream {
    let (start, len) = (*range.start(), range.end() - range.start() + 1);
    let opened = async move {
        let mut file = tokio::fs::File::open(&path).await?;
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
        assert!(resolve(&root, "/sub/a.txt").await.is_some());
        assert!(resolve(&root, "/sub/%61.txt").await.is_some());
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
            assert!(resolve(&root, bad).await.is_none(), "{bad}");
        }
        std::fs::remove_dir_all(&dir).ok();
    }
}
