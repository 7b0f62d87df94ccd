//! The process I/O stream service on guest port `vm_proto::stream::EXEC_PORT`: one thread
//! per connection. HELLO must carry the VM's token (the same constant-time check as the
//! gRPC calls) before anything else is read; then START says what to run, and
//! `exec_session` carries its I/O until it exits.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use protobuf::Message;
use vm_proto::protos::guest::ExecRequest;
use vm_proto::server::PeerFilter;
use vm_proto::stream::{self, ExitStatus, Kind, WindowSize};
use vm_proto::Token;

use crate::context::Context;
use crate::exec_io::{self, SessionFds};
use crate::exec_session::{self, Process};
use crate::spawn::{self, ChildStdio, ProcessSpec, SpawnError, Stdio};
use crate::stream_accept::{self, Admit, Refusals, StreamService};
use crate::{container, container_enter, info, launch};

/// HELLO and START must arrive within this time of connecting.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A terminal size of 0 (unknown) becomes this.
const DEFAULT_SIZE: WindowSize = WindowSize { rows: 24, cols: 80 };

static REFUSED: Refusals = Refusals::new("process stream");

/// Serves process streams: what to do with each connection on the exec port.
pub fn service(ctx: Arc<Context>, token: Token, filter: PeerFilter) -> Admit {
    let token = Arc::new(token);
    StreamService {
        connection: "exec",
        stack: None,
        refusals: &REFUSED,
    }
    .admit(filter, move |fd| serve_connection(&ctx, fd, &token))
}

/// Refuses the stream with an ERROR frame (best effort) and one rate-limited log line.
fn refuse(conn: &mut UnixStream, why: &str) {
    REFUSED.note(why);
    let _ = stream::write_frame(conn, Kind::Error, why.as_bytes());
    let _ = conn.shutdown(std::net::Shutdown::Both);
}

fn serve_connection(ctx: &Arc<Context>, fd: OwnedFd, token: &Token) {
    let Some(mut conn) = stream_accept::blocking_stream(fd, HANDSHAKE_TIMEOUT) else {
        return;
    };
    let req = match handshake(&mut conn, token) {
        Ok(req) => req,
        Err(why) => return refuse(&mut conn, &why),
    };
    if conn.set_read_timeout(None).is_err() {
        return;
    }
    run(ctx, conn, &req);
}

/// HELLO with the token, then START; any other frame or a wrong token is refused.
fn handshake(conn: &mut UnixStream, token: &Token) -> Result<ExecRequest, String> {
    let start = stream::accept_opening(conn, token, Kind::Start, "before START")?;
    ExecRequest::parse_from_bytes(&start)
        .map_err(|e| format!("process stream: malformed START request: {e}"))
}

/// Starts the request's process and serves its stream; an application's end ends the VM.
fn run(ctx: &Arc<Context>, mut conn: UnixStream, req: &ExecRequest) {
    let process = match start_process(ctx, req) {
        Ok(process) => process,
        Err(e) => {
            let failed = ExitStatus::Failed {
                errno: e.errno(),
                reason: e.to_string(),
            };
            let _ = stream::write_frame(&mut conn, Kind::Exit, &stream::encode_exit(&failed));
            let _ = conn.shutdown(std::net::Shutdown::Both);
            if req.get_is_application() {
                info!("the application could not start: {e}");
            }
            return;
        }
    };
    let pid = process.pid;
    let container = req.has_container() && req.get_is_application();
    if container {
        ctx.set_app_container(Some(pid));
    }
    let exit = exec_session::serve(conn, process);
    if container {
        ctx.set_app_container(None);
    }
    if let (true, Some(exit)) = (req.get_is_application(), exit) {
        launch::application_ended(ctx, pid, exit);
    }
}

/// Why a START could not run: bad request, container set-up, or spawn.
pub enum StartError {
    Invalid(String),
    Container(container::ContainerError),
    Spawn(SpawnError),
}

impl StartError {
    fn errno(&self) -> i32 {
        match self {
            Self::Invalid(_) => libc::EINVAL,
            Self::Container(e) => e.errno(),
            Self::Spawn(e) => e.errno(),
        }
    }
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Invalid(why) => f.write_str(why),
            Self::Container(e) => e.fmt(f),
            Self::Spawn(e) => e.fmt(f),
        }
    }
}

/// The process a START describes, as maitred would start it.
pub fn spec_for(ctx: &Context, req: &ExecRequest) -> Result<ProcessSpec, StartError> {
    if req.get_argv().is_empty() {
        return Err(StartError::Invalid("argv is empty".into()));
    }
    if req.has_container() && req.get_enter_container() {
        return Err(StartError::Invalid(
            "a process runs in a new container or enters the running one, not both".into(),
        ));
    }
    let mut env: Vec<(String, String)> = req
        .get_env()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    env.sort();
    let cwd = req.get_working_dir();
    let spec = ProcessSpec {
        argv: req.get_argv().to_vec(),
        env,
        cwd: (!cwd.is_empty()).then(|| cwd.into()),
        stdio: Stdio::Null, // replaced by the session's pipes or terminal
    };
    if req.has_container() {
        return container::wrap(req.get_container(), &ctx.vm_id, spec)
            .map_err(StartError::Container);
    }
    match (req.get_enter_container(), ctx.app_container()) {
        (true, Some(pid)) => Ok(container_enter::wrap(pid, spec)),
        _ => Ok(spec),
    }
}

fn start_process(ctx: &Context, req: &ExecRequest) -> Result<Process, StartError> {
    let spec = spec_for(ctx, req)?;
    let (stdio, fds): (ChildStdio, SessionFds) = if req.get_tty() {
        let size = match (req.get_rows(), req.get_cols()) {
            (0, _) | (_, 0) => DEFAULT_SIZE,
            (rows, cols) => WindowSize {
                rows: rows.min(u32::from(u16::MAX)) as u16,
                cols: cols.min(u32::from(u16::MAX)) as u16,
            },
        };
        exec_io::terminal(size)
    } else {
        exec_io::pipes()
    }
    .map_err(StartError::Spawn)?;
    let (pid, exit) =
        spawn::spawn_with(ctx.mode(), &ctx.reaper, &spec, stdio).map_err(StartError::Spawn)?;
    Ok(Process { pid, exit, fds })
}
