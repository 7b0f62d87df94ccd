//! `--forward`: one control stream to maitred (LISTEN with the guest ports). For each
//! PENDING it sends, a thread connects to the host address of that forward, taken from our
//! own table by index, then ATTACHes to the guest connection and relays; when the host
//! address refuses (or the ATTACH fails), CANCEL closes the guest connection at once. Dropping the
//! [`Forwarder`] closes the control stream, and maitred closes its listeners.

use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixStream;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use vm_proto::forward::{self, Request};
use vm_proto::stream;

use super::{ForwardSpec, Guest, PortError, Slot};

/// How long connecting to a forward's host address may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Forwarder {
    control: UnixStream,
    thread: Option<JoinHandle<()>>,
}

impl Forwarder {
    pub fn start(
        guest: Guest,
        forwards: Vec<ForwardSpec>,
        live: Arc<AtomicUsize>,
    ) -> Result<Forwarder, PortError> {
        let ports = forwards.iter().map(|f| f.guest_port).collect();
        let control = forward::open(&guest.addr, &guest.token, &Request::Listen { ports })
            .map_err(PortError::Forward)?;
        let reader = control.try_clone().map_err(|e| {
            PortError::Forward(forward::OpenError::Frame(stream::FrameError::Io(e)))
        })?;
        let writer = Arc::new(Mutex::new(control.try_clone().map_err(|e| {
            PortError::Forward(forward::OpenError::Frame(stream::FrameError::Io(e)))
        })?));
        let thread = std::thread::Builder::new()
            .name("forward-control".into())
            .spawn(move || control_loop(reader, &writer, &guest, &forwards, &live))
            .map_err(PortError::Thread)?;
        Ok(Forwarder {
            control,
            thread: Some(thread),
        })
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        let _ = self.control.shutdown(Shutdown::Both);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn control_loop(
    mut reader: UnixStream,
    writer: &Arc<Mutex<UnixStream>>,
    guest: &Guest,
    forwards: &[ForwardSpec],
    live: &Arc<AtomicUsize>,
) {
    while let Ok(frame) = stream::read_frame(&mut reader) {
        if frame.kind != forward::PENDING {
            continue;
        }
        let Ok((id, index)) = forward::decode_pending(&frame) else {
            continue;
        };
        // Only an index into our own table: an unknown one is refused like a closed port.
        let target = forwards.get(usize::from(index)).map(|f| f.host);
        let slot = Slot::take(live);
        let (Some(target), Some(slot)) = (target, slot) else {
            cancel(writer, id);
            continue;
        };
        let (guest, writer_again, writer) = (guest.clone(), writer.clone(), writer.clone());
        let spawned = std::thread::Builder::new()
            .name("forward".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                match TcpStream::connect_timeout(&target, CONNECT_TIMEOUT) {
                    Ok(host) => {
                        let _ = host.set_nodelay(true);
                        let attach = Request::Attach { id };
                        match forward::open(&guest.addr, &guest.token, &attach) {
                            Ok(stream) => {
                                let _ = forward::relay(host, stream, "forward-copy");
                            }
                            // Not attached: the guest connection must not wait for a
                            // timeout (harmless if maitred already dropped it).
                            Err(_) => cancel(&writer, id),
                        }
                    }
                    Err(_) => cancel(&writer, id),
                }
                drop(slot);
            });
        if spawned.is_err() {
            cancel(&writer_again, id);
        }
    }
}

/// Tells maitred to close pending connection `id` (best effort: if the control stream is
/// gone, maitred closes it anyway).
fn cancel(writer: &Mutex<UnixStream>, id: u32) {
    let mut writer = writer.lock().unwrap_or_else(|p| p.into_inner());
    let _ = stream::write_frame(&mut *writer, forward::CANCEL, &id.to_be_bytes());
}
