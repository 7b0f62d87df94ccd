//! A value handed once from a plain thread to a future. A waiting LaunchProcess uses one:
//! the reaping thread sends the reply as the process exits and hands the send (a future
//! that must run to its end) through the [`Completer`] half to a task on gRPC's completion
//! queue, which awaits the [`Pending`] half. No thread waits, nobody blocks.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

struct Slot<T> {
    value: Option<T>,
    /// True once the value is in, or the completer is gone without one.
    done: bool,
    waker: Option<Waker>,
}

/// The receiving half: a future of `Some(value)`, or `None` if the completer was dropped.
pub struct Pending<T>(Arc<Mutex<Slot<T>>>);

/// The sending half.
pub struct Completer<T>(Arc<Mutex<Slot<T>>>);

pub fn channel<T>() -> (Pending<T>, Completer<T>) {
    let slot = Arc::new(Mutex::new(Slot {
        value: None,
        done: false,
        waker: None,
    }));
    (Pending(slot.clone()), Completer(slot))
}

fn lock<T>(slot: &Mutex<Slot<T>>) -> MutexGuard<'_, Slot<T>> {
    slot.lock().unwrap_or_else(|p| p.into_inner())
}

impl<T> Completer<T> {
    pub fn complete(self, value: T) {
        self.finish(Some(value));
    }

    fn finish(&self, value: Option<T>) {
        let waker = {
            let mut slot = lock(&self.0);
            if slot.done {
                return;
            }
            slot.done = true;
            slot.value = value;
            slot.waker.take()
        };
        // Outside the lock: waking may poll the future at once.
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl<T> Drop for Completer<T> {
    fn drop(&mut self) {
        self.finish(None);
    }
}

impl<T> Future for Pending<T> {
    type Output = Option<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut slot = lock(&self.0);
        if slot.done {
            return Poll::Ready(slot.value.take());
        }
        slot.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oneshot_value_from_another_thread_arrives() {
        let (pending, completer) = channel();
        std::thread::spawn(move || completer.complete(7));
        assert_eq!(futures_executor::block_on(pending), Some(7));
    }

    #[test]
    fn oneshot_completer_dropped_yields_none() {
        let (pending, completer) = channel::<i32>();
        drop(completer);
        assert_eq!(futures_executor::block_on(pending), None);
    }
}
