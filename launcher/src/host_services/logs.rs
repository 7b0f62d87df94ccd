//! LogCollector's defences: a token bucket on records and one on bytes (what does not fit is
//! dropped and counted; the count goes into the VM's log as one notice line per interval),
//! and the writing done by a worker thread of ours, never a gRPC one (a syslog socket may
//! block for up to a second). The worker replies after writing, so a guest that outruns the
//! host still waits for it; a full queue refuses the call (UNAVAILABLE: the guest keeps the
//! records and retries).
//!
//! Exactly-once: a request that carries a batch id (`boot_id`, `sequence`) is written at most
//! once ([`Written`]); the same batch again (its answer was lost, the guest retried) is
//! answered OK and not written. Requests without an id (older guests) are written every time.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TrySendError};
use grpcio::{RpcContext, RpcStatusCode, UnarySink};
use vm_proto::protos::common::EmptyMessage;
use vm_proto::protos::host::{LogRecord, LogRequest};

use super::limits::{Limits, TokenBucket};
use super::note;
use super::reply::{self, status};
use super::stats::{bump, Counters};
use crate::log_forward::LogForwarder;

/// What a record costs against the bytes limit.
pub fn record_bytes(record: &LogRecord) -> usize {
    record.get_content().len() + record.get_app_name().len()
}

/// Drops since the last notice.
#[derive(Default)]
struct Dropped {
    records: u64,
    bytes: u64,
    since: Option<Instant>,
}

struct Limiter {
    records: TokenBucket,
    bytes: TokenBucket,
    dropped: Dropped,
}

impl Limiter {
    /// The records that fit, in order; the rest are added to `dropped`.
    fn admit(&mut self, records: Vec<LogRecord>, now: Instant) -> (Vec<LogRecord>, u64, u64) {
        let (mut records_out, mut bytes_out) = (0, 0);
        let mut kept = Vec::with_capacity(records.len());
        for record in records {
            let bytes = record_bytes(&record) as f64;
            if self.records.has(1.0, now) && self.bytes.has(bytes, now) {
                self.records.take(1.0, now);
                self.bytes.take(bytes, now);
                kept.push(record);
            } else {
                records_out += 1;
                bytes_out += bytes as u64;
            }
        }
        if records_out > 0 {
            self.dropped.records += records_out;
            self.dropped.bytes += bytes_out;
            self.dropped.since.get_or_insert(now);
        }
        (kept, records_out, bytes_out)
    }
}

/// Streams whose last written batch is remembered; a guest starts a new one per boot (and
/// when it cannot save its numbering), so a few are plenty. The oldest is forgotten first.
pub const STREAMS_KEPT: usize = 16;

/// The batch id of a request, if it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchId {
    pub stream: String,
    pub number: u64,
}

impl BatchId {
    pub fn of(request: &LogRequest) -> Option<BatchId> {
        let stream = request.get_boot_id();
        let number = request.get_sequence();
        (!stream.is_empty() && number > 0).then(|| BatchId {
            stream: stream.to_string(),
            number,
        })
    }
}

/// The last batch number written per stream. Numbers of one stream only grow (the guest
/// sends one batch at a time and never reuses a number), so anything at or below the last
/// one written was written.
#[derive(Debug, Default)]
pub struct Written {
    /// (stream, last number written), oldest stream first.
    streams: std::collections::VecDeque<(String, u64)>,
}

impl Written {
    pub fn contains(&self, id: &BatchId) -> bool {
        self.streams
            .iter()
            .any(|(stream, last)| *stream == id.stream && id.number <= *last)
    }

    pub fn insert(&mut self, id: &BatchId) {
        if let Some(entry) = self.streams.iter_mut().find(|(s, _)| *s == id.stream) {
            entry.1 = entry.1.max(id.number);
            return;
        }
        if self.streams.len() >= STREAMS_KEPT {
            self.streams.pop_front();
        }
        self.streams.push_back((id.stream.clone(), id.number));
    }
}

struct Shared {
    limiter: Mutex<Limiter>,
    written: Mutex<Written>,
    counters: Arc<Counters>,
    forwarder: Arc<LogForwarder>,
    notice_every: Duration,
}

impl Shared {
    fn limiter(&self) -> std::sync::MutexGuard<'_, Limiter> {
        self.limiter.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn written(&self) -> std::sync::MutexGuard<'_, Written> {
        self.written.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// When the pending notice is due, if there is one.
    fn notice_due(&self) -> Option<Instant> {
        self.limiter()
            .dropped
            .since
            .map(|since| since + self.notice_every)
    }

    /// Writes the notice if it is due (or `now_anyway`), and starts a new interval.
    fn notice(&self, now_anyway: bool) {
        let dropped = {
            let mut limiter = self.limiter();
            let due = limiter
                .dropped
                .since
                .is_some_and(|since| now_anyway || since.elapsed() >= self.notice_every);
            if !due {
                return;
            }
            std::mem::take(&mut limiter.dropped)
        };
        self.forwarder.notice(&format!(
            "dropped {} log records ({} bytes) over the rate limit",
            dropped.records, dropped.bytes
        ));
    }
}

struct LogJob {
    kernel: bool,
    batch: Option<BatchId>,
    records: Vec<LogRecord>,
    sink: UnarySink<EmptyMessage>,
}

/// The LogCollector's limits and its writer thread.
pub struct LogGate {
    shared: Arc<Shared>,
    queue: Sender<LogJob>,
}

impl LogGate {
    pub fn start(
        forwarder: LogForwarder,
        limits: &Limits,
        counters: Arc<Counters>,
    ) -> std::io::Result<LogGate> {
        let now = Instant::now();
        let shared = Arc::new(Shared {
            limiter: Mutex::new(Limiter {
                records: TokenBucket::new(limits.log_records, now),
                bytes: TokenBucket::new(limits.log_bytes, now),
                dropped: Dropped::default(),
            }),
            written: Mutex::new(Written::default()),
            counters,
            forwarder: Arc::new(forwarder),
            notice_every: limits.log_notice_every,
        });
        let (queue, jobs) = bounded(limits.log_queue.max(1));
        let worker = shared.clone();
        std::thread::Builder::new()
            .name("host-logs".into())
            .spawn(move || write_loop(&worker, &jobs))?;
        Ok(LogGate { shared, queue })
    }

    /// Called on a gRPC thread: admits what fits the limits and queues it for the writer,
    /// which replies; replies here only when there is nothing to write or no room.
    pub fn submit(
        &self,
        ctx: &RpcContext,
        kernel: bool,
        mut request: LogRequest,
        sink: UnarySink<EmptyMessage>,
    ) {
        let batch = BatchId::of(&request);
        // Written already: the guest's retry of a batch whose answer was lost.
        if batch
            .as_ref()
            .is_some_and(|b| self.shared.written().contains(b))
        {
            return reply::on_grpc_thread(ctx, sink, Ok(EmptyMessage::new()));
        }
        if self.queue.is_full() {
            return self.busy(ctx, sink);
        }
        let records = request.take_records().into_vec();
        let (kept, records_out, bytes_out) = self.shared.limiter().admit(records, Instant::now());
        if records_out > 0 {
            let c = &self.shared.counters;
            c.log_records_dropped
                .fetch_add(records_out, std::sync::atomic::Ordering::Relaxed);
            c.log_bytes_dropped
                .fetch_add(bytes_out, std::sync::atomic::Ordering::Relaxed);
        }
        if kept.is_empty() {
            return reply::on_grpc_thread(ctx, sink, Ok(EmptyMessage::new()));
        }
        let job = LogJob {
            kernel,
            batch,
            records: kept,
            sink,
        };
        match self.queue.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(job)) => self.busy(ctx, job.sink),
            Err(TrySendError::Disconnected(job)) => reply::on_grpc_thread(
                ctx,
                job.sink,
                Err(status(RpcStatusCode::UNAVAILABLE, "the log writer stopped")),
            ),
        }
    }

    fn busy(&self, ctx: &RpcContext, sink: UnarySink<EmptyMessage>) {
        let n = bump(&self.shared.counters.log_requests_busy);
        if n.is_power_of_two() {
            note(format_args!(
                "VM({}) log writer busy: refused a log request ({n} so far)",
                self.shared.forwarder.vm_id()
            ));
        }
        reply::on_grpc_thread(
            ctx,
            sink,
            Err(status(RpcStatusCode::UNAVAILABLE, "host log writer busy")),
        );
    }
}

fn write_loop(shared: &Shared, jobs: &Receiver<LogJob>) {
    loop {
        let wait = shared.notice_due().map_or(shared.notice_every, |due| {
            due.saturating_duration_since(Instant::now())
        });
        match jobs.recv_timeout(wait) {
            Ok(job) => {
                // The same batch may be queued twice (the guest's call timed out while its
                // first copy waited here): the second one finds it written.
                let fresh = job
                    .batch
                    .as_ref()
                    .is_none_or(|b| !shared.written().contains(b));
                if fresh {
                    shared.forwarder.forward(job.kernel, &job.records);
                    if let Some(batch) = &job.batch {
                        shared.written().insert(batch);
                    }
                }
                reply::from_worker(job.sink, Ok(EmptyMessage::new()));
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                // The server is gone: say what was dropped before the end.
                shared.notice(true);
                return;
            }
        }
        shared.notice(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host_services::limits::Rate;

    fn rec(content: &str) -> LogRecord {
        let mut r = LogRecord::new();
        r.set_app_name("ab".into());
        r.set_content(content.as_bytes().to_vec());
        r
    }

    fn limiter(records: Rate, bytes: Rate, now: Instant) -> Limiter {
        Limiter {
            records: TokenBucket::new(records, now),
            bytes: TokenBucket::new(bytes, now),
            dropped: Dropped::default(),
        }
    }

    fn id(stream: &str, number: u64) -> BatchId {
        BatchId {
            stream: stream.into(),
            number,
        }
    }

    #[test]
    fn batch_id_of_old_requests_is_none() {
        let mut req = LogRequest::new();
        assert_eq!(BatchId::of(&req), None);
        req.set_boot_id("b.1".into());
        assert_eq!(BatchId::of(&req), None, "sequence 0");
        req.set_sequence(7);
        assert_eq!(BatchId::of(&req), Some(id("b.1", 7)));
        req.set_boot_id(String::new());
        assert_eq!(BatchId::of(&req), None, "no stream");
    }

    #[test]
    fn written_remembers_per_stream_up_to_the_last_number() {
        let mut w = Written::default();
        assert!(!w.contains(&id("a", 1)));
        w.insert(&id("a", 1));
        w.insert(&id("a", 3));
        assert!(w.contains(&id("a", 1)) && w.contains(&id("a", 2)) && w.contains(&id("a", 3)));
        assert!(!w.contains(&id("a", 4)));
        assert!(!w.contains(&id("b", 1)), "another stream counts alone");
        w.insert(&id("a", 2));
        assert!(w.contains(&id("a", 3)), "never goes back");
    }

    #[test]
    fn written_forgets_the_oldest_stream_past_the_limit() {
        let mut w = Written::default();
        for s in 0..=STREAMS_KEPT {
            w.insert(&id(&s.to_string(), 5));
        }
        assert!(!w.contains(&id("0", 5)));
        assert!(w.contains(&id("1", 5)));
        assert!(w.contains(&id(&STREAMS_KEPT.to_string(), 5)));
    }

    #[test]
    fn admit_drops_past_the_record_limit_and_counts_bytes() {
        let now = Instant::now();
        let big = Rate::per_second(1e9, 1e9);
        let mut l = limiter(Rate::per_second(1.0, 3.0), big, now);
        let (kept, n, bytes) = l.admit((0..5).map(|i| rec(&format!("r{i}"))).collect(), now);
        let kept: Vec<_> = kept.iter().map(|r| r.get_content().to_vec()).collect();
        assert_eq!(kept, [b"r0".to_vec(), b"r1".to_vec(), b"r2".to_vec()]);
        assert_eq!((n, bytes), (2, 8));
        assert_eq!((l.dropped.records, l.dropped.bytes), (2, 8));
        assert_eq!(l.dropped.since, Some(now));
    }

    #[test]
    fn admit_drops_past_the_byte_limit_but_takes_a_small_record_that_fits() {
        let now = Instant::now();
        let many = Rate::per_second(1e9, 1e9);
        let mut l = limiter(many, Rate::per_second(1.0, 10.0), now);
        let (kept, n, bytes) = l.admit(vec![rec("12345"), rec("123456"), rec("1")], now);
        assert_eq!(kept.len(), 2);
        assert_eq!((n, bytes), (1, 8));
    }
}
