//! Following the config file while `cdn edge` runs: the file is re-read every second (and at
//! once on SIGHUP); when its text changed and it parses and checks, with the command-line
//! flags applied on top as at start, its `peers` list is applied with
//! [`Peers::set_peers`]. Other fields are only applied by a restart: a change to them is
//! logged as a warning. A file that does not parse or check is logged (file, line, field)
//! and ignored; the running config stays.
//!
//! Writers should replace the file atomically (write, then rename). A file seen changing
//! between two reads 100 ms apart is left for the next poll, so an in-place rewrite is not
//! read half-written.

use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

use cdn_http::config::ConfigError;
use cdn_http::metrics::NodeMetrics;

use crate::EdgeArgs;
use crate::config::{EdgeConfig, read};
use crate::peer::{PeerChange, Peers};

/// How often the file is looked at.
pub const POLL: Duration = Duration::from_secs(1);
/// Two reads this far apart must agree before a changed file is used.
const SETTLE: Duration = Duration::from_millis(100);

/// What one look at the file found.
#[derive(Debug)]
pub enum Reload {
    /// The text is the one last looked at.
    Unchanged,
    /// The file changed and was used: the peer change applied (empty when the peers did not
    /// change) and the fields that need a restart.
    Applied {
        peers: PeerChange,
        restart: Vec<&'static str>,
    },
    /// The file could not be read, parsed or checked: the running config stays.
    Invalid(ConfigError),
}

/// The state of one followed file.
pub struct Reloader {
    path: PathBuf,
    args: EdgeArgs,
    /// The text last looked at (used or refused).
    seen: Option<String>,
    /// The last read error logged, so that a missing file is not logged every second.
    read_error: Option<String>,
    /// The config in force: the start-up one, with the peers last applied.
    running: EdgeConfig,
    peers: Option<Weak<Peers>>,
    metrics: Arc<NodeMetrics>,
}

impl Reloader {
    /// `text` is the file as read at start, `running` the config built from it.
    pub fn new(
        path: PathBuf,
        args: EdgeArgs,
        text: String,
        running: EdgeConfig,
        peers: Option<&Arc<Peers>>,
        metrics: Arc<NodeMetrics>,
    ) -> Self {
        Reloader {
            path,
            args,
            seen: Some(text),
            read_error: None,
            running,
            peers: peers.map(Arc::downgrade),
            metrics,
        }
    }

    fn file(&self) -> String {
        self.path.display().to_string()
    }

    /// Looks at the file once; `forced` (SIGHUP) re-applies even an unchanged text. Logs
    /// what it did.
    pub async fn check(&mut self, forced: bool) -> Reload {
        let text = match read(&self.path) {
            Ok(t) => t,
            Err(e) => {
                let msg = e.to_string();
                if forced || self.read_error.as_deref() != Some(msg.as_str()) {
                    tracing::error!(error = %msg, "config reload failed: keeping the running config");
                    self.count("invalid");
                }
                self.read_error = Some(msg);
                return Reload::Invalid(e);
            }
        };
        self.read_error = None;
        if !forced && self.seen.as_deref() == Some(text.as_str()) {
            return Reload::Unchanged;
        }
        if !forced {
            tokio::time::sleep(SETTLE).await;
            match read(&self.path) {
                Ok(again) if again == text => {}
                // Still being written: the next poll sees the end result.
                _ => return Reload::Unchanged,
            }
        }
        self.seen = Some(text.clone());
        let file = self.file();
        let cfg = match self.args.resolve_text(&text, &file) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "config reload refused: keeping the running config");
                self.count("invalid");
                return Reload::Invalid(e);
            }
        };
        let restart = self.running.fields_changed(&cfg);
        if !restart.is_empty() {
            tracing::warn!(file = %file, fields = ?restart, "config fields changed: restart to apply");
        }
        let mut peers = PeerChange::default();
        if cfg.peers != self.running.peers {
            match self.peers.as_ref().and_then(Weak::upgrade) {
                Some(p) => match p.set_peers(cfg.peers.clone()) {
                    Ok(change) => {
                        tracing::info!(
                            file = %file,
                            added = ?change.added,
                            removed = ?change.removed,
                            changed = ?change.changed,
                            peers = cfg.peers.len(),
                            "config reloaded: peers applied"
                        );
                        peers = change;
                        self.running.peers = cfg.peers;
                    }
                    Err(e) => {
                        tracing::error!(file = %file, error = %e, "config reload refused: keeping the running peers");
                        self.count("invalid");
                        return Reload::Invalid(ConfigError::Invalid {
                            file,
                            line: 0,
                            column: 0,
                            field: "peers".into(),
                            message: e.to_string(),
                        });
                    }
                },
                None => tracing::warn!(
                    file = %file,
                    "peers changed, but this node has no peer endpoint (peer_listen): restart to apply"
                ),
            }
        } else {
            tracing::info!(file = %file, "config reloaded: peers unchanged");
        }
        self.count("ok");
        Reload::Applied { peers, restart }
    }

    fn count(&self, result: &'static str) {
        self.metrics.with(|| {
            metrics::counter!("cdn_edge_config_reloads_total", "result" => result).increment(1)
        });
    }
}

/// The task following the file; stops it when dropped.
pub struct Watcher(tokio::task::JoinHandle<()>);

impl Drop for Watcher {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts following the file: every [`POLL`] and on SIGHUP (the handler is installed before
/// this returns, so a SIGHUP never kills the node).
pub fn watch(mut reloader: Reloader) -> Watcher {
    #[cfg(unix)]
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "no SIGHUP handler: the config file is only polled");
            None
        }
    };
    Watcher(tokio::spawn(async move {
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            #[cfg(unix)]
            let forced = tokio::select! {
                _ = tick.tick() => false,
                () = hangup(&mut hup) => {
                    tracing::info!(file = %reloader.file(), "SIGHUP: reloading the config");
                    true
                }
            };
            #[cfg(not(unix))]
            let forced = {
                tick.tick().await;
                false
            };
            if reloader
                .peers
                .as_ref()
                .is_some_and(|p| p.strong_count() == 0)
            {
                return;
            }
            reloader.check(forced).await;
        }
    }))
}

#[cfg(unix)]
use cdn_http::tls::hangup;
