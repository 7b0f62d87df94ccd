//! Real crashes on the host, without touching the host's core_pattern: a C program crashes
//! under gdb, gdb's gcore writes the core while the process is held at the fault, and the
//! collector converts it (streamed through a pipe in the kernel's layout, or read from the
//! file) with the live /proc of the stopped process. The minidump is then checked with the
//! `minidump` crate and `minidump-stackwalk`.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use minidump::system_info::{Cpu, Os};
use minidump::{
    Minidump, MinidumpException, MinidumpLinuxMaps, MinidumpModuleList, MinidumpSystemInfo,
    MinidumpThreadList, Module,
};

/// Converts `crash`'s core through a pipe (kernel layout); returns the report.
fn convert_piped(
    crash: &GdbCrash,
    signal: i32,
    extra: &[&str],
) -> (PathBuf, BTreeMap<String, String>) {
    let out_dir = crash.dir.path().join("out");
    let pid = crash.pid.to_string();
    let sig = signal.to_string();
    let mut args = vec!["--output", out_dir.to_str().unwrap(), "--proc", "/proc"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", &pid, &sig, "1700000000", "crashme"]);
    let out = run_collector(&args, &crash.kernel_core());
    assert!(out.status.success(), "{}", show(&out));
    single_report(&out_dir)
}

struct Checked {
    crash_tid: u32,
    signal: u32,
    address: u64,
    rip: u64,
}

/// The checks every crash shares: system info, exception, all threads with contexts and
/// stack memory holding their stack pointer, the test binary first in the module list with
/// its build id, and the Linux streams.
fn check_minidump(dmp: &Path, crash: &GdbCrash, crash_in_binary: bool) -> Checked {
    let dump = Minidump::read_path(dmp).unwrap_or_else(|e| panic!("{}: {e}", dmp.display()));
    let sys: MinidumpSystemInfo = dump.get_stream().unwrap();
    assert_eq!((sys.os, sys.cpu), (Os::Linux, Cpu::X86_64));

    let exc: MinidumpException = dump.get_stream().unwrap();
    let crash_tid = exc.get_crashing_thread_id();

    let threads: MinidumpThreadList = dump.get_stream().unwrap();
    let mut tids: Vec<u32> = threads.threads.iter().map(|t| t.raw.thread_id).collect();
    tids.sort_unstable();
    assert_eq!(tids, crash.tids, "every thread of the process");
    let memory = dump.get_memory().unwrap();
    let mut rip = 0;
    for t in &threads.threads {
        let ctx = t.context(&sys, None).expect("a context per thread");
        let sp = ctx.get_stack_pointer();
        let stack = t
            .stack_memory(&memory)
            .unwrap_or_else(|| panic!("thread {} has no stack memory", t.raw.thread_id));
        assert!(
            stack.base_address() <= sp && sp < stack.base_address() + stack.size(),
            "thread {}: sp {sp:#x} outside its stack {:#x}+{:#x}",
            t.raw.thread_id,
            stack.base_address(),
            stack.size()
        );
        if t.raw.thread_id == crash_tid {
            rip = ctx.get_instruction_pointer();
        }
    }
    assert_ne!(
        rip, 0,
        "the crashing thread {crash_tid} is in the thread list"
    );

    let modules: MinidumpModuleList = dump.get_stream().unwrap();
    let main = modules.main_module().expect("modules");
    assert_eq!(
        Path::new(&*main.code_file()),
        crashme(),
        "the test binary is the main module"
    );
    assert_eq!(
        main.code_identifier().expect("a build id").as_str(),
        readelf_build_id(crashme())
    );
    if crash_in_binary {
        assert!(
            main.base_address() <= rip && rip < main.base_address() + main.size(),
            "the crash is inside the test binary"
        );
    }
    assert!(modules.iter().any(|m| m.code_file().contains("libc.so")));
    let maps: MinidumpLinuxMaps = dump.get_stream().unwrap();
    assert!(maps.iter().count() > 5);
    // LinuxCpuInfo, LinuxProcStatus, LinuxLsbRelease, LinuxCmdLine, LinuxEnviron, LinuxAuxv.
    for stream in [
        0x4767_0003u32,
        0x4767_0004,
        0x4767_0005,
        0x4767_0006,
        0x4767_0007,
        0x4767_0008,
    ] {
        assert!(
            dump.get_raw_stream(stream).is_ok_and(|s| !s.is_empty()),
            "stream {stream:#x}"
        );
    }
    Checked {
        crash_tid,
        signal: exc.raw.exception_record.exception_code,
        address: exc.get_crash_address(Os::Linux, Cpu::X86_64),
        rip,
    }
}

#[test]
fn segv_in_one_of_8_threads_names_that_thread_signal_and_fault_address() {
    let crash = GdbCrash::run("segv", 8);
    assert_eq!(crash.tids.len(), 8);
    let (dmp, meta) = convert_piped(&crash, 11, &[]);
    let got = check_minidump(&dmp, &crash, true);

    let crasher = crash.crash_tid.expect("the program wrote its crashing tid");
    assert_ne!(crasher, crash.pid, "a thread other than main crashed");
    assert_eq!(got.crash_tid, crasher);
    assert_eq!(got.signal, 11);
    assert_eq!(got.address, 0x10);
    assert_eq!(meta["signal"], "11");
    assert_eq!(meta["signal_name"], "SIGSEGV");
    assert_eq!(meta["crash_tid"], crasher.to_string());
    assert_eq!(meta["fault_addr"], "0x10");
    assert_eq!(meta["threads"], "8");
    assert_eq!(meta["pid"], crash.pid.to_string());
    assert_eq!(meta["exe"], "crashme");
    assert!(!meta.contains_key("partial"), "{meta:?}");
    assert!(
        meta["process_tree"].starts_with(&format!("{} crashme: ", crash.pid)),
        "{meta:?}"
    );
    assert!(
        meta["process_tree"].contains(" gdb: "),
        "gdb is the parent: {meta:?}"
    );
    crash.finish();
}

#[test]
fn abort_read_from_the_gcore_file_has_signal_6_and_no_fault_address() {
    let crash = GdbCrash::run("abort", 1);
    let out_dir = crash.dir.path().join("out");
    let pid = crash.pid.to_string();
    // The file as gcore wrote it (notes after memory): the collector seeks.
    let out = Command::new(collector())
        .args([
            "--output",
            out_dir.to_str().unwrap(),
            "--core",
            crash.core.to_str().unwrap(),
        ])
        .args(["--", pid.as_str(), "6", "1700000000", "crashme"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    let (dmp, meta) = single_report(&out_dir);
    // abort() raises the signal inside libc.
    let got = check_minidump(&dmp, &crash, false);
    assert_eq!(got.crash_tid, crash.pid);
    assert_eq!(got.signal, 6);
    assert_eq!(
        got.address, 0,
        "abort() is sent by the process: no fault address"
    );
    assert_eq!(meta["signal_name"], "SIGABRT");
    assert!(!meta.contains_key("fault_addr"));
    assert!(!meta.contains_key("partial"), "{meta:?}");
    crash.finish();
}

#[test]
fn segv_8_threads_memory_from_the_core_stream_alone() {
    let crash = GdbCrash::run("segv", 8);
    let (dmp, meta) = convert_piped(&crash, 11, &["--memory-source", "core"]);
    let got = check_minidump(&dmp, &crash, true);
    assert_eq!(Some(got.crash_tid), crash.crash_tid);
    assert_eq!(got.address, 0x10);
    assert_eq!(meta["memory_source"], "core", "{meta:?}");
    assert_eq!(meta["core_size"], crash.kernel_core().len().to_string());
    assert!(!meta.contains_key("partial"), "{meta:?}");
    crash.finish();
}

#[test]
fn fpe_fault_address_is_the_dividing_instruction() {
    let crash = GdbCrash::run("fpe", 1);
    let (dmp, meta) = convert_piped(&crash, 8, &[]);
    let got = check_minidump(&dmp, &crash, true);
    assert_eq!(got.signal, 8);
    assert_eq!(
        got.address, got.rip,
        "SIGFPE's si_addr is the faulting instruction"
    );
    assert_eq!(meta["signal_name"], "SIGFPE");
    crash.finish();
}

#[test]
fn minidump_stackwalk_prints_crashing_thread_signal_frame_and_modules() {
    let crash = GdbCrash::run("segv", 3);
    let (dmp, _) = convert_piped(&crash, 11, &[]);
    let out = Command::new("minidump-stackwalk")
        .arg(&dmp)
        .output()
        .expect("minidump-stackwalk is missing: scripts/test installs it (cargo install minidump-stackwalk)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("Crash reason:  SIGSEGV"), "{text}");
    assert!(text.contains("Crash address: 0x0000000000000010"), "{text}");
    let crashed = text
        .lines()
        .skip_while(|l| !l.contains("(crashed)"))
        .nth(1)
        .unwrap_or_else(|| panic!("no crashed thread in:\n{text}"));
    let name = crashme().file_name().unwrap().to_str().unwrap();
    assert!(
        crashed.trim_start().starts_with(&format!("0  {name} + 0x")),
        "frame 0: {crashed}\n{text}"
    );
    let modules = text
        .split("Loaded modules:")
        .nth(1)
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        modules.contains(&format!("{name}  ???  (main)")),
        "{modules}"
    );
    assert!(modules.contains("libc.so.6"), "{modules}");
    crash.finish();
}

#[test]
fn size_cap_trims_stacks_and_says_so() {
    // Threads waiting under 128 KiB frames: the dump is over the cap whatever else is on the
    // stacks (without them it was 58 KiB with a small environment, under the cap).
    let crash = GdbCrash::run_with("segv", 8, &[("CRASHME_DEEP", "1")]);
    let (dmp, meta) = convert_piped(&crash, 11, &["--max-size", "64K"]);
    let size = std::fs::metadata(&dmp).unwrap().len();
    assert!(size <= 64 << 10, "{size} bytes");
    assert_eq!(
        meta.get("size_capped").map(String::as_str),
        Some("yes"),
        "{size} bytes, {meta:?}"
    );
    assert!(meta["memory_trimmed_bytes"].parse::<u64>().unwrap() > 0);
    // Still a valid minidump with the crash in it.
    let dump = Minidump::read_path(&dmp).unwrap();
    let exc: MinidumpException = dump.get_stream().unwrap();
    assert_eq!(Some(exc.get_crashing_thread_id()), crash.crash_tid);
    crash.finish();
}

#[test]
fn truncated_core_gives_a_partial_minidump_and_a_clear_note() {
    let crash = GdbCrash::run("segv", 2);
    let core = crash.kernel_core();
    let pid = crash.pid.to_string();
    for (name, cut) in [
        ("in the memory", core.len() / 2),
        ("in the notes", 64 + 56 * 3 + 100),
    ] {
        let out_dir = crash.dir.path().join(format!("out-{}", cut));
        let args = [
            "--output",
            out_dir.to_str().unwrap(),
            "--memory-source",
            "core",
            "--",
            &pid,
            "11",
            "1700000000",
            "crashme",
        ];
        let out = run_collector(&args, &core[..cut]);
        assert!(out.status.success(), "{name}: {}", show(&out));
        let (dmp, meta) = single_report(&out_dir);
        assert_eq!(meta["partial"], "yes", "{name}: {meta:?}");
        assert!(
            meta["problems"].contains("core ends at byte"),
            "{name}: {meta:?}"
        );
        let dump = Minidump::read_path(&dmp).unwrap();
        assert!(dump.get_stream::<MinidumpModuleList>().is_ok(), "{name}");
    }
    crash.finish();
}

#[test]
fn garbage_on_stdin_still_gives_a_report_from_proc() {
    let crash = GdbCrash::run("segv", 1);
    let out_dir = crash.dir.path().join("out");
    let pid = crash.pid.to_string();
    let args = [
        "--output",
        out_dir.to_str().unwrap(),
        "--",
        &pid,
        "11",
        "1700000000",
        "crashme",
    ];
    let out = run_collector(
        &args,
        "this is not an ELF core, just text. ".repeat(10).as_bytes(),
    );
    assert!(out.status.success(), "{}", show(&out));
    let (dmp, meta) = single_report(&out_dir);
    assert_eq!(meta["partial"], "yes");
    assert!(meta["problems"].contains("not an ELF file"), "{meta:?}");
    assert_eq!(meta["signal"], "11", "falls back to core_pattern's %s");
    let dump = Minidump::read_path(&dmp).unwrap();
    let maps: MinidumpLinuxMaps = dump.get_stream().unwrap();
    assert!(maps.iter().count() > 5, "maps came from /proc");
    crash.finish();
}
