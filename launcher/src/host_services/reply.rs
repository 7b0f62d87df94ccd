//! Answering a call: from a gRPC thread (spawned on the call's context, never waited for)
//! or from one of our own worker threads (waited for there, which a gRPC thread must never
//! do: `block_on` inside a handler deadlocks). And [`guarded`]: a handler that panics is
//! answered INTERNAL and logged, and the completion-queue thread it ran on lives on (a
//! panic unwinding out of a handler would end that thread, and with it the server).

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use grpcio::{RpcContext, RpcStatus, RpcStatusCode, UnarySink};

pub fn status(code: RpcStatusCode, message: impl Into<String>) -> RpcStatus {
    RpcStatus::with_message(code, message.into())
}

/// Replies from a gRPC handler.
pub fn on_grpc_thread<T: Send + 'static>(
    ctx: &RpcContext,
    sink: UnarySink<T>,
    result: Result<T, RpcStatus>,
) {
    ctx.spawn(async move {
        let _ = match result {
            Ok(resp) => sink.success(resp).await,
            Err(status) => sink.fail(status).await,
        };
    });
}

/// A handler's sink until the handler answers or hands it to a worker.
pub type Slot<T> = Option<UnarySink<T>>;

/// What a panic said, for one log line.
pub fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    match (
        payload.downcast_ref::<&str>(),
        payload.downcast_ref::<String>(),
    ) {
        (Some(text), _) => (*text).to_string(),
        (_, Some(text)) => text.clone(),
        _ => "(no message)".to_string(),
    }
}

/// Runs a handler's `body` with its sink in a [`Slot`] (the body takes it to answer or to
/// queue it). A panic is caught: counted in `panics`, logged at the 1st, 2nd, 4th…
/// (`who` names the VM and method), and answered INTERNAL if the body still held the sink.
pub fn guarded<T: Send + 'static>(
    ctx: &RpcContext,
    sink: UnarySink<T>,
    who: std::fmt::Arguments<'_>,
    panics: &AtomicU64,
    body: impl FnOnce(&RpcContext, &mut Slot<T>),
) {
    let mut slot = Some(sink);
    let Err(payload) = catch_unwind(AssertUnwindSafe(|| body(ctx, &mut slot))) else {
        return;
    };
    let n = super::stats::bump(panics);
    if n.is_power_of_two() {
        super::note(format_args!(
            "{who}: the handler panicked: {}; answered INTERNAL ({n} so far)",
            panic_text(payload.as_ref())
        ));
    }
    if let Some(sink) = slot.take() {
        let why = status(RpcStatusCode::INTERNAL, "the host's handler failed");
        on_grpc_thread(ctx, sink, Err(why));
    }
}

/// Replies from a worker thread of ours, waiting until the reply is queued.
pub fn from_worker<T>(sink: UnarySink<T>, result: Result<T, RpcStatus>) {
    let _ = block_on(async move {
        match result {
            Ok(resp) => sink.success(resp).await,
            Err(status) => sink.fail(status).await,
        }
    });
}

struct ThreadWaker(std::thread::Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Runs `future` to completion on this thread, parking between polls. (A dozen lines of
/// std instead of a futures-executor dependency in the launcher.)
fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        match future.as_mut().poll(&mut cx) {
            Poll::Ready(out) => return out,
            // A wake before the park leaves the unpark token set: no lost wake-up.
            Poll::Pending => std::thread::park(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_on_waits_for_a_wake_from_another_thread() {
        let (tx, rx) = crossbeam_channel::bounded::<Waker>(1);
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = done.clone();
        let waker_thread = std::thread::spawn(move || {
            let waker = rx.recv().unwrap();
            std::thread::sleep(std::time::Duration::from_millis(50));
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
            waker.wake();
        });
        let mut sent = false;
        let value = block_on(std::future::poll_fn(|cx| {
            if done.load(std::sync::atomic::Ordering::SeqCst) {
                return Poll::Ready(7);
            }
            if !sent {
                tx.send(cx.waker().clone()).unwrap();
                sent = true;
            }
            Poll::Pending
        }));
        assert_eq!(value, 7);
        waker_thread.join().unwrap();
    }
}
