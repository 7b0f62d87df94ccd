//! Time and peak RSS of turning the core of a 64 MiB process into a minidump, beside
//! `minidump-writer` (ptrace) dumping the same live process in the same run. Prints; asserts
//! nothing.
//!
//! The process is tests/programs/crashme (4 threads, 64 MiB touched) held in pause(). gdb's
//! gcore writes its core (not timed), rewritten into the kernel's layout by a helper process;
//! `cat` then pipes it into crash_collector exactly as the kernel would, with the live /proc
//! of the process. crash_collector runs twice per round: `--memory-source auto` (the default:
//! memory from /proc/PID/mem, the pipe released after the notes) and `--memory-source core`
//! (everything from the core stream, read to its end). minidump-writer runs in a child of
//! its own (this bench binary, re-run). Peak RSS comes from wait4; this process keeps its own
//! high-water mark small (a child inherits it until exec, and it is printed as the floor).
//! Each is run RUNS times; medians are printed with the ratio to minidump-writer (goal ≤ 1.0).
//!
//!     cargo bench -p crash_collector --bench convert_64mib

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const HOG_MIB: u32 = 64;
const THREADS: u32 = 4;
const RUNS: usize = 5;
/// Set in the child that runs minidump-writer: `PID OUTPUT`.
const WRITER_ENV: &str = "CRASHD_BENCH_MINIDUMP_WRITER";
/// Set in the child that writes the core: `PID OUTPUT`.
const GCORE_ENV: &str = "CRASHD_BENCH_GCORE";
/// Set in a child that only starts and exits (the bench binary's own baseline RSS).
const IDLE_ENV: &str = "CRASHD_BENCH_IDLE";

struct Sample {
    wall: Duration,
    max_rss_kib: i64,
    status: i32,
}

/// Reaps `child` with wait4 (std's wait has no rusage) and returns its status and peak RSS.
fn wait_rusage(child: Child, started: Instant) -> Sample {
    let pid = child.id();
    let mut status = 0;
    // SAFETY: rusage is plain old data; all-zero is a valid value for wait4 to overwrite.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 writes only into `status` and `usage`, both live locals; `pid` is our
    // own unreaped child.
    let rc = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut usage) };
    assert_eq!(
        rc,
        pid as libc::pid_t,
        "wait4: {}",
        std::io::Error::last_os_error()
    );
    Sample {
        wall: started.elapsed(),
        max_rss_kib: usage.ru_maxrss,
        status,
    }
}

fn run_collector(core: &Path, pid: u32, out: &Path, source: &str) -> Sample {
    // The kernel's pipe is there when the helper starts: the clock starts after cat's.
    let mut cat = Command::new("cat")
        .arg(core)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("cat");
    let pipe = cat.stdout.take().expect("cat's stdout");
    let started = Instant::now();
    let child = Command::new(common::collector())
        .args(["--output", out.to_str().unwrap_or("."), "--proc", "/proc"])
        .args(["--memory-source", source])
        .args(["--", &pid.to_string(), "11", "1700000000", "crashme"])
        .stdin(pipe)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("crash_collector");
    let sample = wait_rusage(child, started);
    // cat ends on EOF, or on EPIPE once the collector released the pipe.
    let _ = cat.wait();
    sample
}

/// The helper's job: gcore `pid` and write the core in the kernel's layout.
fn gcore_child(spec: &str) {
    let (pid, path) = spec.split_once(' ').expect("PID OUTPUT");
    let raw = format!("{path}.gdb");
    let status = Command::new("gdb")
        .args(["-batch", "-nx", "-p", pid, "-ex"])
        .arg(format!("gcore {raw}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("gdb");
    assert!(status.success(), "gcore failed");
    let core = common::kernel_layout(&std::fs::read(&raw).expect("core"));
    std::fs::write(path, core).expect("write the core");
    std::fs::remove_file(&raw).ok();
}

/// This process's own peak RSS in MiB (VmHWM).
fn own_peak_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

fn run_minidump_writer(pid: u32, out: &Path) -> Sample {
    let started = Instant::now();
    let child = Command::new(std::env::current_exe().expect("own path"))
        .env(WRITER_ENV, format!("{pid} {}", out.display()))
        .stdout(Stdio::null())
        .spawn()
        .expect("re-run for minidump-writer");
    wait_rusage(child, started)
}

/// The child's job: dump `pid` with minidump-writer into the file named.
fn minidump_writer_child(spec: &str) {
    let (pid, path) = spec.split_once(' ').expect("PID OUTPUT");
    let pid: i32 = pid.parse().expect("pid");
    let mut file = std::fs::File::create(path).expect("output");
    minidump_writer::minidump_writer::MinidumpWriterConfig::new(pid, pid)
        .write(&mut file)
        .expect("minidump-writer");
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    if let Ok(spec) = std::env::var(WRITER_ENV) {
        minidump_writer_child(&spec);
        return;
    }
    if std::env::var_os(IDLE_ENV).is_some() {
        return;
    }
    if let Ok(spec) = std::env::var(GCORE_ENV) {
        gcore_child(&spec);
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut process = Command::new(common::crashme())
        .args(["idle", &THREADS.to_string(), &HOG_MIB.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("crashme");
    let pid = process.id();
    let mut line = String::new();
    let _ = BufReader::new(process.stdout.take().expect("stdout")).read_line(&mut line);
    assert_eq!(line.trim(), "ready");

    let core = dir.path().join("core");
    let status = Command::new(std::env::current_exe().expect("own path"))
        .env(GCORE_ENV, format!("{pid} {}", core.display()))
        .status()
        .expect("re-run for gcore");
    assert!(status.success(), "writing the core failed");
    let core_len = std::fs::metadata(&core).map_or(0, |m| m.len());

    let ms = |v: &[Sample]| median(v.iter().map(|s| s.wall.as_secs_f64() * 1e3).collect());
    let rss = |v: &[Sample]| median(v.iter().map(|s| s.max_rss_kib as f64 / 1024.0).collect());
    // What each program costs just to start: crash_collector links the gRPC C-core.
    let baseline = |cmd: &mut Command| {
        let runs: Vec<Sample> = (0..RUNS)
            .map(|_| {
                let started = Instant::now();
                let child = cmd.stdout(Stdio::null()).spawn().expect("baseline run");
                wait_rusage(child, started)
            })
            .collect();
        (ms(&runs), rss(&runs))
    };
    let (our_base_ms, our_base) = baseline(Command::new(common::collector()).arg("--help"));
    let (their_base_ms, their_base) =
        baseline(Command::new(std::env::current_exe().expect("own path")).env(IDLE_ENV, "1"));

    let (mut auto, mut stream, mut theirs) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..RUNS {
        for (source, samples) in [("auto", &mut auto), ("core", &mut stream)] {
            let out = dir.path().join(format!("{source}-{i}"));
            let s = run_collector(&core, pid, &out, source);
            assert_eq!(
                s.status, 0,
                "crash_collector --memory-source {source} failed"
            );
            samples.push(s);
        }
        let file = dir.path().join(format!("theirs-{i}.dmp"));
        let s = run_minidump_writer(pid, &file);
        assert_eq!(s.status, 0, "minidump-writer failed");
        theirs.push(s);
    }
    let size_of = |path: &Path| std::fs::metadata(path).map_or(0, |m| m.len());
    let our_dump = |source: &str| {
        std::fs::read_dir(dir.path().join(format!("{source}-0")))
            .expect("output")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|e| e == "dmp"))
            .map_or(0, |p| size_of(&p))
    };
    let their_dump = size_of(&dir.path().join("theirs-0.dmp"));

    println!(
        "process: {HOG_MIB} MiB touched, {THREADS} threads; core {:.1} MiB (kernel layout, piped by cat)",
        core_len as f64 / (1 << 20) as f64
    );
    let line = |name: &str, v: &[Sample], dump: u64| {
        println!(
            "{name:<40} {:7.1} ms  peak RSS {:6.1} MiB  minidump {dump:7} bytes",
            ms(v),
            rss(v)
        );
    };
    line(
        "crash_collector (auto: /proc/PID/mem)",
        &auto,
        our_dump("auto"),
    );
    line(
        "crash_collector (core stream, drained)",
        &stream,
        our_dump("core"),
    );
    line(
        "minidump-writer (ptrace, live process)",
        &theirs,
        their_dump,
    );
    for (name, v) in [("auto", &auto), ("core stream", &stream)] {
        println!(
            "ratio crash_collector {name} / minidump-writer: time {:.2}, peak RSS {:.2} (goal ≤ 1.0)",
            ms(v) / ms(&theirs),
            rss(v) / rss(&theirs)
        );
    }
    println!(
        "startup alone: crash_collector --help {our_base_ms:.1} ms {our_base:.1} MiB, \
         the minidump-writer child {their_base_ms:.1} ms {their_base:.1} MiB"
    );
    for (name, v) in [("auto", &auto), ("core stream", &stream)] {
        let (ours_ms, theirs_ms) = (ms(v) - our_base_ms, ms(&theirs) - their_base_ms);
        let (ours_mib, theirs_mib) = (rss(v) - our_base, rss(&theirs) - their_base);
        println!(
            "above startup, crash_collector {name} vs minidump-writer: {ours_ms:.1} vs {theirs_ms:.1} ms \
             (ratio {:.2}), {ours_mib:.1} vs {theirs_mib:.1} MiB",
            ours_ms / theirs_ms.max(0.01)
        );
    }
    println!(
        "medians of {RUNS}; peak RSS includes this bench's own high-water mark of {:.1} MiB",
        own_peak_mib()
    );
    let _ = process.kill();
    let _ = process.wait();
}
