//! Auto-scaling of edges per region: capacity follows demand without flapping.
//!
//! - [`Autoscaler`] is the decision: a state machine with no processes and no clock of its
//!   own. Each [`Autoscaler::tick`] gets the time and a [`RegionObservation`] (request rate,
//!   in-flight requests, edges running) and may return a [`Decision`] to scale out or in. It
//!   wants `max(edges for the rate, edges for the in-flight requests)` edges by the planning
//!   formula ([`crate::plan::edges_needed`]), clamped to `[min, max]`:
//!   - **scale out** at once to what is wanted, then not again for `scale_out_cooldown`;
//!   - **scale in** only when fewer edges have been wanted for a whole `scale_in_cooldown`
//!     (and no scaling happened within it), and then to the *most* wanted in that window, so a
//!     dip or an oscillation inside the window changes nothing;
//!   - a count below `min` or above `max` is corrected at once.
//!
//!   Every tick is kept in a bounded history (edges, rate, utilisation over time) and every
//!   decision in a bounded event log with its reason, both serialisable for a dashboard.
//! - [`driver`] runs autoscalers on an interval against a [`driver::Fleet`] (start an edge;
//!   drain and stop one) and a [`driver::Observer`] (measure each region), and publishes the
//!   status ([`driver::AutoscaleStatus`]). [`driver::HttpObserver`] measures a lab over HTTP.
//! - The lab's fleet (`crate::fleet`) starts and stops edge processes; the tests' in-process
//!   fleet (`tests/common/inprocess_fleet.rs`) does the same with edges in one process: a new
//!   edge peers with its region's edges (so it warms from them) and is routed to only once
//!   its health check passed; a removed edge leaves the router, finishes its in-flight
//!   responses and stops.

pub mod driver;
pub mod steps;

use std::collections::VecDeque;
use std::time::Duration;

use serde::Serialize;

use crate::plan::{PlanError, edges_needed, utilisation_pct};

/// Most history points kept per region.
pub const HISTORY_LIMIT: usize = 3600;
/// Most events kept.
pub const EVENT_LIMIT: usize = 1000;

/// How one region scales.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AutoscaleConfig {
    /// Requests/s one edge serves (what `cdn bench` measured).
    pub capacity_rps: f64,
    /// Average utilisation to stay under, percent of capacity, in (0, 100].
    pub target_utilisation_pct: f64,
    pub min_edges: u32,
    pub max_edges: u32,
    /// After a scale-out, no further scale-out for this long.
    #[serde(serialize_with = "ser_ms")]
    pub scale_out_cooldown: Duration,
    /// Fewer edges must be wanted for this long (and no scaling have happened within it)
    /// before a scale-in.
    #[serde(serialize_with = "ser_ms")]
    pub scale_in_cooldown: Duration,
    /// In-flight requests one edge holds at full load (a saturation signal); `None` scales on
    /// the request rate alone.
    pub inflight_per_edge: Option<f64>,
}

fn ser_ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis() as u64)
}

impl AutoscaleConfig {
    /// Checks the numbers.
    pub fn validate(&self) -> Result<(), AutoscaleError> {
        crate::plan::validate(0.0, self.capacity_rps, self.target_utilisation_pct)?;
        if let Some(l) = self.inflight_per_edge {
            crate::plan::validate(0.0, l, self.target_utilisation_pct)?;
        }
        if self.max_edges == 0 || self.min_edges > self.max_edges {
            return Err(AutoscaleError::Bounds {
                min: self.min_edges,
                max: self.max_edges,
            });
        }
        Ok(())
    }
}

/// A config that cannot work.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AutoscaleError {
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("edge bounds must satisfy 0 ≤ min ≤ max and max ≥ 1, got min {min}, max {max}")]
    Bounds { min: u32, max: u32 },
}

/// What a region looks like at a tick.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RegionObservation {
    /// Requests/s to the region.
    pub rate: f64,
    /// In-flight requests on the region's edges.
    pub inflight: f64,
    /// Edges the region runs (started or starting; not those draining).
    pub edges: u32,
}

/// Which way to scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    ScaleOut,
    ScaleIn,
}

/// A decision to change a region's edge count.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    pub region: String,
    pub action: Action,
    pub from: u32,
    pub to: u32,
    pub reason: String,
}

/// What happened, for the event log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    /// The autoscaler decided to add edges.
    ScaleOut,
    /// The autoscaler decided to remove edges.
    ScaleIn,
    /// An edge started and passed its health check (driver).
    EdgeStarted,
    /// An edge was drained and stopped (driver).
    EdgeStopped,
    /// Starting or stopping an edge failed (driver).
    Error,
}

/// One entry of the event log.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScalingEvent {
    /// Milliseconds on the autoscaler's clock.
    pub at_ms: u64,
    pub region: String,
    pub kind: EventKind,
    /// Edge counts of a decision.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<u32>,
    /// The edge a fleet event is about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub edge: Option<String>,
    pub reason: String,
}

impl From<(&Decision, Duration)> for ScalingEvent {
    fn from((d, at): (&Decision, Duration)) -> Self {
        ScalingEvent {
            at_ms: at.as_millis() as u64,
            region: d.region.clone(),
            kind: match d.action {
                Action::ScaleOut => EventKind::ScaleOut,
                Action::ScaleIn => EventKind::ScaleIn,
            },
            from: Some(d.from),
            to: Some(d.to),
            edge: None,
            reason: d.reason.clone(),
        }
    }
}

/// One tick of one region, for the "edges over time" chart.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct HistoryPoint {
    pub at_ms: u64,
    /// Edges running (observed, before this tick's decision).
    pub edges: u32,
    /// Edges wanted (after clamping to min and max).
    pub wanted: u32,
    pub rate: f64,
    pub inflight: f64,
    /// Average utilisation of the running edges, percent.
    pub utilisation_pct: Option<f64>,
}

/// The auto-scaling decision for one region.
#[derive(Debug, Clone)]
pub struct Autoscaler {
    region: String,
    config: AutoscaleConfig,
    last_scale_out: Option<Duration>,
    last_change: Option<Duration>,
    /// Since when fewer edges than running have been wanted, and the most wanted since.
    low: Option<(Duration, u32)>,
    history: VecDeque<HistoryPoint>,
    events: VecDeque<ScalingEvent>,
}

impl Autoscaler {
    /// An autoscaler for `region`; the config is checked.
    pub fn new(region: &str, config: AutoscaleConfig) -> Result<Self, AutoscaleError> {
        config.validate()?;
        Ok(Autoscaler {
            region: region.to_owned(),
            config,
            last_scale_out: None,
            last_change: None,
            low: None,
            history: VecDeque::new(),
            events: VecDeque::new(),
        })
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    pub fn config(&self) -> &AutoscaleConfig {
        &self.config
    }

    /// Edges wanted for `obs`, clamped to `[min, max]`, and why.
    pub fn wanted(&self, obs: &RegionObservation) -> (u32, String) {
        let c = &self.config;
        let target = c.target_utilisation_pct;
        // Inputs were checked at construction; a bad observation (negative or NaN rate)
        // counts as no load.
        let by_rate = edges_needed(obs.rate.max(0.0), c.capacity_rps, target).unwrap_or(0);
        let mut why = format!(
            "rate {:.1} req/s needs {by_rate} edge{} at {}% of {} req/s",
            obs.rate,
            if by_rate == 1 { "" } else { "s" },
            target,
            c.capacity_rps
        );
        let mut want = by_rate;
        if let Some(limit) = c.inflight_per_edge {
            let by_inflight = edges_needed(obs.inflight.max(0.0), limit, target).unwrap_or(0);
            if by_inflight > by_rate {
                want = by_inflight;
                why = format!(
                    "{:.0} in-flight requests need {by_inflight} edges at {}% of {} per edge \
                     (saturation; the rate alone needs {by_rate})",
                    obs.inflight, target, limit
                );
            }
        }
        if want < c.min_edges {
            why.push_str(&format!("; minimum {}", c.min_edges));
        } else if want > c.max_edges {
            why.push_str(&format!("; capped at the maximum {}", c.max_edges));
        }
        (want.clamp(c.min_edges, c.max_edges), why)
    }

    /// Looks at the region at `now` (any monotonic clock; only differences matter) and
    /// decides. The caller carries a decision out; the next observation's `edges` should
    /// count edges being started and leave out edges being drained.
    pub fn tick(&mut self, now: Duration, obs: RegionObservation) -> Option<Decision> {
        let c = self.config.clone();
        let current = obs.edges;
        let (want, why) = self.wanted(&obs);
        self.push_history(HistoryPoint {
            at_ms: now.as_millis() as u64,
            edges: current,
            wanted: want,
            rate: obs.rate,
            inflight: obs.inflight,
            utilisation_pct: utilisation_pct(obs.rate, c.capacity_rps, current),
        });
        let util = match utilisation_pct(obs.rate, c.capacity_rps, current) {
            Some(u) => format!("utilisation {u:.0}% on {current}"),
            None => "no edges running".to_owned(),
        };
        let since = |t: Option<Duration>| t.map(|t| now.saturating_sub(t));
        let decision = if current < c.min_edges {
            self.low = None;
            Some((
                Action::ScaleOut,
                c.min_edges,
                format!("below the minimum of {}", c.min_edges),
            ))
        } else if current > c.max_edges {
            self.low = None;
            Some((
                Action::ScaleIn,
                c.max_edges,
                format!("above the maximum of {}", c.max_edges),
            ))
        } else if want > current {
            self.low = None;
            match since(self.last_scale_out) {
                Some(d) if d < c.scale_out_cooldown => None,
                _ => Some((Action::ScaleOut, want, format!("{why}; {util}"))),
            }
        } else if want < current {
            let (start, most) = match self.low {
                Some((start, most)) => (start, most.max(want)),
                None => (now, want),
            };
            self.low = Some((start, most));
            let calm = since(self.last_change).is_none_or(|d| d >= c.scale_in_cooldown);
            (now.saturating_sub(start) >= c.scale_in_cooldown && calm).then(|| {
                (
                    Action::ScaleIn,
                    most,
                    format!(
                        "at most {most} edge{} wanted for {} s ({why} now); {util}",
                        if most == 1 { "" } else { "s" },
                        c.scale_in_cooldown.as_secs_f64()
                    ),
                )
            })
        } else {
            self.low = None;
            None
        };
        let (action, to, reason) = decision?;
        self.last_change = Some(now);
        self.low = None;
        if action == Action::ScaleOut {
            self.last_scale_out = Some(now);
        }
        let d = Decision {
            region: self.region.clone(),
            action,
            from: current,
            to,
            reason,
        };
        self.push_event(ScalingEvent::from((&d, now)));
        Some(d)
    }

    fn push_history(&mut self, p: HistoryPoint) {
        if self.history.len() == HISTORY_LIMIT {
            self.history.pop_front();
        }
        self.history.push_back(p);
    }

    fn push_event(&mut self, e: ScalingEvent) {
        if self.events.len() == EVENT_LIMIT {
            self.events.pop_front();
        }
        self.events.push_back(e);
    }

    /// The decisions made, oldest first (at most [`EVENT_LIMIT`]).
    pub fn events(&self) -> impl Iterator<Item = &ScalingEvent> {
        self.events.iter()
    }

    /// Every tick, oldest first (at most [`HISTORY_LIMIT`]).
    pub fn history(&self) -> impl Iterator<Item = &HistoryPoint> {
        self.history.iter()
    }
}
