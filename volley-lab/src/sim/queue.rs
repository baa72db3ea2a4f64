//! The event queue: a radix heap ordered by (time, sequence number), plus FIFO lanes for timers
//! set a fixed delay ahead.
//!
//! Simulated time never goes back, so every event pushed is later than the last one popped: a
//! monotone priority queue. A radix heap (Ahuja, Mehlhorn, Orlin, Tarjan 1990) keeps entries in
//! buckets by the highest bit in which their key differs from the last key popped; pushing is an
//! append, popping refills bucket 0 from the first non-empty bucket. It touches memory
//! sequentially, where a binary heap of ~50,000 pending departures missed the cache on every
//! level. Payloads are stored inline for the same reason.
//!
//! Every race arms a 250 ms retransmission timer that almost never fires: at 1.9 M sessions per
//! virtual second that is ~500,000 pending timers, and keeping them in the heap made every heap
//! operation a cache miss. Timers pushed with the same delay from a non-decreasing `now` come due
//! in push order, so a FIFO per delay keeps them sorted at O(1); `pop` takes the earliest of the
//! heap's top and the lanes' fronts. Ties resolve by sequence number everywhere, so the order of
//! events — and so a run — depends only on the seed.

use std::collections::VecDeque;

/// Virtual time: nanoseconds since the run began.
pub type Nanos = u64;

/// Most FIFO lanes; timers of further delays go to the heap.
const MAX_LANES: usize = 8;

/// A heap or lane entry: the key — time in the high 64 bits, sequence number in the low — and
/// the payload, inline, so that popping touches no other memory.
#[derive(Debug)]
struct Entry<K> {
    key: u128,
    kind: K,
}

fn key(at: Nanos, seq: u64) -> u128 {
    (u128::from(at) << 64) | u128::from(seq)
}

/// A monotone priority queue of entries: every key pushed is at least the last key popped.
#[derive(Debug)]
struct RadixHeap<K> {
    /// The last key popped (bucket 0 holds keys equal to it).
    last: u128,
    /// Entries by the highest bit in which they differ from `last`, with each bucket's minimum.
    buckets: Vec<(u128, Vec<Entry<K>>)>,
    len: usize,
}

impl<K> Default for RadixHeap<K> {
    fn default() -> Self {
        Self {
            last: 0,
            buckets: (0..=128).map(|_| (u128::MAX, Vec::new())).collect(),
            len: 0,
        }
    }
}

impl<K> RadixHeap<K> {
    fn put(&mut self, e: Entry<K>) {
        let b = (128 - (e.key ^ self.last).leading_zeros()) as usize;
        let (min, v) = &mut self.buckets[b];
        *min = (*min).min(e.key);
        v.push(e);
    }

    /// Pushes `e`; `e.key` must be ≥ the last key popped (the caller makes sure).
    fn push(&mut self, e: Entry<K>) {
        self.put(e);
        self.len += 1;
    }

    /// The smallest key, without moving anything.
    fn min_key(&self) -> Option<u128> {
        self.buckets
            .iter()
            .find(|(_, v)| !v.is_empty())
            .map(|(min, _)| *min)
    }

    fn pop(&mut self) -> Option<Entry<K>> {
        if self.buckets[0].1.is_empty() {
            let i = self.buckets.iter().position(|(_, v)| !v.is_empty())?;
            let (min, mut moved) = std::mem::replace(&mut self.buckets[i], (u128::MAX, Vec::new()));
            self.last = min;
            for e in moved.drain(..) {
                self.put(e);
            }
            // Keep the emptied bucket's allocation.
            self.buckets[i].1 = moved;
        }
        let (min, v) = &mut self.buckets[0];
        let e = v.pop()?;
        if v.is_empty() {
            *min = u128::MAX;
        }
        self.len -= 1;
        Some(e)
    }
}

/// Events of kind `K` in time order.
#[derive(Debug)]
pub struct Queue<K> {
    heap: RadixHeap<K>,
    lanes: Vec<(Nanos, VecDeque<Entry<K>>)>,
    seq: u64,
    /// The latest `now` a timer was pushed at (lanes need it non-decreasing).
    last_now: Nanos,
    /// The time of the last event popped.
    now: Nanos,
}

impl<K> Default for Queue<K> {
    fn default() -> Self {
        Self {
            heap: RadixHeap::default(),
            lanes: Vec::new(),
            seq: 0,
            last_now: 0,
            now: 0,
        }
    }
}

impl<K> Queue<K> {
    fn entry(&mut self, at: Nanos, kind: K) -> Entry<K> {
        self.seq += 1;
        Entry {
            key: key(at, self.seq),
            kind,
        }
    }

    /// Schedules `kind` at `at`. An `at` before the last event popped is taken as that event's
    /// time (time never goes back).
    pub fn push(&mut self, at: Nanos, kind: K) {
        let at = at.max(self.now);
        let e = self.entry(at, kind);
        self.heap.push(e);
    }

    /// Schedules a timer `kind` at `at`, set at `now`: into the lane of its delay if there is
    /// (or can be) one.
    pub fn push_timer(&mut self, now: Nanos, at: Nanos, kind: K) {
        if now < self.last_now || at < now || at < self.now {
            return self.push(at, kind);
        }
        self.last_now = now;
        let delay = at - now;
        let lane = match self.lanes.iter().position(|(d, _)| *d == delay) {
            Some(i) => i,
            None if self.lanes.len() < MAX_LANES => {
                self.lanes.push((delay, VecDeque::new()));
                self.lanes.len() - 1
            }
            None => return self.push(at, kind),
        };
        let e = self.entry(at, kind);
        self.lanes[lane].1.push_back(e);
    }

    /// The earliest event, with its time.
    pub fn pop(&mut self) -> Option<(Nanos, K)> {
        let mut best: Option<(u128, Option<usize>)> = self.heap.min_key().map(|k| (k, None));
        for (i, (_, lane)) in self.lanes.iter().enumerate() {
            if let Some(e) = lane.front()
                && best.is_none_or(|(b, _)| e.key < b)
            {
                best = Some((e.key, Some(i)));
            }
        }
        let e = match best?.1 {
            None => self.heap.pop()?,
            Some(i) => self.lanes[i].1.pop_front()?,
        };
        let at = (e.key >> 64) as Nanos;
        self.now = at;
        Some((at, e.kind))
    }

    /// Events pending.
    pub fn len(&self) -> usize {
        self.heap.len + self.lanes.iter().map(|(_, l)| l.len()).sum::<usize>()
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_in_time_then_push_order_across_heap_and_lanes() {
        let mut q = Queue::default();
        q.push_timer(0, 250, "t250@0");
        q.push(100, "h100");
        q.push_timer(10, 260, "t250@10");
        q.push_timer(10, 12, "t2@10");
        q.push(250, "h250");
        q.push_timer(20, 22, "t2@20");
        q.push(12, "h12");
        let order: Vec<_> = std::iter::from_fn(|| q.pop()).collect();
        assert_eq!(
            order,
            vec![
                (12, "t2@10"),
                (12, "h12"),
                (22, "t2@20"),
                (100, "h100"),
                (250, "t250@0"),
                (250, "h250"),
                (260, "t250@10"),
            ]
        );
        assert!(q.is_empty());
    }

    #[test]
    fn timers_pushed_out_of_order_fall_back_to_the_heap() {
        let mut q = Queue::default();
        q.push_timer(50, 60, 'a');
        q.push_timer(40, 50, 'b'); // `now` went back: must still come out first
        assert_eq!(q.pop(), Some((50, 'b')));
        assert_eq!(q.pop(), Some((60, 'a')));
        assert_eq!(q.pop(), None);
    }
}
