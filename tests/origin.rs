//! End-to-end tests of the origin: a real server on 127.0.0.1:0, checked byte for byte.

mod common;

use common::*;
use http::StatusCode;

const MP4: &str = "/demo.mp4";

async fn mp4_bytes() -> Vec<u8> {
    std::fs::read(media_root().join("demo.mp4")).expect("test media present")
}

#[tokio::test]
async fn full_get_head_and_headers() {
    let origin = start_origin(&media_root(), &Default::default()).await;
    let want = mp4_bytes().await;
    let r = client()
        .get(format!("{}{MP4}", origin.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let h = r.headers().clone();
    assert_eq!(h["content-type"], "video/mp4");
    assert_eq!(h["accept-ranges"], "bytes");
    assert_eq!(h["content-length"], want.len().to_string().as_str());
    assert_eq!(h["cache-control"], "public, max-age=31536000, immutable");
    assert!(h.contains_key("last-modified"));
    let etag = h["etag"].to_str().unwrap().to_string();
    assert!(
        etag.starts_with('"') && !etag.starts_with("W/"),
        "strong etag {etag}"
    );
    let body = r.bytes().await.unwrap();
    assert_eq!(&body[..], &want[..]);
    // Content-Digest is the SHA-256 of the whole body: computed in the background after the
    // first full request (which does not wait for it), then sent on full 200s.
    assert!(!h.contains_key("content-digest"));
    while metric_sum(&origin.url(), "cdn_origin_digests_completed_total").await < 1.0 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let r = client()
        .get(format!("{}{MP4}", origin.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["etag"], etag.as_str());
    let digest =
        cdn_http::digest::parse_content_digest(r.headers()["content-digest"].to_str().unwrap());
    assert_eq!(digest, Some(sha256(&want)));

    let r = client()
        .head(format!("{}{MP4}", origin.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()["content-length"],
        want.len().to_string().as_str()
    );
    assert_eq!(r.headers()["etag"], etag.as_str());
    assert!(r.bytes().await.unwrap().is_empty());

    // Same ETag on every request (computed once and kept).
    let r = client()
        .get(format!("{}{MP4}", origin.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["etag"], etag.as_str());

    for (path, ct, cc) in [
        (
            "/demo.webm",
            "video/webm",
            "public, max-age=31536000, immutable",
        ),
        (
            "/demo/index.m3u8",
            "application/vnd.apple.mpegurl",
            "max-age=2",
        ),
        (
            "/demo/seg_001.m4s",
            "video/iso.segment",
            "public, max-age=31536000, immutable",
        ),
        ("/README.md", "application/octet-stream", "max-age=60"),
    ] {
        let r = client()
            .head(format!("{}{path}", origin.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        assert_eq!(r.headers()["content-type"], ct, "{path}");
        assert_eq!(r.headers()["cache-control"], cc, "{path}");
    }
    origin.stop().await;
}

#[tokio::test]
async fn every_range_form() {
    let origin = start_origin(&media_root(), &Default::default()).await;
    let want = mp4_bytes().await;
    let len = want.len();
    let get = |range: &'static str| {
        let url = format!("{}{MP4}", origin.url());
        async move {
            client()
                .get(url)
                .header("range", range)
                .send()
                .await
                .unwrap()
        }
    };
    // Single range.
    let r = get("bytes=100-199").await;
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes 100-199/{len}").as_str()
    );
    assert_eq!(r.headers()["content-length"], "100");
    assert!(!r.headers().contains_key("content-digest"));
    assert_eq!(&r.bytes().await.unwrap()[..], &want[100..200]);
    // Suffix.
    let r = get("bytes=-500").await;
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes {}-{}/{len}", len - 500, len - 1).as_str()
    );
    assert_eq!(&r.bytes().await.unwrap()[..], &want[len - 500..]);
    // Open.
    let r = get("bytes=1000000-").await;
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(&r.bytes().await.unwrap()[..], &want[1_000_000..]);
    // bytes=0- is a 206 too.
    let r = get("bytes=0-").await;
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.bytes().await.unwrap().len(), len);
    // Past the end is clipped.
    let r = get("bytes=2000000-99999999").await;
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(&r.bytes().await.unwrap()[..], &want[2_000_000..]);
    // Multiple ranges: multipart/byteranges, each part exact.
    let r = get("bytes=0-9, 500-599, -20").await;
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    let ct = r.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ct.starts_with("multipart/byteranges; boundary="), "{ct}");
    let declared: usize = r.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let body = r.bytes().await.unwrap();
    assert_eq!(body.len(), declared);
    let parts = parse_multipart(&ct, &body);
    assert_eq!(parts.len(), 3);
    assert_eq!(parts[0].0, format!("bytes 0-9/{len}"));
    assert_eq!(&parts[0].1[..], &want[0..10]);
    assert_eq!(parts[1].0, format!("bytes 500-599/{len}"));
    assert_eq!(&parts[1].1[..], &want[500..600]);
    assert_eq!(parts[2].0, format!("bytes {}-{}/{len}", len - 20, len - 1));
    assert_eq!(&parts[2].1[..], &want[len - 20..]);
    // Unsatisfiable.
    let r = get("bytes=99999999-").await;
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes */{len}").as_str()
    );
    // Syntactically invalid: ignored, full 200.
    for bad in ["bytes=5-1", "bytes=abc", "items=0-5", "bytes 0-5"] {
        let r = get(bad).await;
        assert_eq!(r.status(), StatusCode::OK, "{bad}");
        assert_eq!(r.bytes().await.unwrap().len(), len, "{bad}");
    }
    origin.stop().await;
}

#[tokio::test]
async fn if_range_and_preconditions() {
    let origin = start_origin(&media_root(), &Default::default()).await;
    let want = mp4_bytes().await;
    let url = format!("{}{MP4}", origin.url());
    let head = client().head(&url).send().await.unwrap();
    let etag = head.headers()["etag"].to_str().unwrap().to_string();
    let lm = head.headers()["last-modified"]
        .to_str()
        .unwrap()
        .to_string();
    let req = |pairs: Vec<(&'static str, String)>| {
        let mut b = client().get(&url);
        for (k, v) in pairs {
            b = b.header(k, v);
        }
        b.send()
    };
    // If-Range with the current ETag: the range is served.
    let r = req(vec![
        ("range", "bytes=10-19".into()),
        ("if-range", etag.clone()),
    ])
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(&r.bytes().await.unwrap()[..], &want[10..20]);
    // With another ETag: the whole new representation.
    let r = req(vec![
        ("range", "bytes=10-19".into()),
        ("if-range", "\"old\"".into()),
    ])
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap().len(), want.len());
    // With the exact Last-Modified date, and with another date.
    let r = req(vec![
        ("range", "bytes=10-19".into()),
        ("if-range", lm.clone()),
    ])
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    let r = req(vec![
        ("range", "bytes=10-19".into()),
        ("if-range", "Thu, 01 Jan 2015 00:00:00 GMT".into()),
    ])
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    // 304s carry the validators and Cache-Control, no body.
    let r = req(vec![("if-none-match", etag.clone())]).await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(r.headers()["etag"], etag.as_str());
    assert!(r.headers().contains_key("cache-control"));
    assert!(r.bytes().await.unwrap().is_empty());
    let r = req(vec![("if-none-match", format!("\"x\", {etag}"))])
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    let r = req(vec![("if-modified-since", lm.clone())]).await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    let r = req(vec![("if-none-match", "\"x\"".into())]).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // HEAD too.
    let r = client()
        .head(&url)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    // 412s.
    let r = req(vec![("if-match", "\"x\"".into())]).await.unwrap();
    assert_eq!(r.status(), StatusCode::PRECONDITION_FAILED);
    let r = req(vec![("if-match", etag.clone())]).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = req(vec![(
        "if-unmodified-since",
        "Thu, 01 Jan 2015 00:00:00 GMT".into(),
    )])
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::PRECONDITION_FAILED);
    origin.stop().await;
}

#[tokio::test]
async fn synthetic_objects_are_deterministic() {
    let origin = start_origin(&media_root(), &Default::default()).await;
    let url = |id: &str, size: u64| format!("{}/synthetic/{id}?size={size}", origin.url());
    let a = client().get(url("vid-1", 300_000)).send().await.unwrap();
    assert_eq!(a.status(), StatusCode::OK);
    assert_eq!(a.headers()["content-length"], "300000");
    let etag = a.headers()["etag"].to_str().unwrap().to_string();
    let digest = a.headers()["content-digest"].to_str().unwrap().to_string();
    let a = a.bytes().await.unwrap();
    assert_eq!(a.len(), 300_000);
    assert_eq!(
        cdn_http::digest::parse_content_digest(&digest),
        Some(sha256(&a))
    );
    // Same id and size: same bytes and ETag, from a second origin instance too.
    let other = start_origin(&media_root(), &Default::default()).await;
    let b = client()
        .get(format!("{}/synthetic/vid-1?size=300000", other.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(b.headers()["etag"], etag.as_str());
    assert_eq!(b.bytes().await.unwrap(), a);
    // Another id: other bytes and ETag; another size: another ETag.
    let c = client().get(url("vid-2", 300_000)).send().await.unwrap();
    assert_ne!(c.headers()["etag"], etag.as_str());
    assert_ne!(c.bytes().await.unwrap(), a);
    let d = client().head(url("vid-1", 300_001)).send().await.unwrap();
    assert_ne!(d.headers()["etag"], etag.as_str());
    // Ranges are slices of the whole.
    for (range, lo, hi) in [
        ("bytes=65530-65545", 65530, 65546),
        ("bytes=-7", 299_993, 300_000),
    ] {
        let r = client()
            .get(url("vid-1", 300_000))
            .header("range", range)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(&r.bytes().await.unwrap()[..], &a[lo..hi]);
    }
    // Limits.
    let r = client()
        .get(url("big", 64 * 1024 * 1024 + 1))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = client()
        .get(format!("{}/synthetic/x", origin.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = client()
        .get(format!("{}/synthetic/x?size=-1", origin.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    origin.stop().await;
    other.stop().await;
}

#[tokio::test]
async fn traversal_never_leaves_the_root() {
    let dir = std::env::temp_dir().join(format!("cdn-origin-e2e-{}", std::process::id()));
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::write(root.join("sub/ok.txt"), b"inside").unwrap();
    std::fs::write(dir.join("secret.txt"), b"outside").unwrap();
    std::os::unix::fs::symlink(dir.join("secret.txt"), root.join("escape.txt")).unwrap();
    std::os::unix::fs::symlink(&dir, root.join("escape-dir")).unwrap();
    let origin = start_origin(&root, &Default::default()).await;
    let (status, _, body) = raw_request(
        origin.addr,
        "GET /sub/ok.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!((status, &body[..]), (200, &b"inside"[..]));
    for path in [
        "/../secret.txt",
        "/sub/../../secret.txt",
        "/%2e%2e/secret.txt",
        "/%2E%2E/secret.txt",
        "/sub/%2e%2e/%2e%2e/secret.txt",
        "/sub%2f..%2f..%2fsecret.txt",
        "/..%5csecret.txt",
        "//etc/passwd",
        "/escape.txt",
        "/escape-dir/secret.txt",
        "/sub/ok.txt%00",
    ] {
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let (status, _, body) = raw_request(origin.addr, &req).await;
        assert_eq!(status, 404, "{path}");
        assert!(
            !String::from_utf8_lossy(&body).contains("outside"),
            "{path}"
        );
    }
    // An absolute-form target naming a file outside the root.
    let req = format!(
        "GET http://x{}/secret.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        dir.display()
    );
    let (status, _, _) = raw_request(origin.addr, &req).await;
    assert_eq!(status, 404);
    origin.stop().await;
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn methods_limits_and_metrics() {
    let origin = start_origin(&media_root(), &Default::default()).await;
    for method in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"] {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        for path in [MP4, "/synthetic/a?size=10"] {
            let r = client()
                .request(m.clone(), format!("{}{path}", origin.url()))
                .send()
                .await
                .unwrap();
            assert_eq!(
                r.status(),
                StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path}"
            );
            let allow = r.headers()["allow"].to_str().unwrap().to_string();
            assert!(allow.contains("GET") && allow.contains("HEAD"), "{allow}");
        }
    }
    // A request head over the limit is refused with 431.
    let huge = "a".repeat(20 * 1024);
    let req =
        format!("GET /demo.mp4 HTTP/1.1\r\nHost: x\r\nX-Big: {huge}\r\nConnection: close\r\n\r\n");
    let (status, _, _) = raw_request(origin.addr, &req).await;
    assert_eq!(status, 431);

    let before = metric_sum(&origin.url(), "cdn_origin_bytes_sent_total").await;
    let r = client()
        .get(format!("{}/synthetic/m?size=12345", origin.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap().len(), 12345);
    let text = metrics_text(&origin.url()).await;
    let after = cdn_http::metrics::sum(&text, "cdn_origin_bytes_sent_total");
    assert_eq!(after - before, 12345.0);
    assert!(
        cdn_http::metrics::sample(&text, "cdn_origin_requests_total{status=\"200\"}").unwrap()
            >= 1.0
    );
    assert!(
        cdn_http::metrics::sample(&text, "cdn_origin_requests_total{status=\"405\"}").unwrap()
            >= 5.0
    );
    let r = client()
        .get(format!("{}/healthz", origin.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    origin.stop().await;
}

#[tokio::test]
async fn bad_config_names_file_line_and_field() {
    let dir = std::env::temp_dir().join(format!("cdn-origin-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("origin.toml");
    std::fs::write(
        &path,
        "synthetic_max_bytes = 10\n\n[[cache_control]]\npattern = \"/a\"\nvalu = \"x\"\n",
    )
    .unwrap();
    let e = cdn_origin::OriginConfig::load(&path)
        .unwrap_err()
        .to_string();
    assert!(e.starts_with(&format!("{}:5:", path.display())), "{e}");
    assert!(e.contains("valu"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

/// Concurrent first requests for a big file: every one is answered at once with the same
/// stat-based strong ETag and no Content-Digest (the request that starts the hash cannot have
/// its result), exactly one hash runs, and once it has finished full 200s carry the digest
/// under the unchanged ETag.
#[tokio::test]
async fn big_file_is_hashed_once_off_the_request_path() {
    let dir = std::env::temp_dir().join(format!("cdn-origin-bighash-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let content: Vec<u8> = (0..24_000_000u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(dir.join("big.mp4"), &content).unwrap();
    let origin = start_origin(&dir, &Default::default()).await;
    let url = format!("{}/big.mp4", origin.url());
    // The first request alone, to know it is the one that starts the hash.
    let first = client().get(&url).send().await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    assert!(
        !first.headers().contains_key("content-digest"),
        "the first response waited for the hash"
    );
    let etag = first.headers()["etag"].to_str().unwrap().to_string();
    assert!(etag.starts_with('"'), "strong etag {etag}");
    let rest = futures::future::join_all((0..12).map(|_| {
        let url = url.clone();
        async move { client().get(url).send().await.unwrap() }
    }))
    .await;
    assert_eq!(&first.bytes().await.unwrap()[..], &content[..]);
    for r in rest {
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["etag"], etag.as_str());
        assert_eq!(&r.bytes().await.unwrap()[..], &content[..]);
    }
    // Wait for the hash to finish (an event the metric shows), then: one hash, digest served.
    while metric_sum(&origin.url(), "cdn_origin_digests_completed_total").await < 1.0 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let text = metrics_text(&origin.url()).await;
    assert_eq!(
        cdn_http::metrics::sum(&text, "cdn_origin_digests_started_total"),
        1.0
    );
    assert_eq!(
        cdn_http::metrics::sum(&text, "cdn_origin_digests_completed_total"),
        1.0
    );
    assert!(cdn_http::metrics::sum(&text, "cdn_origin_responses_before_digest_total") >= 1.0);
    let r = client().get(&url).send().await.unwrap();
    assert_eq!(r.headers()["etag"], etag.as_str());
    let digest = r.headers()["content-digest"].to_str().unwrap().to_string();
    assert_eq!(
        cdn_http::digest::parse_content_digest(&digest),
        Some(sha256(&content))
    );
    // Ranges never start or need a hash.
    let r = client()
        .get(&url)
        .header("range", "bytes=0-9")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.headers()["etag"], etag.as_str());
    assert_eq!(
        metric_sum(&origin.url(), "cdn_origin_digests_started_total").await,
        1.0
    );
    // A new version (other length) gets another ETag and its own single hash.
    std::fs::write(dir.join("big.mp4"), &content[..1000]).unwrap();
    let r = client().get(&url).send().await.unwrap();
    assert_ne!(r.headers()["etag"], etag.as_str());
    assert_eq!(&r.bytes().await.unwrap()[..], &content[..1000]);
    assert_eq!(
        metric_sum(&origin.url(), "cdn_origin_digests_started_total").await,
        2.0
    );
    origin.stop().await;
    std::fs::remove_dir_all(&dir).ok();
}

/// Dotfiles and dot-directories answer 404 like missing files, unless `serve_dotfiles`.
#[tokio::test]
async fn dotfiles_are_not_served_by_default() {
    let dir = std::env::temp_dir().join(format!("cdn-origin-dotfiles-{}", std::process::id()));
    std::fs::create_dir_all(dir.join(".git")).unwrap();
    std::fs::create_dir_all(dir.join("media")).unwrap();
    std::fs::write(dir.join(".env"), b"SECRET=hunter2").unwrap();
    std::fs::write(dir.join(".git/config"), b"[remote]").unwrap();
    std::fs::write(dir.join("media/.hidden"), b"hidden").unwrap();
    std::fs::write(dir.join("media/ok.txt"), b"visible").unwrap();
    let paths = ["/.env", "/.git/config", "/media/.hidden", "/%2egit/config"];
    let origin = start_origin(&dir, &Default::default()).await;
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    // Exactly what a missing file gets.
    let (_, _, missing) = raw_request(origin.addr, &get("/no-such-file")).await;
    for path in paths {
        let (status, _, body) = raw_request(origin.addr, &get(path)).await;
        assert_eq!((status, &body), (404, &missing), "{path}");
    }
    let (status, _, body) = raw_request(
        origin.addr,
        "GET /media/ok.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!((status, &body[..]), (200, &b"visible"[..]));
    origin.stop().await;
    let origin = start_origin_with(&dir, "serve_dotfiles = true\n").await;
    let (status, _, body) = raw_request(
        origin.addr,
        "GET /.env HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!((status, &body[..]), (200, &b"SECRET=hunter2"[..]));
    origin.stop().await;
    std::fs::remove_dir_all(&dir).ok();
}
