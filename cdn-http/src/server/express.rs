//! The express lane of plain HTTP/1.1: requests an [`Express`] responder can answer at once
//! from memory (the edge's stored hits) are parsed with `httparse` and answered with one
//! vectored write of a rendered head and the body's bytes, without hyper, its request and
//! response types or a task per response. The first request the lane does not answer (another
//! method, a body, HTTP/1.0, an upgrade, a field the responder does not know, a miss...)
//! hands the connection to hyper for good, with every byte read so far ([`Rewind`]), so that
//! hyper parses that request as if it had read it itself.
//!
//! The lane keeps the connection rules of [`super`]: a head not complete within
//! `header_read_timeout` gets `408` when part of it came and a silent close when nothing did
//! (counted from the accept for the first request, from the end of the last response for
//! the next, as hyper counts); a response that moves no byte for `idle_timeout` is cut; a
//! head larger than hyper would buffer, or over the URI or field limits, goes to hyper,
//! which answers `431`/`414`; at shutdown the response in flight is finished and the
//! connection closed.

use super::*;
use bytes::{Buf, Bytes};
use std::io::IoSlice;
use tokio::sync::watch;

pub use httparse::Header;

/// A request the lane offers its responder: a GET or HEAD over HTTP/1.1, without a body and
/// within the limits, whose target is a path (origin form).
#[derive(Debug)]
pub struct ExpressRequest<'a> {
    /// HEAD (no body is sent), else GET.
    pub head: bool,
    /// The request target as received: path and query.
    pub target: &'a str,
    /// The fields as received, in order.
    pub headers: &'a [Header<'a>],
    pub peer: SocketAddr,
}

/// A response the responder has rendered: its head went into the lane's buffer, the body is
/// these pieces in order.
pub struct Answer {
    /// The body, in order (empty for HEAD).
    pub body: Vec<Piece>,
    /// Called once the response is written, or the write failed, with the body bytes sent.
    pub done: Box<dyn FnOnce(u64) + Send>,
}

/// A piece of a body: its bytes and, when they also lie in a file, where (the lane then sends
/// them from the file with `sendfile`, without copying them).
pub struct Piece {
    pub bytes: Bytes,
    pub file: Option<FileSpan>,
}

/// Where bytes lie in a file. The responder vouches that, while the piece's `bytes` are
/// alive, the file holds exactly those bytes at `offset` and nobody writes there.
#[derive(Clone, Debug)]
pub struct FileSpan {
    pub file: Arc<std::fs::File>,
    pub offset: u64,
}

/// Memory pieces given to one vectored write (the rest go in the next).
const WRITEV_SLICES: usize = 32;

/// What answers requests on the express lane.
pub trait Express: Send + Sync + 'static {
    /// Renders the whole response head (status line through the empty line, with a `date`
    /// field: [`date_line`]) into `head`, which is empty, and returns the body; or returns
    /// `None` (whatever it wrote is discarded) to hand this request and the connection to
    /// the full stack.
    fn answer(&self, req: &ExpressRequest<'_>, head: &mut Vec<u8>) -> Option<Answer>;
}

/// `date: <IMF-fixdate>\r\n` for `now`, rendered once per second per thread (as hyper does).
pub fn date_line(out: &mut Vec<u8>, now: std::time::SystemTime) {
    thread_local! {
        static DATE: std::cell::RefCell<(u64, Vec<u8>)> =
            const { std::cell::RefCell::new((u64::MAX, Vec::new())) };
    }
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(at, line)| {
        if *at != secs {
            line.clear();
            line.extend_from_slice(b"date: ");
            line.extend_from_slice(httpdate::fmt_http_date(now).as_bytes());
            line.extend_from_slice(b"\r\n");
            *at = secs;
        }
        out.extend_from_slice(line);
    });
}

/// How the lane left a connection.
pub(super) enum Outcome {
    /// Closed (by the client, a timeout, an error or shutdown).
    Closed,
    /// Handed to the full stack with these bytes read and not yet answered.
    Handoff(Bytes),
}

/// The fields of the largest head the lane parses; a head with more goes to hyper.
const MAX_FIELDS: usize = 128;

/// The connection the lane serves and the rules it keeps.
pub(super) struct Lane<'a> {
    pub(super) stream: &'a TcpStream,
    pub(super) state: &'a ConnState,
    pub(super) limits: &'a Limits,
    pub(super) peer: SocketAddr,
    pub(super) express: &'a dyn Express,
    pub(super) stop: &'a mut watch::Receiver<bool>,
}

impl Lane<'_> {
    /// Serves the connection until it closes or a request is handed off.
    pub(super) async fn run(self) -> Outcome {
        let cap = self.limits.head_buffer_bytes();
        let mut buf = vec![0u8; 8192.min(cap)];
        let mut have = 0usize;
        let mut head = Vec::with_capacity(1024);
        // The next head must be complete by then: from the accept, then from the end of
        // each response.
        let mut deadline = Instant::now() + self.limits.header_read_timeout();
        loop {
            // Answer every complete request held.
            while have > 0 {
                // The parsed fields (4 KiB) end here, before the write is awaited, so that
                // they are not kept in every connection's future.
                let (used, answer) = {
                    let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
                    let mut req = httparse::Request::new(&mut fields);
                    let used = match req.parse(&buf[..have]) {
                        Ok(httparse::Status::Complete(n)) => n,
                        Ok(httparse::Status::Partial) if have < cap => break,
                        // Malformed, too many fields or too large: hyper gives the answer.
                        _ => return Outcome::Handoff(Bytes::copy_from_slice(&buf[..have])),
                    };
                    head.clear();
                    match self.offer(&req, &mut head) {
                        Some(answer) => (used, answer),
                        None => return Outcome::Handoff(Bytes::copy_from_slice(&buf[..have])),
                    }
                };
                self.state.on_request();
                let sent = self.write(&head, &answer.body).await;
                (answer.done)(match sent {
                    Ok(n) | Err(n) => n,
                });
                if sent.is_err() {
                    return Outcome::Closed;
                }
                buf.copy_within(used..have, 0);
                have -= used;
                deadline = Instant::now() + self.limits.header_read_timeout();
                if *self.stop.borrow() {
                    // Shutting down: the response in flight is finished; no more.
                    return Outcome::Closed;
                }
            }
            if have == buf.len() {
                buf.resize((buf.len() * 2).min(cap), 0);
            }
            if have == 0 && *self.stop.borrow() {
                return Outcome::Closed;
            }
            let idle = have == 0;
            let ready = tokio::select! {
                r = self.stream.readable() => r,
                _ = tokio::time::sleep_until(deadline.into()) => {
                    self.head_timeout(!idle).await;
                    return Outcome::Closed;
                }
                _ = self.stop.changed(), if idle => return Outcome::Closed,
            };
            if ready.is_err() {
                return Outcome::Closed;
            }
            match recv_draining(self.stream, &mut buf[have..]) {
                Ok(0) => return Outcome::Closed,
                Ok(n) => {
                    have += n;
                    self.state.bytes_read.fetch_add(n as u64, Ordering::Relaxed);
                    self.state.touch();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return Outcome::Closed,
            }
        }
    }

    /// The responder's answer to `req`, when the request is one the lane may take.
    fn offer(&self, req: &httparse::Request<'_, '_>, head: &mut Vec<u8>) -> Option<Answer> {
        let get = match req.method? {
            "GET" => true,
            "HEAD" => false,
            _ => return None,
        };
        let target = req.path?;
        if req.version? != 1
            || !target.starts_with('/')
            || target.len() > self.limits.max_uri_bytes
            || req.headers.len() > self.limits.max_headers
        {
            return None;
        }
        let mut bytes = 0usize;
        let (mut host, mut hosts) = (None, 0usize);
        for f in req.headers.iter() {
            bytes += f.name.len() + f.value.len() + 4;
            let name = f.name;
            if name.eq_ignore_ascii_case("host") {
                (host, hosts) = (Some(f.value), hosts + 1);
            }
            // Framing and connection management are hyper's (a body, an upgrade, 100-continue,
            // a close); `Connection: keep-alive` is what HTTP/1.1 means anyway.
            if name.eq_ignore_ascii_case("content-length")
                || name.eq_ignore_ascii_case("transfer-encoding")
                || name.eq_ignore_ascii_case("upgrade")
                || name.eq_ignore_ascii_case("expect")
                || (name.eq_ignore_ascii_case("connection")
                    && !f.value.eq_ignore_ascii_case(b"keep-alive"))
            {
                return None;
            }
        }
        if bytes > self.limits.max_header_bytes
            || hosts > 1
            || !super::guard::host_fields_ok(http::Version::HTTP_11, host.into_iter())
        {
            // hyper's side answers the 400.
            return None;
        }
        self.express.answer(
            &ExpressRequest {
                head: !get,
                target,
                headers: req.headers,
                peer: self.peer,
            },
            head,
        )
    }

    /// Writes `head` and `body`: `Ok` with the body bytes when all went out, `Err` with those
    /// that did when the client went away or stopped reading for `idle_timeout`. Bytes in
    /// memory go out with vectored writes, pieces in files with `sendfile`.
    async fn write(&self, head: &[u8], body: &[Piece]) -> Result<u64, u64> {
        let total = head.len() + body.iter().map(|p| p.bytes.len()).sum::<usize>();
        let mut done = 0usize;
        let body_sent = |done: usize| done.saturating_sub(head.len()) as u64;
        // (bytes, file) of every segment, the head first.
        let segment = |i: usize| -> (&[u8], Option<&FileSpan>) {
            match i {
                0 => (head, None),
                _ => (&body[i - 1].bytes[..], body[i - 1].file.as_ref()),
            }
        };
        let count = body.len() + 1;
        loop {
            // The segment holding byte `done`, and how far into it.
            let (mut first, mut skip) = (0, done);
            while first < count && skip >= segment(first).0.len() {
                skip -= segment(first).0.len();
                first += 1;
            }
            if first == count {
                return Ok(body_sent(done));
            }
            let sent = match segment(first) {
                (bytes, Some(file)) => self.send_file(file, skip, bytes.len() - skip),
                _ => {
                    let mut slices = [IoSlice::new(&[]); WRITEV_SLICES];
                    let mut n = 0;
                    for i in first..count {
                        let (bytes, file) = segment(i);
                        if file.is_some() || n == slices.len() {
                            break;
                        }
                        slices[n] = IoSlice::new(&bytes[if i == first { skip } else { 0 }..]);
                        n += 1;
                    }
                    // Not `MSG_MORE` before a file: corking the head made every 1 MiB
                    // `sendfile` cost five times the CPU on loopback (BENCHMARKS.md).
                    self.stream.try_write_vectored(&slices[..n])
                }
            };
            match sent {
                Ok(0) => return Err(body_sent(done)),
                Ok(w) => {
                    done += w;
                    self.state.touch();
                    if done >= total {
                        return Ok(body_sent(done));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let writable = tokio::select! {
                        r = self.stream.writable() => r.is_ok(),
                        _ = idle_for(self.state, self.limits.idle_timeout()) => false,
                    };
                    if !writable {
                        return Err(body_sent(done));
                    }
                }
                Err(_) => return Err(body_sent(done)),
            }
        }
    }

    /// One `sendfile` of `len` bytes of `file` from `skip` bytes past its offset.
    fn send_file(&self, file: &FileSpan, skip: usize, len: usize) -> io::Result<usize> {
        use std::os::fd::AsRawFd;
        let mut offset = libc::off_t::try_from(file.offset)
            .ok()
            .and_then(|o| o.checked_add(libc::off_t::try_from(skip).ok()?))
            .ok_or(io::ErrorKind::InvalidInput)?;
        self.stream.try_io(tokio::io::Interest::WRITABLE, || {
            // SAFETY: a syscall on two descriptors that are open for its duration (the socket
            // is borrowed, the file is held by `file`), with a pointer to a local
            // offset; it reads the file and writes the socket, touching no memory of ours.
            let n = unsafe {
                libc::sendfile(
                    self.stream.as_raw_fd(),
                    file.file.as_raw_fd(),
                    &mut offset,
                    len,
                )
            };
            usize::try_from(n).map_err(|_| io::Error::last_os_error())
        })
    }

    /// The head deadline passed: `408` when part of a head came, else a silent close.
    async fn head_timeout(&self, partial: bool) {
        if !partial {
            tracing::debug!(peer = %self.peer, "no request within the head timeout: closed");
            return;
        }
        tracing::info!(target: "cdn_http::limits", peer = %self.peer, status = 408, "request head not received in time");
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            write_shared(
                self.stream,
                b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
            )
            .await?;
            close_gently(self.stream).await
        })
        .await;
    }
}

/// The connection's I/O for hyper after a handoff: the bytes the lane read first, then the
/// socket.
pub(super) struct Rewind {
    pub(super) prefix: Bytes,
    pub(super) io: SharedIo,
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
