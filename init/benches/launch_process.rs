//! LaunchProcess(wait_for_exit, /bin/true) round trip against posix_spawn + waitpid of
//! /bin/true, both from this one process in the same run. maitred runs in host mode (the
//! tests' harness: a child process on a private Unix socket, a fake host it sends VmReady
//! to); the client keeps one channel, as the launcher does. Prints medians with min–max and
//! the ratio (goal ≤ 1.3), and the ratio of the minima, which a busy machine disturbs least;
//! asserts nothing.
//!
//!     cargo bench -p maitred --bench launch_process [-- ROUNDS]

#[path = "../tests/common/mod.rs"]
mod common;

use std::ffi::CString;
use std::time::{Duration, Instant};

use vm_proto::protos::guest::ProcessStatus;

const ROUNDS: usize = 400;
const WARM_UP: usize = 50;

/// posix_spawn of /bin/true and waitpid for it: the floor.
fn spawn_and_wait(program: &CString) {
    let argv = [program.as_ptr(), std::ptr::null()];
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    let mut pid: libc::pid_t = 0;
    // SAFETY: argv and envp are NULL-terminated arrays of pointers to live C strings; no
    // file actions or attributes are passed; `pid` is a live local the call writes.
    let rc = unsafe {
        libc::posix_spawn(
            &mut pid,
            program.as_ptr(),
            std::ptr::null(),
            std::ptr::null(),
            argv.as_ptr().cast_mut().cast(),
            envp.as_ptr().cast_mut().cast(),
        )
    };
    assert_eq!(
        rc,
        0,
        "posix_spawn: {}",
        std::io::Error::from_raw_os_error(rc)
    );
    let mut status = 0;
    // SAFETY: `pid` is our own unreaped child; `status` is a live local.
    let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(waited, pid, "waitpid: {}", std::io::Error::last_os_error());
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
}

fn time(rounds: usize, mut f: impl FnMut()) -> Vec<Duration> {
    (0..rounds)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect()
}

/// Median, min and max, in microseconds.
fn summary(mut samples: Vec<Duration>) -> (f64, f64, f64) {
    samples.sort();
    let us = |d: &Duration| d.as_secs_f64() * 1e6;
    (
        us(&samples[samples.len() / 2]),
        us(&samples[0]),
        us(&samples[samples.len() - 1]),
    )
}

fn main() {
    // `cargo bench` passes `--bench`; a number is the round count.
    let rounds = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(ROUNDS);
    let guest = common::Guest::start();
    let req = common::wait_req(&["/bin/true"]);
    let launch = || {
        let r = guest.launch(&req).expect("LaunchProcess");
        assert_eq!((r.get_status(), r.get_code()), (ProcessStatus::EXITED, 0));
    };
    // An empty argv is refused before anything starts: the bare gRPC round trip.
    let refused = common::req(&[]);
    let round_trip = || {
        let r = guest.launch(&refused);
        assert!(r.is_err(), "an empty argv was accepted");
    };
    let program = CString::new("/bin/true").unwrap();
    for _ in 0..WARM_UP {
        launch();
        round_trip();
        spawn_and_wait(&program);
    }
    // Interleaved in blocks, so drift on a shared machine hits all alike.
    let (mut rpc, mut floor, mut bare) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..10 {
        rpc.extend(time(rounds / 10, launch));
        floor.extend(time(rounds / 10, || spawn_and_wait(&program)));
        bare.extend(time(rounds / 10, round_trip));
    }
    let (r, r_min, r_max) = summary(rpc);
    let (f, f_min, f_max) = summary(floor);
    let (b, b_min, b_max) = summary(bare);
    println!("LaunchProcess(wait_for_exit, /bin/true), median of {rounds}:");
    println!("  posix_spawn + waitpid (floor):        {f:8.1} µs   [{f_min:.1}–{f_max:.1}]");
    println!("  LaunchProcess over a Unix socket:     {r:8.1} µs   [{r_min:.1}–{r_max:.1}]");
    println!("  (a refused LaunchProcess: gRPC alone) {b:8.1} µs   [{b_min:.1}–{b_max:.1}]");
    println!(
        "  ratio: {:.2} (goal <= 1.3); of the minima: {:.2}",
        r / f,
        r_min / f_min
    );
}
