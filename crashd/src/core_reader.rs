//! Reads an ELF core as a stream (the kernel writes it into a pipe): the file header, the
//! program headers and the notes first, then only the wanted byte ranges of the PT_LOAD
//! segments; everything else is read and thrown away in fixed-size chunks, so a core of any
//! size costs a bounded amount of memory. A pipe cannot seek back: data placed before the
//! current position is reported as a problem, never re-read.
//!
//! A file (`--core`, or stdin redirected from a file) can seek, which also makes cores from
//! other writers readable: gdb's `gcore` puts the notes after the memory.
//!
//! A short or corrupt core is not an error past the file header: whatever was read is kept
//! and each problem is recorded as a sentence for the report's metadata.

use std::fmt;
use std::fs::File;
use std::io::{self, Cursor, Read, Seek, SeekFrom};
use std::ops::Range;

use crate::elf::{
    ElfError, FileHeader, ProgramHeader, EHDR_SIZE, ET_CORE, PHDR_SIZE, PN_XNUM, PT_LOAD, PT_NOTE,
};
use crate::memory::{coalesce, MemoryImage, Region};
use crate::notes::CoreNotes;

/// PT_NOTE bytes read at most (NT_FILE of a process with 65k mappings is ~4 MiB).
pub const MAX_NOTE_BYTES: u64 = 32 << 20;
/// Program headers accepted at most (the kernel's own cap on mappings is 65530 by default).
pub const MAX_PHDRS: u64 = 1 << 20;
const CHUNK: usize = 64 << 10;

#[derive(Debug)]
pub enum CoreError {
    /// The core ended before its file header or program headers were complete.
    Truncated {
        what: &'static str,
        at: u64,
    },
    Read {
        at: u64,
        source: io::Error,
    },
    Elf(ElfError),
    NotACore(u16),
    BadHeaderTable(String),
}

impl fmt::Display for CoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated { what, at } => write!(f, "core ends at byte {at}, inside the {what}"),
            Self::Read { at, source } => write!(f, "cannot read the core at byte {at}: {source}"),
            Self::Elf(e) => write!(f, "core: {e}"),
            Self::NotACore(t) => write!(f, "ELF type {t} is not a core file (4)"),
            Self::BadHeaderTable(why) => write!(f, "core program headers: {why}"),
        }
    }
}

impl std::error::Error for CoreError {}

/// Where a core comes from: anything readable; files can also seek.
pub trait CoreInput: Read {
    /// Moves to `offset` if the input can seek (a file); false for a pipe.
    fn seek_to(&mut self, _offset: u64) -> bool {
        false
    }

    /// The total size, if the input can seek.
    fn seek_end(&mut self) -> Option<u64> {
        None
    }
}

impl CoreInput for File {
    fn seek_to(&mut self, offset: u64) -> bool {
        self.seek(SeekFrom::Start(offset)).is_ok()
    }

    fn seek_end(&mut self) -> Option<u64> {
        self.seek(SeekFrom::End(0)).ok()
    }
}

impl<T: AsRef<[u8]>> CoreInput for Cursor<T> {
    fn seek_to(&mut self, offset: u64) -> bool {
        self.seek(SeekFrom::Start(offset)).is_ok()
    }

    fn seek_end(&mut self) -> Option<u64> {
        self.seek(SeekFrom::End(0)).ok()
    }
}

/// A byte slice reads like a pipe (no seeking): what the fuzz target and tests use.
impl CoreInput for &[u8] {}

/// The headers and notes of a core.
#[derive(Debug, Clone, Default)]
pub struct CoreLayout {
    pub loads: Vec<ProgramHeader>,
    pub notes: CoreNotes,
}

impl CoreLayout {
    /// The PT_LOAD containing `addr`, if any.
    pub fn load_at(&self, addr: u64) -> Option<&ProgramHeader> {
        self.loads
            .iter()
            .find(|p| p.p_vaddr <= addr && addr - p.p_vaddr < p.p_memsz)
    }
}

/// A forward-only reader over the core stream.
pub struct CoreReader<R> {
    input: R,
    pos: u64,
    eof: bool,
    scratch: Vec<u8>,
    /// Problems met so far, as sentences.
    pub problems: Vec<String>,
}

impl<R: CoreInput> CoreReader<R> {
    pub fn new(input: R) -> CoreReader<R> {
        CoreReader {
            input,
            pos: 0,
            eof: false,
            scratch: vec![0; CHUNK],
            problems: Vec::new(),
        }
    }

    /// Bytes consumed so far.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Whether the end of the core was reached.
    pub fn at_end(&self) -> bool {
        self.eof
    }

    /// Reads into `buf` until it is full or the stream ends; returns the count read.
    fn fill(&mut self, buf: &mut [u8]) -> Result<usize, CoreError> {
        let mut done = 0;
        while done < buf.len() && !self.eof {
            match self.input.read(&mut buf[done..]) {
                Ok(0) => self.eof = true,
                Ok(n) => {
                    done += n;
                    self.pos += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(CoreError::Read {
                        at: self.pos,
                        source,
                    })
                }
            }
        }
        Ok(done)
    }

    /// Moves back to `offset` if the input can seek.
    fn rewind_to(&mut self, offset: u64) -> bool {
        if self.input.seek_to(offset) {
            self.pos = offset;
            self.eof = false;
            true
        } else {
            false
        }
    }

    /// Reads and discards up to `offset` (or seeks there); false if the stream ended first.
    fn skip_to(&mut self, offset: u64) -> Result<bool, CoreError> {
        if offset > self.pos && offset != u64::MAX && self.rewind_to(offset) {
            return Ok(true);
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        let mut result = Ok(true);
        while self.pos < offset {
            let want = (offset - self.pos).min(scratch.len() as u64) as usize;
            match self.fill(&mut scratch[..want]) {
                Ok(n) if n < want => {
                    result = Ok(false);
                    break;
                }
                Ok(_) => {}
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        self.scratch = scratch;
        result
    }

    /// Reads exactly `len` bytes at `offset` (which must not be behind us).
    fn read_at(
        &mut self,
        offset: u64,
        len: usize,
        what: &'static str,
    ) -> Result<Vec<u8>, CoreError> {
        if offset < self.pos && !self.rewind_to(offset) {
            return Err(CoreError::BadHeaderTable(format!(
                "the {what} at byte {offset} lies before byte {} already read",
                self.pos
            )));
        }
        if !self.skip_to(offset)? {
            return Err(CoreError::Truncated { what, at: self.pos });
        }
        let mut buf = vec![0; len];
        if self.fill(&mut buf)? < len {
            return Err(CoreError::Truncated { what, at: self.pos });
        }
        Ok(buf)
    }

    /// Reads the file header, the program headers and every PT_NOTE segment.
    pub fn read_layout(&mut self) -> Result<CoreLayout, CoreError> {
        let ehdr = self.read_at(0, EHDR_SIZE, "ELF header")?;
        let header = FileHeader::parse(&ehdr).map_err(CoreError::Elf)?;
        if header.e_type != ET_CORE {
            return Err(CoreError::NotACore(header.e_type));
        }
        let phdrs = self.read_phdrs(&header)?;
        let mut layout = CoreLayout::default();
        let mut notes: Vec<ProgramHeader> = phdrs
            .iter()
            .filter(|p| p.p_type == PT_NOTE)
            .copied()
            .collect();
        notes.sort_by_key(|p| p.p_offset);
        let mut note_budget = MAX_NOTE_BYTES;
        for note in notes {
            let len = note.p_filesz.min(note_budget);
            if len < note.p_filesz {
                self.problems.push(format!(
                    "notes larger than {MAX_NOTE_BYTES} bytes; the rest were skipped"
                ));
            }
            note_budget -= len;
            match self.read_at(note.p_offset, len as usize, "notes") {
                Ok(data) => layout.notes.add_segment(&data, note.p_align),
                Err(CoreError::Truncated { at, .. }) => {
                    self.problems
                        .push(format!("the core ends at byte {at}, inside the notes"));
                    break;
                }
                Err(CoreError::BadHeaderTable(why)) => self.problems.push(why),
                Err(e) => return Err(e),
            }
        }
        layout.loads = phdrs.into_iter().filter(|p| p.p_type == PT_LOAD).collect();
        Ok(layout)
    }

    fn read_phdrs(&mut self, header: &FileHeader) -> Result<Vec<ProgramHeader>, CoreError> {
        let phoff = header.e_phoff;
        if phoff < EHDR_SIZE as u64 {
            return Err(CoreError::BadHeaderTable(format!(
                "table offset {phoff} overlaps the ELF header"
            )));
        }
        if header.e_phnum != PN_XNUM {
            let count = usize::from(header.e_phnum);
            let table = self.read_at(phoff, count * PHDR_SIZE, "program headers")?;
            return Ok(ProgramHeader::parse_table(&table, count));
        }
        // More than 65534 headers: the count lives in section header 0, which the kernel
        // writes at the very end. Its first header is PT_NOTE and the notes follow the table
        // directly, so the table's length is the distance from the table to the notes.
        let mut table = self.read_at(phoff, PHDR_SIZE, "program headers")?;
        let note = ProgramHeader::parse(&table)
            .filter(|p| p.p_type == PT_NOTE && p.p_offset > phoff)
            .ok_or_else(|| CoreError::BadHeaderTable("PN_XNUM without a leading PT_NOTE".into()))?;
        let count = (note.p_offset - phoff) / PHDR_SIZE as u64;
        if count == 0 || count > MAX_PHDRS {
            return Err(CoreError::BadHeaderTable(format!(
                "{count} program headers"
            )));
        }
        let rest_len = (count as usize - 1) * PHDR_SIZE;
        table.extend(self.read_at(phoff + PHDR_SIZE as u64, rest_len, "program headers")?);
        Ok(ProgramHeader::parse_table(&table, count as usize))
    }

    /// Streams through the PT_LOAD segments and keeps the bytes of `wanted` (virtual address
    /// ranges) that the core holds. Ranges not in the core, or placed before the current
    /// position, are skipped (the latter noted as a problem).
    pub fn capture(&mut self, layout: &CoreLayout, wanted: Vec<Range<u64>>) -> MemoryImage {
        let wanted = coalesce(wanted);
        // (file offset, address, length) of every wanted piece the core holds.
        let mut jobs: Vec<(u64, u64, u64)> = Vec::new();
        for load in &layout.loads {
            let seg = load.p_vaddr..load.p_vaddr.saturating_add(load.p_filesz);
            // `wanted` is sorted and disjoint: start at the first range ending inside.
            let first = wanted.partition_point(|w| w.end <= seg.start);
            for w in wanted[first..].iter().take_while(|w| w.start < seg.end) {
                let start = w.start.max(seg.start);
                let end = w.end.min(seg.end);
                if start < end {
                    jobs.push((
                        load.p_offset.saturating_add(start - seg.start),
                        start,
                        end - start,
                    ));
                }
            }
        }
        jobs.sort_unstable();
        let mut regions = Vec::with_capacity(jobs.len());
        let mut behind = 0u64;
        for (offset, addr, len) in jobs {
            if offset < self.pos && !self.rewind_to(offset) {
                behind += len;
                continue;
            }
            match self.read_piece(offset, len as usize) {
                Ok(bytes) => {
                    let complete = bytes.len() as u64 == len;
                    regions.push(Region { start: addr, bytes });
                    if !complete {
                        self.problems.push(format!(
                            "the core ends at byte {}, inside the memory at {addr:#x}; the rest of the memory is missing",
                            self.pos
                        ));
                        break;
                    }
                }
                Err(e) => {
                    self.problems
                        .push(format!("{e}; the rest of the memory is missing"));
                    break;
                }
            }
        }
        if behind > 0 {
            self.problems.push(format!(
                "{behind} wanted bytes of memory lie before data already read and were skipped"
            ));
        }
        MemoryImage::from_regions(regions)
    }

    /// Up to `len` bytes at `offset`: fewer if the stream ends.
    fn read_piece(&mut self, offset: u64, len: usize) -> Result<Vec<u8>, CoreError> {
        if !self.skip_to(offset)? {
            return Ok(Vec::new());
        }
        let mut buf = vec![0; len];
        let n = self.fill(&mut buf)?;
        buf.truncate(n);
        Ok(buf)
    }

    /// Reads the rest of the stream so the kernel finishes writing the core (a closed pipe
    /// aborts the dump and the crashed process loses its "core dumped" status); returns the
    /// total size of the core.
    pub fn drain(&mut self) -> u64 {
        if let Some(size) = self.input.seek_end() {
            self.pos = size;
            self.eof = true;
            return size;
        }
        if let Err(e) = self.skip_to(u64::MAX) {
            self.problems.push(e.to_string());
        }
        self.pos
    }
}

#[cfg(test)]
pub(crate) mod test_utils {
    //! A synthetic core: one thread, a stack segment and a code segment.
    use crate::elf::test_utils::{ehdr, note, phdr};
    use crate::elf::{ET_CORE, PF_R, PF_W, PF_X, PT_LOAD, PT_NOTE};
    use crate::notes::test_utils::{file_table, prstatus, siginfo};
    use crate::notes::{NT_FILE, NT_PRSTATUS, NT_SIGINFO};

    pub const STACK: u64 = 0x7ffd_0000_0000;
    pub const STACK_LEN: u64 = 0x4000;
    pub const CODE: u64 = 0x40_0000;
    pub const CODE_LEN: u64 = 0x2000;
    pub const RSP: u64 = STACK + 0x3000;
    pub const RIP: u64 = CODE + 0x1100;

    /// Byte `i` of the stack segment is `i as u8`; code bytes are 0xcc.
    pub fn synthetic_core() -> Vec<u8> {
        let mut notes = note(b"CORE", NT_PRSTATUS, &prstatus(42, 11, RIP, RSP));
        notes.extend(note(b"CORE", NT_SIGINFO, &siginfo(11, 1, 0x10)));
        notes.extend(note(
            b"CORE",
            NT_FILE,
            &file_table(&[(CODE, CODE + CODE_LEN, 0, "/bin/fake")]),
        ));
        let note_off = 64 + 3 * 56;
        let code_off = 0x1000u64;
        let stack_off = code_off + CODE_LEN;
        let mut core = ehdr(ET_CORE, 3);
        core.extend(phdr(PT_NOTE, 0, note_off, 0, notes.len() as u64, 0));
        core.extend(phdr(
            PT_LOAD,
            PF_R | PF_X,
            code_off,
            CODE,
            CODE_LEN,
            CODE_LEN,
        ));
        core.extend(phdr(
            PT_LOAD,
            PF_R | PF_W,
            stack_off,
            STACK,
            STACK_LEN,
            STACK_LEN,
        ));
        core.extend(notes);
        core.resize(code_off as usize, 0);
        core.extend(std::iter::repeat_n(0xcc, CODE_LEN as usize));
        core.extend((0..STACK_LEN).map(|i| i as u8));
        core
    }
}

#[cfg(test)]
mod tests {
    use super::test_utils::*;
    use super::*;

    /// Hands out at most 7 bytes per read, like a slow pipe.
    struct Trickle<'a>(&'a [u8]);

    impl CoreInput for Trickle<'_> {}

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(7).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn read_layout_synthetic_core_finds_notes_and_loads() {
        let core = synthetic_core();
        let mut reader = CoreReader::new(Trickle(&core));
        let layout = reader.read_layout().unwrap();
        assert_eq!(layout.loads.len(), 2);
        assert_eq!(layout.notes.threads[0].regs.rsp, RSP);
        assert_eq!(layout.notes.files[0].path, "/bin/fake");
        assert!(layout.load_at(RSP).is_some());
        assert!(layout.load_at(STACK + STACK_LEN).is_none());
        assert!(reader.problems.is_empty(), "{:?}", reader.problems);
    }

    #[test]
    fn capture_wanted_ranges_streams_only_those_bytes() {
        let core = synthetic_core();
        let mut reader = CoreReader::new(Trickle(&core));
        let layout = reader.read_layout().unwrap();
        let image = reader.capture(&layout, vec![RSP..RSP + 16, RIP - 4..RIP + 4, 0x10..0x20]);
        assert_eq!(
            image.read(RSP, 16).unwrap(),
            &(0..16).map(|i| i as u8).collect::<Vec<_>>()[..]
        );
        assert_eq!(image.read(RIP - 4, 8).unwrap(), &[0xcc; 8]);
        assert_eq!(image.total_bytes(), 24);
        assert_eq!(reader.drain(), core.len() as u64);
        assert!(reader.problems.is_empty(), "{:?}", reader.problems);
    }

    #[test]
    fn capture_truncated_core_keeps_partial_memory_and_says_so() {
        let core = synthetic_core();
        let cut = core.len() - 0x800;
        let mut reader = CoreReader::new(&core[..cut]);
        let layout = reader.read_layout().unwrap();
        let image = reader.capture(
            &layout,
            std::iter::once(STACK + 0x3000..STACK + 0x4000).collect(),
        );
        assert_eq!(image.total_bytes(), 0x800);
        assert!(
            reader.problems.iter().any(|p| p.contains("core ends")),
            "{:?}",
            reader.problems
        );
    }

    #[test]
    fn read_layout_cut_inside_headers_is_an_error() {
        let core = synthetic_core();
        for cut in [0, 10, 64, 100] {
            let err = CoreReader::new(&core[..cut]).read_layout().unwrap_err();
            assert!(matches!(err, CoreError::Truncated { .. }), "{cut}: {err}");
        }
    }

    #[test]
    fn read_layout_cut_inside_notes_keeps_header_and_notes_problem() {
        let core = synthetic_core();
        let mut reader = CoreReader::new(&core[..64 + 3 * 56 + 20]);
        let layout = reader.read_layout().unwrap();
        assert!(layout.notes.threads.is_empty());
        assert_eq!(layout.loads.len(), 2);
        assert!(
            reader.problems[0].contains("inside the notes"),
            "{:?}",
            reader.problems
        );
    }

    /// The synthetic core with its notes moved behind the memory, as gdb's gcore lays out.
    fn notes_last(core: &[u8]) -> Vec<u8> {
        let note_off = 64 + 3 * 56;
        let note_len = u64::from_le_bytes(core[64 + 32..64 + 40].try_into().unwrap()) as usize;
        let mut out = core.to_vec();
        let at = out.len() as u64;
        out.extend_from_slice(&core[note_off..note_off + note_len]);
        out[64 + 8..64 + 16].copy_from_slice(&at.to_le_bytes());
        out
    }

    #[test]
    fn capture_notes_after_memory_seeks_in_a_file_and_gives_up_in_a_pipe() {
        let core = notes_last(&synthetic_core());
        let wanted: Vec<Range<u64>> = std::iter::once(RSP..RSP + 16).collect();

        let mut file = CoreReader::new(Cursor::new(core.clone()));
        let layout = file.read_layout().unwrap();
        assert_eq!(layout.notes.threads.len(), 1);
        assert_eq!(file.capture(&layout, wanted.clone()).total_bytes(), 16);
        assert_eq!(file.drain(), core.len() as u64);
        assert!(file.problems.is_empty(), "{:?}", file.problems);

        let mut pipe = CoreReader::new(Trickle(&core));
        let layout = pipe.read_layout().unwrap();
        assert_eq!(layout.notes.threads.len(), 1);
        assert_eq!(pipe.capture(&layout, wanted).total_bytes(), 0);
        assert!(
            pipe.problems[0].contains("before data already read"),
            "{:?}",
            pipe.problems
        );
    }

    #[test]
    fn read_layout_not_a_core_is_rejected() {
        let mut core = synthetic_core();
        core[16] = 2;
        assert!(matches!(
            CoreReader::new(&core[..]).read_layout(),
            Err(CoreError::NotACore(2))
        ));
    }
}
