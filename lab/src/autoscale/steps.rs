//! The order of a scale-out and of a drain, written once for every fleet: the lab's edge
//! processes (`crate::fleet::LabFleet`) and the tests' in-process edges
//! (`tests/common/inprocess_fleet.rs`) implement the steps ([`FleetSteps`]) and their
//! [`Fleet`](super::driver::Fleet) methods are [`scale_out`] and [`drain`].
//!
//! - **Scale-out:** launch an edge nobody knows yet; its siblings take it into their peer
//!   lists (an edge serves only the peers it lists, so the new edge's first misses would
//!   otherwise be refused and go to the origin); only then the router lists it; it counts as
//!   started once the router calls it up. A failed step retires it.
//! - **Drain:** out of the router (no new viewer is sent); a grace for viewers redirected just
//!   before; its in-flight requests waited down to 0 (bounded); viewers that kept its address
//!   handed over to a sibling; then it leaves the peer lists and stops.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// The steps a fleet takes to add or remove one edge; [`scale_out`] and [`drain`] order them.
pub trait FleetSteps: Send + Sync {
    /// Starts an edge of `region` that neither the router nor its siblings list yet, with the
    /// region's running edges as its peers; returns its name.
    fn launch(&self, region: &str) -> impl Future<Output = anyhow::Result<String>> + Send;
    /// The region's other edges list `edge` as a peer (and have applied their new lists).
    fn peer(&self, edge: &str) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// The router lists `edge` (it routes to it once its health checks pass).
    fn route(&self, edge: &str) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// Whether the router calls `edge` up.
    fn is_up(&self, edge: &str) -> impl Future<Output = bool> + Send;
    /// `edge` is started: the fleet counts it among its running edges.
    fn admit(&self, edge: &str) -> impl Future<Output = ()> + Send;
    /// The router no longer lists `edge`; an error when the fleet has no such running edge.
    fn unroute(&self, edge: &str) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// `edge`'s requests in flight (`None`: it cannot tell, as when it no longer answers).
    fn inflight(&self, edge: &str) -> impl Future<Output = Option<u64>> + Send;
    /// Viewers that kept `edge`'s address are answered by a sibling from now on.
    fn hand_over(&self, edge: &str) -> impl Future<Output = ()> + Send;
    /// Out of the router and the peer lists, then stopped (what is in flight finishes).
    fn retire(&self, edge: &str) -> impl Future<Output = ()> + Send;
}

/// How long the steps may take.
#[derive(Debug, Clone)]
pub struct Timings {
    /// Longest wait for the router to call a new edge up.
    pub ready_timeout: Duration,
    /// After leaving the router, how long a drained edge keeps taking viewers redirected to
    /// it just before.
    pub drain_grace: Duration,
    /// Longest wait for in-flight requests to finish before stopping anyway.
    pub drain_timeout: Duration,
    /// How often a wait looks again.
    pub poll: Duration,
}

/// Starts one edge in `region`: launch, peer, route, wait until up (see the module's
/// documentation); returns its name. A failed step retires the edge.
pub async fn scale_out<S: FleetSteps>(
    steps: &S,
    region: &str,
    t: &Timings,
) -> anyhow::Result<String> {
    let name = steps.launch(region).await?;
    let wired = async {
        steps.peer(&name).await?;
        steps.route(&name).await
    }
    .await;
    if let Err(e) = wired {
        steps.retire(&name).await;
        return Err(e.context(format!("registering {name}")));
    }
    let deadline = Instant::now() + t.ready_timeout;
    loop {
        if steps.is_up(&name).await {
            steps.admit(&name).await;
            return Ok(name);
        }
        if Instant::now() >= deadline {
            steps.retire(&name).await;
            anyhow::bail!(
                "{name} was not up at the router after {:?}",
                t.ready_timeout
            );
        }
        tokio::time::sleep(t.poll).await;
    }
}

/// Drains `edge` and stops it: unroute, grace, in-flight down to 0 (bounded), hand over,
/// retire.
pub async fn drain<S: FleetSteps>(steps: &S, edge: &str, t: &Timings) -> anyhow::Result<()> {
    steps.unroute(edge).await?;
    tokio::time::sleep(t.drain_grace).await;
    let deadline = Instant::now() + t.drain_timeout;
    loop {
        match steps.inflight(edge).await {
            Some(0) | None => break,
            Some(n) if Instant::now() >= deadline => {
                tracing::warn!(
                    edge,
                    inflight = n,
                    "drain timeout with requests in flight; stopping"
                );
                break;
            }
            Some(_) => tokio::time::sleep(t.poll).await,
        }
    }
    steps.hand_over(edge).await;
    steps.retire(edge).await;
    Ok(())
}
