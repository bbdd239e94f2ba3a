//! Chunk memory the kernel can send without copying it: large chunks are kept in slots of
//! memory files (`memfd`, shared memory) mapped read-only, so that the express
//! lane sends them with `sendfile` from the file ([`Arena::locate`]) while everything else
//! reads them as ordinary [`Bytes`] through the mapping. On loopback the copy into the socket
//! was 40% of a 1 MiB hit's CPU; `sendfile` hands the kernel the file's pages instead.
//!
//! A slot is written once (`pwrite`, before any [`Bytes`] of it exists) and never again while
//! a [`Bytes`] refers to it: when the last one is dropped, its pages are released with a hole
//! punched in the file (`FALLOC_FL_PUNCH_HOLE`) and only then is the slot free to be written.
//! Pages a socket still holds from an earlier `sendfile` leave the file with the hole and keep
//! their content, so a send in flight never sees the next chunk's bytes. Only written pages
//! take memory (the files are sparse): a chunk costs its length rounded up to pages, as
//! [`Arena::resident_bytes`] reports (those pages are shared memory, not anonymous RSS).
//!
//! The arena is bounded (at most [`MAX_SLABS`] files); a chunk that finds no free slot, or
//! is smaller than [`MIN_CHUNK`], stays on the heap.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
pub use cdn_http::server::express::FileSpan;

/// Chunks smaller than this stay on the heap: copying them costs less than a second syscall.
pub const MIN_CHUNK: usize = 64 * 1024;
/// At most this many files (each a descriptor of the process).
pub const MAX_SLABS: usize = 16;
/// Virtual size of one file and its mapping (sparse: only written pages take memory).
const SLAB_BYTES: usize = 1 << 30;

/// One memory file and its read-only shared mapping.
struct Slab {
    file: Arc<std::fs::File>,
    base: *const u8,
    len: usize,
}

// SAFETY: `base` points to a read-only shared mapping that lives as long as the `Slab`
// (unmapped in `Drop`); reading it from several threads is reading immutable memory (a slot's
// bytes do not change while any `Bytes` refers to it: module comment).
unsafe impl Send for Slab {}
// SAFETY: as for `Send`: shared access only reads.
unsafe impl Sync for Slab {}

impl Drop for Slab {
    fn drop(&mut self) {
        // SAFETY: `base`/`len` are exactly the mapping made in `Slab::new`; every `Bytes`
        // into it holds an `Arc<Slab>`, so none is left when this runs.
        unsafe {
            libc::munmap(self.base as *mut libc::c_void, self.len);
        }
    }
}

impl Slab {
    fn new(len: usize) -> std::io::Result<Slab> {
        // SAFETY: a NUL-terminated name and flags; the call creates a new descriptor.
        let raw = unsafe { libc::memfd_create(c"cdn-chunks".as_ptr(), libc::MFD_CLOEXEC) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `raw` is a descriptor just returned to us and owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let file = std::fs::File::from(fd);
        file.set_len(len as u64)?;
        // SAFETY: a new read-only shared mapping of the whole file we own; the pointer is
        // checked below and kept (with its length) only for reads and `munmap`.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Slab {
            file: Arc::new(file),
            base: base as *const u8,
            len,
        })
    }

    fn contains(&self, p: *const u8) -> bool {
        let (start, p) = (self.base as usize, p as usize);
        p >= start && p < start + self.len
    }
}

/// Slots of memory files for chunks of at most `slot` bytes.
pub struct Arena {
    slot: usize,
    slots_per_slab: usize,
    slabs: [OnceLock<Arc<Slab>>; MAX_SLABS],
    /// Free slots (slab, slot), and how many slabs exist.
    free: Mutex<(Vec<(u16, u32)>, usize)>,
}

/// What a [`Bytes`] in a slot owns: the slot, released when the last reference goes.
struct SlotOwner {
    arena: Arc<Arena>,
    slab: Arc<Slab>,
    at: (u16, u32),
    len: usize,
}

impl AsRef<[u8]> for SlotOwner {
    fn as_ref(&self) -> &[u8] {
        let offset = self.at.1 as usize * self.arena.slot;
        // SAFETY: `offset + len` is within the mapping (a slot lies within its slab: `adopt`),
        // which lives as long as `self.slab`; the slot was written before this owner was
        // made and is not written again until this owner is dropped (module comment), so the
        // memory is initialised and immutable for the lifetime of the borrow.
        unsafe { std::slice::from_raw_parts(self.slab.base.add(offset), self.len) }
    }
}

impl Drop for SlotOwner {
    fn drop(&mut self) {
        let offset = self.at.1 as usize * self.arena.slot;
        // SAFETY: a plain syscall on a descriptor we own, with a range inside the file.
        let punched = unsafe {
            libc::fallocate(
                self.slab.file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset as libc::off_t,
                self.arena.slot as libc::off_t,
            )
        };
        // A slot whose pages could not be released is not used again.
        if punched == 0
            && let Ok(mut free) = self.arena.free.lock()
        {
            free.0.push(self.at);
        }
    }
}

impl Arena {
    /// An arena for chunks of at most `slot` bytes; `None` when memory files are not
    /// available here (then every chunk stays on the heap).
    pub fn new(slot: usize) -> Option<Arc<Arena>> {
        if !(MIN_CHUNK..=SLAB_BYTES).contains(&slot) {
            return None;
        }
        let arena = Arc::new(Arena {
            slot,
            slots_per_slab: SLAB_BYTES / slot,
            slabs: Default::default(),
            free: Mutex::new((Vec::new(), 0)),
        });
        // One file now: an arena that cannot make one is not used at all.
        arena.grow().ok()?;
        Some(arena)
    }

    /// Adds a slab and its slots to the free list (under the lock).
    fn grow(&self) -> std::io::Result<()> {
        let mut free = self.free.lock().map_err(|_| std::io::ErrorKind::Other)?;
        let n = free.1;
        if n >= MAX_SLABS {
            return Err(std::io::ErrorKind::OutOfMemory.into());
        }
        let slab = Slab::new(self.slots_per_slab * self.slot)?;
        let _ = self.slabs[n].set(Arc::new(slab));
        free.1 = n + 1;
        // Lowest slots last, so they are taken first.
        free.0
            .extend((0..self.slots_per_slab as u32).rev().map(|s| (n as u16, s)));
        Ok(())
    }

    /// `chunk` in a slot of the arena (copied once), or `chunk` itself when it is smaller
    /// than [`MIN_CHUNK`], larger than a slot, or no slot is free.
    pub fn adopt(self: &Arc<Self>, chunk: Bytes) -> Bytes {
        if chunk.len() < MIN_CHUNK || chunk.len() > self.slot || self.locate(&chunk).is_some() {
            return chunk;
        }
        let taken = {
            let Ok(mut free) = self.free.lock() else {
                return chunk;
            };
            free.0.pop()
        };
        let at = match taken {
            Some(at) => at,
            None => match self.grow() {
                Ok(()) => match self.free.lock().ok().and_then(|mut f| f.0.pop()) {
                    Some(at) => at,
                    None => return chunk,
                },
                Err(_) => return chunk,
            },
        };
        let Some(slab) = self.slabs[at.0 as usize].get().cloned() else {
            return chunk;
        };
        let offset = at.1 as u64 * self.slot as u64;
        if slab.file.write_all_at(&chunk, offset).is_err() {
            self.release(at);
            return chunk;
        }
        Bytes::from_owner(SlotOwner {
            arena: self.clone(),
            slab,
            at,
            len: chunk.len(),
        })
    }

    fn release(&self, at: (u16, u32)) {
        if let Ok(mut free) = self.free.lock() {
            free.0.push(at);
        }
    }

    /// Where `b` lies in the arena's files, when it is (a slice of) a chunk adopted here.
    /// While `b` is alive, the file holds exactly `b`'s bytes at that offset.
    pub fn locate(&self, b: &[u8]) -> Option<FileSpan> {
        let p = b.as_ptr();
        for slab in self.slabs.iter().map_while(OnceLock::get) {
            if slab.contains(p) {
                return Some(FileSpan {
                    file: slab.file.clone(),
                    offset: (p as usize - slab.base as usize) as u64,
                });
            }
        }
        None
    }

    /// Bytes of memory the files hold (written pages; shared memory, outside anonymous RSS).
    pub fn resident_bytes(&self) -> u64 {
        self.slabs
            .iter()
            .map_while(OnceLock::get)
            .map(|s| {
                s.file
                    .metadata()
                    .map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512)
                    .unwrap_or(0)
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_holds_its_bytes_and_is_released_with_the_last_reference() {
        let arena = Arena::new(256 * 1024).expect("memfd here");
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let b = arena.adopt(Bytes::from(data.clone()));
        assert_eq!(&b[..], &data[..]);
        let span = arena.locate(&b).expect("adopted");
        assert_eq!(span.offset % (256 * 1024), 0);
        // The file holds the same bytes at that offset.
        let file = &span.file;
        let mut back = vec![0u8; data.len()];
        file.read_exact_at(&mut back, span.offset).unwrap();
        assert_eq!(back, data);
        // A slice is located inside its chunk.
        let s = b.slice(1000..2000);
        assert_eq!(arena.locate(&s).unwrap().offset, span.offset + 1000);
        assert!(arena.resident_bytes() >= data.len() as u64);
        let free_before = arena.free.lock().unwrap().0.len();
        drop((b, s));
        // Released: the slot is free again and its pages are gone.
        assert_eq!(arena.free.lock().unwrap().0.len(), free_before + 1);
        assert_eq!(arena.resident_bytes(), 0);
        let mut after = vec![1u8; 16];
        file.read_exact_at(&mut after, span.offset).unwrap();
        assert_eq!(after, vec![0u8; 16]);
    }

    #[test]
    fn small_and_oversized_chunks_stay_on_the_heap() {
        let arena = Arena::new(128 * 1024).expect("memfd here");
        let small = arena.adopt(Bytes::from(vec![1u8; 1000]));
        let big = arena.adopt(Bytes::from(vec![2u8; 200 * 1024]));
        assert!(arena.locate(&small).is_none() && arena.locate(&big).is_none());
        assert_eq!((small.len(), big.len()), (1000, 200 * 1024));
    }
}
