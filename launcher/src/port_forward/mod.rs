//! `--publish` and `--forward` on the host side (the protocol is `vm_proto::forward`):
//!
//! - `spec`: the flags' syntax and the checks across them;
//! - `publish`: host TCP listeners, bound before the VM boots (a port in use is an error
//!   before anything starts); each accepted connection becomes an OPEN stream to maitred;
//! - `forward`: the control stream that has maitred listen in the guest; each connection it
//!   accepts is joined to a connection to the host address the user named, looked up by
//!   index in our own table (the guest never names an address).
//!
//! Live connections are bounded per VM ([`MAX_CONNECTIONS`], publish and forward together);
//! past that a new one is closed at once. [`PortForwards`] stops everything when dropped.

mod forward;
mod publish;
mod spec;

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

pub use spec::{check, ForwardSpec, PublishSpec, SpecError};
use vm_proto::{Address, Token};

/// Live forwarded connections per VM, on the host side.
pub const MAX_CONNECTIONS: usize = 256;

#[derive(Debug)]
pub enum PortError {
    Bind {
        spec: PublishSpec,
        source: std::io::Error,
    },
    /// The control stream for `--forward` could not be opened.
    Forward(vm_proto::forward::OpenError),
    Thread(std::io::Error),
}

impl fmt::Display for PortError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Bind { spec, source } if source.kind() == std::io::ErrorKind::AddrInUse => {
                write!(
                    f,
                    "--publish {spec}: host address {} is in use by another program; choose another host port",
                    spec.host
                )
            }
            Self::Bind { spec, source } => {
                write!(
                    f,
                    "--publish {spec}: cannot listen on {}: {source}",
                    spec.host
                )
            }
            Self::Forward(e) => write!(f, "--forward: {e}"),
            Self::Thread(e) => write!(f, "cannot start a port forwarding thread: {e}"),
        }
    }
}

impl std::error::Error for PortError {}

/// One of the [`MAX_CONNECTIONS`] places, given back when dropped.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(live: &Arc<AtomicUsize>) -> Option<Slot> {
        live.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
            (n < MAX_CONNECTIONS).then_some(n + 1)
        })
        .ok()
        .map(|_| Slot(live.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Where and how to reach maitred's forward service.
#[derive(Clone)]
struct Guest {
    addr: Address,
    token: Token,
}

/// A VM's published and forwarded ports.
pub struct PortForwards {
    publish: Vec<publish::Publisher>,
    forwards: Vec<ForwardSpec>,
    forwarder: Option<forward::Forwarder>,
    live: Arc<AtomicUsize>,
}

impl PortForwards {
    /// Binds every `--publish` listener now, before the VM boots.
    pub fn bind(
        publish: &[PublishSpec],
        forwards: &[ForwardSpec],
    ) -> Result<PortForwards, PortError> {
        let publish = publish
            .iter()
            .map(|spec| publish::Publisher::bind(*spec))
            .collect::<Result<_, _>>()?;
        Ok(PortForwards {
            publish,
            forwards: forwards.to_vec(),
            forwarder: None,
            live: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// Serves them once the guest is ready; `maitred` is maitred's gRPC address.
    pub fn start(&mut self, maitred: &Address, token: &Token) -> Result<(), PortError> {
        let guest = Guest {
            addr: vm_proto::forward::forward_address(maitred),
            token: token.clone(),
        };
        if !self.forwards.is_empty() {
            self.forwarder = Some(forward::Forwarder::start(
                guest.clone(),
                self.forwards.clone(),
                self.live.clone(),
            )?);
        }
        for publisher in &mut self.publish {
            publisher.start(guest.clone(), self.live.clone())?;
        }
        Ok(())
    }

    /// Stops accepting and closes the forward control stream (so the guest's listeners
    /// close); connections already relayed end with the VM.
    pub fn stop(&mut self) {
        self.publish.clear();
        self.forwarder = None;
    }
}

impl Drop for PortForwards {
    fn drop(&mut self) {
        self.stop();
    }
}
