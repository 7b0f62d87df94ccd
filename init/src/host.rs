//! maitred's calls to the host: VmReady once it serves, ApplicationExited when the VM's
//! application ends. Both retry briefly with backoff; the host may still be starting up.

use std::time::Duration;

use vm_proto::protos::common::EmptyMessage;
use vm_proto::protos::host::ApplicationExit;
use vm_proto::protos::host_grpc::StartupListenerClient;
use vm_proto::{CallError, Connector};

use crate::reaper::Exit;

const CALL_TIMEOUT: Duration = Duration::from_secs(5);
const ATTEMPTS: u32 = 8;
const FIRST_BACKOFF: Duration = Duration::from_millis(50);

pub struct HostLink {
    connector: Connector,
}

impl HostLink {
    pub fn new(connector: Connector) -> HostLink {
        HostLink { connector }
    }

    fn with_retries<T>(&self, call: impl Fn() -> Result<T, CallError>) -> Result<T, CallError> {
        let mut backoff = FIRST_BACKOFF;
        let mut attempt = 1;
        loop {
            match call() {
                Ok(v) => return Ok(v),
                Err(e) if attempt >= ATTEMPTS => return Err(e),
                Err(_) => {
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    attempt += 1;
                }
            }
        }
    }

    /// Connects to the host now (one try), so that VmReady, sent once maitred serves, finds
    /// the connection up. A failure is not an error: VmReady dials again.
    pub fn connect_ahead(&self) {
        let _ = self.connector.connect_ahead();
    }

    pub fn vm_ready(&self) -> Result<(), CallError> {
        self.with_retries(|| {
            self.connector.call(CALL_TIMEOUT, |ch, opt| {
                StartupListenerClient::new(ch).vm_ready_opt(&EmptyMessage::new(), opt)
            })
        })
        .map(drop)
    }

    pub fn application_exited(&self, pid: i32, exit: Exit) -> Result<(), CallError> {
        let mut msg = ApplicationExit::new();
        msg.set_pid(pid as u32);
        let (status, code) = crate::launch::exit_status(exit);
        msg.set_status(status);
        msg.set_code(code);
        self.with_retries(|| {
            self.connector.call(CALL_TIMEOUT, |ch, opt| {
                StartupListenerClient::new(ch).application_exited_opt(&msg, opt)
            })
        })
        .map(drop)
    }

    pub fn address(&self) -> String {
        self.connector.address().to_string()
    }
}
