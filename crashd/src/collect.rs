//! Core + /proc snapshot → minidump + metadata. The order matters for a streamed core: the
//! notes come first and decide which memory to keep (within the size budget), then one pass
//! over the memory captures it, then the rest of the core is drained. Any problem on the way
//! makes the report partial, never absent: whatever was readable goes into the minidump.

use std::collections::BTreeMap;

use crate::core_reader::{CoreInput, CoreLayout, CoreReader};
use crate::memory::MemoryImage;
use crate::minidump::{self, CpuFacts, DumpInput, Exception, TextStreams};
use crate::modules::{self, Module, AT_SYSINFO_EHDR};
use crate::plan;
use crate::proc_info::ProcSnapshot;
use crate::proc_mem;
use crate::report::{keys, CrashReportData};

/// Default cap on the minidump's size.
pub const DEFAULT_MAX_SIZE: u64 = 8 << 20;
/// Never plan below this, whatever the cap: a dump needs its contexts and a bit of stack.
const MIN_MEMORY_BUDGET: u64 = 16 << 10;
/// `AT_ENTRY`: the executable's entry point.
const AT_ENTRY: u64 = 9;
/// The vDSO's size when /proc/PID/maps cannot tell (two pages on x86-64).
const VDSO_DEFAULT_SIZE: u64 = 0x2000;

/// What core_pattern passes: `%P %s %t %e`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CrashArgs {
    pub pid: u32,
    pub signal: i32,
    pub time: i64,
    pub exe: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub max_size: u64,
    /// Read mapped files for build ids the core's memory lacks (off for fuzzing).
    pub read_module_files: bool,
    pub memory_source: MemorySource,
}

/// Where the memory in the minidump comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemorySource {
    /// /proc/PID/mem (the process is alive while the kernel dumps it), then the core stream
    /// for what /proc lacks. The core is read only as far as needed: the kernel's writes
    /// then wait on the full pipe and fail once the collector exits, which ends the dump
    /// without producing the rest.
    Auto,
    /// Only the core stream, read to its end.
    Core,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            max_size: DEFAULT_MAX_SIZE,
            read_module_files: true,
            memory_source: MemorySource::Auto,
        }
    }
}

/// Signal names for the metadata.
pub fn signal_name(signo: i32) -> &'static str {
    match signo {
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGFPE => "SIGFPE",
        libc::SIGBUS => "SIGBUS",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGSYS => "SIGSYS",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        _ => "unknown",
    }
}

/// /proc/PID/maps rebuilt from the core's segments and NT_FILE, for when /proc is gone.
fn maps_from_core(layout: &CoreLayout) -> Vec<u8> {
    let mut text = String::new();
    for load in &layout.loads {
        if text.len() as u64 >= crate::proc_info::MAX_MAPS_BYTES {
            break;
        }
        let end = load.p_vaddr.saturating_add(load.p_memsz);
        let file = layout.notes.files.iter().find(|f| f.start == load.p_vaddr);
        let (offset, path) = file.map_or((0, ""), |f| (f.offset, f.path.as_str()));
        text.push_str(&format!(
            "{:08x}-{:08x} {} {offset:08x} 00:00 0 {path}\n",
            load.p_vaddr,
            end,
            load.perms()
        ));
    }
    text.into_bytes()
}

/// An os-release for systems without one (the guest's initramfs has none): says only what
/// is known, the kernel.
fn os_release_fallback(kernel_release: &str) -> Vec<u8> {
    let release = kernel_release.replace('"', "");
    format!(
        "NAME=\"Linux\"\nID=linux\nVERSION_ID=\"{release}\"\nPRETTY_NAME=\"Linux {release} (no os-release file)\"\n"
    )
    .into_bytes()
}

/// A minimal /proc/PID/status from NT_PRPSINFO, for when /proc is gone.
fn status_from_core(layout: &CoreLayout) -> Vec<u8> {
    layout.notes.process.as_ref().map_or_else(Vec::new, |p| {
        format!(
            "Name:\t{}\nPid:\t{}\nPPid:\t{}\nUid:\t{}\nGid:\t{}\n",
            p.fname, p.pid, p.ppid, p.uid, p.gid
        )
        .into_bytes()
    })
}

fn text_streams(layout: &CoreLayout, proc: &ProcSnapshot) -> TextStreams {
    let or = |v: &Option<Vec<u8>>, f: &dyn Fn() -> Vec<u8>| {
        v.clone().filter(|b| !b.is_empty()).unwrap_or_else(f)
    };
    TextStreams {
        cpuinfo: proc.cpuinfo.clone().unwrap_or_default(),
        status: or(&proc.status, &|| status_from_core(layout)),
        lsb_release: or(&proc.os_release, &|| {
            os_release_fallback(&proc.kernel.release)
        }),
        cmdline: or(&proc.cmdline, &|| {
            layout
                .notes
                .process
                .as_ref()
                .map_or_else(Vec::new, |p| p.psargs.replace(' ', "\0").into_bytes())
        }),
        environ: proc.environ.clone().unwrap_or_default(),
        auxv: if layout.notes.auxv_raw.is_empty() {
            proc.auxv.clone().unwrap_or_default()
        } else {
            layout.notes.auxv_raw.clone()
        },
        maps: or(&proc.maps, &|| maps_from_core(layout)),
    }
}

/// What was read from the core and /proc, ready to be rendered at some size cap.
pub struct Collected {
    layout: CoreLayout,
    image: MemoryImage,
    modules: Vec<Module>,
    module_bases: Vec<u64>,
    text: TextStreams,
    proc: ProcSnapshot,
    args: CrashArgs,
    problems: Vec<String>,
    /// Bytes of the core read, and whether that was all of it.
    core_read: (u64, bool),
    memory_from: &'static str,
}

/// What fits under a size cap besides memory: which text streams, how many threads (the
/// crashing one first) and modules (the main one first), and the memory budget left.
struct Fit {
    text: TextStreams,
    threads: usize,
    modules: usize,
    budget: u64,
    dropped_streams: Vec<&'static str>,
}

fn fit(threads: usize, modules: &[Module], text: &TextStreams, max_size: u64) -> Fit {
    let mut f = Fit {
        text: text.clone(),
        threads,
        modules: modules.len(),
        budget: 0,
        dropped_streams: Vec::new(),
    };
    let size =
        |f: &Fit| minidump::overhead(f.threads, &modules[..f.modules], f.threads + 2, &f.text);
    let over = |f: &Fit| size(f) + MIN_MEMORY_BUDGET > max_size;
    for name in [
        "environ",
        "maps",
        "cpuinfo",
        "status",
        "auxv",
        "cmdline",
        "lsb_release",
    ] {
        if !over(&f) {
            break;
        }
        let stream = match name {
            "environ" => &mut f.text.environ,
            "maps" => &mut f.text.maps,
            "cpuinfo" => &mut f.text.cpuinfo,
            "status" => &mut f.text.status,
            "auxv" => &mut f.text.auxv,
            "cmdline" => &mut f.text.cmdline,
            _ => &mut f.text.lsb_release,
        };
        if !stream.is_empty() {
            stream.clear();
            f.dropped_streams.push(name);
        }
    }
    while over(&f) && f.threads > 1 {
        f.threads = f.threads.div_ceil(2);
    }
    while over(&f) && f.modules > 1 {
        f.modules = f.modules.div_ceil(2);
    }
    f.budget = max_size.saturating_sub(size(&f));
    f
}

/// Reads the core (streamed once, then drained) with /proc's help. Never fails: a core that
/// cannot be read at all still yields a report from /proc, marked partial.
pub fn capture<R: CoreInput>(
    core: R,
    proc: ProcSnapshot,
    args: &CrashArgs,
    opts: &Options,
) -> Collected {
    let mut reader = CoreReader::new(core);
    let mut problems = Vec::new();
    let layout = match reader.read_layout() {
        Ok(layout) => layout,
        Err(e) => {
            problems.push(e.to_string());
            CoreLayout::default()
        }
    };
    let notes = &layout.notes;
    if notes.threads.is_empty() {
        problems.push("the core holds no thread (no NT_PRSTATUS)".into());
    }
    let maps = proc.maps_entries();
    let candidates = modules::candidates(&notes.files, &maps);
    let vdso_base = notes.auxv_value(AT_SYSINFO_EHDR);
    let mut module_bases: Vec<u64> = candidates.iter().map(|c| c.base).collect();
    module_bases.extend(vdso_base);

    let crash_addr = notes.siginfo.and_then(|s| s.fault_addr());
    let text = text_streams(&layout, &proc);
    // Module records are estimated from the candidates (an upper bound).
    let guessed: Vec<Module> = candidates
        .iter()
        .map(|c| Module {
            base: c.base,
            size: 0,
            path: c.path.clone(),
            build_id: None,
        })
        .collect();
    let f = fit(notes.threads.len(), &guessed, &text, opts.max_size);
    let plan = plan::plan(
        &layout,
        &notes.threads[..f.threads],
        crash_addr,
        &module_bases,
        f.budget,
    );

    let wanted = plan.wanted();
    let (image, memory_from) = match opts.memory_source {
        MemorySource::Core => {
            let image = reader.capture(&layout, wanted);
            reader.drain();
            (image, "core")
        }
        MemorySource::Auto => {
            let (from_proc, missing) = proc_mem::read(proc.mem.as_deref(), &wanted);
            let from_core = reader.capture(&layout, missing);
            let source = match (from_proc.total_bytes() > 0, from_core.total_bytes() > 0) {
                (true, true) => "proc+core",
                (true, false) => "proc",
                (false, _) => "core",
            };
            (from_proc.merged(from_core), source)
        }
    };
    let core_read = (reader.position(), reader.at_end());
    problems.append(&mut reader.problems);
    problems.extend(notes.problems.iter().cloned());

    let mut found = modules::identify(
        &candidates,
        &image,
        proc.map_files.as_ref(),
        opts.read_module_files,
    );
    let vdso_size = maps
        .iter()
        .find(|m| Some(m.start) == vdso_base)
        .map_or(VDSO_DEFAULT_SIZE, |m| m.end.saturating_sub(m.start));
    found.extend(modules::vdso(&image, vdso_base, vdso_size));
    let modules = modules::order(found, notes.auxv_value(AT_ENTRY), proc.exe.as_deref());
    Collected {
        layout,
        image,
        modules,
        module_bases,
        text,
        proc,
        args: args.clone(),
        problems,
        core_read,
        memory_from,
    }
}

/// [`capture`] then [`Collected::render`] at `opts.max_size`.
pub fn convert<R: CoreInput>(
    core: R,
    proc: ProcSnapshot,
    args: &CrashArgs,
    opts: &Options,
) -> CrashReportData {
    capture(core, proc, args, opts).render(opts.max_size)
}

impl Collected {
    /// Writes the minidump and its metadata, trimmed to `max_size` bytes.
    pub fn render(&self, max_size: u64) -> CrashReportData {
        let notes = &self.layout.notes;
        let siginfo = notes.siginfo;
        let crash_addr = siginfo.and_then(|s| s.fault_addr());
        let mut problems = self.problems.clone();
        let f = fit(notes.threads.len(), &self.modules, &self.text, max_size);
        let threads = &notes.threads[..f.threads];
        let modules = &self.modules[..f.modules];
        let plan = plan::plan(
            &self.layout,
            threads,
            crash_addr,
            &self.module_bases,
            f.budget,
        );

        let crash_thread = notes.crashing_thread();
        let signal = siginfo
            .map(|s| s.signo)
            .or(crash_thread.map(|t| i32::from(t.cursig)))
            .filter(|&s| s > 0)
            .unwrap_or(self.args.signal);
        let exception = crash_thread.map(|t| Exception {
            tid: t.tid,
            signo: signal as u32,
            si_code: siginfo.map_or(0, |s| s.code as u32),
            address: crash_addr.unwrap_or(0),
        });
        let k = &self.proc.kernel;
        let os_description = [
            k.ostype.as_str(),
            k.release.as_str(),
            k.version.as_str(),
            "x86_64",
        ]
        .iter()
        .filter(|s| !s.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(" ");
        let memory = plan.output();
        let input = DumpInput {
            threads,
            stacks: &plan.stacks,
            memory: &memory,
            image: &self.image,
            modules,
            exception,
            cpu: CpuFacts::from_cpuinfo(&self.text.cpuinfo),
            kernel_release: k.release.clone(),
            os_description,
            text: f.text,
            time: self.args.time.clamp(0, i64::from(u32::MAX)) as u32,
        };
        let minidump = match minidump::write(&input) {
            Ok(bytes) => bytes,
            Err(e) => {
                problems.push(e.to_string());
                Vec::new()
            }
        };

        let mut meta = BTreeMap::new();
        let mut set = |k: &str, v: String| {
            meta.insert(k.to_string(), v);
        };
        let exe = if self.args.exe.is_empty() {
            notes
                .process
                .as_ref()
                .map(|p| p.fname.clone())
                .unwrap_or_default()
        } else {
            self.args.exe.clone()
        };
        set(keys::EXE, exe);
        set(keys::PID, self.args.pid.to_string());
        set(keys::SIGNAL, signal.to_string());
        set(keys::SIGNAL_NAME, signal_name(signal).to_string());
        set(keys::TIME, self.args.time.to_string());
        if let Some(t) = crash_thread {
            set(keys::CRASH_TID, t.tid.to_string());
        }
        if let Some(addr) = crash_addr {
            set(keys::FAULT_ADDR, format!("{addr:#x}"));
        }
        set(keys::THREADS, notes.threads.len().to_string());
        set(keys::MODULES, self.modules.len().to_string());
        set(keys::MINIDUMP_SIZE, minidump.len().to_string());
        set(keys::CORE_BYTES_READ, self.core_read.0.to_string());
        if self.core_read.1 {
            set(keys::CORE_SIZE, self.core_read.0.to_string());
        }
        set(keys::MEMORY_SOURCE, self.memory_from.to_string());
        set(
            keys::COLLECTOR,
            concat!("crash_collector ", env!("CARGO_PKG_VERSION")).to_string(),
        );
        let threads_dropped = notes.threads.len() - threads.len();
        let modules_dropped = self.modules.len() - modules.len();
        if plan.trimmed > 0
            || !f.dropped_streams.is_empty()
            || threads_dropped + modules_dropped > 0
        {
            set(keys::SIZE_CAPPED, "yes".into());
            set(keys::MEMORY_TRIMMED, plan.trimmed.to_string());
            if !f.dropped_streams.is_empty() {
                set(keys::SIZE_CAPPED_STREAMS, f.dropped_streams.join(","));
            }
            if threads_dropped > 0 {
                set(keys::THREADS_DROPPED, threads_dropped.to_string());
            }
            if modules_dropped > 0 {
                set(keys::MODULES_DROPPED, modules_dropped.to_string());
            }
        }
        if !problems.is_empty() {
            set(keys::PARTIAL, "yes".into());
            set(keys::PROBLEMS, problems.join("; "));
        }
        let mut proc_problems = self.proc.problems.clone();
        proc_problems.extend(
            self.proc
                .truncated
                .iter()
                .map(|t| format!("{t} cut at its size cap")),
        );
        if !proc_problems.is_empty() {
            set(keys::PROC_PROBLEMS, proc_problems.join("; "));
        }
        CrashReportData {
            metadata: meta,
            minidump,
            process_tree: self.proc.process_tree.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core_reader::test_utils::{synthetic_core, RIP, RSP};
    use crate::elf::test_utils::{ehdr, note, phdr};
    use crate::elf::{ET_CORE, PT_NOTE};
    use crate::notes::test_utils::prstatus;
    use crate::notes::NT_PRSTATUS;

    fn args() -> CrashArgs {
        CrashArgs {
            pid: 42,
            signal: 6,
            time: 1_700_000_000,
            exe: "fake".into(),
        }
    }

    /// A core of `n` threads (notes only, no memory).
    fn threads_core(n: u32) -> Vec<u8> {
        let mut notes = Vec::new();
        for i in 0..n {
            notes.extend(note(
                b"CORE",
                NT_PRSTATUS,
                &prstatus(1000 + i, 11, RIP, RSP),
            ));
        }
        let mut core = ehdr(ET_CORE, 1);
        core.extend(phdr(PT_NOTE, 0, 64 + 56, 0, notes.len() as u64, 0));
        core.extend(notes);
        core
    }

    #[test]
    fn convert_synthetic_core_gives_minidump_and_metadata() {
        let core = synthetic_core();
        let report = convert(
            &core[..],
            ProcSnapshot::default(),
            &args(),
            &Options::default(),
        );
        assert_eq!(&report.minidump[..4], b"MDMP");
        let m = &report.metadata;
        assert_eq!(m[keys::SIGNAL], "11", "the core's siginfo wins over %s");
        assert_eq!(m[keys::CRASH_TID], "42");
        assert_eq!(m[keys::THREADS], "1");
        // No /proc here: the memory came from the core, which was then read no further.
        assert_eq!(m[keys::MEMORY_SOURCE], "core");
        assert!(!m.contains_key(keys::CORE_SIZE));
        let read: usize = m[keys::CORE_BYTES_READ].parse().unwrap();
        assert!(read <= core.len(), "{read}");
        let opts = Options {
            memory_source: MemorySource::Core,
            ..Options::default()
        };
        let drained = convert(&core[..], ProcSnapshot::default(), &args(), &opts);
        assert_eq!(drained.metadata[keys::CORE_SIZE], core.len().to_string());
        // 0x10 is not mapped in the core: a fault address, but no memory window for it.
        assert_eq!(m[keys::FAULT_ADDR], "0x10");
        assert!(!m.contains_key(keys::PARTIAL), "{m:?}");
        assert!(!m.contains_key(keys::SIZE_CAPPED), "{m:?}");
    }

    #[test]
    fn render_many_threads_small_cap_drops_threads_and_stays_under() {
        let core = threads_core(500);
        let collected = capture(
            &core[..],
            ProcSnapshot::default(),
            &args(),
            &Options::default(),
        );
        let full = collected.render(DEFAULT_MAX_SIZE);
        assert!(!full.metadata.contains_key(keys::THREADS_DROPPED));
        let small = collected.render(64 << 10);
        assert!(small.minidump.len() <= 64 << 10, "{}", small.minidump.len());
        assert_eq!(small.metadata[keys::SIZE_CAPPED], "yes");
        let dropped: usize = small.metadata[keys::THREADS_DROPPED].parse().unwrap();
        assert!(dropped > 400 && dropped < 500, "{dropped}");
        assert_eq!(small.metadata[keys::THREADS], "500");
    }

    #[test]
    fn convert_empty_input_is_partial_with_signal_from_args() {
        let report = convert(
            &[][..],
            ProcSnapshot::default(),
            &args(),
            &Options::default(),
        );
        assert_eq!(&report.minidump[..4], b"MDMP");
        assert_eq!(report.metadata[keys::PARTIAL], "yes");
        assert_eq!(report.metadata[keys::SIGNAL], "6");
        assert!(report.metadata[keys::PROBLEMS].contains("ELF header"));
    }

    #[test]
    fn text_streams_without_os_release_say_only_the_kernel() {
        let proc = ProcSnapshot {
            kernel: crate::proc_info::KernelInfo {
                release: "6.1.192".into(),
                ..Default::default()
            },
            ..Default::default()
        };
        let text = text_streams(&CoreLayout::default(), &proc);
        let lsb = String::from_utf8(text.lsb_release).unwrap();
        assert!(lsb.contains("ID=linux\n"), "{lsb}");
        assert!(
            lsb.contains("PRETTY_NAME=\"Linux 6.1.192 (no os-release file)\""),
            "{lsb}"
        );
    }

    #[test]
    fn maps_from_core_names_file_mappings() {
        let core = synthetic_core();
        let mut reader = CoreReader::new(&core[..]);
        let layout = reader.read_layout().unwrap();
        let text = String::from_utf8(maps_from_core(&layout)).unwrap();
        assert!(
            text.starts_with("00400000-00402000 r-xp 00000000 00:00 0 /bin/fake\n"),
            "{text}"
        );
        assert_eq!(text.lines().count(), 2);
    }
}
