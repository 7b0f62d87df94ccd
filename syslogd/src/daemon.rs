//! Wires vm_syslog together: the token from the kernel command line, the /dev/log and
//! /dev/kmsg reader threads, the buffer, and the sender (on the calling thread) until
//! SIGTERM, when everything waiting is flushed.

use std::fmt;
use std::sync::Arc;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use vm_proto::cmdline::ParamsError;
use vm_proto::{Connector, GuestParams};

use crate::buffer::Buffer;
use crate::config::Config;
use crate::delivery_state::{read_boot_id, DeliveryState, BOOT_ID_PATH};
use crate::devlog::{DevLog, DevLogError};
use crate::devlog_stream::StreamLog;
use crate::grpc_collector::GrpcCollector;
use crate::kmsg_reader::KmsgReader;
use crate::sender::{Sender, SenderConfig};

/// Records are sent in batches of about this many bytes.
pub const BATCH_BYTES: usize = 64 << 10;

#[derive(Debug)]
pub enum DaemonError {
    Params(ParamsError),
    DevLog(DevLogError),
    Signals(std::io::Error),
    Thread(std::io::Error),
}

impl fmt::Display for DaemonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Params(e) => e.fmt(f),
            Self::DevLog(e) => e.fmt(f),
            Self::Signals(e) => write!(f, "cannot handle SIGTERM: {e}"),
            Self::Thread(e) => write!(f, "cannot start a reader thread: {e}"),
        }
    }
}

impl std::error::Error for DaemonError {}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<(), DaemonError> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map(|_| ())
        .map_err(DaemonError::Thread)
}

/// Runs until SIGTERM or SIGINT, then flushes and returns.
pub fn run(config: Config) -> Result<(), DaemonError> {
    let params = GuestParams::from_proc_cmdline(&config.cmdline).map_err(DaemonError::Params)?;
    let host = config.host.clone().unwrap_or_else(|| params.host_address());
    let mut signals = Signals::new([SIGTERM, SIGINT]).map_err(DaemonError::Signals)?;
    let buffer = Arc::new(Buffer::new(config.buffer_bytes, BATCH_BYTES));

    let devlog = match config.socket_fd {
        Some(fd) => DevLog::inherit(fd, &config.socket),
        None => DevLog::bind(&config.socket),
    }
    .map_err(DaemonError::DevLog)?;
    let b = buffer.clone();
    spawn("devlog", move || devlog.run(b))?;
    let stream_log = match config.stream_socket_fd {
        Some(fd) => StreamLog::inherit(fd, &config.stream_socket),
        None => StreamLog::bind(&config.stream_socket),
    }
    .map_err(DaemonError::DevLog)?;
    let b = buffer.clone();
    spawn("devlog-accept", move || stream_log.run(b))?;

    let state = DeliveryState::open(config.state.clone(), read_boot_id(BOOT_ID_PATH.as_ref()));
    if let Some(path) = &config.kmsg {
        match KmsgReader::open(path, state.kmsg_delivered()) {
            Ok(reader) => {
                let b = buffer.clone();
                spawn("kmsg", move || {
                    let _ = reader.run(b);
                })?;
            }
            Err(e) => {
                crate::warn!("vm_syslog: {e}; serving {} only", config.socket.display());
            }
        }
    }

    let stopper = buffer.clone();
    spawn("signals", move || {
        if signals.forever().next().is_some() {
            stopper.stop();
        }
    })?;

    let connector = Connector::new(vm_proto::grpc_environment("vm_syslog"), host, params.token);
    let sender_config = SenderConfig {
        capacity: config.buffer_bytes,
        ..SenderConfig::default()
    };
    let stats = Sender::new(&buffer, GrpcCollector::new(connector), sender_config)
        .with_state(state)
        .run();
    // Senders now fail fast instead of filling a queue nobody reads.
    // Sockets we bound go with us; inherited ones stay with their owner (maitred keeps
    // them for the next vm_syslog).
    if config.socket_fd.is_none() {
        let _ = std::fs::remove_file(&config.socket);
    }
    if config.stream_socket_fd.is_none() {
        let _ = std::fs::remove_file(&config.stream_socket);
    }
    if stats.abandoned > 0 {
        crate::warn!(
            "vm_syslog: stopped with {} records undelivered",
            stats.abandoned
        );
    }
    Ok(())
}
