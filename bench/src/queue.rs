//! Building blocks of the reference policies: an index-based doubly linked list (the queues of
//! FIFO, LRU, SIEVE and S3-FIFO) and a fast, deterministic hash map keyed by object id.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A hasher for `u64` object ids: a SplitMix64 finalizer, fast and the same on every run, so
/// that replays are reproducible and sequential synthetic ids still spread over the table.
#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        let mut x = self.0;
        x ^= x >> 30;
        x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x ^= x >> 27;
        x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^ (x >> 31)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 ^= n;
    }
}

/// A `HashMap` keyed by object id with [`IdHasher`].
pub type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;

/// A handle to a node of a [`DList`]; valid until that node is removed.
pub type Handle = usize;

const NIL: Handle = usize::MAX;

#[derive(Debug, Clone, Copy)]
struct Node<T> {
    value: T,
    prev: Handle,
    next: Handle,
}

/// A doubly linked list stored in a vector (freed slots are reused). The front is the newest
/// end (where FIFO, LRU and SIEVE insert), the back the oldest (where they evict).
#[derive(Debug, Clone)]
pub struct DList<T> {
    nodes: Vec<Node<T>>,
    free: Vec<Handle>,
    head: Handle,
    tail: Handle,
    len: usize,
}

impl<T: Copy> Default for DList<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Copy> DList<T> {
    pub fn new() -> Self {
        Self {
            nodes: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Inserts `value` at the front (newest end) and returns its handle.
    pub fn push_front(&mut self, value: T) -> Handle {
        let node = Node {
            value,
            prev: NIL,
            next: self.head,
        };
        let h = match self.free.pop() {
            Some(h) => {
                self.nodes[h] = node;
                h
            }
            None => {
                self.nodes.push(node);
                self.nodes.len() - 1
            }
        };
        if self.head != NIL {
            self.nodes[self.head].prev = h;
        } else {
            self.tail = h;
        }
        self.head = h;
        self.len += 1;
        h
    }

    /// The oldest node, if any.
    pub fn back(&self) -> Option<Handle> {
        (self.tail != NIL).then_some(self.tail)
    }

    /// The neighbour of `h` towards the front (the next newer node), if any.
    pub fn newer(&self, h: Handle) -> Option<Handle> {
        let p = self.nodes[h].prev;
        (p != NIL).then_some(p)
    }

    pub fn get(&self, h: Handle) -> &T {
        &self.nodes[h].value
    }

    pub fn get_mut(&mut self, h: Handle) -> &mut T {
        &mut self.nodes[h].value
    }

    fn unlink(&mut self, h: Handle) {
        let Node { prev, next, .. } = self.nodes[h];
        if prev != NIL {
            self.nodes[prev].next = next;
        } else {
            self.head = next;
        }
        if next != NIL {
            self.nodes[next].prev = prev;
        } else {
            self.tail = prev;
        }
    }

    /// Removes the node `h` and returns its value.
    pub fn remove(&mut self, h: Handle) -> T {
        self.unlink(h);
        self.free.push(h);
        self.len -= 1;
        self.nodes[h].value
    }

    /// Removes and returns the oldest value.
    pub fn pop_back(&mut self) -> Option<T> {
        self.back().map(|h| self.remove(h))
    }

    /// Moves the node `h` to the front (newest end); its handle stays valid.
    pub fn move_to_front(&mut self, h: Handle) {
        if self.head == h {
            return;
        }
        self.unlink(h);
        self.nodes[h].prev = NIL;
        self.nodes[h].next = self.head;
        self.nodes[self.head].prev = h;
        self.head = h;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contents(l: &DList<u32>) -> Vec<u32> {
        // oldest to newest
        let mut out = Vec::new();
        let mut cur = l.back();
        while let Some(h) = cur {
            out.push(*l.get(h));
            cur = l.newer(h);
        }
        out
    }

    #[test]
    fn dlist_push_remove_move() {
        let mut l = DList::new();
        let a = l.push_front(1);
        let b = l.push_front(2);
        let c = l.push_front(3);
        assert_eq!(contents(&l), vec![1, 2, 3]);
        l.move_to_front(a);
        assert_eq!(contents(&l), vec![2, 3, 1]);
        assert_eq!(l.remove(c), 3);
        assert_eq!(contents(&l), vec![2, 1]);
        assert_eq!(l.pop_back(), Some(2));
        let d = l.push_front(4); // reuses a freed slot
        assert!(d == b || d == c);
        assert_eq!(contents(&l), vec![1, 4]);
        assert_eq!(l.len, 2);
        assert_eq!(l.pop_back(), Some(1));
        assert_eq!(l.pop_back(), Some(4));
        assert!(l.is_empty());
        assert_eq!(l.pop_back(), None);
    }
}
