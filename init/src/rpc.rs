//! The Maitred gRPC service. The token was checked before any of these run (the server's
//! checker); each handler validates, calls the plain function that does the work, and maps
//! the result to a status. Work that can block goes to its own thread, never a gRPC one.

use std::sync::{Arc, Mutex};

use grpcio::{RpcContext, RpcStatus, RpcStatusCode, UnarySink};
use vm_proto::protos::common::EmptyMessage;
use vm_proto::protos::guest::{
    LaunchProcessRequest, LaunchProcessResponse, MountRequest, MountResponse, NetworkConfigRequest,
    SetTimeRequest,
};
use vm_proto::protos::guest_grpc::Maitred;

use crate::context::{Context, Shutdown};
use crate::{info, launch, network, oneshot, warn};

#[derive(Clone)]
pub struct MaitredService {
    ctx: Arc<Context>,
}

impl MaitredService {
    pub fn new(ctx: Arc<Context>) -> MaitredService {
        MaitredService { ctx }
    }
}

fn reply<T: Send + 'static>(ctx: &RpcContext, sink: UnarySink<T>, result: Result<T, RpcStatus>) {
    ctx.spawn(async move {
        let _ = match result {
            Ok(resp) => sink.success(resp).await,
            Err(status) => sink.fail(status).await,
        };
    });
}

/// Replies from a thread of our own, which may block.
fn reply_blocking<T: Send + 'static>(sink: UnarySink<T>, result: Result<T, RpcStatus>) {
    let _ = futures_executor::block_on(async move {
        match result {
            Ok(resp) => sink.success(resp).await,
            Err(status) => sink.fail(status).await,
        }
    });
}

/// A waiting LaunchProcess with nothing to capture. No thread waits: the reaping thread
/// sends the reply itself as the process ends (no hand-off on the way to the caller), and a
/// task on the completion queue then sees the send through (a reply future dropped
/// unfinished would cancel the call).
fn launch_waiting(
    state: &Arc<Context>,
    ctx: &RpcContext,
    req: LaunchProcessRequest,
    sink: UnarySink<LaunchProcessResponse>,
) {
    let sink = Arc::new(Mutex::new(Some(sink)));
    let take = |sink: &Mutex<Option<UnarySink<_>>>| sink.lock().ok().and_then(|mut s| s.take());
    let (sent, sending) = oneshot::channel();
    let at_exit = sink.clone();
    let on_end: launch::OnEnd = Box::new(move |outcome| {
        if let Some(sink) = take(&at_exit) {
            sending.complete(match outcome {
                Ok(resp) => sink.success(resp),
                Err(status) => sink.fail(status),
            });
        }
    });
    match launch::launch_waiting(state, &req, on_end) {
        Some(at_once) => {
            if let Some(sink) = take(&sink) {
                reply(ctx, sink, at_once);
            }
        }
        None => ctx.spawn(async move {
            if let Some(sending) = sent.await {
                let _ = sending.await;
            }
        }),
    }
}

fn status(code: RpcStatusCode, message: impl Into<String>) -> RpcStatus {
    RpcStatus::with_message(code, message.into())
}

impl Maitred for MaitredService {
    fn launch_process(
        &mut self,
        ctx: RpcContext,
        req: LaunchProcessRequest,
        sink: UnarySink<LaunchProcessResponse>,
    ) {
        if !req.get_wait_for_exit() {
            // Starting a process is quick (clone + exec); only waiting for an exit takes long.
            reply(&ctx, sink, launch::launch(&self.ctx, &req));
            return;
        }
        if !req.get_capture_output() {
            return launch_waiting(&self.ctx, &ctx, req, sink);
        }
        // Reading the output blocks: a thread of its own.
        let state = self.ctx.clone();
        let worker = std::thread::Builder::new()
            .name("launch-wait".into())
            .spawn(move || reply_blocking(sink, launch::launch(&state, &req)));
        if let Err(e) = worker {
            warn!("cannot start a thread for LaunchProcess: {e}");
        }
    }

    fn shutdown(&mut self, ctx: RpcContext, _: EmptyMessage, sink: UnarySink<EmptyMessage>) {
        info!("shutdown requested by the host");
        let state = self.ctx.clone();
        // Reply first, then shut down.
        ctx.spawn(async move {
            let _ = sink.success(EmptyMessage::new()).await;
            state.request_shutdown(Shutdown::Requested);
        });
    }

    fn configure_network(
        &mut self,
        ctx: RpcContext,
        req: NetworkConfigRequest,
        sink: UnarySink<EmptyMessage>,
    ) {
        let config = req.ipv4_config.as_ref();
        let result = match network::validate(config) {
            Err(e) => Err(status(RpcStatusCode::INVALID_ARGUMENT, e.to_string())),
            Ok(_) if !self.ctx.pid1 => Err(status(
                RpcStatusCode::FAILED_PRECONDITION,
                "not the VM's init: refusing to change this machine's network",
            )),
            Ok(settings) => network::apply(&settings)
                .map(|()| EmptyMessage::new())
                .map_err(|e| status(RpcStatusCode::INTERNAL, e.to_string())),
        };
        reply(&ctx, sink, result);
    }

    fn mount(&mut self, ctx: RpcContext, req: MountRequest, sink: UnarySink<MountResponse>) {
        let args = match crate::guest_ops::validate_mount(&req) {
            Err(message) => Err(status(RpcStatusCode::INVALID_ARGUMENT, message)),
            Ok(_) if !self.ctx.pid1 => Err(status(
                RpcStatusCode::FAILED_PRECONDITION,
                "not the VM's init: refusing to mount on this machine",
            )),
            Ok(args) => Ok(args),
        };
        let args = match args {
            Ok(args) => args,
            Err(refused) => return reply(&ctx, sink, Err(refused)),
        };
        // mount(2) can block for long (a slow device, a network filesystem).
        let worker = std::thread::Builder::new()
            .name("mount".into())
            .spawn(move || reply_blocking(sink, Ok(crate::guest_ops::mount(&args))));
        if let Err(e) = worker {
            // The sink went with the closure: the call ends as CANCELLED for the host.
            warn!("cannot start a thread for Mount: {e}");
        }
    }

    fn set_time(&mut self, ctx: RpcContext, req: SetTimeRequest, sink: UnarySink<EmptyMessage>) {
        let result = match crate::guest_ops::validate_time(&req) {
            Err(message) => Err(status(RpcStatusCode::INVALID_ARGUMENT, message)),
            Ok(_) if !self.ctx.pid1 => Err(status(
                RpcStatusCode::FAILED_PRECONDITION,
                "not the VM's init: refusing to change this machine's clock",
            )),
            Ok(time) => crate::guest_ops::set_time(time)
                .map(|()| EmptyMessage::new())
                .map_err(|e| status(RpcStatusCode::INTERNAL, e)),
        };
        reply(&ctx, sink, result);
    }
}
