//! Shared by the crash_collector integration tests and the benchmark: the crashing C
//! program, a crash caught under gdb (stopped at the fault, core written by `gcore`, /proc
//! still alive, the host's core_pattern untouched), the kernel's core layout, and running
//! the collector binary.
#![allow(dead_code)] // each test file uses a different part

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const GDB_TIMEOUT: Duration = Duration::from_secs(60);

pub fn collector() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_crash_collector"))
}

fn scratch() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("crashd")
}

/// tests/programs/crashme.c compiled with gcc (once per test binary), with a build id.
pub fn crashme() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/programs/crashme.c");
        let dir = scratch().join(std::process::id().to_string());
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("crashme");
        let status = Command::new("cc")
            .args(["-g", "-O1", "-pthread", "-Wl,--build-id", "-o"])
            .arg(&out)
            .arg(&src)
            .status()
            .expect("cc (gcc) is needed to build the crashing test program");
        assert!(status.success(), "cc failed on {}", src.display());
        out
    })
}

/// The build id `readelf -n` reports for `path`, in lowercase hex.
pub fn readelf_build_id(path: &Path) -> String {
    let out = Command::new("readelf")
        .arg("-n")
        .arg(path)
        .output()
        .expect("readelf");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: "))
        .unwrap_or_else(|| panic!("no build id in {}", path.display()))
        .trim()
        .to_string()
}

/// A crashed process held by gdb at its fault, with its core written by gcore.
pub struct GdbCrash {
    pub dir: tempfile::TempDir,
    pub pid: u32,
    /// The crashing thread, as the program itself reported it (gettid).
    pub crash_tid: Option<u32>,
    /// Thread ids from /proc/PID/task while stopped.
    pub tids: Vec<u32>,
    pub core: PathBuf,
    gdb: Child,
}

fn wait_for(path: &Path, gdb: &mut Child) {
    let deadline = Instant::now() + GDB_TIMEOUT;
    while !path.exists() {
        if let Ok(Some(status)) = gdb.try_wait() {
            panic!("gdb exited ({status}) before {} appeared", path.display());
        }
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl GdbCrash {
    /// Runs `crashme HOW THREADS` under gdb; returns once gdb stopped it at the signal and
    /// wrote the core. gdb then waits until [`GdbCrash::finish`] (or drop) lets it go.
    pub fn run(how: &str, threads: u32) -> GdbCrash {
        GdbCrash::run_with(how, threads, &[])
    }

    /// [`GdbCrash::run`] with extra environment for the program.
    pub fn run_with(how: &str, threads: u32, env: &[(&str, &str)]) -> GdbCrash {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        let core = dir.path().join("core");
        let gdb = Command::new("gdb")
            .args(["-batch", "-nx", "-ex", "set pagination off", "-ex", "run"])
            .args(["-ex", &format!("gcore {}", core.display())])
            .args([
                "-ex",
                &format!("python open('{d}/pid.tmp','w').write(str(gdb.selected_inferior().pid))"),
            ])
            .args(["-ex", &format!("shell mv {d}/pid.tmp {d}/pid")])
            .args([
                "-ex",
                &format!("shell while [ ! -e {d}/go ]; do sleep 0.02; done"),
            ])
            .args(["-ex", "kill", "--args"])
            .arg(crashme())
            .args([how, &threads.to_string()])
            .env("CRASHME_TID_FILE", dir.path().join("tid"))
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("gdb is needed to catch the test program's crash");
        let mut crash = GdbCrash {
            pid: 0,
            crash_tid: None,
            tids: Vec::new(),
            core,
            gdb,
            dir,
        };
        wait_for(&crash.dir.path().join("pid"), &mut crash.gdb);
        crash.pid = std::fs::read_to_string(crash.dir.path().join("pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        crash.crash_tid = std::fs::read_to_string(crash.dir.path().join("tid"))
            .ok()
            .and_then(|t| t.trim().parse().ok());
        let mut tids: Vec<u32> = std::fs::read_dir(format!("/proc/{}/task", crash.pid))
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        tids.sort_unstable();
        crash.tids = tids;
        crash
    }

    /// The core rewritten in the kernel's layout (notes before memory), as a pipe delivers it.
    pub fn kernel_core(&self) -> Vec<u8> {
        kernel_layout(&std::fs::read(&self.core).unwrap())
    }

    /// Lets gdb kill the process and exit.
    pub fn finish(mut self) {
        self.release();
    }

    fn release(&mut self) {
        let _ = std::fs::write(self.dir.path().join("go"), b"");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.gdb.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.gdb.kill();
        let _ = self.gdb.wait();
    }
}

impl Drop for GdbCrash {
    fn drop(&mut self) {
        self.release();
    }
}

/// Rewrites an ELF core so the notes come right after the program headers and the memory
/// follows at the next page, the order fs/binfmt_elf.c writes (gdb's gcore puts the notes
/// last, which a pipe reader could not go back for).
pub fn kernel_layout(core: &[u8]) -> Vec<u8> {
    let u16_at = |o: usize| u16::from_le_bytes(core[o..o + 2].try_into().unwrap());
    let u32_at = |o: usize| u32::from_le_bytes(core[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_le_bytes(core[o..o + 8].try_into().unwrap());
    let phoff = u64_at(32) as usize;
    let phnum = u16_at(56) as usize;
    let table_end = phoff + phnum * 56;
    let mut out = core[..table_end].to_vec();
    let mut offset = table_end as u64;
    // Notes first, then loads, each keeping its size; fix the offsets in the copied table.
    let mut order: Vec<usize> = (0..phnum).collect();
    order.sort_by_key(|&i| (u32_at(phoff + i * 56) != 4, u64_at(phoff + i * 56 + 8)));
    let mut body = Vec::new();
    for i in order {
        let ph = phoff + i * 56;
        let (p_type, p_offset, p_filesz) = (
            u32_at(ph),
            u64_at(ph + 8) as usize,
            u64_at(ph + 32) as usize,
        );
        if p_type == 1 && !offset.is_multiple_of(4096) {
            let pad = 4096 - offset % 4096;
            body.resize(body.len() + pad as usize, 0);
            offset += pad;
        }
        out[ph + 8..ph + 16].copy_from_slice(&offset.to_le_bytes());
        body.extend_from_slice(&core[p_offset..p_offset + p_filesz]);
        offset += p_filesz as u64;
    }
    out.extend(body);
    out
}

/// Runs the collector with `args`, the core bytes on a pipe as stdin.
pub fn run_collector(args: &[&str], core: &[u8]) -> Output {
    let mut child = Command::new(collector())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let core = core.to_vec();
    let writer = std::thread::spawn(move || {
        // The collector may stop reading early on a broken core: a write error is fine.
        let _ = stdin.write_all(&core);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

pub fn show(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The one report in `dir`: the `.dmp` path and the `.meta` keys.
pub fn single_report(dir: &Path) -> (PathBuf, BTreeMap<String, String>) {
    let metas: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "meta"))
        .collect();
    assert_eq!(metas.len(), 1, "reports in {}: {metas:?}", dir.display());
    let text = std::fs::read_to_string(&metas[0]).unwrap();
    assert!(text.ends_with("done=1\n"), "{text}");
    let meta = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    (metas[0].with_extension("dmp"), meta)
}
