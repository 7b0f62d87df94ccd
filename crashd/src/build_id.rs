//! Module build ids (the `NT_GNU_BUILD_ID` note a linker writes into an ELF file), found
//! either in the module's first page as the core captured it (the kernel dumps ELF headers by
//! default, coredump_filter bit 4) or in the mapped file itself. The build id is what symbol
//! servers key on, so the minidump's CodeView records carry it.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use crate::elf::{
    FileHeader, Notes, ProgramHeader, EHDR_SIZE, ET_DYN, ET_EXEC, PHDR_SIZE, PT_LOAD, PT_NOTE,
};
use crate::memory::MemoryImage;
use crate::notes::NT_GNU_BUILD_ID;

/// Program headers read from a module at most, note segment bytes at most, id bytes at most.
const MAX_MODULE_PHDRS: usize = 256;
const MAX_NOTE_SEGMENT: u64 = 64 << 10;
const MAX_BUILD_ID: usize = 64;
/// How much of each module's start the core reader is asked to capture.
pub const HEADER_PEEK: u64 = 4096;

fn find_in_notes(data: &[u8], align: u64) -> Option<Vec<u8>> {
    Notes::new(data, align)
        .find(|n| n.name == b"GNU" && n.n_type == NT_GNU_BUILD_ID && !n.desc.is_empty())
        .map(|n| n.desc[..n.desc.len().min(MAX_BUILD_ID)].to_vec())
}

fn image_header(bytes: &[u8]) -> Option<FileHeader> {
    let header = FileHeader::parse(bytes).ok()?;
    matches!(header.e_type, ET_DYN | ET_EXEC).then_some(header)
}

/// Whether the captured memory at `base` starts with an ELF header of a loadable image.
pub fn is_elf_in_memory(image: &MemoryImage, base: u64) -> bool {
    image.read(base, EHDR_SIZE).and_then(image_header).is_some()
}

/// The build id of the ELF image loaded at `base`, from captured memory.
pub fn from_memory(image: &MemoryImage, base: u64) -> Option<Vec<u8>> {
    let start = image.read_from(base)?;
    let header = image_header(start)?;
    let phoff = usize::try_from(header.e_phoff).ok()?;
    let count = usize::from(header.e_phnum).min(MAX_MODULE_PHDRS);
    let table = start.get(phoff..phoff.checked_add(count * PHDR_SIZE)?)?;
    let phdrs = ProgramHeader::parse_table(table, count);
    // Where the first PT_LOAD's page landed is `base`; notes are placed relative to it.
    let first_load = phdrs.iter().find(|p| p.p_type == PT_LOAD)?;
    let bias = base.wrapping_sub(first_load.p_vaddr & !0xfff);
    phdrs
        .iter()
        .filter(|p| p.p_type == PT_NOTE && p.p_filesz <= MAX_NOTE_SEGMENT)
        .find_map(|p| {
            let bytes = image.read(bias.wrapping_add(p.p_vaddr), p.p_filesz as usize)?;
            find_in_notes(bytes, p.p_align)
        })
}

/// What a mapped file turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileIdentity {
    NotElf,
    Elf { build_id: Option<Vec<u8>> },
}

/// Reads the ELF header, program headers and notes of the file at `path`.
pub fn from_file(path: &Path) -> std::io::Result<FileIdentity> {
    let mut file = File::open(path)?;
    let mut ehdr = [0u8; EHDR_SIZE];
    if file.read_exact(&mut ehdr).is_err() {
        return Ok(FileIdentity::NotElf);
    }
    let Some(header) = image_header(&ehdr) else {
        return Ok(FileIdentity::NotElf);
    };
    let count = usize::from(header.e_phnum).min(MAX_MODULE_PHDRS);
    let mut table = vec![0u8; count * PHDR_SIZE];
    file.seek(SeekFrom::Start(header.e_phoff))?;
    if file.read_exact(&mut table).is_err() {
        return Ok(FileIdentity::Elf { build_id: None });
    }
    for p in ProgramHeader::parse_table(&table, count) {
        if p.p_type != PT_NOTE || p.p_filesz > MAX_NOTE_SEGMENT {
            continue;
        }
        let mut data = vec![0u8; p.p_filesz as usize];
        file.seek(SeekFrom::Start(p.p_offset))?;
        if file.read_exact(&mut data).is_err() {
            continue;
        }
        if let Some(id) = find_in_notes(&data, p.p_align) {
            return Ok(FileIdentity::Elf { build_id: Some(id) });
        }
    }
    Ok(FileIdentity::Elf { build_id: None })
}

/// Lowercase hex, as `file`, `readelf -n` and symbol servers print a build id.
pub fn to_hex(id: &[u8]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elf::test_utils::{ehdr, note, phdr};
    use crate::elf::PF_R;
    use crate::memory::Region;

    const ID: [u8; 20] = [0xab; 20];

    /// A small shared object: header, a PT_LOAD at vaddr 0 and a PT_NOTE at 0x200.
    fn tiny_dso() -> Vec<u8> {
        let mut n = note(b"GNU", 5, &[0; 8]);
        n.extend(note(b"GNU", NT_GNU_BUILD_ID, &ID));
        let mut image = ehdr(ET_DYN, 2);
        image.extend(phdr(PT_LOAD, PF_R, 0, 0, 0x1000, 0x1000));
        image.extend(phdr(
            PT_NOTE,
            PF_R,
            0x200,
            0x200,
            n.len() as u64,
            n.len() as u64,
        ));
        image.resize(0x200, 0);
        image.extend(n);
        image.resize(0x1000, 0);
        image
    }

    #[test]
    fn from_memory_first_page_yields_build_id() {
        let base = 0x7f00_0000_0000;
        let image = MemoryImage::from_regions(vec![Region {
            start: base,
            bytes: tiny_dso(),
        }]);
        assert!(is_elf_in_memory(&image, base));
        assert_eq!(from_memory(&image, base), Some(ID.to_vec()));
        assert_eq!(from_memory(&image, base + 0x1000), None);
    }

    #[test]
    fn from_file_dso_yields_build_id_and_non_elf_none() {
        let dir = tempfile::tempdir().unwrap();
        let so = dir.path().join("libx.so");
        std::fs::write(&so, tiny_dso()).unwrap();
        assert_eq!(
            from_file(&so).unwrap(),
            FileIdentity::Elf {
                build_id: Some(ID.to_vec())
            }
        );
        let text = dir.path().join("notes.txt");
        std::fs::write(&text, "hello").unwrap();
        assert_eq!(from_file(&text).unwrap(), FileIdentity::NotElf);
        assert!(from_file(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn to_hex_is_lowercase_pairs() {
        assert_eq!(to_hex(&[0x0a, 0xff]), "0aff");
    }
}
