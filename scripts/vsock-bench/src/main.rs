//! The floor for scripts/bench-io: a plain vsock stream with nothing in between.
//!
//! `vsock-bench sink PORT`: accept one connection, read it to its end, print the count.
//! `vsock-bench source PORT BYTES`: accept one connection, write BYTES zero bytes, close.
//! `vsock-bench relay-out PORT`: accept one connection, copy stdin into it, close.
//! `vsock-bench relay-in PORT`: accept one connection, copy it to stdout.
//!
//! `vsock-bench accept-close PORT COUNT`: accept COUNT connections, closing each at once.
//!
//! The relays are the floor for a process's stdio: the same pipe between the process and the
//! relay as maitred has, but a plain vsock stream instead of maitred's framed one.
//!
//! `vsock-bench tcp MODE …` does the same on TCP 127.0.0.1:PORT: the guest's server for
//! scripts/bench-ports, whose floor is the vsock one.

use std::io::{Read, Write};
use std::os::fd::FromRawFd;

/// Listens on `port` (vsock, or TCP 127.0.0.1 when `tcp`) and accepts connections.
struct Server {
    fd: i32,
}

impl Server {
    fn listen(port: u32, tcp: bool) -> Server {
        let fd = if tcp {
            use std::os::fd::IntoRawFd;
            let l = std::net::TcpListener::bind(("127.0.0.1", port as u16)).expect("bind tcp");
            eprintln!("listening on {port}");
            l.into_raw_fd()
        } else {
            vsock_listen(port)
        };
        Server { fd }
    }

    fn accept(&self) -> std::fs::File {
        // SAFETY: accept4 on our listening fd with null address pointers; the result is
        // checked before it becomes a File that owns it.
        unsafe {
            let conn =
                libc::accept4(self.fd, std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_CLOEXEC);
            assert!(conn >= 0, "accept: {}", std::io::Error::last_os_error());
            std::fs::File::from_raw_fd(conn)
        }
    }
}

fn vsock_listen(port: u32) -> i32 {
    // SAFETY: plain socket calls on a sockaddr_vm that lives on the stack for their duration;
    // every return value is checked before the fd is used.
    unsafe {
        let fd = libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let mut addr: libc::sockaddr_vm = std::mem::zeroed();
        addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
        addr.svm_cid = libc::VMADDR_CID_ANY;
        addr.svm_port = port;
        let len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
        let rc = libc::bind(fd, (&addr as *const libc::sockaddr_vm).cast(), len);
        assert!(rc == 0, "bind: {}", std::io::Error::last_os_error());
        assert!(libc::listen(fd, 128) == 0, "listen");
        eprintln!("listening on {port}");
        fd
    }
}

/// Copies with the same 64 KiB chunks maitred uses.
fn copy(from: &mut impl Read, to: &mut impl Write) {
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

fn main() {
    let mut args: Vec<String> = std::env::args().collect();
    let tcp = args.get(1).map(String::as_str) == Some("tcp");
    if tcp {
        args.remove(1);
    }
    let listen_accept = |port: u32| Server::listen(port, tcp).accept();
    let port = |i: usize| args.get(i).and_then(|p| p.parse().ok()).expect("PORT");
    match args.get(1).map(String::as_str) {
        Some("sink") => {
            let mut conn = listen_accept(port(2));
            let mut buf = vec![0u8; 1 << 16];
            let mut total = 0u64;
            loop {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => total += n as u64,
                }
            }
            println!("received {total}");
        }
        Some("source") => {
            let bytes: u64 = args.get(3).and_then(|b| b.parse().ok()).expect("BYTES");
            let mut conn = listen_accept(port(2));
            let buf = vec![0u8; 1 << 16];
            let mut left = bytes;
            while left > 0 {
                let n = left.min(buf.len() as u64) as usize;
                conn.write_all(&buf[..n]).expect("write");
                left -= n as u64;
            }
            println!("sent {bytes}");
        }
        Some("relay-out") => {
            let mut conn = listen_accept(port(2));
            copy(&mut std::io::stdin().lock(), &mut conn);
        }
        Some("relay-in") => {
            let mut conn = listen_accept(port(2));
            copy(&mut conn, &mut std::io::stdout().lock());
        }
        Some("accept-close") => {
            let count: u64 = args.get(3).and_then(|b| b.parse().ok()).expect("COUNT");
            let server = Server::listen(port(2), tcp);
            for _ in 0..count {
                drop(server.accept());
            }
        }
        _ => {
            eprintln!("usage: vsock-bench [tcp] accept-close PORT COUNT | sink PORT | source PORT BYTES | relay-out PORT | relay-in PORT");
            std::process::exit(2);
        }
    }
}
