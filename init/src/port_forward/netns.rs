//! Running a socket call inside the application container's network namespace: a fresh
//! thread joins it (setns(CLONE_NEWNET) changes only the calling thread) and makes the
//! socket there; the socket stays in that namespace for its life, whoever uses it later.

use std::fs::File;
use std::io;

use nix::sched::{setns, CloneFlags};

/// The network namespace of process `pid` (a symlink text such as `net:[4026531992]`).
fn id_of(pid: &str) -> io::Result<std::path::PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/ns/net"))
}

/// Has `pid` its own network namespace (not maitred's)? False while it has not yet made
/// one, and for a container that shares the VM's network.
pub fn is_separate(pid: i32) -> bool {
    match (id_of(&pid.to_string()), id_of("self")) {
        (Ok(theirs), Ok(ours)) => theirs != ours,
        _ => false,
    }
}

/// Runs `make` on a thread inside the network namespace of `pid`.
pub fn run_in<T: Send + 'static>(
    pid: i32,
    make: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    let path = format!("/proc/{pid}/ns/net");
    let ns = File::open(&path)
        .map_err(|e| io::Error::new(e.kind(), format!("{path}: {e}; has the container ended?")))?;
    std::thread::Builder::new()
        .name("netns".into())
        .stack_size(128 * 1024)
        .spawn(move || {
            setns(&ns, CloneFlags::CLONE_NEWNET)
                .map_err(|e| io::Error::other(format!("joining {path}: {}", e.desc())))?;
            make()
        })?
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the namespace thread panicked")))
}
