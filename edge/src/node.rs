//! The node: its shared state ([`Edge`]: the config, the [`Cache`], the origin client for
//! passthrough, peers, in-flight count) and its wiring, which builds the store, the origin
//! client, the peers and the filler from the config, hands them to the cache, and starts the
//! peer server over the cache ([`peer::server::ChunkSource`], implemented here).

use std::sync::Arc;

use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use http::HeaderMap;

use cdn_http::metrics::NodeMetrics;

use crate::cache::Cache;
use crate::config::EdgeConfig;
use crate::fill::{FillSource, Filler};
use crate::origin::OriginClient;
use crate::peer::{self, Peers};
use crate::store::{ObjectMeta, Store};

/// The edge's shared state.
pub struct Edge {
    pub cfg: EdgeConfig,
    /// Cache decisions, and the only way to the store and the filler.
    pub cache: Arc<Cache>,
    /// The origin, for requests passed through uncached.
    pub origin: Arc<OriginClient>,
    pub metrics: Arc<NodeMetrics>,
    /// Peer replication, when this node has a peer endpoint.
    pub peers: Option<Arc<Peers>>,
    /// Requests being answered (head or body) right now.
    pub inflight: Arc<std::sync::atomic::AtomicU64>,
}

impl Edge {
    /// Builds the edge; with `peer_listen` set, binds its QUIC endpoint and starts answering
    /// peers (must run inside a tokio runtime).
    pub fn new(cfg: EdgeConfig, metrics: Arc<NodeMetrics>) -> anyhow::Result<Arc<Self>> {
        // The arena only pays with the lane reading chunks without waiting (S3-FIFO).
        let lane_reads = cfg.express && cfg.policy.is_s3fifo();
        if cfg.sendfile && !lane_reads {
            tracing::warn!(
                express = cfg.express,
                policy = ?cfg.policy,
                "sendfile needs the express lane and an S3-FIFO policy: chunks stay on the heap"
            );
        }
        let store = if cfg.sendfile && lane_reads {
            Store::with_arena(cfg.capacity, cfg.policy, cfg.chunk_size)
        } else {
            Store::new(cfg.capacity, cfg.policy)
        };
        let origin = Arc::new(
            OriginClient::from_config(&cfg, metrics.clone())?.with_fill_fields(cfg.fill_fields()),
        );
        let m = metrics.clone();
        let peers = Peers::new(&cfg, metrics.clone())?;
        let mut sources: Vec<Arc<dyn FillSource>> = Vec::new();
        if let Some(p) = &peers {
            sources.push(Arc::new(peer::PeerSource(p.clone())));
        }
        sources.push(Arc::new(origin.clone()));
        let filler = Arc::new(Filler::new(
            store.clone(),
            sources,
            cfg.coalesce_wait(),
            Box::new(move || {
                m.with(|| metrics::counter!("cdn_edge_coalesced_waits_total").increment(1))
            }),
        ));
        let cache = Arc::new(Cache::new(
            cfg.clone(),
            store,
            origin.clone(),
            filler,
            peers.clone(),
            metrics.clone(),
        ));
        if let Some(p) = &peers {
            let weak = Arc::downgrade(&cache);
            let source: std::sync::Weak<dyn peer::server::ChunkSource> = weak;
            tokio::spawn(peer::server::serve(
                p.endpoint.clone(),
                peer::server::Server {
                    source,
                    peers: Arc::downgrade(p),
                    metrics: metrics.clone(),
                    chunk_size: cfg.chunk_size,
                    targeted_cache_control: cfg.targeted_cache_control.clone(),
                },
            ));
        }
        Ok(Arc::new(Edge {
            cfg,
            cache,
            origin,
            metrics,
            peers,
            inflight: Arc::default(),
        }))
    }

    /// The store, for reading (metrics, tests).
    pub fn store(&self) -> &Store {
        self.cache.store()
    }

    /// Closes the peer endpoint (at shutdown, or to simulate a peer going away).
    pub fn close_peers(&self) {
        if let Some(p) = &self.peers {
            p.endpoint.close(0u32.into(), b"shutting down");
        }
    }
}

/// What the peer server asks of this node: the store's contents, owner probes and owner
/// fills (which never go through peers as owner again).
impl peer::server::ChunkSource for Cache {
    fn store(&self) -> &Store {
        Cache::store(self)
    }

    fn owner_probe(
        self: Arc<Self>,
        key: String,
        path_and_query: String,
        req: HeaderMap,
        index: u64,
    ) -> BoxFuture<'static, Option<Arc<ObjectMeta>>> {
        async move {
            self.probe_for_peer(&key, &path_and_query, &req, index)
                .await
        }
        .boxed()
    }

    fn owner_fill(
        self: Arc<Self>,
        meta: Arc<ObjectMeta>,
        index: u64,
    ) -> BoxFuture<'static, Option<Bytes>> {
        async move { self.chunk(&meta, index).await.ok() }.boxed()
    }

    fn owner_window(
        self: Arc<Self>,
        meta: Arc<ObjectMeta>,
        index: u64,
    ) -> futures::stream::BoxStream<'static, Result<Bytes, Arc<crate::fill::FillError>>> {
        let (s, e) = meta.chunk_span(index);
        self.chunk_window(&meta, index, 0, e - s + 1)
    }
}
