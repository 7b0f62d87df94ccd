//! A client connection that re-dials: grpcio channels built from an fd never reconnect, so
//! when a cached channel reports UNAVAILABLE the [`Connector`] dials again and retries once.

use std::fmt;
use std::os::fd::{IntoRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use grpcio::{CallOption, Channel, ChannelBuilder, Environment, RpcStatus, RpcStatusCode};

use crate::address::Address;
use crate::auth::Token;
use crate::transport::{connect, TransportError};

#[derive(Debug)]
pub enum CallError {
    Transport(TransportError),
    Rpc { addr: String, status: RpcStatus },
    Grpc { addr: String, error: grpcio::Error },
}

impl CallError {
    /// The gRPC status code, if the call reached a server.
    pub fn code(&self) -> Option<RpcStatusCode> {
        match self {
            Self::Rpc { status, .. } => Some(status.code()),
            _ => None,
        }
    }
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Transport(e) => e.fmt(f),
            Self::Rpc { addr, status } if status.message().is_empty() => {
                write!(f, "call to {addr} failed: {:?}", status.code())
            }
            Self::Rpc { addr, status } => write!(
                f,
                "call to {addr} failed: {:?}: {}",
                status.code(),
                status.message()
            ),
            Self::Grpc { addr, error } => write!(f, "call to {addr} failed: {error}"),
        }
    }
}

impl std::error::Error for CallError {}

/// Builds a channel over an already-connected socket. `name` only labels it.
pub fn channel_from_fd(env: Arc<Environment>, name: &str, fd: OwnedFd) -> Channel {
    let raw = fd.into_raw_fd();
    // SAFETY: `raw` is a connected, non-blocking stream socket whose ownership we just
    // released; the channel owns and closes it and no other code touches it.
    unsafe { ChannelBuilder::new(env).connect_from_fd(name, raw) }
}

pub struct Connector {
    env: Arc<Environment>,
    addr: Address,
    token: Token,
    channel: Mutex<Option<Channel>>,
}

impl Connector {
    pub fn new(env: Arc<Environment>, addr: Address, token: Token) -> Connector {
        Connector {
            env,
            addr,
            token,
            channel: Mutex::new(None),
        }
    }

    pub fn address(&self) -> &Address {
        &self.addr
    }

    /// The cached channel, or a new one; `true` when it was just dialled.
    fn channel(&self) -> Result<(Channel, bool), TransportError> {
        let mut slot = self.channel.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(channel) = slot.as_ref() {
            return Ok((channel.clone(), false));
        }
        let fd = connect(&self.addr)?;
        let channel = channel_from_fd(self.env.clone(), &self.addr.to_string(), fd);
        *slot = Some(channel.clone());
        Ok((channel, true))
    }

    /// Dials now, unless a channel is cached, so that the first call does not pay for it
    /// (maitred connects to the host while it is still starting).
    pub fn connect_ahead(&self) -> Result<(), TransportError> {
        self.channel().map(drop)
    }

    fn forget(&self) {
        *self.channel.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Runs `call` with a channel and call options carrying the token and `timeout`. A cached
    /// channel that turns out dead (UNAVAILABLE) is replaced and the call tried once more.
    pub fn call<T>(
        &self,
        timeout: Duration,
        call: impl Fn(Channel, CallOption) -> grpcio::Result<T>,
    ) -> Result<T, CallError> {
        loop {
            let (channel, fresh) = self.channel().map_err(CallError::Transport)?;
            let options = self.token.call_option().timeout(timeout);
            match call(channel, options) {
                Ok(reply) => return Ok(reply),
                Err(grpcio::Error::RpcFailure(status)) => {
                    if status.code() == RpcStatusCode::UNAVAILABLE {
                        self.forget();
                        if !fresh {
                            continue;
                        }
                    }
                    let addr = self.addr.to_string();
                    return Err(CallError::Rpc { addr, status });
                }
                Err(error) => {
                    self.forget();
                    let addr = self.addr.to_string();
                    return Err(CallError::Grpc { addr, error });
                }
            }
        }
    }
}
