//! The names of the metrics the origin exports on `/metrics`, for the code that reads them (the
//! lab, the benchmarks, the tests: `cdn_lab::scrape`), so that a name is written once.

pub const BYTES_SENT_TOTAL: &str = "cdn_origin_bytes_sent_total";
pub const DIGESTS_COMPLETED_TOTAL: &str = "cdn_origin_digests_completed_total";
pub const DIGESTS_FAILED_TOTAL: &str = "cdn_origin_digests_failed_total";
pub const DIGESTS_STARTED_TOTAL: &str = "cdn_origin_digests_started_total";
pub const REQUESTS_TOTAL: &str = "cdn_origin_requests_total";
pub const RESPONSE_HEAD_SECONDS: &str = "cdn_origin_response_head_seconds";
pub const RESPONSES_BEFORE_DIGEST_TOTAL: &str = "cdn_origin_responses_before_digest_total";
