//! `cdn plan`: capacity planning of the edge fleet.
//!
//! A region needs `ceil(rate / (capacity per edge × target utilisation))` edges, and never
//! fewer than the configured minimum. The arithmetic is exact on the numbers as written (each
//! input is read as the decimal it prints as, to a millionth), so 700 req/s on edges of
//! 100 req/s at 70 % is 10 edges, never 11 by a float rounding. [`Plan::compute`] adds the
//! utilisation now and after the plan, and recommendations: scale out or in, strengthen
//! caching (utilisation near saturation, or a low hit ratio), look at the origin (origin
//! egress near its capacity).
//!
//! `cdn plan --from-lab` measures instead of being told: the request rate of every region
//! from the router's route counters, sampled twice; hit ratio and origin egress from the
//! edges' counters; the capacity per edge from the file `cdn bench` writes (see [`lab`]).
//!
//! The autoscaler (`lab/src/autoscale/`) uses the same formula ([`edges_needed`]) and the same
//! measurements ([`lab::HttpSampler`]).

pub mod lab;

use std::fmt::Write as _;
use std::path::PathBuf;

use serde::Serialize;

/// Edges a region keeps even with no traffic, unless told otherwise.
pub const DEFAULT_MIN_EDGES: u32 = 1;
/// Utilisation (percent of capacity) at or above which caching should be strengthened.
pub const DEFAULT_SATURATION_PCT: f64 = 90.0;
/// Hit ratio (percent) below which caching should be strengthened.
pub const DEFAULT_MIN_HIT_RATIO_PCT: f64 = 90.0;
/// Origin egress (percent of the origin's capacity) at which the origin is the bottleneck.
pub const ORIGIN_BOTTLENECK_PCT: f64 = 80.0;
/// Largest request rate or capacity accepted (requests/s); keeps the exact arithmetic in
/// 128 bits.
pub const MAX_RATE: f64 = 1e15;

/// Invalid planning input.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    #[error(
        "capacity must be a positive number of requests/s per edge (at least 0.000001), got {0}"
    )]
    Capacity(f64),
    #[error("target utilisation must be a percentage in (0, 100], got {0}")]
    Utilisation(f64),
    #[error("request rate must be zero or a positive number of requests/s, got {0}")]
    Rate(f64),
    #[error("{what} must be at most 1e15 requests/s, got {value}")]
    TooLarge { what: &'static str, value: f64 },
    #[error("current edge count must be zero or positive, got {0}")]
    Current(i64),
    #[error("minimum edge count must be zero or positive, got {0}")]
    Min(i64),
    #[error("{0} edges do not fit in a plan (more than {max})", max = u32::MAX)]
    TooManyEdges(u128),
    #[error("hit ratio must be a percentage in [0, 100], got {0}")]
    HitRatio(f64),
    #[error("{what} must be zero or a positive number of Mbit/s, got {value}")]
    Bandwidth { what: &'static str, value: f64 },
    #[error("origin capacity must be a positive number of Mbit/s, got {0}")]
    OriginCapacity(f64),
    #[error("{what} must be a percentage in (0, 100], got {value}")]
    Threshold { what: &'static str, value: f64 },
}

/// `x` in millionths, read as the shortest decimal that prints as `x` (what the user typed),
/// rounded half up at the seventh decimal. `None` for negative, non-finite or huge values.
fn micros(x: f64) -> Option<u128> {
    if !x.is_finite() || !(0.0..=MAX_RATE).contains(&x) {
        return None;
    }
    // `Display` of f64 never uses exponent notation and prints the shortest round-trip form.
    let s = format!("{x}");
    let (int, frac) = s.split_once('.').unwrap_or((&s, ""));
    let int: u128 = int.parse().ok()?;
    let mut digits = frac
        .bytes()
        .map(|b| u128::from(b - b'0'))
        .chain(std::iter::repeat(0));
    let mut f = 0u128;
    for _ in 0..6 {
        f = f * 10 + digits.next()?;
    }
    let round_up = u128::from(digits.next()? >= 5);
    int.checked_mul(1_000_000)?.checked_add(f + round_up)
}

/// Checks a rate-like input: finite, ≥ 0, not huge.
fn check_rate(what: &'static str, rate: f64) -> Result<u128, PlanError> {
    if !rate.is_finite() || rate < 0.0 {
        return Err(PlanError::Rate(rate));
    }
    micros(rate).ok_or(PlanError::TooLarge { what, value: rate })
}

fn check_capacity(capacity: f64) -> Result<u128, PlanError> {
    if !capacity.is_finite() || capacity <= 0.0 {
        return Err(PlanError::Capacity(capacity));
    }
    match micros(capacity) {
        Some(0) => Err(PlanError::Capacity(capacity)),
        Some(c) => Ok(c),
        None => Err(PlanError::TooLarge {
            what: "capacity",
            value: capacity,
        }),
    }
}

fn check_target(target_pct: f64) -> Result<u128, PlanError> {
    if !(target_pct.is_finite() && target_pct > 0.0 && target_pct <= 100.0) {
        return Err(PlanError::Utilisation(target_pct));
    }
    match micros(target_pct) {
        Some(t) if t > 0 => Ok(t),
        _ => Err(PlanError::Utilisation(target_pct)),
    }
}

/// Checks the three inputs of the formula without computing anything.
pub fn validate(rate: f64, capacity: f64, target_pct: f64) -> Result<(), PlanError> {
    check_rate("request rate", rate)?;
    check_capacity(capacity)?;
    check_target(target_pct)?;
    Ok(())
}

/// The smallest number of edges `n` with `rate / (n × capacity) ≤ target_pct / 100`:
/// `ceil(rate / (capacity × target))`, computed exactly (no minimum applied; rate 0 → 0).
///
/// `rate` and `capacity` are requests/s (or any load unit, the same for both), `target_pct` a
/// percentage in (0, 100].
pub fn edges_needed(rate: f64, capacity: f64, target_pct: f64) -> Result<u32, PlanError> {
    let rate = check_rate("request rate", rate)?;
    let capacity = check_capacity(capacity)?;
    let target = check_target(target_pct)?;
    // n ≥ (rate/1e6) / ((capacity/1e6) × (target/1e6) / 100)
    //   = rate × 100 × 1e6 / (capacity × target); both sides stay below 1e29.
    let num = rate * 100 * 1_000_000;
    let den = capacity * target;
    let n = num.div_ceil(den);
    u32::try_from(n).map_err(|_| PlanError::TooManyEdges(n))
}

/// Average utilisation in percent of `edges` edges of `capacity` each carrying `rate`;
/// `None` with no edges.
pub fn utilisation_pct(rate: f64, capacity: f64, edges: u32) -> Option<f64> {
    (edges > 0 && capacity > 0.0).then(|| rate / (f64::from(edges) * capacity) * 100.0)
}

/// Everything a plan is made from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlanInput {
    /// A region name (for `--from-lab`), or none for a plan of numbers given by hand.
    pub region: Option<String>,
    /// Requests/s.
    pub rate: f64,
    /// Requests/s one edge serves (with p99 under its target).
    pub capacity: f64,
    /// Percent of capacity the average edge may use.
    pub target_pct: f64,
    /// Edges a region keeps even at rate 0.
    pub min_edges: u32,
    /// Edges running now, when known.
    pub current: Option<u32>,
    /// Share of requests answered from cache, percent.
    pub hit_ratio_pct: Option<f64>,
    /// Bytes the origin sends, Mbit/s.
    pub origin_egress_mbps: Option<f64>,
    /// What the origin can send, Mbit/s.
    pub origin_capacity_mbps: Option<f64>,
    /// Utilisation (percent) from which caching should be strengthened.
    pub saturation_pct: f64,
    /// Hit ratio (percent) under which caching should be strengthened.
    pub min_hit_ratio_pct: f64,
}

impl PlanInput {
    /// A plan input with the defaults for everything but the formula's three numbers.
    pub fn new(rate: f64, capacity: f64, target_pct: f64) -> Self {
        PlanInput {
            region: None,
            rate,
            capacity,
            target_pct,
            min_edges: DEFAULT_MIN_EDGES,
            current: None,
            hit_ratio_pct: None,
            origin_egress_mbps: None,
            origin_capacity_mbps: None,
            saturation_pct: DEFAULT_SATURATION_PCT,
            min_hit_ratio_pct: DEFAULT_MIN_HIT_RATIO_PCT,
        }
    }
}

/// Why caching should be strengthened.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "why")]
pub enum CachingReason {
    /// Utilisation (now, or as planned) at or above the saturation level.
    NearSaturation {
        utilisation_pct: f64,
        saturation_pct: f64,
    },
    /// Hit ratio below the wanted level.
    LowHitRatio { hit_ratio_pct: f64, min_pct: f64 },
}

/// One recommendation of a plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "action")]
pub enum Recommendation {
    /// Add edges.
    ScaleOut { from: u32, to: u32 },
    /// Remove edges (drain them first).
    ScaleIn { from: u32, to: u32 },
    /// The current count is right.
    Hold { edges: u32 },
    /// Raise the hit ratio or the cache's share of the work: more memory per edge, longer
    /// freshness, peer fill.
    StrengthenCaching(CachingReason),
    /// Origin egress is the bottleneck: edges will not help.
    CheckOrigin {
        egress_mbps: f64,
        capacity_mbps: f64,
        utilisation_pct: f64,
    },
}

/// A capacity plan for one region (or one fleet).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    #[serde(flatten)]
    pub input: PlanInput,
    /// Edges needed: the formula's answer, at least `min_edges`.
    pub needed: u32,
    /// What the formula alone says (before the minimum).
    pub needed_by_rate: u32,
    /// Utilisation now, percent (with `current` edges); `None` when unknown or no edges.
    pub utilisation_now_pct: Option<f64>,
    /// Utilisation with `needed` edges, percent; `None` with no edges.
    pub utilisation_planned_pct: Option<f64>,
    pub recommendations: Vec<Recommendation>,
}

/// The origin recommendation, when egress is at or above [`ORIGIN_BOTTLENECK_PCT`] of the
/// origin's capacity.
pub fn origin_check(egress_mbps: f64, capacity_mbps: f64) -> Option<Recommendation> {
    let pct = egress_mbps / capacity_mbps * 100.0;
    (pct >= ORIGIN_BOTTLENECK_PCT).then_some(Recommendation::CheckOrigin {
        egress_mbps,
        capacity_mbps,
        utilisation_pct: pct,
    })
}

impl Plan {
    /// Checks the input and computes the plan.
    pub fn compute(input: PlanInput) -> Result<Plan, PlanError> {
        let needed_by_rate = edges_needed(input.rate, input.capacity, input.target_pct)?;
        if let Some(h) = input.hit_ratio_pct
            && !(h.is_finite() && (0.0..=100.0).contains(&h))
        {
            return Err(PlanError::HitRatio(h));
        }
        if let Some(e) = input.origin_egress_mbps
            && !(e.is_finite() && e >= 0.0)
        {
            return Err(PlanError::Bandwidth {
                what: "origin egress",
                value: e,
            });
        }
        if let Some(c) = input.origin_capacity_mbps
            && !(c.is_finite() && c > 0.0)
        {
            return Err(PlanError::OriginCapacity(c));
        }
        for (what, value) in [
            ("saturation", input.saturation_pct),
            ("minimum hit ratio", input.min_hit_ratio_pct),
        ] {
            if !(value.is_finite() && value > 0.0 && value <= 100.0) {
                return Err(PlanError::Threshold { what, value });
            }
        }
        let needed = needed_by_rate.max(input.min_edges);
        let utilisation_now_pct = input
            .current
            .and_then(|n| utilisation_pct(input.rate, input.capacity, n));
        let utilisation_planned_pct = utilisation_pct(input.rate, input.capacity, needed);
        let mut recommendations = Vec::new();
        if let Some(current) = input.current {
            recommendations.push(match current.cmp(&needed) {
                std::cmp::Ordering::Less => Recommendation::ScaleOut {
                    from: current,
                    to: needed,
                },
                std::cmp::Ordering::Greater => Recommendation::ScaleIn {
                    from: current,
                    to: needed,
                },
                std::cmp::Ordering::Equal => Recommendation::Hold { edges: current },
            });
        }
        // Near saturation now (before scaling) or even as planned (a target near 100 %).
        let hottest = match (utilisation_now_pct, utilisation_planned_pct) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        let no_edges_under_load = input.current == Some(0) && input.rate > 0.0;
        if let Some(u) = hottest.filter(|u| *u >= input.saturation_pct)
            && !no_edges_under_load
        {
            recommendations.push(Recommendation::StrengthenCaching(
                CachingReason::NearSaturation {
                    utilisation_pct: u,
                    saturation_pct: input.saturation_pct,
                },
            ));
        }
        if let Some(h) = input.hit_ratio_pct.filter(|h| *h < input.min_hit_ratio_pct) {
            recommendations.push(Recommendation::StrengthenCaching(
                CachingReason::LowHitRatio {
                    hit_ratio_pct: h,
                    min_pct: input.min_hit_ratio_pct,
                },
            ));
        }
        if let (Some(e), Some(c)) = (input.origin_egress_mbps, input.origin_capacity_mbps)
            && let Some(r) = origin_check(e, c)
        {
            recommendations.push(r);
        }
        Ok(Plan {
            input,
            needed,
            needed_by_rate,
            utilisation_now_pct,
            utilisation_planned_pct,
            recommendations,
        })
    }

    /// The plan as text for a terminal.
    pub fn render(&self) -> String {
        let i = &self.input;
        let mut out = String::new();
        match &i.region {
            Some(r) => {
                let _ = writeln!(out, "region {r}");
            }
            None => {
                let _ = writeln!(out, "capacity plan");
            }
        }
        let _ = writeln!(out, "  edges needed:    {}", self.needed);
        let per_edge = i.capacity * i.target_pct / 100.0;
        let _ = writeln!(out, "  request rate:    {} req/s", num(i.rate),);
        let _ = writeln!(
            out,
            "  per edge:        {} req/s capacity, {} req/s at the {}% target",
            num(i.capacity),
            num(per_edge),
            num(i.target_pct)
        );
        let by = if self.needed > self.needed_by_rate {
            format!(
                "ceil({} / {}) = {}, raised to the minimum of {}",
                num(i.rate),
                num(per_edge),
                self.needed_by_rate,
                i.min_edges
            )
        } else {
            format!(
                "ceil({} / {}) = {}",
                num(i.rate),
                num(per_edge),
                self.needed_by_rate
            )
        };
        let _ = writeln!(out, "  formula:         {by}");
        match (i.current, self.utilisation_now_pct) {
            (Some(n), Some(u)) => {
                let _ = writeln!(
                    out,
                    "  utilisation now: {} on {n} edge{}",
                    pct(u),
                    plural(n)
                );
            }
            (Some(0), None) => {
                let _ = writeln!(out, "  utilisation now: no edges running");
            }
            _ => {}
        }
        if let Some(u) = self.utilisation_planned_pct {
            let _ = writeln!(
                out,
                "  planned:         {} on {} edge{}",
                pct(u),
                self.needed,
                plural(self.needed)
            );
        }
        if let Some(h) = i.hit_ratio_pct {
            let _ = writeln!(out, "  hit ratio:       {}", pct(h));
        }
        if let Some(e) = i.origin_egress_mbps {
            match i.origin_capacity_mbps {
                Some(c) => {
                    let _ = writeln!(
                        out,
                        "  origin egress:   {} of {} Mbit/s ({})",
                        num(e),
                        num(c),
                        pct(e / c * 100.0)
                    );
                }
                None => {
                    let _ = writeln!(out, "  origin egress:   {} Mbit/s", num(e));
                }
            }
        }
        if self.recommendations.is_empty() {
            let _ = writeln!(out, "  recommendations: none");
        } else {
            let _ = writeln!(out, "  recommendations:");
            for r in &self.recommendations {
                let _ = writeln!(out, "    - {}", describe(r, i.target_pct));
            }
        }
        out
    }
}

/// One line for a recommendation.
pub fn describe(r: &Recommendation, target_pct: f64) -> String {
    match r {
        Recommendation::ScaleOut { from, to } => format!(
            "scale out from {from} to {to} edges (keeps average utilisation at or under {}%)",
            num(target_pct)
        ),
        Recommendation::ScaleIn { from, to } => format!(
            "scale in from {from} to {to} edges (drain the removed edges before stopping them)"
        ),
        Recommendation::Hold { edges } => {
            format!("hold at {edges} edge{}: the count is right", plural(*edges))
        }
        Recommendation::StrengthenCaching(CachingReason::NearSaturation {
            utilisation_pct,
            saturation_pct,
        }) => format!(
            "strengthen caching: utilisation {} is at or near saturation (≥ {}); more cache memory \
             per edge, longer freshness and peer fill cut the work per request",
            pct(*utilisation_pct),
            pct(*saturation_pct)
        ),
        Recommendation::StrengthenCaching(CachingReason::LowHitRatio {
            hit_ratio_pct,
            min_pct,
        }) => format!(
            "strengthen caching: hit ratio {} is below {}; give edges more cache memory, \
             check Cache-Control of the misses, turn on peer fill",
            pct(*hit_ratio_pct),
            pct(*min_pct)
        ),
        Recommendation::CheckOrigin {
            egress_mbps,
            capacity_mbps,
            utilisation_pct,
        } => format!(
            "look at the origin: its egress {} of {} Mbit/s ({}) is the bottleneck; more edges \
             will not help: raise the hit ratio or add origin capacity (or a shield tier)",
            num(*egress_mbps),
            num(*capacity_mbps),
            pct(*utilisation_pct)
        ),
    }
}

fn plural(n: u32) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// A number with at most two decimals, trailing zeros dropped.
fn num(x: f64) -> String {
    let s = format!("{x:.2}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" { "0".into() } else { s.into() }
}

fn pct(x: f64) -> String {
    format!("{x:.1}%")
}

/// `cdn plan` arguments.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = "Examples:\n  \
    cdn plan --rate 700 --capacity 100 --target-utilisation 70 --current 8\n  \
    cdn plan --rate 700 --capacity 100 --hit-ratio 72 --origin-egress-mbps 900 --origin-capacity-mbps 1000\n  \
    cdn plan --from-lab --router http://127.0.0.1:8080 --sample-secs 5")]
pub struct PlanArgs {
    /// Request rate, requests/s.
    #[arg(
        long,
        allow_negative_numbers = true,
        required_unless_present = "from_lab"
    )]
    pub rate: Option<f64>,
    /// Requests/s one edge serves with p99 under its target (`cdn bench` measures it). With
    /// --from-lab, overrides the capacity file.
    #[arg(long, allow_negative_numbers = true)]
    pub capacity: Option<f64>,
    /// Average utilisation not to exceed, percent of capacity, in (0, 100].
    #[arg(
        long = "target-utilisation",
        visible_alias = "target-utilization",
        default_value_t = 70.0,
        allow_negative_numbers = true
    )]
    pub target_utilisation: f64,
    /// Edges running now (to recommend scaling out or in).
    #[arg(long, allow_negative_numbers = true, conflicts_with = "from_lab")]
    pub current: Option<i64>,
    /// Edges to keep even with no traffic.
    #[arg(long, default_value_t = i64::from(DEFAULT_MIN_EDGES), allow_negative_numbers = true)]
    pub min: i64,
    /// Cache hit ratio, percent (measured with --from-lab).
    #[arg(long, allow_negative_numbers = true, conflicts_with = "from_lab")]
    pub hit_ratio: Option<f64>,
    /// Origin egress, Mbit/s (measured with --from-lab).
    #[arg(long, allow_negative_numbers = true, conflicts_with = "from_lab")]
    pub origin_egress_mbps: Option<f64>,
    /// What the origin can send, Mbit/s.
    #[arg(long, allow_negative_numbers = true)]
    pub origin_capacity_mbps: Option<f64>,
    /// Utilisation, percent, from which to recommend strengthening caching.
    #[arg(long, default_value_t = DEFAULT_SATURATION_PCT, allow_negative_numbers = true)]
    pub saturation: f64,
    /// Hit ratio, percent, under which to recommend strengthening caching.
    #[arg(long, default_value_t = DEFAULT_MIN_HIT_RATIO_PCT, allow_negative_numbers = true)]
    pub min_hit_ratio: f64,
    /// Measure the lab: request rate per region from the router's metrics, hit ratio and
    /// origin egress from the edges', capacity per edge from --capacity-file.
    #[arg(long, conflicts_with = "rate")]
    pub from_lab: bool,
    /// The router's base URL (with --from-lab); default: the `router` of the lab's state
    /// file, else http://127.0.0.1:8080.
    #[arg(long)]
    pub router: Option<String>,
    /// The running lab's state file, read for the router's URL (with --from-lab).
    #[arg(long, default_value = lab::DEFAULT_STATE_FILE)]
    pub state: PathBuf,
    /// Seconds between the two samples the rates come from (with --from-lab).
    #[arg(long, default_value_t = 5.0)]
    pub sample_secs: f64,
    /// The per-edge capacity `cdn bench capacity` measured (with --from-lab, or without
    /// --capacity), JSON:
    /// `{"requests_per_sec": 850, "p99_ms_target": 50, "measured": "2025-06-01"}`.
    #[arg(long, default_value = lab::DEFAULT_CAPACITY_FILE)]
    pub capacity_file: PathBuf,
    /// Print the plan as JSON.
    #[arg(long)]
    pub json: bool,
}

impl PlanArgs {
    fn count(what: fn(i64) -> PlanError, n: i64) -> Result<u32, PlanError> {
        u32::try_from(n).map_err(|_| what(n))
    }

    /// The plan input from the flags (everything but rate, capacity and region).
    fn input(&self, rate: f64, capacity: f64) -> Result<PlanInput, PlanError> {
        Ok(PlanInput {
            min_edges: Self::count(PlanError::Min, self.min)?,
            current: self
                .current
                .map(|n| Self::count(PlanError::Current, n))
                .transpose()?,
            hit_ratio_pct: self.hit_ratio,
            origin_egress_mbps: self.origin_egress_mbps,
            origin_capacity_mbps: self.origin_capacity_mbps,
            saturation_pct: self.saturation,
            min_hit_ratio_pct: self.min_hit_ratio,
            ..PlanInput::new(rate, capacity, self.target_utilisation)
        })
    }
}

/// `cdn plan`.
pub async fn run(args: PlanArgs) -> anyhow::Result<()> {
    if args.from_lab {
        return lab::run(&args).await;
    }
    let rate = args
        .rate
        .ok_or_else(|| anyhow::anyhow!("--rate is needed (or --from-lab)"))?;
    let capacity = match args.capacity {
        Some(c) => c,
        None => match lab::read_capacity(&args.capacity_file)? {
            Some(c) => {
                if !args.json {
                    println!(
                        "capacity per edge: {} req/s, measured by `cdn bench capacity` ({})",
                        num(c.requests_per_sec),
                        args.capacity_file.display()
                    );
                }
                c.requests_per_sec
            }
            None => anyhow::bail!(
                "--capacity is needed: requests/s one edge serves (or measure it with `cdn \
                 bench capacity`, which writes {})",
                args.capacity_file.display()
            ),
        },
    };
    let plan = Plan::compute(args.input(rate, capacity)?)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&plan)?);
    } else {
        print!("{}", plan.render());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micros_reads_the_decimal_as_written() {
        assert_eq!(micros(0.7), Some(700_000));
        assert_eq!(micros(70.0), Some(70_000_000));
        assert_eq!(micros(0.1 + 0.2), Some(300_000)); // 0.30000000000000004
        assert_eq!(micros(0.0000005), Some(1));
        assert_eq!(micros(0.0000004), Some(0));
        assert_eq!(micros(1e15), Some(1_000_000_000_000_000_000_000));
        assert_eq!(micros(1e16), None);
        assert_eq!(micros(-1.0), None);
        assert_eq!(micros(f64::NAN), None);
    }

    #[test]
    fn num_drops_trailing_zeros() {
        assert_eq!(num(70.0), "70");
        assert_eq!(num(0.5), "0.5");
        assert_eq!(num(2.0 / 3.0), "0.67");
    }
}
