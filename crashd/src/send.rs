//! Sending reports to the host's `CrashListener.SendCrashReport`, with the VM's token, over
//! the re-dialling [`Connector`].

use std::fmt;
use std::time::Duration;

use grpcio::RpcStatusCode;
use vm_proto::protos::host::CrashReport;
use vm_proto::protos::host_grpc::CrashListenerClient;
use vm_proto::{grpc_environment, Address, CallError, Connector, Token};

use crate::report::CrashReportData;

/// Per call; a minidump of a few MiB crosses vsock in well under a second.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug)]
pub struct SendError(pub CallError);

impl SendError {
    /// The host refused the message as too large (RESOURCE_EXHAUSTED, and not its rate
    /// limit, which answers with the same code: such a report is kept for later).
    pub fn too_large(&self) -> bool {
        let rate_limited = matches!(&self.0, CallError::Rpc { status, .. }
            if status.message().starts_with(vm_proto::CRASH_RATE_LIMITED));
        self.0.code() == Some(RpcStatusCode::RESOURCE_EXHAUSTED) && !rate_limited
    }
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot send the crash report: {}", self.0)
    }
}

impl std::error::Error for SendError {}

pub fn to_proto(report: &CrashReportData) -> CrashReport {
    let mut msg = CrashReport::new();
    msg.set_metadata(report.metadata.clone().into_iter().collect());
    msg.set_minidump(report.minidump.clone());
    msg.set_process_tree(report.process_tree.clone());
    msg
}

pub struct Sender {
    connector: Connector,
}

impl Sender {
    pub fn new(addr: Address, token: Token) -> Sender {
        Sender {
            connector: Connector::new(grpc_environment("crash"), addr, token),
        }
    }

    pub fn send(&self, report: &CrashReportData) -> Result<(), SendError> {
        let msg = to_proto(report);
        self.connector
            .call(CALL_TIMEOUT, |ch, opt| {
                CrashListenerClient::new(ch).send_crash_report_opt(&msg, opt)
            })
            .map(|_| ())
            .map_err(SendError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use grpcio::RpcStatus;

    fn refused(message: &str) -> SendError {
        SendError(CallError::Rpc {
            addr: "unix:/x".into(),
            status: RpcStatus::with_message(RpcStatusCode::RESOURCE_EXHAUSTED, message.into()),
        })
    }

    #[test]
    fn too_large_is_not_the_rate_limit() {
        assert!(refused("Received message larger than max").too_large());
        let limited = format!("{}: keep it and try later", vm_proto::CRASH_RATE_LIMITED);
        assert!(!refused(&limited).too_large());
    }
}
