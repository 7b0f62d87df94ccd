//! Exactly-once delivery: the real vm_syslog sends through a relay to the launcher's real
//! LogCollector (writing a file). The relay passes every call on, and for every third one
//! loses the answer after the host has written the batch: the guest sees UNAVAILABLE (the
//! connection broke) and sends the batch again, with the same (boot id, sequence). The host
//! must write it once. Half-way, vm_syslog is restarted (SIGTERM, then a new process on the
//! same state file): its numbering goes on, and nothing of the second run is taken for a
//! repeat.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use grpcio::{RpcContext, RpcStatus, RpcStatusCode, UnarySink};
use vm_launcher::log_forward::LogSink;
use vm_proto::protos::common::EmptyMessage;
use vm_proto::protos::host::LogRequest;
use vm_proto::protos::host_grpc::{create_log_collector, LogCollector, LogCollectorClient};
use vm_proto::{Address, Connector, GrpcServer, Listener, Token};

const RECORDS: usize = 20_000;
/// Every LOSE_EVERY-th call has its answer lost after the host wrote it.
const LOSE_EVERY: u64 = 3;

/// Passes LogCollector calls on to the host; loses some answers.
#[derive(Clone)]
struct Relay {
    host: Arc<Connector>,
    calls: Arc<AtomicU64>,
    lost: Arc<AtomicU64>,
    /// (boot id, sequence) of every call, in order.
    ids: Arc<std::sync::Mutex<Vec<(String, u64)>>>,
}

impl Relay {
    fn pass_on(&self, kernel: bool, req: LogRequest, sink: UnarySink<EmptyMessage>) {
        let relay = self.clone();
        // Not on the gRPC thread: the host call blocks.
        std::thread::spawn(move || {
            relay
                .ids
                .lock()
                .unwrap()
                .push((req.get_boot_id().to_string(), req.get_sequence()));
            let n = relay.calls.fetch_add(1, Ordering::SeqCst) + 1;
            let result = relay
                .host
                .call(Duration::from_secs(10), |channel, options| {
                    let client = LogCollectorClient::new(channel);
                    if kernel {
                        client.collect_kernel_logs_opt(&req, options)
                    } else {
                        client.collect_user_logs_opt(&req, options)
                    }
                });
            let answer = match result {
                Ok(_) if n.is_multiple_of(LOSE_EVERY) => {
                    relay.lost.fetch_add(1, Ordering::SeqCst);
                    Err(RpcStatus::with_message(
                        RpcStatusCode::UNAVAILABLE,
                        "relay: the answer was lost".into(),
                    ))
                }
                Ok(reply) => Ok(reply),
                Err(e) => Err(RpcStatus::with_message(
                    RpcStatusCode::UNAVAILABLE,
                    e.to_string(),
                )),
            };
            let _ = futures_executor::block_on(async move {
                match answer {
                    Ok(reply) => sink.success(reply).await,
                    Err(status) => sink.fail(status).await,
                }
            });
        });
    }
}

impl LogCollector for Relay {
    fn collect_kernel_logs(
        &mut self,
        _: RpcContext,
        req: LogRequest,
        sink: UnarySink<EmptyMessage>,
    ) {
        self.pass_on(true, req, sink);
    }

    fn collect_user_logs(&mut self, _: RpcContext, req: LogRequest, sink: UnarySink<EmptyMessage>) {
        self.pass_on(false, req, sink);
    }
}

fn record(i: usize) -> Vec<u8> {
    format!("<14>Nov 27 01:30:40 once: rec {i:05}").into_bytes()
}

fn numbers(path: &Path) -> Vec<usize> {
    read_lines(path)
        .iter()
        .filter_map(|l| l.split(" user - rec ").nth(1).map(|n| n.parse().unwrap()))
        .collect()
}

fn send(socket: &Path, range: std::ops::Range<usize>) {
    let client = client(socket);
    for i in range {
        client.send(&record(i)).unwrap();
        if i % 100 == 0 {
            std::thread::sleep(Duration::from_millis(2)); // many batches, not a few big ones
        }
    }
}

#[test]
fn lost_answers_and_a_restart_every_record_written_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("host.log");
    let token = Token::generate().unwrap();
    let host = Host::start(dir.path(), &token, LogSink::File(out.clone()));

    let relay_addr = Address::Unix(dir.path().join("relay.sock"));
    let relay = Relay {
        host: Arc::new(Connector::new(
            vm_proto::grpc_environment("relay-client"),
            host.addr.clone(),
            token.clone(),
        )),
        calls: Arc::default(),
        lost: Arc::default(),
        ids: Arc::default(),
    };
    let server = GrpcServer::start(
        vm_proto::grpc_environment("relay"),
        vec![create_log_collector(relay.clone())],
        token.clone(),
        vec![Listener::bind(&relay_addr).unwrap()],
        vm_proto::server::any_peer(),
    )
    .unwrap();

    let mut daemon = Daemon::start(dir.path(), &token, &relay_addr, &["--no-kmsg"]);
    send(&daemon.socket, 0..RECORDS / 2);
    wait_for("the first half", Duration::from_secs(60), || {
        numbers(&out).len() >= RECORDS / 2
    });
    assert!(daemon.terminate().success());
    let first_run_ids = relay.ids.lock().unwrap().len();

    let daemon = Daemon::start(dir.path(), &token, &relay_addr, &["--no-kmsg"]);
    send(&daemon.socket, RECORDS / 2..RECORDS);
    wait_for("every record", Duration::from_secs(60), || {
        numbers(&out).len() >= RECORDS
    });
    std::thread::sleep(Duration::from_millis(500)); // duplicates would come now
    drop(daemon);
    server.shutdown();

    let got = numbers(&out);
    let unique: HashSet<usize> = got.iter().copied().collect();
    assert_eq!(
        unique.len(),
        RECORDS,
        "records lost: {}",
        RECORDS - unique.len()
    );
    assert_eq!(got.len(), RECORDS, "duplicates: {}", got.len() - RECORDS);
    assert!(got.windows(2).all(|w| w[0] < w[1]), "out of order");

    let lost = relay.lost.load(Ordering::SeqCst);
    let ids = relay.ids.lock().unwrap().clone();
    assert!(
        lost >= 5,
        "only {lost} answers lost: the test proves little"
    );
    let repeats = ids.windows(2).filter(|w| w[0] == w[1]).count() as u64;
    assert_eq!(
        repeats, lost,
        "every lost answer made the guest send the same id again"
    );
    // The second run went on with the first run's stream, past its numbers.
    let (first, second) = ids.split_at(first_run_ids);
    assert!(second.iter().all(|id| id.0 == first[0].0), "one stream");
    let last_first = first.iter().map(|id| id.1).max().unwrap();
    assert!(second.iter().all(|id| id.1 > last_first));
    eprintln!(
        "exactly-once: {RECORDS} records in {} calls, {lost} answers lost and resent, \
         none written twice",
        ids.len()
    );
}
