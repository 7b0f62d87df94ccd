//! Reading the crashed process's memory from /proc/PID/mem, the way breakpad's core handler
//! does: while the kernel is still dumping (core_pipe_limit > 0) the process's memory is
//! intact and can be read at any address, so the collector need not stream the whole core to
//! reach the stacks near its end. Whatever cannot be read here (no /proc, a snapshot
//! directory, an unmapped page) is taken from the core stream instead.

use std::fs::File;
use std::io::ErrorKind;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::memory::{MemoryImage, Region};

const PAGE: u64 = 4096;

/// Reads as much of `len` bytes at `addr` as `mem` gives, stopping at the first failure.
fn read_prefix(mem: &File, addr: u64, len: u64) -> Vec<u8> {
    let mut buf = vec![0u8; len as usize];
    let mut done = 0usize;
    while done < buf.len() {
        match mem.read_at(&mut buf[done..], addr + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    buf.truncate(done);
    buf
}

/// Reads `range`, page by page past an unreadable page, into regions.
fn read_range(mem: &File, range: &Range<u64>, regions: &mut Vec<Region>) {
    let mut addr = range.start;
    while addr < range.end {
        let bytes = read_prefix(mem, addr, range.end - addr);
        if !bytes.is_empty() {
            let n = bytes.len() as u64;
            regions.push(Region { start: addr, bytes });
            addr += n;
            continue;
        }
        // Unreadable here: skip to the next page boundary and try again.
        addr = (addr / PAGE + 1).saturating_mul(PAGE);
    }
}

/// What the process's memory file (`/proc/PID/mem`) gave for `wanted`, and the parts of
/// `wanted` it did not.
pub fn read(mem_path: Option<&Path>, wanted: &[Range<u64>]) -> (MemoryImage, Vec<Range<u64>>) {
    let Some(mem) = mem_path.and_then(|p| File::open(p).ok()) else {
        return (MemoryImage::default(), wanted.to_vec());
    };
    let mut regions = Vec::new();
    for range in wanted {
        read_range(&mem, range, &mut regions);
    }
    let image = MemoryImage::from_regions(regions);
    let mut missing = Vec::new();
    for range in wanted {
        let mut at = range.start;
        for (start, bytes) in image.slices(range.clone()) {
            if start > at {
                missing.push(at..start);
            }
            at = start + bytes.len() as u64;
        }
        if at < range.end {
            missing.push(at..range.end);
        }
    }
    (image, missing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_own_memory_and_report_unmapped_as_missing() {
        let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let addr = data.as_ptr() as u64;
        let wanted = vec![addr..addr + 10_000, 0..100];
        let path = format!("/proc/{}/mem", std::process::id());
        let (image, missing) = read(Some(Path::new(&path)), &wanted);
        assert_eq!(image.read(addr, 10_000), Some(&data[..]));
        assert_eq!(missing, vec![0..100]);
    }

    #[test]
    fn read_without_proc_mem_misses_everything() {
        let dir = tempfile::tempdir().unwrap();
        let wanted = vec![1000..2000, 5000..6000];
        let (image, missing) = read(Some(&dir.path().join("7/mem")), &wanted);
        assert_eq!(image.total_bytes(), 0);
        assert_eq!(missing, wanted);
    }
}
