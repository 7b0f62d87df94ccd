//! The bounded in-memory buffer between the readers and the sender.
//!
//! Readers [`push`](Buffer::push) and never wait for anything but a short lock: the sockets
//! they drain are always drained. When the records waiting exceed the capacity, the OLDEST
//! waiting records are dropped and counted; the sender reports the count once the host is
//! back. The sender [`takes`](Buffer::next_batch) one kind of record at a time (user or
//! kernel: two host calls), oldest first, once a batch is full or its oldest record has
//! waited long enough, or, right after a full batch (a burst), once the readers have been
//! quiet for [`QUIET`]: the end of a burst is not held back for the whole linger. A batch
//! the sender holds is out of the buffer: it is never dropped, so memory is bounded by the
//! capacity plus one batch.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::record::{Kind, Record};

/// After a full batch, a partial one goes once no record has arrived for this long.
pub const QUIET: Duration = Duration::from_millis(10);

/// One record waiting to be sent.
#[derive(Debug, Clone)]
pub struct Entry {
    pub kind: Kind,
    pub record: Record,
    /// The kernel's sequence number, for kmsg records: persisted once delivered.
    pub kmsg_seq: Option<u64>,
    order: u64,
    cost: usize,
    arrived: Instant,
}

/// Records of one kind, oldest first, for one host call.
#[derive(Debug)]
pub struct Batch {
    pub kind: Kind,
    pub entries: Vec<Entry>,
}

impl Batch {
    /// The highest kmsg sequence number in the batch.
    pub fn last_kmsg_seq(&self) -> Option<u64> {
        self.entries.iter().filter_map(|e| e.kmsg_seq).max()
    }
}

#[derive(Default)]
struct State {
    user: VecDeque<Entry>,
    kernel: VecDeque<Entry>,
    bytes: usize,
    next_order: u64,
    dropped: u64,
    stopping: bool,
    last_push: Option<Instant>,
    /// The last batch was full: a burst is on.
    burst: bool,
}

impl State {
    fn len(&self) -> usize {
        self.user.len() + self.kernel.len()
    }

    /// The queue whose front is the oldest record.
    fn oldest(&mut self) -> Option<&mut VecDeque<Entry>> {
        match (self.user.front(), self.kernel.front()) {
            (Some(u), Some(k)) if k.order < u.order => Some(&mut self.kernel),
            (Some(_), _) => Some(&mut self.user),
            (None, Some(_)) => Some(&mut self.kernel),
            (None, None) => None,
        }
    }
}

pub struct Buffer {
    state: Mutex<State>,
    ready: Condvar,
    capacity: usize,
    batch_bytes: usize,
}

/// Why [`Buffer::next_batch`] returned nothing.
#[derive(Debug, PartialEq, Eq)]
pub enum Stopped {
    /// Stopping, and nothing is left to send.
    Drained,
}

impl Buffer {
    /// `capacity`: bytes of waiting records before the oldest are dropped; `batch_bytes`:
    /// how much one batch may hold.
    pub fn new(capacity: usize, batch_bytes: usize) -> Buffer {
        Buffer {
            state: Mutex::new(State::default()),
            ready: Condvar::new(),
            capacity,
            batch_bytes: batch_bytes.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicked holder left consistent counters (every update is one step): go on.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a record; drops the oldest waiting ones if it does not fit (the newest record is
    /// always kept). Returns how many were dropped.
    pub fn push(&self, kind: Kind, record: Record, kmsg_seq: Option<u64>) -> u64 {
        self.push_all(kind, std::iter::once((record, kmsg_seq)))
    }

    /// [`push`](Buffer::push) for several records of one kind, under one lock.
    pub fn push_all(
        &self,
        kind: Kind,
        records: impl IntoIterator<Item = (Record, Option<u64>)>,
    ) -> u64 {
        let mut state = self.lock();
        let was_empty = state.len() == 0;
        let before = state.bytes;
        let now = Instant::now();
        state.last_push = Some(now);
        let mut dropped = 0;
        for (record, kmsg_seq) in records {
            let cost = record.cost();
            let order = state.next_order;
            state.next_order += 1;
            let entry = Entry {
                kind,
                record,
                kmsg_seq,
                order,
                cost,
                arrived: now,
            };
            match kind {
                Kind::User => state.user.push_back(entry),
                Kind::Kernel => state.kernel.push_back(entry),
            }
            state.bytes += cost;
            while state.bytes > self.capacity && state.len() > 1 {
                let Some(old) = state.oldest().and_then(VecDeque::pop_front) else {
                    break;
                };
                state.bytes -= old.cost;
                dropped += 1;
            }
        }
        state.dropped += dropped;
        let crossed = before < self.batch_bytes && state.bytes >= self.batch_bytes;
        drop(state);
        if was_empty || crossed {
            self.ready.notify_all();
        }
        dropped
    }

    /// Waits for the next batch: at least `batch_bytes` waiting, or the oldest record waited
    /// `linger`, or a burst went [`QUIET`], or stopping (then everything goes at once).
    /// `Err` once stopping and empty.
    pub fn next_batch(&self, linger: Duration) -> Result<Batch, Stopped> {
        let mut state = self.lock();
        loop {
            let mut deadline = state
                .oldest()
                .and_then(|q| q.front())
                .map(|e| e.arrived + linger);
            if let (true, Some(d), Some(last)) = (state.burst, deadline, state.last_push) {
                deadline = Some(d.min(last + QUIET));
            }
            match deadline {
                None if state.stopping => return Err(Stopped::Drained),
                None => state = self.ready.wait(state).unwrap_or_else(|p| p.into_inner()),
                Some(deadline) => {
                    let now = Instant::now();
                    let full = state.bytes >= self.batch_bytes;
                    if state.stopping || full || now >= deadline {
                        state.burst = full;
                        return Ok(self.take(&mut state));
                    }
                    state = self
                        .ready
                        .wait_timeout(state, deadline - now)
                        .map(|(s, _)| s)
                        .unwrap_or_else(|p| p.into_inner().0);
                }
            }
        }
    }

    /// The oldest queue's records, up to `batch_bytes` (at least one).
    fn take(&self, state: &mut State) -> Batch {
        let mut taken = 0;
        let mut entries = Vec::new();
        let mut kind = Kind::User;
        if let Some(queue) = state.oldest() {
            while let Some(front) = queue.front() {
                if !entries.is_empty() && taken + front.cost > self.batch_bytes {
                    break;
                }
                let Some(entry) = queue.pop_front() else {
                    break;
                };
                taken += entry.cost;
                kind = entry.kind;
                entries.push(entry);
            }
        }
        state.bytes -= taken;
        Batch { kind, entries }
    }

    /// The number of records dropped since the last call, and resets it.
    pub fn take_dropped(&self) -> u64 {
        std::mem::take(&mut self.lock().dropped)
    }

    /// Makes [`next_batch`](Buffer::next_batch) hand out everything without waiting.
    pub fn stop(&self) {
        self.lock().stopping = true;
        self.ready.notify_all();
    }

    pub fn is_stopping(&self) -> bool {
        self.lock().stopping
    }

    /// (records, bytes) waiting.
    pub fn waiting(&self) -> (usize, usize) {
        let state = self.lock();
        (state.len(), state.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Timestamp;

    fn rec(text: &str) -> Record {
        let mut r = Record::new(13, Timestamp::default());
        r.set_content(text.as_bytes());
        r
    }

    fn texts(batch: &Batch) -> Vec<String> {
        batch
            .entries
            .iter()
            .map(|e| String::from_utf8_lossy(&e.record.content).into_owned())
            .collect()
    }

    #[test]
    fn next_batch_full_batch_goes_at_once() {
        let cost = rec("aaaa").cost();
        let buf = Buffer::new(1 << 20, cost * 3);
        for t in ["aaaa", "bbbb", "cccc", "dddd"] {
            buf.push(Kind::User, rec(t), None);
        }
        let started = Instant::now();
        let batch = buf.next_batch(Duration::from_secs(60)).unwrap();
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(texts(&batch), ["aaaa", "bbbb", "cccc"]);
        assert_eq!(buf.waiting().0, 1);
    }

    #[test]
    fn next_batch_small_batch_waits_for_linger() {
        let buf = Buffer::new(1 << 20, 1 << 16);
        buf.push(Kind::User, rec("x"), None);
        let started = Instant::now();
        let batch = buf.next_batch(Duration::from_millis(150)).unwrap();
        assert!(started.elapsed() >= Duration::from_millis(140));
        assert_eq!(texts(&batch), ["x"]);
    }

    #[test]
    fn next_batch_after_a_full_batch_goes_when_quiet() {
        let cost = rec("aaaa").cost();
        let buf = Buffer::new(1 << 20, cost * 2);
        for t in ["aaaa", "bbbb", "cccc"] {
            buf.push(Kind::User, rec(t), None);
        }
        assert_eq!(
            texts(&buf.next_batch(Duration::from_secs(60)).unwrap()).len(),
            2
        );
        let started = Instant::now();
        let rest = buf.next_batch(Duration::from_secs(60)).unwrap();
        assert_eq!(texts(&rest), ["cccc"]);
        assert!(started.elapsed() < Duration::from_secs(1), "not the linger");
        // The burst is over: a lone record waits for the linger again.
        buf.push(Kind::User, rec("dddd"), None);
        let started = Instant::now();
        buf.next_batch(Duration::from_millis(100)).unwrap();
        assert!(started.elapsed() >= Duration::from_millis(90));
    }

    #[test]
    fn next_batch_one_kind_per_batch_oldest_first() {
        let buf = Buffer::new(1 << 20, 1 << 16);
        buf.push(Kind::Kernel, rec("k1"), Some(7));
        buf.push(Kind::User, rec("u1"), None);
        buf.push(Kind::Kernel, rec("k2"), Some(9));
        buf.stop();
        let first = buf.next_batch(Duration::ZERO).unwrap();
        assert_eq!(
            (first.kind, texts(&first)),
            (Kind::Kernel, vec!["k1".into(), "k2".into()])
        );
        assert_eq!(first.last_kmsg_seq(), Some(9));
        let second = buf.next_batch(Duration::ZERO).unwrap();
        assert_eq!(
            (second.kind, texts(&second)),
            (Kind::User, vec!["u1".into()])
        );
        assert_eq!(
            buf.next_batch(Duration::ZERO).unwrap_err(),
            Stopped::Drained
        );
    }

    #[test]
    fn push_over_capacity_drops_oldest_and_counts_exactly() {
        let cost = rec("0000").cost();
        let buf = Buffer::new(cost * 10, 1 << 20);
        let mut dropped = 0;
        for i in 0..25 {
            dropped += buf.push(Kind::User, rec(&format!("{i:04}")), None);
        }
        assert_eq!(dropped, 15);
        assert_eq!(buf.take_dropped(), 15);
        assert_eq!(buf.take_dropped(), 0);
        buf.stop();
        let batch = buf.next_batch(Duration::ZERO).unwrap();
        let want: Vec<String> = (15..25).map(|i| format!("{i:04}")).collect();
        assert_eq!(texts(&batch), want);
    }

    #[test]
    fn push_drops_oldest_across_kinds() {
        let cost = rec("k").cost();
        let buf = Buffer::new(cost * 2, 1 << 20);
        buf.push(Kind::Kernel, rec("k"), Some(1));
        buf.push(Kind::User, rec("u"), None);
        assert_eq!(buf.push(Kind::User, rec("v"), None), 1);
        buf.stop();
        let batch = buf.next_batch(Duration::ZERO).unwrap();
        assert_eq!(
            (batch.kind, texts(&batch)),
            (Kind::User, vec!["u".into(), "v".into()])
        );
    }

    #[test]
    fn push_all_keeps_order_and_drops_oldest_like_push() {
        let cost = rec("0").cost();
        let buf = Buffer::new(cost * 3, 1 << 20);
        let records = (0..5).map(|i| (rec(&i.to_string()), None));
        assert_eq!(buf.push_all(Kind::User, records), 2);
        buf.stop();
        assert_eq!(
            texts(&buf.next_batch(Duration::ZERO).unwrap()),
            ["2", "3", "4"]
        );
    }

    #[test]
    fn push_oversized_record_is_still_kept() {
        let buf = Buffer::new(10, 1 << 20);
        assert_eq!(
            buf.push(Kind::User, rec("far bigger than ten bytes"), None),
            0
        );
        assert_eq!(buf.push(Kind::User, rec("next"), None), 1);
        assert_eq!(buf.waiting().0, 1);
    }

    #[test]
    fn next_batch_wakes_when_a_record_arrives() {
        let buf = std::sync::Arc::new(Buffer::new(1 << 20, 1));
        let b = buf.clone();
        let waiter = std::thread::spawn(move || b.next_batch(Duration::from_secs(60)));
        std::thread::sleep(Duration::from_millis(50));
        buf.push(Kind::User, rec("wake"), None);
        let batch = waiter.join().unwrap().unwrap();
        assert_eq!(texts(&batch), ["wake"]);
    }

    #[test]
    fn stop_wakes_an_idle_sender() {
        let buf = std::sync::Arc::new(Buffer::new(1 << 20, 1 << 16));
        let b = buf.clone();
        let waiter = std::thread::spawn(move || b.next_batch(Duration::from_secs(60)));
        std::thread::sleep(Duration::from_millis(50));
        buf.stop();
        assert_eq!(waiter.join().unwrap().unwrap_err(), Stopped::Drained);
        assert!(buf.is_stopping());
    }
}
