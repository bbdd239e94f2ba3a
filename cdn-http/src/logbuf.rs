//! The nodes' log output without a write per line on the serving threads: [`BufferedLog`], a
//! `tracing_subscriber` writer that appends each formatted line to a shared buffer, and a
//! writer thread that hands the buffers to the output (stdout for `cdn`).
//!
//! - Lines stay whole and in the order they were logged: each line is appended in one piece
//!   under one lock, and the writer writes buffers in the order they were filled.
//! - Access lines (targets ending in `::access`, one per request) are *batched*: written when
//!   a buffer of [`BUFFER_BYTES`] fills, and at least every `interval`. Every other line
//!   (start-up, warnings, errors) is written promptly: the writer thread is woken for it, and
//!   everything before it goes out first.
//! - Bounded: at most [`MAX_PENDING`] full buffers wait for the output or are in the write
//!   the writer thread is blocked in (plus the one being filled). When the output cannot
//!   keep up (a blocked pipe, a slow disk), new lines are dropped and counted rather than
//!   blocking the request that logs or growing memory; the writer reports the count in a line
//!   of its own as soon as it can write again ([`BufferedLog::dropped`] gives the total).
//! - Not `tracing-appender`'s non-blocking writer: that one sends each line through a channel
//!   (one message and one wake-up per line), where this appends to a buffer and writes it
//!   whole (one wake-up and one `write` per 64 KiB of access lines).
//! - Flushed when the [`LogGuard`] is dropped (the end of `main`), with everything logged
//!   before.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// Bytes per buffer: a full buffer is handed to the writer thread (one wake-up, one write).
pub const BUFFER_BYTES: usize = 64 * 1024;
/// Full buffers waiting for the output at most; beyond them lines are dropped and counted.
pub const MAX_PENDING: usize = 64;

/// The shared buffer behind a [`BufferedLog`] and its writer thread.
struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    dropped: AtomicU64,
}

#[derive(Default)]
struct State {
    current: Vec<u8>,
    full: VecDeque<Vec<u8>>,
    /// Emptied buffers, kept for reuse (at most two).
    spare: Vec<Vec<u8>>,
    /// A line that must go out now is in `current`.
    urgent: bool,
    /// Buffers the writer thread took and has not written yet (they count against
    /// [`MAX_PENDING`] like those in `full`).
    writing: usize,
    closed: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while appending leaves the buffers consistent (bytes are only appended).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends one whole line; never blocks on the output.
    fn append(&self, line: &[u8], urgent: bool) {
        let mut st = self.lock();
        let mut notify = urgent;
        if !st.current.is_empty() && st.current.len() + line.len() > BUFFER_BYTES {
            if st.full.len() + st.writing >= MAX_PENDING {
                drop(st);
                self.dropped.fetch_add(1, Ordering::Relaxed);
                // The writer is behind: make sure it is awake.
                self.wake.notify_one();
                return;
            }
            let fresh = st
                .spare
                .pop()
                .unwrap_or_else(|| Vec::with_capacity(BUFFER_BYTES));
            let filled = std::mem::replace(&mut st.current, fresh);
            st.full.push_back(filled);
            notify = true;
        }
        st.current.extend_from_slice(line);
        st.urgent |= urgent;
        drop(st);
        if notify {
            self.wake.notify_one();
        }
    }
}

/// A log writer for `tracing_subscriber::fmt` (see the module's text). Cloning shares it.
#[derive(Clone)]
pub struct BufferedLog {
    shared: Arc<Shared>,
}

/// Stops the writer thread when dropped, after it wrote every line logged before.
pub struct LogGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl BufferedLog {
    /// A writer to `out`, written by a thread of its own at least every `interval`.
    pub fn new(
        out: impl Write + Send + 'static,
        interval: Duration,
    ) -> std::io::Result<(BufferedLog, LogGuard)> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                current: Vec::with_capacity(BUFFER_BYTES),
                ..State::default()
            }),
            wake: Condvar::new(),
            dropped: AtomicU64::new(0),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || writer_thread(&s, out, interval))?;
        Ok((
            BufferedLog {
                shared: shared.clone(),
            },
            LogGuard {
                shared,
                thread: Some(thread),
            },
        ))
    }

    /// Appends one whole line (newline included) to be written with the next batch, as an
    /// access line is ([`crate::access`] writes through this).
    pub fn append_batched(&self, line: &[u8]) {
        self.shared.append(line, false);
    }

    /// Lines dropped so far because the output was behind.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn writer_thread(shared: &Shared, mut out: impl Write, interval: Duration) {
    let mut reported = 0;
    let mut batch: Vec<Vec<u8>> = Vec::new();
    loop {
        let closed = {
            let mut st = shared.lock();
            // Sleep until a buffer is full, an urgent line came, the guard closed, or the
            // interval passed with lines waiting.
            while st.full.is_empty() && !st.urgent && !st.closed {
                let (g, t) = shared
                    .wake
                    .wait_timeout(st, interval)
                    .unwrap_or_else(|e| e.into_inner());
                st = g;
                if t.timed_out() && !st.current.is_empty() {
                    break;
                }
            }
            batch.extend(st.full.drain(..));
            // The buffer being filled goes too, unless the write already holds the most
            // buffers allowed: it then stays the one being filled (the bound is
            // `MAX_PENDING` in the write, plus that one), and a pending urgent line stays
            // marked, so the next round takes it without waiting for the interval.
            if !st.current.is_empty() && batch.len() < MAX_PENDING {
                let fresh = st.spare.pop().unwrap_or_default();
                batch.push(std::mem::replace(&mut st.current, fresh));
                st.urgent = false;
            } else if st.current.is_empty() {
                st.urgent = false;
            }
            st.writing = batch.len();
            st.closed
        };
        for buf in &batch {
            // A failed write loses those lines; there is nowhere else to report them.
            let _ = out.write_all(buf);
        }
        let dropped = shared.dropped.load(Ordering::Relaxed);
        if dropped > reported {
            let _ = writeln!(
                out,
                "log writer: {} lines dropped (output behind; {dropped} since start)",
                dropped - reported
            );
            reported = dropped;
        }
        let _ = out.flush();
        let mut st = shared.lock();
        st.writing = 0;
        for mut buf in batch.drain(..) {
            if st.spare.len() < 2 && buf.capacity() <= 2 * BUFFER_BYTES {
                buf.clear();
                st.spare.push(buf);
            }
        }
        if closed && st.full.is_empty() && st.current.is_empty() {
            return;
        }
    }
}

/// One line's writer: `tracing_subscriber::fmt` writes each formatted event with one
/// `write_all`, which becomes one [`Shared::append`].
pub struct LineWriter<'a> {
    shared: &'a Shared,
    urgent: bool,
}

impl Write for LineWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.shared.append(buf, self.urgent);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BufferedLog {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter {
            shared: &self.shared,
            urgent: true,
        }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        LineWriter {
            shared: &self.shared,
            urgent: !meta.target().ends_with("::access"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An output that records what it was given, and can be held (a blocked pipe).
    #[derive(Clone, Default)]
    struct Out {
        bytes: Arc<Mutex<Vec<u8>>>,
        gate: Arc<Mutex<()>>,
    }

    impl Write for Out {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let _held = self.gate.lock().unwrap();
            self.bytes.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn line(log: &BufferedLog, text: &str, urgent: bool) {
        let mut w = LineWriter {
            shared: &log.shared,
            urgent,
        };
        w.write_all(text.as_bytes()).unwrap();
    }

    fn text(out: &Out) -> String {
        String::from_utf8(out.bytes.lock().unwrap().clone()).unwrap()
    }

    /// Waits (bounded) until `f` holds.
    fn until(what: &str, f: impl Fn() -> bool) {
        for _ in 0..2_000 {
            if f() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("timed out waiting for {what}");
    }

    #[test]
    fn every_line_whole_and_in_order_after_the_guard() {
        let out = Out::default();
        // An interval far beyond the test: only full buffers and the guard write.
        let (log, guard) = BufferedLog::new(out.clone(), Duration::from_secs(3600)).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let log = log.clone();
                std::thread::spawn(move || {
                    for i in 0..20_000 {
                        line(
                            &log,
                            &format!("t{t} line {i} {}\n", "x".repeat(i % 50)),
                            false,
                        );
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(guard);
        // (On a loaded machine the writer may fall behind: those lines are dropped whole
        // and counted, never cut or reordered.)
        let dropped = log.dropped();
        let all = text(&out);
        let mut next = [0usize; 4];
        let mut kept = 0u64;
        for l in all.lines() {
            if l.starts_with("log writer: ") {
                assert!(dropped > 0, "{l}");
                continue;
            }
            let mut parts = l.split(' ');
            let t: usize = parts.next().unwrap()[1..].parse().unwrap();
            assert_eq!(parts.next(), Some("line"));
            let i: usize = parts.next().unwrap().parse().unwrap();
            assert_eq!(parts.next().unwrap(), "x".repeat(i % 50), "{l}");
            assert!(i >= next[t], "thread {t}'s lines out of order at {l}");
            next[t] = i + 1;
            kept += 1;
        }
        assert_eq!(kept + dropped, 80_000, "a line lost without being counted");
        assert!(kept > 0);
    }

    #[test]
    fn batched_lines_go_out_within_the_interval_and_urgent_ones_at_once() {
        let out = Out::default();
        let (log, _guard) = BufferedLog::new(out.clone(), Duration::from_millis(50)).unwrap();
        line(&log, "access 1\n", false);
        until("the interval's flush", || text(&out) == "access 1\n");
        // An urgent line wakes the writer (well before an interval of an hour would), and
        // the batched line before it goes out first.
        let out = Out::default();
        let (log, _guard) = BufferedLog::new(out.clone(), Duration::from_secs(3600)).unwrap();
        line(&log, "access 2\n", false);
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(text(&out), "", "a batched line was written before its time");
        line(&log, "warning\n", true);
        until("the urgent line", || text(&out) == "access 2\nwarning\n");
        assert_eq!(log.dropped(), 0);
    }

    #[test]
    fn a_blocked_output_drops_and_counts_instead_of_blocking() {
        let out = Out::default();
        let (log, guard) = BufferedLog::new(out.clone(), Duration::from_millis(10)).unwrap();
        let held = out.gate.lock().unwrap();
        // Far more than the buffers hold; none of these calls may block.
        let line_text = format!("{}\n", "a".repeat(99));
        let lines = (MAX_PENDING + 4) * BUFFER_BYTES / line_text.len();
        for _ in 0..lines {
            line(&log, &line_text, false);
        }
        let dropped = log.dropped();
        assert!(dropped > 0, "nothing dropped");
        // The bound holds for the buffers waiting and those in the blocked write together.
        let (pending, writing) = {
            let st = log.shared.lock();
            (st.full.len(), st.writing)
        };
        assert!(
            pending + writing <= MAX_PENDING,
            "{pending} buffers pending, {writing} in the write"
        );
        // The lines kept are at most what the bound holds (the full buffers and the one
        // being filled).
        let kept_at_most = (MAX_PENDING + 1) * BUFFER_BYTES / line_text.len();
        assert!(
            lines as u64 - dropped <= kept_at_most as u64,
            "{} lines kept",
            lines as u64 - dropped
        );
        drop(held);
        drop(guard);
        let all = text(&out);
        let kept = all.lines().filter(|l| l.len() == 99).count() as u64;
        assert_eq!(
            kept + dropped,
            lines as u64,
            "a line lost without being counted"
        );
        assert!(
            all.lines()
                .all(|l| l.len() == 99 || l.starts_with("log writer: "))
        );
        assert!(
            all.contains("since start)"),
            "the drop was not reported: {}",
            &all[all.len().saturating_sub(200)..]
        );
    }
}
