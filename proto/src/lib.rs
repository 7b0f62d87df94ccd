//! The host–guest contract of vm_tools, in one crate: the generated protos, the kernel
//! command line keys, the well-known ports, token authentication and the transports.

#[cfg(feature = "grpc")]
#[allow(warnings, clippy::all, clippy::undocumented_unsafe_blocks)]
pub mod protos {
    include!(concat!(env!("OUT_DIR"), "/mod.rs"));
}

pub mod address;
pub mod auth;
#[cfg(feature = "grpc")]
pub mod client;
pub mod cmdline;
pub mod disks;
pub mod forward;
pub mod listener;
pub mod redact;
#[cfg(feature = "grpc")]
pub mod server;
#[cfg(feature = "grpc")]
pub mod severity;
pub mod spool;
pub mod stream;
mod sys;
pub mod time;
pub mod transport;
pub mod volumes;

pub use address::{Address, AddressError};
pub use auth::{Token, TokenError};
#[cfg(feature = "grpc")]
pub use client::{CallError, Connector};
pub use cmdline::{CmdlineError, GuestParams};
pub use listener::{Listener, ListenerSet, Peer};
#[cfg(feature = "grpc")]
pub use server::{GrpcServer, ServerError};
pub use transport::{connect, connect_with_timeout, TransportError};

/// How the host's crash report rate limit begins its RESOURCE_EXHAUSTED message. The same
/// code also means "too large"; a rate-limited report is kept and sent again later.
pub const CRASH_RATE_LIMITED: &str = "crash report rate limit";

/// The largest gRPC message either side accepts. Here, not in `server`, so a program built
/// without gRPC (crash_collector) can size what it hands to one that sends.
pub const MAX_MESSAGE_BYTES: i32 = 16 << 20;

/// The RFC 5424 SD-ID under which vm_syslog sends a kmsg record's device dictionary
/// (` SUBSYSTEM=pci` lines): `kmsg@32473`. 32473 is the documentation enterprise number
/// (RFC 5612); a project with its own number would put it here.
pub const KMSG_SD_ID: &str = "kmsg@32473";

/// The vsock port maitred serves `Maitred` on inside the guest.
pub const MAITRED_PORT: u32 = 8888;
/// The vsock CID of the host, as seen from a guest.
pub const HOST_CID: u32 = 2;
/// `VMADDR_CID_ANY`: listen on every CID.
pub const ANY_CID: u32 = u32::MAX;

#[cfg(feature = "grpc")]
/// One gRPC environment (one completion queue) is all these small daemons need.
pub fn grpc_environment(name: &str) -> std::sync::Arc<grpcio::Environment> {
    std::sync::Arc::new(
        grpcio::EnvBuilder::new()
            .cq_count(1)
            .name_prefix(name)
            .build(),
    )
}
