//! Media types by file extension for what a video CDN serves.

/// The Content-Type for a path, by its extension; `application/octet-stream` when unknown.
pub fn content_type_for(path: &str) -> &'static str {
    let ext = path.rsplit_once('.').map(|(_, e)| e).unwrap_or("");
    match ext.to_ascii_lowercase().as_str() {
        "mp4" | "m4v" => "video/mp4",
        "m4s" => "video/iso.segment",
        "m4a" => "audio/mp4",
        "webm" => "video/webm",
        "m3u8" => "application/vnd.apple.mpegurl",
        "ts" => "video/mp2t",
        "mpd" => "application/dash+xml",
        "json" => "application/json",
        "html" | "htm" => "text/html; charset=utf-8",
        "js" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "txt" => "text/plain; charset=utf-8",
        "vtt" => "text/vtt; charset=utf-8",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "svg" => "image/svg+xml",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn known_types() {
        use super::content_type_for as t;
        assert_eq!(t("/a/b.MP4"), "video/mp4");
        assert_eq!(t("x.webm"), "video/webm");
        assert_eq!(t("i.m3u8"), "application/vnd.apple.mpegurl");
        assert_eq!(t("s.ts"), "video/mp2t");
        assert_eq!(t("s.m4s"), "video/iso.segment");
        assert_eq!(t("m.mpd"), "application/dash+xml");
        assert_eq!(t("noext"), "application/octet-stream");
    }
}
