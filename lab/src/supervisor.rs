//! The running lab: [`Supervisor`] holds the node processes, answers the dashboard's stop
//! and start requests, notices nodes that exit on their own and stops everything in order
//! (router, edges, origin); [`start_autoscale`] starts the per-region autoscaler on the
//! lab's fleet when the lab file asks for it.

use std::sync::Arc;
use std::time::Duration;

use crate::procs::NodeProc;
use crate::{Lab, STOP_GRACE, fleet};

/// The running lab's processes and the supervisor's bookkeeping.
pub(crate) struct Supervisor {
    pub lab: Arc<Lab>,
    pub origin: NodeProc,
    pub edges: Arc<fleet::Edges>,
    pub router: NodeProc,
}

impl Supervisor {
    fn set_running(&self, name: &str, running: bool, pid: Option<u32>) {
        self.edges.wiring.set_node(name, |n| {
            n.running = running;
            n.pid = pid;
        });
    }

    /// The always-on edge `name` (spares belong to the autoscaler).
    fn static_edge(&self, name: &str) -> Result<usize, String> {
        let plan = &self.edges.wiring.plan;
        let i = plan
            .edges
            .iter()
            .position(|e| e.name == name)
            .ok_or_else(|| format!("no edge `{name}`"))?;
        if plan.edges[i].spare {
            return Err(format!(
                "{name} is a spare edge: the autoscaler starts and stops it"
            ));
        }
        Ok(i)
    }

    pub(crate) async fn stop_edge(&mut self, name: &str) -> Result<(), String> {
        let i = self.static_edge(name)?;
        let mut slots = self.edges.slots.lock().await;
        if !slots[i].proc.running() {
            return Err(format!("{name} is not running"));
        }
        self.edges.stop_slot(&mut slots, i).await;
        tracing::info!(edge = name, "edge stopped from the dashboard");
        Ok(())
    }

    pub(crate) async fn start_edge(&mut self, name: &str) -> Result<(), String> {
        let i = self.static_edge(name)?;
        let mut slots = self.edges.slots.lock().await;
        if slots[i].proc.running() {
            return Err(format!("{name} is already running"));
        }
        self.edges
            .start_slot(&mut slots, i)
            .await
            .map_err(|e| format!("{e:#}"))?;
        tracing::info!(edge = name, "edge started from the dashboard");
        Ok(())
    }

    /// Notices nodes that exited on their own.
    pub(crate) fn reap(&mut self) {
        let mut changes = Vec::new();
        for p in [&mut self.origin, &mut self.router] {
            changes.push((p.name.clone(), p.running(), p.pid()));
        }
        // The autoscaler may hold the edges (starting one): look again next time.
        if let Ok(mut slots) = self.edges.slots.try_lock() {
            for s in slots.iter_mut() {
                changes.push((s.proc.name.clone(), s.proc.running(), s.proc.pid()));
            }
        }
        for (name, running, pid) in changes {
            self.set_running(&name, running, pid);
        }
    }

    pub(crate) async fn shutdown(mut self) {
        if let Some(a) = self.lab.autoscale.get() {
            a.abort();
        }
        self.router.stop(STOP_GRACE).await;
        let mut slots = self.edges.slots.lock().await;
        let stops = slots.iter_mut().map(|s| s.proc.stop(STOP_GRACE));
        futures::future::join_all(stops).await;
        drop(slots);
        self.origin.stop(STOP_GRACE).await;
    }
}

/// Starts the autoscaler when the lab file asks for it and the capacity of an edge is known.
pub(crate) fn start_autoscale(
    edges: &Arc<fleet::Edges>,
    router_url: &str,
) -> anyhow::Result<Option<crate::autoscale::driver::AutoscaleHandle>> {
    use crate::autoscale::driver::{self, HttpObserver, RegionSpec};
    let file = &edges.wiring.plan.file;
    let Some(a) = file.autoscale.as_ref().filter(|a| a.enabled) else {
        return Ok(None);
    };
    let capacity = match a.capacity_rps {
        Some(c) => c,
        None => match crate::plan::lab::read_capacity(&a.capacity_file)? {
            Some(c) => c.requests_per_sec,
            None => {
                tracing::warn!(
                    file = %a.capacity_file.display(),
                    "auto-scaling is off: no edge capacity (set [autoscale] capacity_rps in the \
                     lab file, or measure it with `cdn bench capacity`)"
                );
                return Ok(None);
            }
        },
    };
    let regions: Vec<RegionSpec> = file
        .regions
        .iter()
        .filter_map(|r| {
            Some(RegionSpec {
                region: r.name.clone(),
                config: file.autoscale_config(r, capacity)?,
                edges: r.edges.clone(),
            })
        })
        .collect();
    if regions.is_empty() {
        return Ok(None);
    }
    let fleet = Arc::new(fleet::LabFleet::new(
        edges.clone(),
        router_url.to_owned(),
        fleet::FleetOptions {
            ready_timeout: Duration::from_secs(30),
            drain_grace: Duration::from_millis(a.drain_grace_ms),
            drain_timeout: Duration::from_secs_f64(a.drain_timeout_secs),
        },
    ));
    let observer = HttpObserver::new(router_url, Duration::from_secs_f64(a.window_secs));
    let interval = Duration::from_millis(a.interval_ms);
    tracing::info!(
        capacity_rps = capacity,
        regions = regions.len(),
        "auto-scaling edges"
    );
    Ok(Some(driver::spawn(fleet, observer, regions, interval)?))
}
