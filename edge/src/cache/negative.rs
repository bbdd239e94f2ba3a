//! Negative entries: a probe answered with a final status other than 200/206 (404, 410, 301,
//! ...) is stored whole when RFC 9111 allows it ([`freshness::negative_lifetime`]) and its
//! body is small; otherwise it is handed to the client as it is and nothing is kept. A URL
//! whose answer is not storable is remembered for a while (hit-for-pass).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::{HeaderMap, HeaderValue, header};

use super::{Cache, ProbeOutcome, variant_key, vary_names};
use crate::fill::FillError;
use crate::freshness::{self, CacheControl, Timing};
use crate::origin::{OriginResponse, SmallBody, strip_hop_by_hop, validators_of};
use crate::store::{self, NEGATIVE_MAX_BODY, Negative, ObjectMeta, VersionId};

impl Cache {
    pub(super) fn negative_ttl(&self) -> Duration {
        Duration::from_secs(self.cfg.negative_ttl_secs)
    }

    /// A probe answered with a final status other than 200/206: stored whole as a negative
    /// entry when RFC 9111 allows it (a status the edge understands, explicit freshness or a
    /// heuristically cacheable status with `negative_ttl_secs` > 0, no no-store, private or
    /// Set-Cookie), its body is at most [`NEGATIVE_MAX_BODY`] bytes and its end can be told
    /// from a truncation; otherwise handed on as it is. A body that ends short is an error and
    /// nothing of it is kept.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn negative(
        &self,
        primary: &str,
        pq: &str,
        req: &HeaderMap,
        req_cc: &CacheControl,
        resp: OriginResponse,
        request_time: SystemTime,
        response_time: SystemTime,
    ) -> Result<NegativeOutcome, FillError> {
        let status = resp.status();
        let cc = self.cfg.response_cc(resp.headers());
        let lifetime =
            freshness::negative_lifetime(status, resp.headers(), &cc, self.negative_ttl());
        let storable = freshness::storable(status, resp.headers(), &cc, req, req_cc);
        let (Some(lifetime), Ok(()), Some(declared)) = (lifetime, storable, resp.body_length())
        else {
            tracing::debug!(%pq, %status, ?storable, "negative response not stored");
            return Ok(NegativeOutcome::Unstored(resp));
        };
        if declared.is_some_and(|n| n > NEGATIVE_MAX_BODY) {
            return Ok(NegativeOutcome::Unstored(resp));
        }
        let resp_headers = resp.headers().clone();
        let body = match resp
            .read_small(Some(&self.origin), NEGATIVE_MAX_BODY)
            .await?
        {
            SmallBody::Whole(b) => b,
            SmallBody::TooBig(resp) => return Ok(NegativeOutcome::Unstored(resp)),
        };
        if let Some(want) = declared
            && want != body.len() as u64
        {
            return Err(FillError::Truncated {
                got: body.len() as u64,
                want,
            });
        }
        let vary = vary_names(&resp_headers);
        let (etag, last_modified) = validators_of(&resp_headers);
        let mut headers = store::detached_map(&resp_headers);
        strip_hop_by_hop(&mut headers);
        for n in [
            header::CONTENT_LENGTH,
            header::CONTENT_RANGE,
            header::AGE,
            header::SET_COOKIE,
        ] {
            headers.remove(n);
        }
        let nanos = response_time
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let meta = Arc::new(ObjectMeta {
            version: Arc::new(VersionId {
                key: variant_key(primary, &vary, req),
                validator: format!("n:{}:{nanos}", status.as_u16()),
            }),
            primary: primary.to_string(),
            path_and_query: pq.to_string(),
            len: 0,
            chunk_size: self.cfg.chunk_size,
            content_type: resp_headers
                .get(header::CONTENT_TYPE)
                .map(store::detached)
                .unwrap_or(HeaderValue::from_static("application/octet-stream")),
            etag,
            last_modified,
            headers,
            digest: None,
            lifetime,
            cc,
            timing: Timing::new(request_time, response_time, &resp_headers),
            ranges: false,
            selecting: vary
                .iter()
                .map(|n| (n.clone(), req.get(n).map(store::detached)))
                .collect(),
            negative: Some(Negative { status, body }),
            rendered: Default::default(),
        });
        self.store.install(&meta).await;
        tracing::debug!(%pq, %status, ?lifetime, "negative response stored");
        Ok(NegativeOutcome::Stored(ProbeOutcome::Stored {
            meta,
            revalidated: false,
        }))
    }

    /// Marks a URL as uncacheable for `hit_for_pass_secs` (Varnish's hit-for-miss): its
    /// requests go to the origin at once instead of queueing behind one another's probes.
    pub(super) async fn remember_uncacheable(&self, primary: &str) {
        let pass_until = Instant::now() + Duration::from_secs(self.cfg.hit_for_pass_secs);
        self.store.pass_until(primary, pass_until).await;
    }
}

/// What became of a probe answered with a status other than 200/206.
pub(super) enum NegativeOutcome {
    Stored(ProbeOutcome),
    Unstored(OriginResponse),
}
