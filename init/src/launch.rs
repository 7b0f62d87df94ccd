//! LaunchProcess: validate the request, start the process (once, or supervised with
//! respawn), and for `wait_for_exit` collect its exit status and bounded output. The VM's
//! application additionally reports its exit to the host and shuts the VM down.

use std::io::Read;
use std::sync::Arc;

use grpcio::{RpcStatus, RpcStatusCode};
use vm_proto::protos::guest::{LaunchProcessRequest, LaunchProcessResponse, ProcessStatus};

use crate::container;
use crate::context::{Context, Shutdown};
use crate::reaper::{Exit, OnExit};
use crate::services;
use crate::spawn::{self, ProcessSpec, SpawnError, Stdio};
use crate::{error, info};

/// Captured stdout and stderr are each cut at this size; the rest is read and dropped.
pub const OUTPUT_LIMIT: usize = 1 << 20;

fn invalid(message: &str) -> RpcStatus {
    RpcStatus::with_message(RpcStatusCode::INVALID_ARGUMENT, message.to_string())
}

pub fn validate(req: &LaunchProcessRequest) -> Result<ProcessSpec, RpcStatus> {
    if req.get_argv().is_empty() {
        return Err(invalid("argv is empty"));
    }
    if req.get_respawn() && req.get_wait_for_exit() {
        return Err(invalid("respawn and wait_for_exit cannot be combined"));
    }
    if req.get_respawn() && req.get_is_application() {
        return Err(invalid("the application cannot be respawned"));
    }
    if req.get_capture_output() && !req.get_wait_for_exit() {
        return Err(invalid("capture_output needs wait_for_exit"));
    }
    if req.get_respawn() && req.has_container() {
        return Err(invalid("a container process cannot be respawned"));
    }
    if req.get_capture_output() && req.get_use_console() {
        return Err(invalid("capture_output and use_console cannot be combined"));
    }
    let stdio = if req.get_capture_output() {
        Stdio::Capture
    } else if req.get_use_console() {
        Stdio::Console
    } else {
        Stdio::Null
    };
    let mut env: Vec<(String, String)> = req
        .get_env()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    env.sort(); // maps arrive in any order; keep the child's environment stable
    let cwd = req.get_working_dir();
    Ok(ProcessSpec {
        argv: req.get_argv().to_vec(),
        env,
        cwd: (!cwd.is_empty()).then(|| cwd.into()),
        stdio,
    })
}

fn failed(err: &SpawnError) -> LaunchProcessResponse {
    let mut resp = LaunchProcessResponse::new();
    resp.set_status(ProcessStatus::FAILED);
    resp.set_code(err.errno());
    resp.set_reason(err.to_string());
    resp
}

fn launched(pid: i32) -> LaunchProcessResponse {
    let mut resp = LaunchProcessResponse::new();
    resp.set_status(ProcessStatus::LAUNCHED);
    resp.set_pid(pid as u32);
    resp
}

/// How an exit travels on the wire, in LaunchProcess's reply and in ApplicationExited:
/// EXITED with the exit code, or SIGNALED with the signal number.
pub fn exit_status(exit: Exit) -> (ProcessStatus, i32) {
    match exit {
        Exit::Code(code) => (ProcessStatus::EXITED, code),
        Exit::Signal(signal) => (ProcessStatus::SIGNALED, signal),
    }
}

fn set_exit(resp: &mut LaunchProcessResponse, exit: Exit) {
    let (status, code) = exit_status(exit);
    resp.set_status(status);
    resp.set_code(code);
}

/// Reads `pipe` to its end, keeping at most [`OUTPUT_LIMIT`] bytes; true if it cut some.
fn read_bounded(mut pipe: std::fs::File) -> (Vec<u8>, bool) {
    let mut kept = Vec::new();
    let mut truncated = false;
    let mut buf = [0u8; 16 * 1024];
    loop {
        match pipe.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let room = OUTPUT_LIMIT - kept.len();
                kept.extend_from_slice(&buf[..n.min(room)]);
                truncated |= n > room;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    (kept, truncated)
}

/// The VM's application ended: tell the host, then power off.
pub fn application_ended(ctx: &Context, pid: i32, exit: Exit) {
    tell_host_application_ended(ctx, pid, exit);
    ctx.request_shutdown(Shutdown::ApplicationExited);
}

fn tell_host_application_ended(ctx: &Context, pid: i32, exit: Exit) {
    info!("application (pid {pid}) ended: {exit:?}");
    if let Err(e) = ctx.host.application_exited(pid, exit) {
        error!("cannot tell the host the application's exit status: {e}");
    }
}

/// A LaunchProcess reply: the response (LAUNCHED, EXITED, FAILED...) or a refusal.
pub type Outcome = Result<LaunchProcessResponse, RpcStatus>;

/// The process the request describes (wrapped for its container), or, as `Err`, the reply
/// that refuses it.
fn spec_for(ctx: &Context, req: &LaunchProcessRequest) -> Result<ProcessSpec, Outcome> {
    let spec = validate(req).map_err(Err)?;
    if !req.has_container() {
        return Ok(spec);
    }
    container::wrap(req.get_container(), &ctx.vm_id, spec).map_err(|e| {
        let mut resp = LaunchProcessResponse::new();
        resp.set_status(ProcessStatus::FAILED);
        resp.set_code(e.errno());
        resp.set_reason(e.to_string());
        Ok(resp)
    })
}

/// Runs a request. Blocks until the process exits only when the request waits for it and
/// captures its output; a waiting request without capture goes to [`launch_waiting`].
pub fn launch(ctx: &Arc<Context>, req: &LaunchProcessRequest) -> Outcome {
    let spec = match spec_for(ctx, req) {
        Ok(spec) => spec,
        Err(outcome) => return outcome,
    };
    if req.get_respawn() {
        let name = spec.argv[0].clone();
        return Ok(match services::start(ctx, &name, spec, true) {
            Ok(pid) => launched(pid),
            Err(e) => failed(&e),
        });
    }
    if req.get_wait_for_exit() {
        return run_capturing(ctx, req, &spec);
    }
    if !req.get_is_application() {
        // Nobody waits; the reaper drops its status.
        let started = spawn::spawn_then(ctx.mode(), &ctx.reaper, &spec, &[], Box::new(|_, _| {}));
        return Ok(started.map_or_else(|e| failed(&e), launched));
    }
    let container = req.has_container();
    // Held across the start, so the exit (on the reaping thread) clears the pid only after
    // it is set.
    let mut app_container = ctx.app_container.lock().unwrap_or_else(|p| p.into_inner());
    let ended = ctx.clone();
    let on_exit: OnExit = Box::new(move |pid, exit| {
        if container {
            ended.set_app_container(None);
        }
        // Telling the host can take retries: not on the reaping thread.
        let spawned = std::thread::Builder::new()
            .name("application".into())
            .spawn(move || application_ended(&ended, pid, exit));
        if let Err(e) = spawned {
            error!("cannot start a thread to report the application's exit: {e}");
        }
    });
    match spawn::spawn_then(ctx.mode(), &ctx.reaper, &spec, &[], on_exit) {
        Ok(pid) => {
            if container {
                *app_container = Some(pid);
            }
            Ok(launched(pid))
        }
        Err(e) => Ok(failed(&e)),
    }
}

/// What a waiting LaunchProcess does with its reply once the process has ended. It runs on
/// the reaping thread (the application's on a thread of its own), so it must not block.
pub type OnEnd = Box<dyn FnOnce(Outcome) + Send>;

/// Runs a waiting request that captures nothing, with no thread waiting: when the process
/// ends, the reaping thread hands its reply to `on_end`. A request that starts nothing has
/// its reply returned at once instead (`on_end` is dropped unused).
pub fn launch_waiting(
    ctx: &Arc<Context>,
    req: &LaunchProcessRequest,
    on_end: OnEnd,
) -> Option<Outcome> {
    let spec = match spec_for(ctx, req) {
        Ok(spec) => spec,
        Err(outcome) => return Some(outcome),
    };
    let application = req.get_is_application();
    let ended = ctx.clone();
    let on_exit: OnExit = Box::new(move |pid, exit| {
        if !application {
            return on_end(Ok(exited(pid, exit)));
        }
        // The host hears of the application's end before the caller's reply, as always;
        // telling it can take retries, so not on the reaping thread.
        let spawned = std::thread::Builder::new()
            .name("application".into())
            .spawn(move || {
                // The reply leaves (sent inline) before shutdown cancels the calls.
                tell_host_application_ended(&ended, pid, exit);
                on_end(Ok(exited(pid, exit)));
                ended.request_shutdown(Shutdown::ApplicationExited);
            });
        if let Err(e) = spawned {
            error!("cannot start a thread to report the application's exit: {e}");
        }
    });
    spawn::spawn_then(ctx.mode(), &ctx.reaper, &spec, &[], on_exit)
        .err()
        .map(|e| Ok(failed(&e)))
}

fn exited(pid: i32, exit: Exit) -> LaunchProcessResponse {
    let mut resp = launched(pid);
    set_exit(&mut resp, exit);
    resp
}

/// Starts a waiting, capturing request's process and blocks until it has exited and its
/// output is read.
fn run_capturing(ctx: &Arc<Context>, req: &LaunchProcessRequest, spec: &ProcessSpec) -> Outcome {
    let spawned = match spawn::spawn_in(ctx.mode(), &ctx.reaper, spec) {
        Ok(s) => s,
        Err(e) => return Ok(failed(&e)),
    };
    let pid = spawned.pid;
    let mut resp = launched(pid);
    if let Some((stdout, stderr)) = spawned.output {
        let err_reader = std::thread::spawn(move || read_bounded(stderr));
        let (out, out_cut) = read_bounded(stdout);
        let (err, err_cut) = err_reader.join().unwrap_or_default();
        resp.set_stdout(out);
        resp.set_stdout_truncated(out_cut);
        resp.set_stderr(err);
        resp.set_stderr_truncated(err_cut);
    }
    let exit = spawned.exit.recv().map_err(|_| {
        RpcStatus::with_message(RpcStatusCode::INTERNAL, "lost the exit status".to_string())
    })?;
    set_exit(&mut resp, exit);
    if req.get_is_application() {
        application_ended(ctx, pid, exit);
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_status_code_and_signal_map_to_their_status() {
        assert_eq!(exit_status(Exit::Code(3)), (ProcessStatus::EXITED, 3));
        assert_eq!(exit_status(Exit::Code(0)), (ProcessStatus::EXITED, 0));
        assert_eq!(exit_status(Exit::Signal(9)), (ProcessStatus::SIGNALED, 9));
    }
}
