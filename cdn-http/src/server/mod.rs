//! The accept loop every node runs: HTTP/1.1 and h2c on one listener, or HTTPS (HTTP/2 and
//! HTTP/1.1 by ALPN, [`serve_tls`], certificates from [`crate::tls`]), the [`Limits`] of
//! [`crate::limits`] (head size and field count, URI length, body size, head-read and idle
//! timeouts, a connection cap answered with 503), the peer address as axum's `ConnectInfo`,
//! and graceful shutdown that lets in-flight responses finish within a deadline.
//!
//! What a client sees when it crosses a limit:
//! - no Host on HTTP/1.1, two Hosts, or one that is not `host[:port]` (RFC 9112 §3.2): `400`;
//! - head too large or too many fields: `431`; request target too long: `414`; body too large:
//!   `413` (before the body is read when Content-Length announces it, else when the body passes
//!   the limit; nothing past the limit reaches the application);
//! - a head not complete within `header_read_timeout`: `408` and the connection closed, when
//!   some of it had arrived; a silent close when nothing had (an idle kept-alive HTTP/1.1
//!   connection included: a 408 there could be taken as the answer to a request in flight);
//! - no byte moving in either direction for `idle_timeout`: the connection is closed;
//! - a connection over `max_connections`: `503` with `Retry-After`, served by a minimal
//!   responder that keeps nothing alive; when even those are too many (a flood), the
//!   connection is closed at once.
//!
//! `max_connections` is lowered to what the open-file limit allows
//! ([`crate::limits::connection_budget`], after [`crate::nofile::raise`]), with a warning, so
//! that the 503 can always be sent: a process out of descriptors cannot accept, and its
//! clients would hang in the listen backlog. Accept errors back off (10 ms doubling to 1 s)
//! and are logged at most once per 10 s.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use http::StatusCode;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

mod conn_io;
pub mod express;
mod guard;

pub use crate::limits::Limits;
use conn_io::{
    ConnState, SharedIo, close_gently, idle_for, no_request_within, recv_draining, write_shared,
};
use express::{Express, Lane, Outcome, Rewind};
use guard::guarded;
pub use guard::{head_refusal, host_ok, limited_body, refusal};

/// How a node serves connections.
#[derive(Clone)]
pub struct ServeOptions {
    /// The limits of every connection and request.
    pub limits: Limits,
    /// How long in-flight responses may run after shutdown begins; then they are cut.
    pub drain_deadline: Duration,
    /// The express lane of plain HTTP/1.1 connections ([`express`]), when the node has one.
    pub express: Option<Arc<dyn Express>>,
}

impl std::fmt::Debug for ServeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeOptions")
            .field("limits", &self.limits)
            .field("drain_deadline", &self.drain_deadline)
            .field("express", &self.express.is_some())
            .finish()
    }
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            limits: Limits::default(),
            drain_deadline: Duration::from_secs(10),
            express: None,
        }
    }
}

/// Accept errors (EMFILE, ENFILE, ENOBUFS...): the loop sleeps, doubling from 10 ms to 1 s
/// while they last, and logs the first and then at most one line per [`AcceptBackoff::EVERY`]
/// with the count of the errors in between, so a node out of descriptors does not spin nor
/// flood its log.
#[derive(Debug)]
struct AcceptBackoff {
    delay: Duration,
    last_log: Option<Instant>,
    suppressed: u64,
}

impl AcceptBackoff {
    const FIRST: Duration = Duration::from_millis(10);
    const MAX: Duration = Duration::from_secs(1);
    const EVERY: Duration = Duration::from_secs(10);

    fn new() -> Self {
        AcceptBackoff {
            delay: Self::FIRST,
            last_log: None,
            suppressed: 0,
        }
    }

    /// One failed accept at `now`: how long to sleep, and whether to log it (with the number
    /// of errors not logged since the last line).
    fn failed(&mut self, now: Instant) -> (Duration, Option<u64>) {
        let sleep = self.delay;
        self.delay = (self.delay * 2).min(Self::MAX);
        let log = match self.last_log {
            Some(t) if now.duration_since(t) < Self::EVERY => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last_log = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        };
        (sleep, log)
    }

    fn succeeded(&mut self) {
        self.delay = Self::FIRST;
    }
}

fn builder(limits: &Limits, keep_alive: bool) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .keep_alive(keep_alive)
        .header_read_timeout(limits.header_read_timeout())
        .max_buf_size(limits.head_buffer_bytes())
        .max_headers(limits.max_headers);
    // The HTTP/2 limits (crate::limits): a header list no larger than an HTTP/1.1 head (h2
    // also bounds one block's CONTINUATION frames by it), concurrent streams, and the
    // rapid-reset and error-reset counts after which the connection is closed.
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.head_buffer_bytes()).unwrap_or(u32::MAX))
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_pending_accept_reset_streams(limits.h2_max_pending_accept_reset_streams)
        .max_local_error_reset_streams(limits.h2_max_local_error_reset_streams);
    b
}

/// A request extension: the request came over TLS (the HTTPS listener).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ViaTls;

/// HTTPS on a listener: the rustls configuration (from [`crate::tls::Tls::server_config`])
/// and the time a client has to complete its handshake.
#[derive(Clone)]
pub struct TlsAccept {
    pub config: Arc<rustls::ServerConfig>,
    pub handshake_timeout: Duration,
}

impl TlsAccept {
    /// The TCP configuration of `tls`, with its handshake timeout.
    pub fn from_tls(tls: &crate::tls::Tls) -> Self {
        TlsAccept {
            config: tls.server_config(),
            handshake_timeout: tls.settings().handshake_timeout(),
        }
    }
}

/// Serves `app` on `listener` (plain HTTP/1.1 and h2c) until `shutdown` completes, then
/// drains.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    opts: ServeOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    serve_on(listener, app, opts, None, shutdown).await
}

/// Serves `app` over TLS on `listener` (HTTP/2 or HTTP/1.1 as ALPN says) with the same
/// limits as [`serve`], until `shutdown` completes, then drains. The handshake runs in the
/// connection's task, after the connection took its place under `max_connections`, within
/// `tls.handshake_timeout`; a client that fails it or runs out of time is closed (logged at
/// debug). A head not received in time is closed without a 408 (it would have to go through
/// TLS; hyper has already given up on the connection).
pub async fn serve_tls(
    listener: TcpListener,
    app: Router,
    opts: ServeOptions,
    tls: TlsAccept,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    serve_on(listener, app, opts, Some(tls), shutdown).await
}

/// Serves `plain` on `listener` and, when given, the HTTPS app on its listener, side by side
/// with the same limits, until `shutdown` completes; then both drain.
pub async fn serve_both(
    listener: TcpListener,
    plain: Router,
    https: Option<(TcpListener, Router, TlsAccept)>,
    opts: ServeOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    use futures::FutureExt;
    let shutdown = Box::pin(shutdown).shared();
    match https {
        None => serve(listener, plain, opts, shutdown).await,
        Some((tls_listener, app, tls)) => {
            let (a, b) = tokio::join!(
                serve(listener, plain, opts.clone(), shutdown.clone()),
                serve_tls(tls_listener, app, opts, tls, shutdown),
            );
            a.and(b)
        }
    }
}

async fn serve_on(
    listener: TcpListener,
    app: Router,
    opts: ServeOptions,
    tls: Option<TlsAccept>,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    // Fit the connection cap to the descriptors this process may open (raising the soft
    // limit first, once per process).
    let budget = crate::limits::connection_budget(
        opts.limits.max_connections,
        crate::nofile::raise().map(|l| l.soft),
    );
    if budget.clamped {
        tracing::warn!(
            configured = opts.limits.max_connections,
            effective = budget.max_connections,
            refused_with_503 = budget.overflow,
            nofile = crate::nofile::raise().map(|l| l.soft),
            "max_connections clamped to what the open-file limit (RLIMIT_NOFILE) allows: \
             (soft - 128 - overflow) / 2; raise the limit to serve more"
        );
    }
    let limits = Arc::new(Limits {
        max_connections: budget.max_connections,
        ..opts.limits.clone()
    });
    let full = Arc::new(builder(&limits, true));
    // Over the cap: a short-lived responder with tight timeouts.
    let overflow_limits = Arc::new(Limits {
        header_read_timeout_ms: limits.header_read_timeout_ms.min(2_000),
        idle_timeout_ms: limits.idle_timeout_ms.min(2_000),
        ..(*limits).clone()
    });
    let refuse = Arc::new(builder(&overflow_limits, false));
    let acceptor = tls.as_ref().map(|t| {
        (
            tokio_rustls::TlsAcceptor::from(t.config.clone()),
            t.handshake_timeout,
        )
    });
    let graceful = GracefulShutdown::new();
    // The express lane (plain HTTP only): its connections hold a receiver, told to stop at
    // shutdown; the drain waits until every one has closed or been handed to hyper.
    let express = opts.express.clone().filter(|_| tls.is_none());
    let (stop_lanes, _) = tokio::sync::watch::channel(false);
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let overflow = Arc::new(Semaphore::new(budget.overflow));
    let mut backoff = AcceptBackoff::new();
    // Owned here: when this future is dropped (NodeHandle::abort) every connection goes too.
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => {
                    backoff.succeeded();
                    x
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning, log sparingly.
                    let (sleep, log) = backoff.failed(Instant::now());
                    if let Some(suppressed) = log {
                        tracing::warn!(
                            error = %e,
                            suppressed,
                            "accept failed; backing off (out of file descriptors? see RLIMIT_NOFILE)"
                        );
                    }
                    tokio::time::sleep(sleep).await;
                    continue;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let (permit, admitted) = match permits.clone().try_acquire_owned() {
            Ok(p) => (p, true),
            Err(_) => match overflow.clone().try_acquire_owned() {
                Ok(p) => (p, false),
                Err(_) => {
                    tracing::debug!(%peer, "connection flood: closed without an answer");
                    continue;
                }
            },
        };
        let stream = Arc::new(stream);
        let state = Arc::new(ConnState::new());
        let io = SharedIo {
            stream: stream.clone(),
            state: state.clone(),
        };
        let conn = Conn {
            stream,
            state: state.clone(),
            peer,
            permit,
            watcher: graceful.watcher(),
        };
        if admitted {
            let (app, lim, st) = (app.clone(), limits.clone(), state.clone());
            let via_tls = acceptor.is_some();
            let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                st.on_request();
                req.extensions_mut().insert(ConnectInfo(peer));
                if via_tls {
                    req.extensions_mut().insert(ViaTls);
                }
                guarded(app.clone(), lim.clone(), req)
            });
            let lane = express.clone().map(|x| (x, stop_lanes.subscribe()));
            conns.spawn(conn.run(
                io,
                acceptor.clone(),
                lane,
                full.clone(),
                svc,
                limits.clone(),
            ));
        } else {
            tracing::debug!(%peer, "over max_connections: 503");
            let (retry, st) = (limits.retry_after_secs, state.clone());
            let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                st.on_request();
                let r = refusal(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "too many connections\n",
                    req.version(),
                    Some(retry),
                );
                async move { Ok::<_, Infallible>(r) }
            });
            conns.spawn(conn.run(
                io,
                acceptor.clone(),
                None,
                refuse.clone(),
                svc,
                overflow_limits.clone(),
            ));
        }
    }
    drop(listener);
    let _ = stop_lanes.send(true);
    tokio::select! {
        // The lanes first: a lane may still hand its connection to hyper, to be watched.
        _ = async {
            stop_lanes.closed().await;
            graceful.shutdown().await;
        } => {}
        _ = tokio::time::sleep(opts.drain_deadline) => {
            tracing::warn!("drain deadline passed with responses still in flight: cutting them");
        }
    }
    conns.shutdown().await;
    Ok(())
}

/// One accepted connection, before its protocol runs.
struct Conn {
    stream: Arc<TcpStream>,
    state: Arc<ConnState>,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
    watcher: hyper_util::server::graceful::Watcher,
}

impl Conn {
    /// Runs the connection: the TLS handshake first when `tls` is set (within its
    /// timeout), else the express `lane` first when there is one; then HTTP with `builder`
    /// and `svc` under `limits`.
    async fn run<S, B>(
        self,
        io: SharedIo,
        tls: Option<(tokio_rustls::TlsAcceptor, Duration)>,
        lane: Option<(Arc<dyn Express>, tokio::sync::watch::Receiver<bool>)>,
        builder: Arc<auto::Builder<TokioExecutor>>,
        svc: S,
        limits: Arc<Limits>,
    ) where
        S: hyper::service::Service<hyper::Request<Incoming>, Response = http::Response<B>>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
        S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let Conn {
            stream,
            state,
            peer,
            permit,
            watcher,
        } = self;
        match (tls, lane) {
            (None, Some((express, mut stop))) => {
                let outcome = Lane {
                    stream: &stream,
                    state: &state,
                    limits: &limits,
                    peer,
                    express: &*express,
                    stop: &mut stop,
                }
                .run()
                .await;
                let Outcome::Handoff(prefix) = outcome else {
                    return;
                };
                let io = Rewind { prefix, io };
                let conn = watcher.watch(
                    builder
                        .serve_connection_with_upgrades(TokioIo::new(io), svc)
                        .into_owned(),
                );
                // Watched before the lane lets go: the drain then waits for hyper.
                drop(stop);
                drive(conn, Some(stream), state, limits, peer, permit).await;
            }
            (None, None) => {
                let conn = watcher.watch(
                    builder
                        .serve_connection_with_upgrades(TokioIo::new(io), svc)
                        .into_owned(),
                );
                drive(conn, Some(stream), state, limits, peer, permit).await;
            }
            (Some((acceptor, timeout)), _) => {
                let tls_io = match tokio::time::timeout(timeout, acceptor.accept(io)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake not completed in time: closed");
                        return;
                    }
                };
                let conn = watcher.watch(
                    builder
                        .serve_connection_with_upgrades(TokioIo::new(tls_io), svc)
                        .into_owned(),
                );
                drop(stream);
                drive(conn, None, state, limits, peer, permit).await;
            }
        }
    }
}

/// Why a connection ended.
enum End {
    Done,
    HeadTimeout,
    Idle,
}

/// Drives one connection: hyper's future, raced against the first-request deadline (which
/// also covers hyper's HTTP/2 preface sniffing, which has no timeout of its own) and the idle
/// timeout. Sends the 408 itself, since hyper closes silently.
async fn drive<C>(
    conn: C,
    stream: Option<Arc<TcpStream>>,
    state: Arc<ConnState>,
    limits: Arc<Limits>,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
) where
    C: Future<Output = Result<(), Box<dyn std::error::Error + Send + Sync>>>,
{
    let head_timeout = limits.header_read_timeout();
    let end = tokio::select! {
        r = conn => match r {
            Ok(()) => End::Done,
            Err(e) if e.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_timeout) => {
                End::HeadTimeout
            }
            Err(e) => {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
                End::Done
            }
        },
        _ = no_request_within(&state, head_timeout) => End::HeadTimeout,
        _ = idle_for(&state, limits.idle_timeout()) => End::Idle,
    };
    match (end, stream.as_ref()) {
        (End::HeadTimeout, Some(stream)) if state.partial_head() => {
            tracing::info!(target: "cdn_http::limits", %peer, status = 408, "request head not received in time");
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                write_shared(
                    stream,
                    b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
                )
                .await?;
                close_gently(stream).await
            })
            .await;
        }
        (End::HeadTimeout, _) => {
            tracing::debug!(%peer, "no request within the head timeout: closed")
        }
        (End::Idle, _) => tracing::debug!(%peer, "idle timeout: closed"),
        (End::Done, _) => {}
    }
    drop(stream);
    drop(permit);
}

/// A future that completes on SIGTERM or Ctrl-C.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    // The handlers are installed now, not at the first poll: a node that has logged that it
    // is listening must already survive a SIGTERM or SIGINT sent right after (the default
    // action would kill it without draining).
    #[cfg(unix)]
    let (term, int) = {
        use tokio::signal::unix::{SignalKind, signal};
        (
            signal(SignalKind::terminate()).ok(),
            signal(SignalKind::interrupt()).ok(),
        )
    };
    async move {
        #[cfg(unix)]
        {
            let recv = |s: Option<tokio::signal::unix::Signal>| async move {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = recv(term) => {}
                _ = recv(int) => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// The listen backlog of every node's listeners (the kernel caps it at `net.core.somaxconn`,
/// 4096 on current Linux). tokio's default, 1024, overflowed in a burst of 2000 new TLS
/// connections (`TcpExtListenOverflows`): the dropped handshakes waited for SYN retransmits
/// (1 s) and halved the edge's new connections per second (BENCHMARKS.md, `cdn bench tls`).
/// nginx uses `backlog=4096` in the same benchmark.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds a TCP listener (SO_REUSEADDR, as tokio's `TcpListener::bind`; a backlog of
/// [`LISTEN_BACKLOG`]) with a clear error naming the address.
pub async fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let named = |e: io::Error| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}"));
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .map_err(named)?;
    #[cfg(unix)]
    socket.set_reuseaddr(true).map_err(named)?;
    socket.bind(addr).map_err(named)?;
    socket.listen(LISTEN_BACKLOG).map_err(named)
}

/// A node serving in a background task; used by tests, the benches and `cdn lab`.
pub struct NodeHandle {
    /// The address the node listens on (the real port when bound to port 0).
    pub addr: SocketAddr,
    scheme: &'static str,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<io::Result<()>>,
}

impl NodeHandle {
    /// Starts serving `app` on `listener` in a background task.
    pub fn spawn(listener: TcpListener, app: Router, opts: ServeOptions) -> io::Result<Self> {
        let addr = listener.local_addr()?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, app, opts, async move {
            let _ = rx.await;
        }));
        Ok(NodeHandle {
            addr,
            scheme: "http",
            stop: Some(tx),
            task,
        })
    }

    /// Starts serving `app` over TLS on `listener` in a background task.
    pub fn spawn_tls(
        listener: TcpListener,
        app: Router,
        opts: ServeOptions,
        tls: TlsAccept,
    ) -> io::Result<Self> {
        let addr = listener.local_addr()?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve_tls(listener, app, opts, tls, async move {
            let _ = rx.await;
        }));
        Ok(NodeHandle {
            addr,
            scheme: "https",
            stop: Some(tx),
            task,
        })
    }

    /// `http://ADDR` or `https://ADDR`
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    /// Stops accepting, drains in-flight responses, and waits for the node to end.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.task).await;
    }

    /// Stops at once, as a crash would: the listener closes and every open connection is
    /// dropped, mid-response or not.
    pub fn abort(self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_errors_back_off_and_log_sparingly() {
        let mut b = AcceptBackoff::new();
        let t0 = Instant::now();
        let mut logged = 0;
        let mut sleeps = Vec::new();
        // A thousand errors within a second: one line, sleeps growing to the cap.
        for i in 0..1000 {
            let (sleep, log) = b.failed(t0 + Duration::from_millis(i));
            logged += usize::from(log.is_some());
            sleeps.push(sleep);
        }
        assert_eq!(logged, 1);
        assert_eq!(sleeps[0], Duration::from_millis(10));
        assert_eq!(sleeps[1], Duration::from_millis(20));
        assert_eq!(*sleeps.last().unwrap(), Duration::from_secs(1));
        // Ten seconds on: one more line, counting the 999 not logged.
        assert_eq!(b.failed(t0 + Duration::from_secs(11)).1, Some(999));
        // A success resets the delay.
        b.succeeded();
        assert_eq!(
            b.failed(t0 + Duration::from_secs(12)).0,
            Duration::from_millis(10)
        );
    }
}
