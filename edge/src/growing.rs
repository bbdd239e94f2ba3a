//! A chunk being filled, readable while its bytes arrive ([`Growing`]): the fill (a probe's
//! body, a fill source, a peer's streamed answer) pushes pieces as they come, readers (a
//! viewer's response, a peer's streamed answer) take them as they come, so a chunk crosses
//! a chain of nodes in pipeline instead of store-and-forward at each hop.
//!
//! Nothing of it passes for complete before the fill says it is: a reader holds back the
//! last byte of its window until the chunk is complete and checked (exact length, and the
//! digest for a peer's answer), so a body that needs this chunk cannot end before then. A
//! fill that fails fails its readers, whose responses are then aborted (the way a truncated
//! origin body is). A source that failed after pushing bytes is replaced by the next one
//! ([`Growing::restart`]): a reader that has taken nothing yet reads the new bytes; one that
//! has taken some goes on only once the new source's bytes up to where it was are the very
//! bytes it gave (a peer link cut mid-chunk costs the viewer nothing), and fails otherwise
//! (a corrupt answer it forwarded in part is never completed).

use std::sync::Arc;

use bytes::Bytes;
use futures::Stream;
use tokio::sync::watch;

use crate::fill::FillError;

/// What a fill has pushed so far.
#[derive(Default)]
struct Progress {
    /// Bumped by [`Growing::restart`]: the pieces of an earlier source are gone.
    generation: u32,
    parts: Vec<Bytes>,
    received: u64,
    /// `Some(Ok)` once complete and checked; `Some(Err)` once failed.
    end: Option<Result<(), Arc<FillError>>>,
}

/// A chunk of `len` bytes being filled.
pub struct Growing {
    len: u64,
    tx: watch::Sender<Progress>,
}

impl Growing {
    pub fn new(len: u64) -> Arc<Self> {
        Arc::new(Growing {
            len,
            tx: watch::Sender::new(Progress::default()),
        })
    }

    /// Bytes pushed by the current source.
    pub fn received(&self) -> u64 {
        self.tx.borrow().received
    }

    /// Whether the fill has ended (complete or failed).
    pub fn ended(&self) -> bool {
        self.tx.borrow().end.is_some()
    }

    /// Appends bytes that arrived. Bytes past the chunk's length are not taken: the source
    /// is failing, and whoever pushes fails it.
    pub fn push(&self, data: Bytes) {
        if data.is_empty() {
            return;
        }
        self.tx.send_if_modified(|p| {
            if p.end.is_some() || p.received.saturating_add(data.len() as u64) > self.len {
                return false;
            }
            p.received += data.len() as u64;
            p.parts.push(data);
            true
        });
    }

    /// The current source failed: its pieces are dropped for the next source's.
    pub fn restart(&self) {
        self.tx.send_if_modified(|p| {
            if p.received == 0 || p.end.is_some() {
                return false;
            }
            p.generation = p.generation.wrapping_add(1);
            p.parts.clear();
            p.received = 0;
            true
        });
    }

    /// The chunk is complete and checked: `bytes` is all of it. Pushes what readers have not
    /// been given yet (a source that answered whole) and releases the held-back bytes.
    pub fn complete(&self, bytes: &Bytes) {
        self.tx.send_modify(|p| {
            if p.end.is_some() {
                return;
            }
            if p.received != bytes.len() as u64 {
                if p.received > 0 {
                    p.generation = p.generation.wrapping_add(1);
                }
                p.parts = vec![bytes.clone()];
                p.received = bytes.len() as u64;
            }
            p.end = Some(Ok(()));
        });
    }

    /// The fill failed: every reader fails.
    pub fn fail(&self, error: Arc<FillError>) {
        self.tx.send_modify(|p| {
            if p.end.is_none() {
                p.end = Some(Err(error));
            }
        });
    }

    /// Bytes `from..to` of the chunk as they arrive (`to` ≤ its length). The last byte comes
    /// only once the chunk is complete; a failure is the stream's last item.
    pub fn window(
        self: &Arc<Self>,
        from: u64,
        to: u64,
    ) -> impl Stream<Item = Result<Bytes, Arc<FillError>>> + Send + 'static {
        let reader = Reader {
            rx: self.tx.subscribe(),
            generation: None,
            at: from,
            to: to.min(self.len),
            part: 0,
            part_start: 0,
            taken: false,
            given: Vec::new(),
            verify: false,
            from,
            done: from >= to.min(self.len),
        };
        futures::stream::unfold(reader, |mut r| async move {
            let item = r.next().await?;
            Some((item, r))
        })
    }
}

/// One reader's place in a [`Growing`] chunk.
struct Reader {
    rx: watch::Receiver<Progress>,
    /// Where the window starts.
    from: u64,
    generation: Option<u32>,
    /// Next byte to give (offset in the chunk).
    at: u64,
    to: u64,
    /// The part holding `at`, and where that part starts.
    part: usize,
    part_start: u64,
    /// Something was given already.
    taken: bool,
    /// What was given (slices of the parts: references, not copies), to check a new
    /// source's bytes against after a restart.
    given: Vec<Bytes>,
    /// A restart happened after bytes were given: the new bytes up to `at` must match them.
    verify: bool,
    done: bool,
}

enum Step {
    Give(Bytes),
    Fail(Arc<FillError>),
    Wait,
}

impl Reader {
    async fn next(&mut self) -> Option<Result<Bytes, Arc<FillError>>> {
        loop {
            if self.done {
                return None;
            }
            let step = self.step();
            match step {
                Step::Give(b) => {
                    self.taken = true;
                    self.given.push(b.clone());
                    return Some(Ok(b));
                }
                Step::Fail(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
                Step::Wait => {
                    if self.rx.changed().await.is_err() {
                        // The fill is gone without a word (its task ended): nothing more comes.
                        let p = self.rx.borrow();
                        if !matches!(p.end, Some(Ok(()))) || p.received < self.to {
                            drop(p);
                            self.done = true;
                            return Some(Err(Arc::new(FillError::Abandoned)));
                        }
                    }
                }
            }
        }
    }

    fn step(&mut self) -> Step {
        let p = self.rx.borrow_and_update();
        if self.generation != Some(p.generation) {
            self.verify = self.taken;
            self.generation = Some(p.generation);
            self.part = 0;
            self.part_start = 0;
        }
        if let Some(Err(e)) = &p.end {
            return Step::Fail(e.clone());
        }
        if self.verify {
            // The new source must have given the same bytes up to where this reader is.
            if p.received < self.at {
                if p.end.is_some() {
                    return Step::Fail(Arc::new(FillError::Truncated {
                        got: p.received,
                        want: self.at,
                    }));
                }
                return Step::Wait;
            }
            if !same_bytes(&p.parts, self.from, &self.given) {
                return Step::Fail(Arc::new(FillError::Request(
                    "the chunk's next source disagrees with the bytes already sent".into(),
                )));
            }
            self.verify = false;
        }
        if self.at >= self.to {
            self.done = true;
            return Step::Wait;
        }
        let complete = matches!(p.end, Some(Ok(())));
        // The last byte of the window waits for the chunk to be complete and checked.
        let limit = if complete { self.to } else { self.to - 1 };
        let upto = p.received.min(limit);
        if upto <= self.at {
            if complete {
                // Complete but shorter than the window: never served as whole.
                return Step::Fail(Arc::new(FillError::Truncated {
                    got: p.received,
                    want: self.to,
                }));
            }
            return Step::Wait;
        }
        // Find the part holding `at` (parts only grow within a generation).
        while self.part < p.parts.len() {
            let plen = p.parts[self.part].len() as u64;
            if self.at < self.part_start + plen {
                break;
            }
            self.part_start += plen;
            self.part += 1;
        }
        let Some(part) = p.parts.get(self.part) else {
            return Step::Wait;
        };
        let from = (self.at - self.part_start) as usize;
        let end = (upto - self.part_start).min(part.len() as u64) as usize;
        let out = part.slice(from..end);
        self.at += out.len() as u64;
        if self.at >= self.to {
            self.done = true;
        }
        Step::Give(out)
    }
}

/// Whether the bytes of `parts` from offset `from` on begin with the bytes of `given`.
fn same_bytes(parts: &[Bytes], from: u64, given: &[Bytes]) -> bool {
    let mut theirs = parts.iter().flat_map(|p| p.iter()).skip(from as usize);
    given
        .iter()
        .flat_map(|g| g.iter())
        .all(|b| theirs.next() == Some(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    async fn collect(
        s: impl Stream<Item = Result<Bytes, Arc<FillError>>>,
    ) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        let mut s = std::pin::pin!(s);
        while let Some(item) = s.next().await {
            match item {
                Ok(b) => out.extend_from_slice(&b),
                Err(e) => return Err(format!("{e} after {} bytes", out.len())),
            }
        }
        Ok(out)
    }

    #[tokio::test]
    async fn readers_get_bytes_as_they_arrive_and_the_last_one_once_complete() {
        let g = Growing::new(10);
        let mut w = Box::pin(g.window(0, 10));
        g.push(Bytes::from_static(b"01234"));
        assert_eq!(w.next().await.unwrap().unwrap(), &b"01234"[..]);
        g.push(Bytes::from_static(b"56789"));
        // Everything but the last byte, before the chunk is complete.
        assert_eq!(w.next().await.unwrap().unwrap(), &b"5678"[..]);
        let last = tokio::spawn(async move { (w.next().await, w.next().await) });
        tokio::task::yield_now().await;
        g.complete(&Bytes::from_static(b"0123456789"));
        let (a, b) = last.await.unwrap();
        assert_eq!(a.unwrap().unwrap(), &b"9"[..]);
        assert!(b.is_none());
        // A window of a complete chunk.
        assert_eq!(collect(g.window(3, 7)).await.unwrap(), b"3456");
    }

    #[tokio::test]
    async fn a_failed_fill_fails_readers_and_a_restart_checks_what_they_took() {
        let g = Growing::new(6);
        let mut early = Box::pin(g.window(0, 6));
        let mut same = Box::pin(g.window(0, 6));
        let late = g.window(0, 6);
        g.push(Bytes::from_static(b"ab"));
        assert_eq!(same.next().await.unwrap().unwrap(), &b"ab"[..]);
        g.push(Bytes::from_static(b"c"));
        assert_eq!(early.next().await.unwrap().unwrap(), &b"ab"[..]);
        assert_eq!(early.next().await.unwrap().unwrap(), &b"c"[..]);
        g.restart();
        // The next source: the same first two bytes, another third one.
        g.push(Bytes::from_static(b"abXDEF"));
        g.complete(&Bytes::from_static(b"abXDEF"));
        assert!(
            early.next().await.unwrap().is_err(),
            "gave other bytes: fails"
        );
        assert!(early.next().await.is_none());
        assert_eq!(
            collect(same).await.unwrap(),
            b"XDEF",
            "gave the same: goes on"
        );
        assert_eq!(
            collect(late).await.unwrap(),
            b"abXDEF",
            "took none: reads on"
        );

        let g = Growing::new(4);
        let mut w = Box::pin(g.window(0, 4));
        g.push(Bytes::from_static(b"xyz"));
        assert_eq!(w.next().await.unwrap().unwrap(), &b"xyz"[..]);
        g.fail(Arc::new(FillError::Truncated { got: 3, want: 4 }));
        assert!(w.next().await.unwrap().is_err());
        assert!(w.next().await.is_none());
        // A fill that goes away without a word.
        let g = Growing::new(4);
        let w = g.window(0, 4);
        drop(g);
        assert!(collect(w).await.is_err());
    }
}
