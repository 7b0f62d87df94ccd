//! Lease allocation latency with 32 allocator PROCESSES on one runtime dir, against a single
//! allocator as the baseline in the same run. Prints p50/p99 and the ratios; asserts nothing.
//!
//!     cargo bench -p vm_launcher --bench pool_alloc
//!
//! - burst: all processes allocate one lease at the same moment and hold it (as launchers
//!   starting together do); repeated for `ROUNDS` rounds, releasing in between.
//! - saturated: all processes allocate and release in a tight loop at once.
//!
//! Each sample is wall time and the allocating thread's CPU time: with more processes than
//! CPUs, wall time also holds time spent preempted, CPU time does not. Both are measured for a
//! runtime dir on the temp dir's file system and on /dev/shm (tmpfs, as /run on a normal
//! host). The children are this binary again, run with `VM_POOL_BENCH_CHILD=<dir>`, driven by
//! lines on stdin (`alloc`, `release`, `loop N`). `VM_POOL_BENCH_PROCESSES` overrides 32.

use std::error::Error;
use std::io::{BufRead, BufReader, Lines, Write};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Instant;

use vm_launcher::pool::{Lease, Pool, PoolConfig};

const CHILD_ENV: &str = "VM_POOL_BENCH_CHILD";
const PROCESSES_ENV: &str = "VM_POOL_BENCH_PROCESSES";
const PROCESSES: usize = 32;
const ROUNDS: usize = 50;
const LOOP_EACH: usize = 100;
const BASELINE: usize = 2000;

type Result<T> = std::result::Result<T, Box<dyn Error>>;

/// One allocation: (wall ns, thread CPU ns).
type Sample = (u64, u64);

fn main() -> Result<()> {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        return child(Path::new(&dir));
    }
    let processes = std::env::var(PROCESSES_ENV)
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(PROCESSES);
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("pool_alloc: Pool::allocate latency, {processes} allocator processes on {cpus} CPUs");
    let temp = std::env::temp_dir();
    scenario(&temp, processes)?;
    if Path::new("/dev/shm").is_dir() {
        scenario(Path::new("/dev/shm"), processes)?;
    }
    Ok(())
}

fn scenario(parent: &Path, processes: usize) -> Result<()> {
    let dir = tempfile::tempdir_in(parent)?;
    let pool = Pool::open(PoolConfig::new(dir.path()))?;
    let mut alone = Vec::new();
    for _ in 0..BASELINE {
        let (sample, lease) = timed_allocate(&pool)?;
        alone.push(sample);
        drop(lease);
    }
    let mut children = Children::spawn(dir.path(), processes)?;
    let mut burst = Vec::new();
    for _ in 0..ROUNDS {
        burst.extend(children.ask("alloc")?);
        children.ask("release")?;
    }
    let mut saturated = children.ask(&format!("loop {LOOP_EACH}"))?;
    children.finish()?;

    println!("runtime dir under {}:", parent.display());
    println!(
        "  {:<48} {:>10} {:>10} {:>10} {:>10}",
        "", "wall p50", "wall p99", "cpu p50", "cpu p99"
    );
    let base = report("1 allocator alone", &mut alone);
    let rows = [
        (
            format!("{processes} at once, one lease each, {ROUNDS} rounds"),
            &mut burst,
        ),
        (
            format!("{processes} in a tight loop ({LOOP_EACH} each)"),
            &mut saturated,
        ),
    ];
    for (label, samples) in rows {
        let (w50, w99, c50, c99) = report(&label, samples);
        println!(
            "  {:<48} {:>9.1}x {:>9.1}x {:>9.1}x {:>9.1}x",
            "  ratio to 1 allocator",
            w50 / base.0,
            w99 / base.1,
            c50 / base.2,
            c99 / base.3
        );
    }
    Ok(())
}

/// Prints one row in µs; returns (wall p50, wall p99, cpu p50, cpu p99).
fn report(label: &str, samples: &mut [Sample]) -> (f64, f64, f64, f64) {
    let mut wall: Vec<u64> = samples.iter().map(|s| s.0).collect();
    let mut cpu: Vec<u64> = samples.iter().map(|s| s.1).collect();
    let (w50, w99) = percentiles(&mut wall);
    let (c50, c99) = percentiles(&mut cpu);
    let label = format!("{label} (n={})", samples.len());
    println!("  {label:<48} {w50:>7.1} µs {w99:>7.1} µs {c50:>7.1} µs {c99:>7.1} µs");
    (w50, w99, c50, c99)
}

fn percentiles(ns: &mut [u64]) -> (f64, f64) {
    ns.sort_unstable();
    let at = |p: usize| ns[(ns.len() * p / 100).min(ns.len() - 1)] as f64 / 1000.0;
    (at(50), at(99))
}

/// The allocator processes, each answering every request with one line.
struct Children {
    children: Vec<Child>,
    answers: Vec<Lines<BufReader<ChildStdout>>>,
}

impl Children {
    fn spawn(dir: &Path, count: usize) -> Result<Children> {
        let exe = std::env::current_exe()?;
        let mut children = Vec::new();
        let mut answers = Vec::new();
        for _ in 0..count {
            let mut child = Command::new(&exe)
                .env(CHILD_ENV, dir)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()?;
            let stdout = child.stdout.take().ok_or("child has no stdout")?;
            answers.push(BufReader::new(stdout).lines());
            children.push(child);
        }
        Ok(Children { children, answers })
    }

    /// Sends `request` to all first (so they work at once), then gathers their samples.
    fn ask(&mut self, request: &str) -> Result<Vec<Sample>> {
        for child in &mut self.children {
            writeln!(
                child.stdin.as_mut().ok_or("child has no stdin")?,
                "{request}"
            )?;
        }
        let mut samples = Vec::new();
        for answer in &mut self.answers {
            let line = answer.next().ok_or("child exited")??;
            let mut numbers = line.split_whitespace().map(str::parse::<u64>);
            while let (Some(wall), Some(cpu)) = (numbers.next(), numbers.next()) {
                samples.push((wall?, cpu?));
            }
        }
        Ok(samples)
    }

    fn finish(self) -> Result<()> {
        for mut child in self.children {
            drop(child.stdin.take());
            child.wait()?;
        }
        Ok(())
    }
}

fn child(dir: &Path) -> Result<()> {
    let pool = Pool::open(PoolConfig::new(dir))?;
    let mut held = None;
    for request in std::io::stdin().lines() {
        let request = request?;
        let mut answer = String::new();
        if request == "alloc" {
            let ((wall, cpu), lease) = timed_allocate(&pool)?;
            answer = format!("{wall} {cpu}");
            held = Some(lease);
        } else if request == "release" {
            held = None;
        } else if let Some(rounds) = request.strip_prefix("loop ") {
            for _ in 0..rounds.parse::<usize>()? {
                let ((wall, cpu), lease) = timed_allocate(&pool)?;
                answer.push_str(&format!("{wall} {cpu} "));
                drop(lease);
            }
        }
        println!("{answer}");
    }
    drop(held);
    Ok(())
}

fn timed_allocate(pool: &Pool) -> Result<(Sample, Lease)> {
    let (start, cpu_start) = (Instant::now(), thread_cpu_ns());
    let lease = pool.allocate(None)?;
    let cpu = thread_cpu_ns().saturating_sub(cpu_start);
    Ok(((u64::try_from(start.elapsed().as_nanos())?, cpu), lease))
}

/// CPU time this thread has used, in ns.
fn thread_cpu_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec for the call; the clock id is a constant.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    (now.tv_sec as u64) * 1_000_000_000 + now.tv_nsec as u64
}
