//! The bounded table of senders, least recently heard evicted first.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

use super::sender::Sender;

const NIL: usize = usize::MAX;

#[derive(Debug)]
struct Slot {
    sender: Option<Sender>,
    prev: usize,
    next: usize,
    /// Datagrams heard from it (saturating).
    heard: u32,
}

/// How many of the least recently heard senders eviction looks through for one heard only once:
/// 16.
const PROBATION_SCAN: usize = 16;

/// Senders by address, at most `capacity`, least recently heard evicted first.
///
/// A slab with an intrusive doubly linked list in recency order, so that hearing from a sender
/// and evicting the stalest are both O(1). Among the [`PROBATION_SCAN`] least recently heard,
/// a sender heard only once goes first: a spray of one-off (typically spoofed) source addresses
/// then evicts its own entries rather than a sender that is actively sending.
#[derive(Debug)]
pub struct SenderTable {
    index: HashMap<SocketAddr, usize>,
    slots: Vec<Slot>,
    free: Vec<usize>,
    /// Most recently heard.
    head: usize,
    /// Least recently heard.
    tail: usize,
    capacity: usize,
}

impl SenderTable {
    /// Bytes one sender's entry takes in the table, whatever it holds: its slot, its index
    /// entry (with the hash map's spare capacity), its timer heap entries (at most two) and its
    /// entry in the decoder's age index. Charged to the memory budget per sender.
    pub const ENTRY_BYTES: usize = size_of::<Slot>()
        + 2 * (size_of::<(SocketAddr, usize)>() + 8)
        + 2 * size_of::<(Instant, SocketAddr)>()
        + 2 * size_of::<(Instant, SocketAddr)>()
        + size_of::<usize>();

    /// An empty table for at most `capacity` senders (at least one).
    #[must_use]
    pub fn new(capacity: usize) -> Self {
        Self {
            index: HashMap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
            capacity: capacity.max(1),
        }
    }

    /// Senders held.
    #[must_use]
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// No senders held.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// The slot of `addr`, if present.
    #[must_use]
    pub fn find(&self, addr: &SocketAddr) -> Option<usize> {
        self.index.get(addr).copied()
    }

    /// The sender in slot `i`.
    pub fn get_mut(&mut self, i: usize) -> Option<&mut Sender> {
        self.slots.get_mut(i)?.sender.as_mut()
    }

    /// The slot of `addr`, marked most recently heard; inserted if new, evicting the least
    /// recently heard sender when full (returned, so that its pending state can be emitted).
    pub fn touch_or_insert(&mut self, addr: SocketAddr) -> (usize, Option<Sender>) {
        if let Some(i) = self.find(&addr) {
            self.unlink(i);
            self.link_front(i);
            if let Some(slot) = self.slots.get_mut(i) {
                slot.heard = slot.heard.saturating_add(1);
            }
            return (i, None);
        }
        let evicted = if self.index.len() >= self.capacity {
            self.pop_victim()
        } else {
            None
        };
        let slot = Slot {
            sender: Some(Sender::new(addr)),
            prev: NIL,
            next: NIL,
            heard: 1,
        };
        let i = if let Some(i) = self.free.pop() {
            if let Some(s) = self.slots.get_mut(i) {
                *s = slot;
            }
            i
        } else {
            self.slots.push(slot);
            self.slots.len() - 1
        };
        self.link_front(i);
        self.index.insert(addr, i);
        (i, evicted)
    }

    /// Iterates over all senders.
    pub fn iter(&self) -> impl Iterator<Item = &Sender> {
        self.slots.iter().filter_map(|s| s.sender.as_ref())
    }

    /// Iterates over all senders, mutably.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Sender> {
        self.slots.iter_mut().filter_map(|s| s.sender.as_mut())
    }

    /// Removes the sender to evict: among the [`PROBATION_SCAN`] least recently heard, the
    /// stalest one heard only once, else the least recently heard.
    pub fn pop_victim(&mut self) -> Option<Sender> {
        let mut i = self.tail;
        let mut victim = self.tail;
        for _ in 0..PROBATION_SCAN {
            let Some(slot) = self.slots.get(i) else {
                break;
            };
            if slot.heard <= 1 {
                victim = i;
                break;
            }
            i = slot.prev;
        }
        self.remove_slot(victim)
    }

    fn remove_slot(&mut self, i: usize) -> Option<Sender> {
        if i == NIL {
            return None;
        }
        self.unlink(i);
        let sender = self.slots.get_mut(i)?.sender.take()?;
        self.index.remove(&sender.addr);
        self.free.push(i);
        Some(sender)
    }

    fn unlink(&mut self, i: usize) {
        let Some(slot) = self.slots.get(i) else {
            return;
        };
        let (prev, next) = (slot.prev, slot.next);
        match self.slots.get_mut(prev) {
            Some(p) => p.next = next,
            None => self.head = next,
        }
        match self.slots.get_mut(next) {
            Some(n) => n.prev = prev,
            None => self.tail = prev,
        }
        if let Some(slot) = self.slots.get_mut(i) {
            slot.prev = NIL;
            slot.next = NIL;
        }
    }

    fn link_front(&mut self, i: usize) {
        let old_head = self.head;
        if let Some(slot) = self.slots.get_mut(i) {
            slot.prev = NIL;
            slot.next = old_head;
        }
        match self.slots.get_mut(old_head) {
            Some(h) => h.prev = i,
            None => self.tail = i,
        }
        self.head = i;
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;

    #[test]
    fn sender_table_evicts_least_recently_heard() {
        let a = |n: u8| SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, n)), 6665);
        let mut t = SenderTable::new(2);
        let (i1, e) = t.touch_or_insert(a(1));
        assert!(e.is_none());
        assert!(t.touch_or_insert(a(2)).1.is_none());
        // Hear 1 again: 2 is now the stalest.
        let (again, evicted) = t.touch_or_insert(a(1));
        assert!(again == i1 && evicted.is_none());
        let (_, evicted) = t.touch_or_insert(a(3));
        assert_eq!(evicted.map(|s| s.addr), Some(a(2)));
        assert_eq!(t.len(), 2);
        assert!(t.find(&a(2)).is_none());
        // 1 (heard twice) is now the stalest, but 3 was heard only once: 3 goes first.
        let (_, evicted) = t.touch_or_insert(a(4));
        assert_eq!(evicted.map(|s| s.addr), Some(a(3)));
        assert_eq!(t.iter_mut().count(), 2);
        // Between two senders heard more than once, the least recently heard goes.
        t.touch_or_insert(a(4));
        let (_, evicted) = t.touch_or_insert(a(5));
        assert_eq!(evicted.map(|s| s.addr), Some(a(1)));
    }
}
