//! The root package's library: everything behind the `cdn` command line except the node
//! servers themselves (those are the `cdn-origin`, `cdn-edge` and `cdn-geo-router` crates).
//!
//! [`lab`] runs a whole multi-region CDN on this machine; [`bench`] holds the benchmarks
//! (hit ratio, load, comparison, capacity, amplification); [`plan`] is capacity planning
//! (edges needed for a request rate) and [`autoscale`] the per-region autoscaler built on it.
//! `src/main.rs` is only the clap command line and its dispatch to these modules; the
//! integration tests in `tests/` use them as `cdn::plan`, `cdn::autoscale`.

pub mod autoscale;
pub mod bench;
pub mod lab;
pub mod plan;
