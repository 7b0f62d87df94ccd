//! Decoding the notes of an x86-64 Linux core: NT_PRSTATUS (one per thread, registers),
//! NT_FPREGSET (the fxsave area of the thread before it), NT_PRPSINFO, NT_SIGINFO, NT_AUXV
//! and NT_FILE. Layouts are the kernel's `struct elf_prstatus`, `struct elf_prpsinfo`,
//! `siginfo_t` and the NT_FILE table of fs/binfmt_elf.c. The first NT_PRSTATUS is the thread
//! that took the signal (the kernel and gdb's gcore both write it first).

use crate::elf::{i32_at, u16_at, u32_at, u64_at, Note, Notes};

pub const NT_PRSTATUS: u32 = 1;
pub const NT_FPREGSET: u32 = 2;
pub const NT_PRPSINFO: u32 = 3;
pub const NT_AUXV: u32 = 6;
pub const NT_SIGINFO: u32 = 0x5349_4749;
pub const NT_FILE: u32 = 0x4649_4c45;
pub const NT_GNU_BUILD_ID: u32 = 3;

/// `sizeof(struct elf_prstatus)` on x86-64 and where `pr_reg` starts in it.
const PRSTATUS_SIZE: usize = 336;
const PR_REG_OFFSET: usize = 112;
pub const FXSAVE_SIZE: usize = 512;
/// More threads than this and the rest are dropped (noted): each costs ~1.3 KiB of minidump.
pub const MAX_THREADS: usize = 4096;
/// NT_FILE entries kept at most.
pub const MAX_FILE_MAPPINGS: usize = 65_536;

/// `struct user_regs_struct`, the general registers of one thread.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Registers {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub rbp: u64,
    pub rbx: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rax: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub orig_rax: u64,
    pub rip: u64,
    pub cs: u64,
    pub eflags: u64,
    pub rsp: u64,
    pub ss: u64,
    pub fs_base: u64,
    pub gs_base: u64,
    pub ds: u64,
    pub es: u64,
    pub fs: u64,
    pub gs: u64,
}

impl Registers {
    fn parse(b: &[u8]) -> Option<Registers> {
        let r = |i: usize| u64_at(b, i * 8);
        Some(Registers {
            r15: r(0)?,
            r14: r(1)?,
            r13: r(2)?,
            r12: r(3)?,
            rbp: r(4)?,
            rbx: r(5)?,
            r11: r(6)?,
            r10: r(7)?,
            r9: r(8)?,
            r8: r(9)?,
            rax: r(10)?,
            rcx: r(11)?,
            rdx: r(12)?,
            rsi: r(13)?,
            rdi: r(14)?,
            orig_rax: r(15)?,
            rip: r(16)?,
            cs: r(17)?,
            eflags: r(18)?,
            rsp: r(19)?,
            ss: r(20)?,
            fs_base: r(21)?,
            gs_base: r(22)?,
            ds: r(23)?,
            es: r(24)?,
            fs: r(25)?,
            gs: r(26)?,
        })
    }
}

/// One thread: NT_PRSTATUS and, if present, its NT_FPREGSET.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadNotes {
    pub tid: u32,
    pub cursig: u16,
    pub regs: Registers,
    pub fpregs: Option<Box<[u8; FXSAVE_SIZE]>>,
}

/// NT_PRPSINFO.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessInfo {
    pub pid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    /// `comm`, at most 15 bytes.
    pub fname: String,
    /// The first 80 bytes of the command line, spaces for NULs.
    pub psargs: String,
}

/// The fields of NT_SIGINFO a crash report needs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SigInfo {
    pub signo: i32,
    pub errno: i32,
    pub code: i32,
    /// `si_addr`, meaningful only for fault signals raised by the kernel (see `fault_addr`).
    pub addr: u64,
}

/// Signals whose `si_addr` is the faulting address when `si_code > 0` (kernel-generated).
const FAULT_SIGNALS: [i32; 5] = [
    libc::SIGSEGV,
    libc::SIGBUS,
    libc::SIGFPE,
    libc::SIGILL,
    libc::SIGTRAP,
];

impl SigInfo {
    /// The fault address, or `None` for signals sent by a process (`kill`, `abort`), whose
    /// union holds a pid and uid instead.
    pub fn fault_addr(&self) -> Option<u64> {
        (FAULT_SIGNALS.contains(&self.signo) && self.code > 0).then_some(self.addr)
    }
}

/// One NT_FILE entry: a file-backed mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMapping {
    pub start: u64,
    pub end: u64,
    /// Offset into the file, in bytes.
    pub offset: u64,
    pub path: String,
}

/// Everything decoded from a core's PT_NOTE segments.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CoreNotes {
    pub threads: Vec<ThreadNotes>,
    pub process: Option<ProcessInfo>,
    pub siginfo: Option<SigInfo>,
    /// NT_AUXV as raw bytes (the minidump's LinuxAuxv stream) ...
    pub auxv_raw: Vec<u8>,
    /// ... and as (type, value) pairs.
    pub auxv: Vec<(u64, u64)>,
    pub files: Vec<FileMapping>,
    /// What was malformed or dropped, for the report's metadata.
    pub problems: Vec<String>,
}

fn c_string(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

fn parse_prstatus(desc: &[u8]) -> Option<ThreadNotes> {
    if desc.len() < PRSTATUS_SIZE - 8 {
        return None;
    }
    Some(ThreadNotes {
        tid: u32_at(desc, 32)?,
        cursig: u16_at(desc, 12)?,
        regs: Registers::parse(desc.get(PR_REG_OFFSET..)?)?,
        fpregs: None,
    })
}

fn parse_prpsinfo(desc: &[u8]) -> Option<ProcessInfo> {
    Some(ProcessInfo {
        uid: u32_at(desc, 16)?,
        gid: u32_at(desc, 20)?,
        pid: u32_at(desc, 24)?,
        ppid: u32_at(desc, 28)?,
        fname: c_string(desc.get(40..56)?),
        psargs: c_string(desc.get(56..136)?).trim_end().to_string(),
    })
}

fn parse_siginfo(desc: &[u8]) -> Option<SigInfo> {
    Some(SigInfo {
        signo: i32_at(desc, 0)?,
        errno: i32_at(desc, 4)?,
        code: i32_at(desc, 8)?,
        addr: u64_at(desc, 16)?,
    })
}

fn parse_auxv(desc: &[u8]) -> Vec<(u64, u64)> {
    desc.chunks_exact(16)
        .filter_map(|p| Some((u64_at(p, 0)?, u64_at(p, 8)?)))
        .take_while(|&(t, _)| t != 0)
        .collect()
}

/// The NT_FILE table: count, page size, `count` (start, end, page offset), then the paths.
fn parse_files(desc: &[u8]) -> Option<(Vec<FileMapping>, bool)> {
    let count = u64_at(desc, 0)?;
    let page_size = u64_at(desc, 8)?;
    let fits = (desc.len() as u64).saturating_sub(16) / 24;
    let kept = count.min(fits).min(MAX_FILE_MAPPINGS as u64) as usize;
    let mut names = desc.get(16 + kept * 24..)?.split(|&c| c == 0);
    let mut files = Vec::with_capacity(kept);
    for i in 0..kept {
        let e = 16 + i * 24;
        let Some(name) = names.next() else { break };
        files.push(FileMapping {
            start: u64_at(desc, e)?,
            end: u64_at(desc, e + 8)?,
            offset: u64_at(desc, e + 16)?.saturating_mul(page_size),
            path: String::from_utf8_lossy(name).into_owned(),
        });
    }
    let complete = files.len() as u64 == count;
    Some((files, complete))
}

impl CoreNotes {
    /// Adds the notes of one PT_NOTE segment.
    pub fn add_segment(&mut self, data: &[u8], align: u64) {
        let mut notes = Notes::new(data, align);
        for note in notes.by_ref() {
            self.add_note(note);
        }
        if notes.malformed {
            self.problems
                .push("a note record is malformed; later notes were ignored".into());
        }
    }

    fn add_note(&mut self, note: Note<'_>) {
        // Core notes are named "CORE" (and "LINUX" for the xstate ones we do not use).
        if note.name != b"CORE" {
            return;
        }
        match note.n_type {
            NT_PRSTATUS => match parse_prstatus(note.desc) {
                Some(_) if self.threads.len() >= MAX_THREADS => {
                    if self.threads.len() == MAX_THREADS {
                        self.problems
                            .push(format!("more than {MAX_THREADS} threads; the rest dropped"));
                    }
                }
                Some(thread) => self.threads.push(thread),
                None => self.problems.push(format!(
                    "NT_PRSTATUS of {} bytes is too short",
                    note.desc.len()
                )),
            },
            NT_FPREGSET => {
                let last = self.threads.last_mut();
                match (last, <[u8; FXSAVE_SIZE]>::try_from(note.desc)) {
                    (Some(thread), Ok(area)) if thread.fpregs.is_none() => {
                        thread.fpregs = Some(Box::new(area));
                    }
                    _ => {}
                }
            }
            NT_PRPSINFO if self.process.is_none() => {
                self.process = parse_prpsinfo(note.desc);
                if self.process.is_none() {
                    self.problems.push("NT_PRPSINFO is too short".into());
                }
            }
            NT_SIGINFO if self.siginfo.is_none() => {
                self.siginfo = parse_siginfo(note.desc);
                if self.siginfo.is_none() {
                    self.problems.push("NT_SIGINFO is too short".into());
                }
            }
            NT_AUXV if self.auxv_raw.is_empty() => {
                self.auxv_raw = note.desc.to_vec();
                self.auxv = parse_auxv(note.desc);
            }
            NT_FILE if self.files.is_empty() => match parse_files(note.desc) {
                Some((files, complete)) => {
                    if !complete {
                        self.problems.push(format!(
                            "NT_FILE is truncated; {} mappings kept",
                            files.len()
                        ));
                    }
                    self.files = files;
                }
                None => self.problems.push("NT_FILE is malformed".into()),
            },
            _ => {}
        }
    }

    /// The auxiliary vector entry `key` (AT_*), if present.
    pub fn auxv_value(&self, key: u64) -> Option<u64> {
        self.auxv.iter().find(|&&(k, _)| k == key).map(|&(_, v)| v)
    }

    /// The thread that took the signal: the first NT_PRSTATUS.
    pub fn crashing_thread(&self) -> Option<&ThreadNotes> {
        self.threads.first()
    }
}

#[cfg(test)]
pub(crate) mod test_utils {
    //! Synthetic core note descriptors.

    /// An NT_PRSTATUS descriptor for `tid` with the given rip, rsp and signal.
    pub fn prstatus(tid: u32, sig: u16, rip: u64, rsp: u64) -> Vec<u8> {
        let mut d = vec![0u8; super::PRSTATUS_SIZE];
        d[0..4].copy_from_slice(&i32::from(sig).to_le_bytes());
        d[12..14].copy_from_slice(&sig.to_le_bytes());
        d[32..36].copy_from_slice(&tid.to_le_bytes());
        let reg = |d: &mut Vec<u8>, i: usize, v: u64| {
            let at = super::PR_REG_OFFSET + i * 8;
            d[at..at + 8].copy_from_slice(&v.to_le_bytes());
        };
        reg(&mut d, 16, rip);
        reg(&mut d, 19, rsp);
        reg(&mut d, 4, rsp + 64);
        d
    }

    pub fn siginfo(signo: i32, code: i32, addr: u64) -> Vec<u8> {
        let mut d = vec![0u8; 128];
        d[0..4].copy_from_slice(&signo.to_le_bytes());
        d[8..12].copy_from_slice(&code.to_le_bytes());
        d[16..24].copy_from_slice(&addr.to_le_bytes());
        d
    }

    /// An NT_FILE descriptor of (start, end, byte offset, path) entries, 4 KiB pages.
    pub fn file_table(entries: &[(u64, u64, u64, &str)]) -> Vec<u8> {
        let mut d = Vec::new();
        d.extend_from_slice(&(entries.len() as u64).to_le_bytes());
        d.extend_from_slice(&4096u64.to_le_bytes());
        for (s, e, o, _) in entries {
            d.extend_from_slice(&s.to_le_bytes());
            d.extend_from_slice(&e.to_le_bytes());
            d.extend_from_slice(&(o / 4096).to_le_bytes());
        }
        for (_, _, _, p) in entries {
            d.extend_from_slice(p.as_bytes());
            d.push(0);
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::test_utils::*;
    use super::*;
    use crate::elf::test_utils::note;

    #[test]
    fn add_segment_full_set_decodes_every_note() {
        let mut seg = note(b"CORE", NT_PRSTATUS, &prstatus(101, 11, 0x4011, 0x7ff0));
        seg.extend(note(b"CORE", NT_FPREGSET, &[7u8; FXSAVE_SIZE]));
        seg.extend(note(b"CORE", NT_SIGINFO, &siginfo(11, 1, 0xdead)));
        let mut ps = vec![0u8; 136];
        ps[24..28].copy_from_slice(&100u32.to_le_bytes());
        ps[40..47].copy_from_slice(b"crashme");
        ps[56..67].copy_from_slice(b"./crashme x");
        seg.extend(note(b"CORE", NT_PRPSINFO, &ps));
        let mut auxv = Vec::new();
        for v in [33u64, 0x7fff_0000, 9, 0x401000, 0, 0] {
            auxv.extend_from_slice(&v.to_le_bytes());
        }
        seg.extend(note(b"CORE", NT_AUXV, &auxv));
        seg.extend(note(
            b"CORE",
            NT_FILE,
            &file_table(&[
                (0x400000, 0x401000, 0, "/bin/x"),
                (0x401000, 0x402000, 4096, "/bin/x"),
            ]),
        ));
        seg.extend(note(
            b"CORE",
            NT_PRSTATUS,
            &prstatus(102, 11, 0x4022, 0x8ff0),
        ));
        seg.extend(note(b"LINUX", 0x202, &[0; 64]));

        let mut notes = CoreNotes::default();
        notes.add_segment(&seg, 4);

        assert!(notes.problems.is_empty(), "{:?}", notes.problems);
        assert_eq!(notes.threads.len(), 2);
        let crash = notes.crashing_thread().unwrap();
        assert_eq!(
            (crash.tid, crash.cursig, crash.regs.rip, crash.regs.rsp),
            (101, 11, 0x4011, 0x7ff0)
        );
        assert!(crash.fpregs.is_some());
        assert!(notes.threads[1].fpregs.is_none());
        assert_eq!(notes.siginfo.unwrap().fault_addr(), Some(0xdead));
        let p = notes.process.as_ref().unwrap();
        assert_eq!(
            (p.pid, p.fname.as_str(), p.psargs.as_str()),
            (100, "crashme", "./crashme x")
        );
        assert_eq!(notes.auxv_value(9), Some(0x401000));
        assert_eq!(notes.files[1].offset, 4096);
        assert_eq!(notes.files[1].path, "/bin/x");
    }

    #[test]
    fn siginfo_sent_by_kill_has_no_fault_address() {
        let abort = SigInfo {
            signo: libc::SIGABRT,
            code: -6,
            addr: 0x1234,
            errno: 0,
        };
        assert_eq!(abort.fault_addr(), None);
        let kill_segv = SigInfo {
            signo: libc::SIGSEGV,
            code: 0,
            addr: 0x1234,
            errno: 0,
        };
        assert_eq!(kill_segv.fault_addr(), None);
    }

    #[test]
    fn add_segment_truncated_records_are_problems_not_panics() {
        let mut seg = note(b"CORE", NT_PRSTATUS, &[0; 40]);
        seg.extend(note(b"CORE", NT_FILE, &[0xff; 30]));
        seg.extend(note(b"CORE", NT_SIGINFO, &[1, 2]));
        let mut notes = CoreNotes::default();
        notes.add_segment(&seg, 4);
        assert!(notes.threads.is_empty());
        assert_eq!(notes.problems.len(), 3, "{:?}", notes.problems);
    }

    #[test]
    fn parse_files_count_larger_than_table_keeps_what_fits() {
        let mut d = file_table(&[(1, 2, 0, "/a")]);
        d[0..8].copy_from_slice(&u64::MAX.to_le_bytes());
        let (files, complete) = parse_files(&d).unwrap();
        assert_eq!(files.len(), 1);
        assert!(!complete);
    }
}
