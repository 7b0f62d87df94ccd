//! Unary round-trip latency over a Unix socket pair, with and without the token check, in
//! the same run. Prints p50/p99 and the ratio; asserts nothing.
//!
//! Run: `cargo bench -p vm_proto --bench auth_overhead`

use std::os::fd::IntoRawFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use grpcio::{RpcContext, ServerBuilder, UnarySink};
use vm_proto::auth::TokenChecker;
use vm_proto::client::channel_from_fd;
use vm_proto::protos::common::EmptyMessage;
use vm_proto::protos::host::ApplicationExit;
use vm_proto::protos::host_grpc::{
    create_startup_listener, StartupListener, StartupListenerClient,
};
use vm_proto::{grpc_environment, Token};

const WARMUP: usize = 2_000;
const CALLS: usize = 20_000;
const ROUNDS: usize = 3;

#[derive(Clone)]
struct Echo;

impl StartupListener for Echo {
    fn vm_ready(&mut self, ctx: RpcContext, _: EmptyMessage, sink: UnarySink<EmptyMessage>) {
        ctx.spawn(async move {
            let _ = sink.success(EmptyMessage::new()).await;
        });
    }
    fn application_exited(
        &mut self,
        ctx: RpcContext,
        _: ApplicationExit,
        sink: UnarySink<EmptyMessage>,
    ) {
        ctx.spawn(async move {
            let _ = sink.success(EmptyMessage::new()).await;
        });
    }
}

/// A server (optionally with the token check) and a client on a socket pair.
fn setup(token: &Token, checked: bool) -> (grpcio::Server, StartupListenerClient) {
    let mut builder = ServerBuilder::new(grpc_environment("bench-srv"))
        .register_service(create_startup_listener(Echo));
    if checked {
        builder = builder.add_checker(TokenChecker::new(token.clone()));
    }
    let mut server = builder.build().expect("build server");
    server.start();
    let (a, b) = UnixStream::pair().expect("socketpair");
    a.set_nonblocking(true).expect("nonblocking");
    b.set_nonblocking(true).expect("nonblocking");
    // SAFETY: `b` is a connected, non-blocking stream socket released to the server.
    unsafe { server.add_channel_from_fd(b.into_raw_fd()) };
    let client = StartupListenerClient::new(channel_from_fd(
        grpc_environment("bench-cli"),
        "pair",
        a.into(),
    ));
    (server, client)
}

fn measure(client: &StartupListenerClient, token: &Token, n: usize) -> Vec<Duration> {
    let req = EmptyMessage::new();
    (0..n)
        .map(|_| {
            let start = Instant::now();
            client
                .vm_ready_opt(&req, token.call_option())
                .expect("call");
            start.elapsed()
        })
        .collect()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

fn main() {
    let token = Token::generate().expect("token");
    let plain = setup(&token, false);
    let checked = setup(&token, true);
    measure(&plain.1, &token, WARMUP);
    measure(&checked.1, &token, WARMUP);
    // Interleave rounds so drift on a shared machine hits both sides alike.
    let (mut without, mut with) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        without.extend(measure(&plain.1, &token, CALLS));
        with.extend(measure(&checked.1, &token, CALLS));
    }
    without.sort();
    with.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "unary round trip over a unix socket pair, {} calls each",
        ROUNDS * CALLS
    );
    for (name, v) in [("without auth", &without), ("with auth", &with)] {
        println!(
            "  {name:<13} p50 {:7.1} µs   p99 {:7.1} µs",
            us(percentile(v, 0.50)),
            us(percentile(v, 0.99))
        );
    }
    println!(
        "  ratio with/without: p50 {:.3}   p99 {:.3}   (goal: p50 <= 1.05)",
        us(percentile(&with, 0.50)) / us(percentile(&without, 0.50)),
        us(percentile(&with, 0.99)) / us(percentile(&without, 0.99))
    );
}
