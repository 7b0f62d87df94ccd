//! The sender thread: takes batches from the [`Buffer`] and delivers them to the host, one
//! call per batch. A failed call keeps its batch and retries with backoff (doubling up to
//! a limit) until it succeeds, so nothing the buffer holds is lost while the host is away.
//! Once a call succeeds again, the records the buffer dropped meanwhile are reported in one
//! synthetic record, `vm_syslog: dropped N records …`, exactly where they are missing.
//!
//! Each batch gets its (stream, number) id from the [`DeliveryState`] before its first
//! call, and every retry sends the same id: the host writes a batch once even when its
//! answer was lost and the batch came again (exactly-once delivery).
//!
//! On stop, everything waiting is flushed; batches the host still refuses after the flush
//! deadline are given up (and counted on stderr), because the guest is shutting down.

use std::fmt;
use std::io::Write;
use std::time::{Duration, Instant};

use crate::buffer::{Batch, Buffer};
use crate::delivery_state::{BatchId, DeliveryState};
use crate::record::{Kind, Record, Timestamp};

/// Delivers one batch to the host.
pub trait Collector {
    type Error: fmt::Display;
    fn send(&mut self, kind: Kind, id: &BatchId, records: &[Record]) -> Result<(), Self::Error>;
}

#[derive(Debug, Clone)]
pub struct SenderConfig {
    /// How long a record may wait for its batch to fill.
    pub linger: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// How long to keep trying once stopping.
    pub flush_timeout: Duration,
    /// Repeated failures are reported at most this often.
    pub report_every: Duration,
    /// The buffer's capacity, for the drop report.
    pub capacity: usize,
}

impl Default for SenderConfig {
    fn default() -> Self {
        SenderConfig {
            linger: Duration::from_millis(200),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(1),
            flush_timeout: Duration::from_secs(3),
            report_every: Duration::from_secs(30),
            capacity: 8 << 20,
        }
    }
}

/// What the sender did, for its last words and for tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SenderStats {
    pub batches: u64,
    pub records: u64,
    pub failed_calls: u64,
    pub drop_reports: u64,
    /// Records given up at shutdown because the host still refused them.
    pub abandoned: u64,
}

/// The synthetic record telling the host how many records were dropped.
pub fn drop_report(dropped: u64, capacity: usize) -> Record {
    let mut record = Record::new(12, Timestamp::now()); // user.warning
    record.app_name = "vm_syslog".into();
    record.pid = std::process::id();
    record.set_content(
        format!(
            "vm_syslog: dropped {dropped} records (the host was unreachable and the \
             {capacity}-byte buffer was full)"
        )
        .as_bytes(),
    );
    record
}

pub struct Sender<'a, C: Collector> {
    buffer: &'a Buffer,
    collector: C,
    config: SenderConfig,
    state: DeliveryState,
    stats: SenderStats,
    stop_seen: Option<Instant>,
    /// Saving the delivery state failed this often (reported the first time only).
    state_errors: u64,
    /// Failing since, with the last time that was reported.
    failing: Option<(Instant, Instant)>,
    err: Box<dyn Write + Send + 'a>,
}

impl<'a, C: Collector> Sender<'a, C> {
    pub fn new(buffer: &'a Buffer, collector: C, config: SenderConfig) -> Self {
        Sender {
            buffer,
            collector,
            config,
            state: DeliveryState::in_memory(""),
            stats: SenderStats::default(),
            stop_seen: None,
            state_errors: 0,
            failing: None,
            err: Box::new(std::io::stderr()),
        }
    }

    /// Numbers batches from, and saves the last delivered kmsg sequence number to, `state`
    /// (by default a fresh stream in memory).
    pub fn with_state(mut self, state: DeliveryState) -> Self {
        self.state = state;
        self
    }

    /// Where failures are reported (stderr by default).
    pub fn with_error_output(mut self, out: impl Write + Send + 'a) -> Self {
        self.err = Box::new(out);
        self
    }

    /// Runs until the buffer is stopped and drained.
    pub fn run(mut self) -> SenderStats {
        let mut host_ok = false;
        loop {
            if host_ok {
                let dropped = self.buffer.take_dropped();
                if dropped > 0 {
                    let report = drop_report(dropped, self.config.capacity);
                    self.stats.drop_reports += 1;
                    host_ok = self.deliver(Kind::User, &[report], None);
                    continue;
                }
            }
            let batch = match self.buffer.next_batch(self.config.linger) {
                Ok(batch) => batch,
                Err(_) => break,
            };
            host_ok = self.deliver_batch(batch);
        }
        // Drops after the host's last answer: say so locally at least.
        let dropped = self.buffer.take_dropped();
        if dropped > 0 {
            let report = drop_report(dropped, self.config.capacity);
            if !self.deliver(Kind::User, &[report], None) {
                let _ = writeln!(self.err, "vm_syslog: dropped {dropped} records");
            }
        }
        self.stats
    }

    fn deliver_batch(&mut self, batch: Batch) -> bool {
        let seq = batch.last_kmsg_seq();
        let records: Vec<Record> = batch.entries.into_iter().map(|e| e.record).collect();
        self.deliver(batch.kind, &records, seq)
    }

    /// Sends until it succeeds (true) or, once stopping, the flush deadline passes (false).
    fn deliver(&mut self, kind: Kind, records: &[Record], kmsg_seq: Option<u64>) -> bool {
        let (id, error) = self.state.next_batch();
        if let Some(e) = error {
            self.state_failed(&e, "batches are numbered in memory only now");
        }
        let mut backoff = self.config.backoff_min;
        loop {
            match self.collector.send(kind, &id, records) {
                Ok(()) => {
                    self.succeeded(records.len());
                    if let Some(seq) = kmsg_seq {
                        if let Err(e) = self.state.kmsg_acknowledged(seq) {
                            self.state_failed(&e, "a restart may send kernel records twice");
                        }
                    }
                    return true;
                }
                Err(e) => {
                    self.stats.failed_calls += 1;
                    self.failed(&e);
                    if self.buffer.is_stopping() {
                        let since = *self.stop_seen.get_or_insert_with(Instant::now);
                        if since.elapsed() >= self.config.flush_timeout {
                            self.stats.abandoned += records.len() as u64;
                            let _ = writeln!(
                                self.err,
                                "vm_syslog: stopping: {} records not delivered: {e}",
                                records.len()
                            );
                            return false;
                        }
                    }
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(self.config.backoff_max);
                }
            }
        }
    }

    fn state_failed(&mut self, e: &crate::delivery_state::StateError, consequence: &str) {
        self.state_errors += 1;
        if self.state_errors == 1 {
            let _ = writeln!(self.err, "vm_syslog: {e}; {consequence}");
        }
    }

    fn succeeded(&mut self, records: usize) {
        self.stats.batches += 1;
        self.stats.records += records as u64;
        if let Some((since, _)) = self.failing.take() {
            let (waiting, _) = self.buffer.waiting();
            let _ = writeln!(
                self.err,
                "vm_syslog: the host answers again after {:.1}s; {waiting} records waiting",
                since.elapsed().as_secs_f64()
            );
        }
    }

    fn failed(&mut self, e: &C::Error) {
        let now = Instant::now();
        let report = match &mut self.failing {
            None => {
                self.failing = Some((now, now));
                true
            }
            Some((_, last)) if now.duration_since(*last) >= self.config.report_every => {
                *last = now;
                true
            }
            Some(_) => false,
        };
        if report {
            let (waiting, bytes) = self.buffer.waiting();
            let _ = writeln!(
                self.err,
                "vm_syslog: delivery failed, will retry: {e} ({waiting} records, {bytes} bytes waiting)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Fails while `down` is set; records what it accepted.
    #[derive(Clone, Default)]
    struct Mock {
        down: Arc<Mutex<bool>>,
        got: Arc<Mutex<Vec<(Kind, String)>>>,
        calls: Arc<Mutex<u64>>,
        ids: Arc<Mutex<Vec<BatchId>>>,
    }

    impl Collector for Mock {
        type Error = String;
        fn send(&mut self, kind: Kind, id: &BatchId, records: &[Record]) -> Result<(), String> {
            *self.calls.lock().unwrap() += 1;
            self.ids.lock().unwrap().push(id.clone());
            if *self.down.lock().unwrap() {
                return Err("host down".into());
            }
            let mut got = self.got.lock().unwrap();
            for r in records {
                got.push((kind, String::from_utf8_lossy(&r.content).into_owned()));
            }
            Ok(())
        }
    }

    fn rec(text: &str) -> Record {
        let mut r = Record::new(13, Timestamp::default());
        r.set_content(text.as_bytes());
        r
    }

    fn fast() -> SenderConfig {
        SenderConfig {
            linger: Duration::from_millis(5),
            backoff_min: Duration::from_millis(1),
            backoff_max: Duration::from_millis(5),
            flush_timeout: Duration::from_millis(100),
            report_every: Duration::from_secs(30),
            capacity: 0,
        }
    }

    /// A sender running `buffer` into `mock` with quick timings, its error lines discarded.
    fn run_on_a_thread(buffer: &Arc<Buffer>, mock: &Mock) -> std::thread::JoinHandle<SenderStats> {
        let (b, m) = (buffer.clone(), mock.clone());
        std::thread::spawn(move || {
            Sender::new(&b, m, fast())
                .with_error_output(Vec::new())
                .run()
        })
    }

    #[test]
    fn run_host_up_delivers_everything_in_order() {
        let buffer = Buffer::new(1 << 20, 100);
        let mock = Mock::default();
        for i in 0..50 {
            buffer.push(Kind::User, rec(&format!("{i}")), None);
        }
        buffer.stop();
        let stats = Sender::new(&buffer, mock.clone(), fast()).run();
        let got: Vec<String> = mock
            .got
            .lock()
            .unwrap()
            .iter()
            .map(|g| g.1.clone())
            .collect();
        let want: Vec<String> = (0..50).map(|i| i.to_string()).collect();
        assert_eq!(got, want);
        assert_eq!(stats.records, 50);
        assert!(stats.batches > 1, "small batches: {stats:?}");
    }

    #[test]
    fn run_host_down_then_up_retries_without_loss_or_duplicates() {
        let buffer = Arc::new(Buffer::new(1 << 20, 1 << 16));
        let mock = Mock::default();
        *mock.down.lock().unwrap() = true;
        let sender = run_on_a_thread(&buffer, &mock);
        for i in 0..1000 {
            buffer.push(Kind::User, rec(&format!("{i}")), None);
        }
        std::thread::sleep(Duration::from_millis(50));
        *mock.down.lock().unwrap() = false;
        std::thread::sleep(Duration::from_millis(50));
        buffer.stop();
        let stats = sender.join().unwrap();
        let got: Vec<String> = mock
            .got
            .lock()
            .unwrap()
            .iter()
            .map(|g| g.1.clone())
            .collect();
        let want: Vec<String> = (0..1000).map(|i| i.to_string()).collect();
        assert_eq!(got, want);
        assert!(stats.failed_calls > 0);
        assert_eq!(stats.drop_reports, 0);
    }

    #[test]
    fn run_overflow_reports_exact_drop_count_where_the_gap_is() {
        let cost = rec("0000").cost();
        let buffer = Arc::new(Buffer::new(cost * 10, cost * 4));
        let mock = Mock::default();
        *mock.down.lock().unwrap() = true;
        let sender = run_on_a_thread(&buffer, &mock);
        buffer.push(Kind::User, rec("0000"), None);
        // Wait until the sender holds the first record as its batch.
        while buffer.waiting().0 != 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        for i in 1..100 {
            buffer.push(Kind::User, rec(&format!("{i:04}")), None);
        }
        *mock.down.lock().unwrap() = false;
        std::thread::sleep(Duration::from_millis(100));
        buffer.stop();
        let stats = sender.join().unwrap();
        let got: Vec<String> = mock
            .got
            .lock()
            .unwrap()
            .iter()
            .map(|g| g.1.clone())
            .collect();
        assert_eq!(got[0], "0000");
        assert!(
            got[1].starts_with("vm_syslog: dropped 89 records"),
            "{got:?}"
        );
        let rest: Vec<String> = (90..100).map(|i| format!("{i:04}")).collect();
        assert_eq!(got[2..], rest[..]);
        assert_eq!(stats.drop_reports, 1);
    }

    #[test]
    fn run_stopping_with_host_down_gives_up_after_flush_timeout() {
        let buffer = Buffer::new(1 << 20, 1 << 16);
        let mock = Mock::default();
        *mock.down.lock().unwrap() = true;
        buffer.push(Kind::User, rec("lost"), None);
        buffer.stop();
        let mut out = Vec::new();
        let started = Instant::now();
        let stats = Sender::new(&buffer, mock, fast())
            .with_error_output(&mut out)
            .run();
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(stats.abandoned, 1);
        let out = String::from_utf8(out).unwrap();
        assert!(out.contains("1 records not delivered: host down"), "{out}");
    }

    #[test]
    fn run_kernel_batch_saves_its_last_sequence_number() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seq");
        let buffer = Buffer::new(1 << 20, 1 << 16);
        buffer.push(Kind::Kernel, rec("k5"), Some(5));
        buffer.push(Kind::Kernel, rec("k6"), Some(6));
        buffer.stop();
        let mock = Mock::default();
        Sender::new(&buffer, mock.clone(), fast())
            .with_state(DeliveryState::open(path.clone(), "b".into()))
            .run();
        let reopened = DeliveryState::open(path, "b".into());
        assert_eq!(reopened.kmsg_delivered(), Some(6));
        assert_eq!(mock.got.lock().unwrap()[0], (Kind::Kernel, "k5".into()));
    }

    #[test]
    fn run_retries_resend_the_same_batch_id_and_new_batches_get_the_next() {
        let buffer = Arc::new(Buffer::new(1 << 20, 1));
        let mock = Mock::default();
        *mock.down.lock().unwrap() = true;
        let sender = run_on_a_thread(&buffer, &mock);
        buffer.push(Kind::User, rec("a"), None);
        while *mock.calls.lock().unwrap() < 3 {
            std::thread::sleep(Duration::from_millis(1));
        }
        *mock.down.lock().unwrap() = false;
        buffer.push(Kind::User, rec("b"), None);
        std::thread::sleep(Duration::from_millis(50));
        buffer.stop();
        sender.join().unwrap();
        let ids = mock.ids.lock().unwrap().clone();
        let numbers: Vec<u64> = ids.iter().map(|i| i.number).collect();
        let retries = numbers.iter().filter(|&&n| n == 1).count();
        assert!(retries >= 3, "{numbers:?}");
        assert_eq!(numbers[retries..], [2], "{numbers:?}");
        assert!(ids.iter().all(|i| i.stream == ids[0].stream));
    }
}
