//! What the cache reads of an origin answer: [`OriginResponse`] (status, fields, the body's
//! length, bounded and whole reads) and [`validators_of`], so the cache never sees reqwest.

use super::*;

/// The ETag and Last-Modified of a response.
pub fn validators_of(h: &HeaderMap) -> (Option<String>, Option<SystemTime>) {
    let etag = h
        .get(header::ETAG)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let last_modified = h
        .get(header::LAST_MODIFIED)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok());
    (etag, last_modified)
}

/// An origin response whose body is still to be read, as the cache handles it (a probe's or
/// a revalidation's answer): the cache reads its status, fields and body through this, and
/// hands an answer it does not store to the passthrough ([`OriginResponse::into_inner`]).
pub struct OriginResponse(reqwest::Response);

impl From<reqwest::Response> for OriginResponse {
    fn from(r: reqwest::Response) -> Self {
        OriginResponse(r)
    }
}

/// What [`OriginResponse::read_small`] found.
pub enum SmallBody {
    Whole(Bytes),
    /// Longer than the bound: the response with what was read put back in front.
    TooBig(OriginResponse),
}

impl OriginResponse {
    pub fn status(&self) -> StatusCode {
        self.0.status()
    }

    pub fn headers(&self) -> &HeaderMap {
        self.0.headers()
    }

    /// The response as reqwest gives it (for relaying it to a client).
    pub fn into_inner(self) -> reqwest::Response {
        self.0
    }

    /// The next piece of the body (`None` at its end); a broken body is an error.
    pub async fn next_bytes(&mut self) -> Result<Option<Bytes>, FillError> {
        self.0
            .chunk()
            .await
            .map_err(|e| FillError::Request(error_chain(&e)))
    }

    /// How the end of the body is known: `Some(Some(n))` from Content-Length (0 for 204),
    /// `Some(None)` from chunked coding or HTTP/2 framing, `None` when only the connection's
    /// close ends it (then a truncation cannot be told from the end, and it is not stored).
    pub fn body_length(&self) -> Option<Option<u64>> {
        let resp = &self.0;
        if resp.status() == StatusCode::NO_CONTENT {
            return Some(Some(0));
        }
        let h = resp.headers();
        if h.contains_key(header::TRANSFER_ENCODING) {
            let chunked = h
                .get_all(header::TRANSFER_ENCODING)
                .iter()
                .next_back()
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.rsplit(',').next())
                .is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked"));
            return chunked.then_some(None);
        }
        if let Some(n) = h
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
        {
            return Some(Some(n));
        }
        (resp.version() >= http::Version::HTTP_2).then_some(None)
    }

    /// The representation's length and whether the origin honoured the range: from the
    /// Content-Range of a 206 (which must start where asked), or the Content-Length of a 200.
    pub fn object_length(&self, asked_start: u64) -> Option<(u64, bool)> {
        let h = self.0.headers();
        if self.0.status() == StatusCode::PARTIAL_CONTENT {
            let (span, complete) = h
                .get(header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(cdn_http::range::parse_content_range)?;
            (*span.start() == asked_start).then_some(())?;
            return complete.map(|len| (len, true));
        }
        h.get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .map(|len| (len, false))
    }

    /// Reads a body of at most `max` bytes; a broken body is an error. The bytes read are
    /// counted to `origin` when given (not when the body is read again, from a
    /// [`OriginResponse::rebuilt`] response).
    pub async fn read_small(
        mut self,
        origin: Option<&OriginClient>,
        max: u64,
    ) -> Result<SmallBody, FillError> {
        let mut buf = BytesMut::new();
        loop {
            match self.0.chunk().await {
                Ok(Some(data)) => {
                    buf.extend_from_slice(&data);
                    if buf.len() as u64 > max {
                        // Counted by whoever relays it.
                        return Ok(SmallBody::TooBig(self.prepend(buf.freeze())));
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    if let Some(o) = origin {
                        o.count_bytes(buf.len());
                    }
                    return Err(FillError::Request(error_chain(&e)));
                }
            }
        }
        if let Some(o) = origin {
            o.count_bytes(buf.len());
        }
        Ok(SmallBody::Whole(buf.freeze()))
    }

    pub fn version(&self) -> http::Version {
        self.0.version()
    }

    /// A response with `body` read already, as the origin sent it otherwise.
    pub fn rebuilt(
        status: StatusCode,
        version: http::Version,
        headers: HeaderMap,
        body: Bytes,
    ) -> OriginResponse {
        let mut out = http::Response::new(reqwest::Body::from(body));
        *out.status_mut() = status;
        *out.version_mut() = version;
        *out.headers_mut() = headers;
        OriginResponse(reqwest::Response::from(out))
    }

    /// This response with `head`, bytes already read from its body, put back in front of
    /// the rest.
    fn prepend(self, head: Bytes) -> OriginResponse {
        let resp = self.0;
        let (status, version, headers) = (resp.status(), resp.version(), resp.headers().clone());
        let rest = resp.bytes_stream();
        let body = futures::stream::once(async move { Ok::<_, reqwest::Error>(head) }).chain(rest);
        let mut out = http::Response::new(reqwest::Body::wrap_stream(body));
        *out.status_mut() = status;
        *out.version_mut() = version;
        *out.headers_mut() = headers;
        OriginResponse(reqwest::Response::from(out))
    }
}
