//! One connection's byte level, below hyper: [`ConnState`] (requests seen, last activity),
//! [`SharedIo`] (the socket as hyper's I/O, counting activity, one `recvfrom` per read), and
//! the timers and writes the accept loop needs around it (no request within the head
//! timeout, idle for the idle timeout, a raw answer written and the socket closed gently).

use super::*;

pub(super) async fn no_request_within(state: &ConnState, limit: Duration) {
    tokio::time::sleep(limit).await;
    if state.requests.load(Ordering::Relaxed) > 0 {
        // Later heads are hyper's to time (HTTP/1.1) or covered by the idle timeout.
        std::future::pending::<()>().await;
    }
}

pub(super) async fn idle_for(state: &ConnState, limit: Duration) {
    loop {
        let quiet = state.quiet_for();
        if quiet >= limit {
            return;
        }
        tokio::time::sleep(limit - quiet).await;
    }
}

pub(super) async fn write_shared(stream: &TcpStream, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        stream.writable().await?;
        match stream.try_write(buf) {
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Half-closes, then reads what the client still sends (briefly), so that closing with unread
/// bytes does not reset the connection before the client has read our answer.
pub(super) async fn close_gently(stream: &TcpStream) -> io::Result<()> {
    socket2::SockRef::from(stream).shutdown(std::net::Shutdown::Write)?;
    let mut sink = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_millis(500);
    let mut drained = 0usize;
    while Instant::now() < deadline && drained < 256 * 1024 {
        if tokio::time::timeout_at(deadline.into(), stream.readable())
            .await
            .is_err()
        {
            break;
        }
        match stream.try_read(&mut sink) {
            Ok(0) => break,
            Ok(n) => drained += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => break,
        }
    }
    Ok(())
}

/// What the connection's driver needs to know of its traffic.
pub(super) struct ConnState {
    pub(super) started: Instant,
    /// Milliseconds after `started` of the last byte read or written.
    pub(super) last_activity_ms: AtomicU64,
    pub(super) bytes_read: AtomicU64,
    /// `bytes_read` when the last request head was handed to the application.
    pub(super) read_at_request: AtomicU64,
    pub(super) requests: AtomicU64,
}

impl ConnState {
    pub(super) fn new() -> Self {
        ConnState {
            started: Instant::now(),
            last_activity_ms: AtomicU64::new(0),
            bytes_read: AtomicU64::new(0),
            read_at_request: AtomicU64::new(0),
            requests: AtomicU64::new(0),
        }
    }

    pub(super) fn touch(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.last_activity_ms.store(ms, Ordering::Relaxed);
    }

    pub(super) fn quiet_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_activity_ms.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last)
    }

    pub(super) fn on_request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.read_at_request
            .store(self.bytes_read.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// Whether bytes arrived since the last request began (part of a head is here).
    pub(super) fn partial_head(&self) -> bool {
        self.bytes_read.load(Ordering::Relaxed) > self.read_at_request.load(Ordering::Relaxed)
    }
}

/// The connection's socket, shared between hyper and the driver (which may still have to
/// answer 408 after hyper gave up), counting traffic for the timeouts.
pub(super) struct SharedIo {
    pub(super) stream: Arc<TcpStream>,
    pub(super) state: Arc<ConnState>,
}

impl AsyncRead for SharedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            ready!(self.stream.poll_read_ready(cx))?;
            match read_into(&self.stream, buf) {
                Ok(n) => {
                    self.state.bytes_read.fetch_add(n as u64, Ordering::Relaxed);
                    self.state.touch();
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

/// At most this much is received per read (the size of each worker thread's read buffer).
const READ_CHUNK: usize = 64 * 1024;

/// Receives what the socket holds into `buf` (at most its room), as tokio's own `poll_read`
/// does but on a shared socket, and without unsafe code:
/// - hyper hands over a buffer it has not initialised; rather than zeroing all of it before
///   every receive, the bytes go through this thread's buffer (initialised once) and only
///   those received are copied (a request head is a few hundred bytes);
/// - a receive that returns less than it had room for has drained the socket (epoll, edge
///   triggered), so the readiness is cleared then, as tokio does: the next read waits for
///   the next event instead of making a receive that only says `WouldBlock`, which would
///   otherwise follow every request on a kept-alive connection. The readiness is cleared
///   through `try_io` only when no readiness event has arrived since the receive began, so
///   data that arrives meanwhile is not missed.
fn read_into(stream: &TcpStream, buf: &mut ReadBuf<'_>) -> io::Result<usize> {
    thread_local! {
        static SCRATCH: std::cell::RefCell<Box<[u8]>> =
            std::cell::RefCell::new(vec![0; READ_CHUNK].into_boxed_slice());
    }
    SCRATCH.with_borrow_mut(|scratch| {
        let room = buf.remaining().min(scratch.len());
        let n = recv_draining(stream, &mut scratch[..room])?;
        buf.put_slice(&scratch[..n]);
        Ok(n)
    })
}

/// One receive into `dst`; a receive that fills less than `dst` drained the socket, so its
/// readiness is cleared then (see [`read_into`]), sparing the `WouldBlock` receive after it.
pub(super) fn recv_draining(stream: &TcpStream, dst: &mut [u8]) -> io::Result<usize> {
    use std::io::Read;
    let room = dst.len();
    let mut received = None;
    let result = stream.try_io(tokio::io::Interest::READABLE, || {
        let n = (&*socket2::SockRef::from(stream)).read(dst)?;
        received = Some(n);
        if n > 0 && n < room {
            // Drained: clear the readiness (the bytes are returned below).
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    });
    match received {
        Some(n) => Ok(n),
        None => result,
    }
}

impl AsyncWrite for SharedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.stream.poll_write_ready(cx))?;
            match self.stream.try_write(buf) {
                Ok(n) => {
                    self.state.touch();
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.stream.poll_write_ready(cx))?;
            match self.stream.try_write_vectored(bufs) {
                Ok(n) => {
                    self.state.touch();
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = socket2::SockRef::from(&*self.stream).shutdown(std::net::Shutdown::Write);
        Poll::Ready(match r {
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
            other => other,
        })
    }
}
