//! ELF64 little-endian basics shared by the core reader and the build-id reader: the file
//! header, program headers, and note records. Everything parses from byte slices with
//! bounds checks; nothing here trusts a length or offset it was given.

use std::fmt;

use byteorder::{ByteOrder, LittleEndian};

pub const EHDR_SIZE: usize = 64;
pub const PHDR_SIZE: usize = 56;

pub const ET_EXEC: u16 = 2;
pub const ET_DYN: u16 = 3;
pub const ET_CORE: u16 = 4;
pub const EM_X86_64: u16 = 62;
/// `e_phnum` value meaning "the real count is in section header 0" (more than 65534).
pub const PN_XNUM: u16 = 0xffff;

pub const PT_LOAD: u32 = 1;
pub const PT_NOTE: u32 = 4;

pub const PF_X: u32 = 1;
pub const PF_W: u32 = 2;
pub const PF_R: u32 = 4;

/// Reads a little-endian integer at `off`, or `None` past the end.
pub fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    b.get(off..off.checked_add(2)?).map(LittleEndian::read_u16)
}

pub fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    b.get(off..off.checked_add(4)?).map(LittleEndian::read_u32)
}

pub fn i32_at(b: &[u8], off: usize) -> Option<i32> {
    b.get(off..off.checked_add(4)?).map(LittleEndian::read_i32)
}

pub fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    b.get(off..off.checked_add(8)?).map(LittleEndian::read_u64)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ElfError {
    TooShort { what: &'static str, len: usize },
    BadMagic,
    NotElf64LittleEndian,
    WrongMachine(u16),
    BadPhentsize(u16),
}

impl fmt::Display for ElfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooShort { what, len } => write!(f, "{what} is truncated ({len} bytes)"),
            Self::BadMagic => write!(f, "not an ELF file (bad magic)"),
            Self::NotElf64LittleEndian => write!(f, "not a 64-bit little-endian ELF file"),
            Self::WrongMachine(m) => write!(f, "ELF machine {m} is not x86-64"),
            Self::BadPhentsize(s) => write!(f, "program header size {s} is not {PHDR_SIZE}"),
        }
    }
}

impl std::error::Error for ElfError {}

/// The fields of `Elf64_Ehdr` this crate uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileHeader {
    pub e_type: u16,
    pub e_machine: u16,
    pub e_phoff: u64,
    pub e_phnum: u16,
}

impl FileHeader {
    /// Parses and checks the header: ELF64, little endian, x86-64, 56-byte program headers.
    pub fn parse(b: &[u8]) -> Result<FileHeader, ElfError> {
        if b.len() < EHDR_SIZE {
            return Err(ElfError::TooShort {
                what: "ELF header",
                len: b.len(),
            });
        }
        if &b[..4] != b"\x7fELF" {
            return Err(ElfError::BadMagic);
        }
        // EI_CLASS 2 = ELFCLASS64, EI_DATA 1 = ELFDATA2LSB.
        if b[4] != 2 || b[5] != 1 {
            return Err(ElfError::NotElf64LittleEndian);
        }
        let field = |off| u16_at(b, off).unwrap_or(0);
        let e_machine = field(18);
        if e_machine != EM_X86_64 {
            return Err(ElfError::WrongMachine(e_machine));
        }
        let e_phentsize = field(54);
        let e_phnum = field(56);
        if e_phnum != 0 && e_phentsize as usize != PHDR_SIZE {
            return Err(ElfError::BadPhentsize(e_phentsize));
        }
        Ok(FileHeader {
            e_type: field(16),
            e_machine,
            e_phoff: u64_at(b, 32).unwrap_or(0),
            e_phnum,
        })
    }
}

/// `Elf64_Phdr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProgramHeader {
    pub p_type: u32,
    pub p_flags: u32,
    pub p_offset: u64,
    pub p_vaddr: u64,
    pub p_filesz: u64,
    pub p_memsz: u64,
    pub p_align: u64,
}

impl ProgramHeader {
    pub fn parse(b: &[u8]) -> Option<ProgramHeader> {
        Some(ProgramHeader {
            p_type: u32_at(b, 0)?,
            p_flags: u32_at(b, 4)?,
            p_offset: u64_at(b, 8)?,
            p_vaddr: u64_at(b, 16)?,
            p_filesz: u64_at(b, 32)?,
            p_memsz: u64_at(b, 40)?,
            p_align: u64_at(b, 48)?,
        })
    }

    /// Parses a table of `count` headers; a short table yields the whole headers it holds.
    pub fn parse_table(b: &[u8], count: usize) -> Vec<ProgramHeader> {
        b.chunks_exact(PHDR_SIZE)
            .take(count)
            .filter_map(ProgramHeader::parse)
            .collect()
    }

    /// `rwx`-style permissions, as /proc/PID/maps spells them (private mapping assumed).
    pub fn perms(&self) -> String {
        let bit = |flag, c| if self.p_flags & flag != 0 { c } else { '-' };
        [bit(PF_R, 'r'), bit(PF_W, 'w'), bit(PF_X, 'x'), 'p']
            .iter()
            .collect()
    }
}

/// One note record: its name (without the NUL), type and descriptor bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Note<'a> {
    pub name: &'a [u8],
    pub n_type: u32,
    pub desc: &'a [u8],
}

/// Iterates the notes in a PT_NOTE segment; stops at the first malformed record.
/// `align` is 4 for core files and most notes, 8 for segments with `p_align` 8.
pub struct Notes<'a> {
    data: &'a [u8],
    pos: usize,
    align: usize,
    /// Set when iteration stopped on a malformed record rather than at the end.
    pub malformed: bool,
}

impl<'a> Notes<'a> {
    pub fn new(data: &'a [u8], align: u64) -> Notes<'a> {
        Notes {
            data,
            pos: 0,
            align: if align == 8 { 8 } else { 4 },
            malformed: false,
        }
    }

    fn pad(&self, n: usize) -> Option<usize> {
        n.checked_add(self.align - 1).map(|v| v & !(self.align - 1))
    }

    fn next_note(&mut self) -> Option<Note<'a>> {
        let namesz = u32_at(self.data, self.pos)? as usize;
        let descsz = u32_at(self.data, self.pos + 4)? as usize;
        let n_type = u32_at(self.data, self.pos + 8)?;
        let name_start = self.pos + 12;
        let desc_start = name_start.checked_add(self.pad(namesz)?)?;
        let desc_end = desc_start.checked_add(descsz)?;
        let name = self.data.get(name_start..name_start.checked_add(namesz)?)?;
        let desc = self.data.get(desc_start..desc_end)?;
        let next = desc_start.checked_add(self.pad(descsz)?)?;
        self.pos = next.min(self.data.len());
        let name = name.strip_suffix(b"\0").unwrap_or(name);
        Some(Note { name, n_type, desc })
    }
}

impl<'a> Iterator for Notes<'a> {
    type Item = Note<'a>;

    fn next(&mut self) -> Option<Note<'a>> {
        if self.malformed || self.pos + 12 > self.data.len() {
            return None;
        }
        let note = self.next_note();
        if note.is_none() {
            self.malformed = true;
        }
        note
    }
}

#[cfg(test)]
pub(crate) mod test_utils {
    //! Builders for synthetic ELF pieces used by the unit tests of several modules.

    /// A note record with 4-byte padding.
    pub fn note(name: &[u8], n_type: u32, desc: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let namesz = if name.is_empty() { 0 } else { name.len() + 1 };
        out.extend_from_slice(&(namesz as u32).to_le_bytes());
        out.extend_from_slice(&(desc.len() as u32).to_le_bytes());
        out.extend_from_slice(&n_type.to_le_bytes());
        if namesz > 0 {
            out.extend_from_slice(name);
            out.push(0);
        }
        while out.len() % 4 != 0 {
            out.push(0);
        }
        out.extend_from_slice(desc);
        while out.len() % 4 != 0 {
            out.push(0);
        }
        out
    }

    /// An ELF64 x86-64 header of `e_type` with `phnum` program headers at offset 64.
    pub fn ehdr(e_type: u16, phnum: u16) -> Vec<u8> {
        let mut h = vec![0u8; super::EHDR_SIZE];
        h[..4].copy_from_slice(b"\x7fELF");
        h[4] = 2;
        h[5] = 1;
        h[6] = 1;
        h[16..18].copy_from_slice(&e_type.to_le_bytes());
        h[18..20].copy_from_slice(&super::EM_X86_64.to_le_bytes());
        h[32..40].copy_from_slice(&64u64.to_le_bytes());
        h[52..54].copy_from_slice(&64u16.to_le_bytes());
        h[54..56].copy_from_slice(&(super::PHDR_SIZE as u16).to_le_bytes());
        h[56..58].copy_from_slice(&phnum.to_le_bytes());
        h
    }

    #[allow(clippy::too_many_arguments)]
    pub fn phdr(
        p_type: u32,
        flags: u32,
        offset: u64,
        vaddr: u64,
        filesz: u64,
        memsz: u64,
    ) -> Vec<u8> {
        let mut p = Vec::with_capacity(super::PHDR_SIZE);
        p.extend_from_slice(&p_type.to_le_bytes());
        p.extend_from_slice(&flags.to_le_bytes());
        p.extend_from_slice(&offset.to_le_bytes());
        p.extend_from_slice(&vaddr.to_le_bytes());
        p.extend_from_slice(&0u64.to_le_bytes());
        p.extend_from_slice(&filesz.to_le_bytes());
        p.extend_from_slice(&memsz.to_le_bytes());
        p.extend_from_slice(&4u64.to_le_bytes());
        p
    }
}

#[cfg(test)]
mod tests {
    use super::test_utils::*;
    use super::*;

    #[test]
    fn file_header_valid_core_parses() {
        let h = FileHeader::parse(&ehdr(ET_CORE, 3)).unwrap();
        assert_eq!((h.e_type, h.e_phoff, h.e_phnum), (ET_CORE, 64, 3));
    }

    #[test]
    fn file_header_bad_input_is_rejected() {
        assert!(matches!(
            FileHeader::parse(b"\x7fELF"),
            Err(ElfError::TooShort { .. })
        ));
        let mut h = ehdr(ET_CORE, 1);
        h[0] = b'X';
        assert_eq!(FileHeader::parse(&h), Err(ElfError::BadMagic));
        let mut h = ehdr(ET_CORE, 1);
        h[4] = 1;
        assert_eq!(FileHeader::parse(&h), Err(ElfError::NotElf64LittleEndian));
        let mut h = ehdr(ET_CORE, 1);
        h[18] = 3;
        assert_eq!(FileHeader::parse(&h), Err(ElfError::WrongMachine(3)));
    }

    #[test]
    fn program_header_table_short_keeps_whole_entries() {
        let mut t = phdr(PT_LOAD, PF_R | PF_X, 4096, 0x1000, 10, 20);
        t.extend(phdr(PT_NOTE, 0, 100, 0, 5, 0));
        t.truncate(PHDR_SIZE + 10);
        let table = ProgramHeader::parse_table(&t, 5);
        assert_eq!(table.len(), 1);
        assert_eq!(table[0].perms(), "r-xp");
        assert_eq!(table[0].p_memsz, 20);
    }

    #[test]
    fn notes_iterate_and_stop_on_garbage() {
        let mut seg = note(b"CORE", 1, &[1, 2, 3]);
        seg.extend(note(b"GNU", 3, &[9; 20]));
        seg.extend([0xff; 16]);
        let mut it = Notes::new(&seg, 4);
        let first = it.next().unwrap();
        assert_eq!(
            (first.name, first.n_type, first.desc),
            (&b"CORE"[..], 1, &[1u8, 2, 3][..])
        );
        assert_eq!(it.next().unwrap().desc.len(), 20);
        assert!(it.next().is_none());
        assert!(it.malformed);
    }
}
