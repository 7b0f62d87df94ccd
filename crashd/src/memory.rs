//! Address ranges and the sparse memory image captured from a core: disjoint regions of
//! bytes, sorted by address, that the minidump's thread stacks and memory list are cut from.

use std::ops::Range;

/// Sorts and merges overlapping or touching ranges; empty ranges are dropped.
pub fn coalesce(mut ranges: Vec<Range<u64>>) -> Vec<Range<u64>> {
    ranges.retain(|r| r.start < r.end);
    ranges.sort_by_key(|r| r.start);
    let mut out: Vec<Range<u64>> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match out.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}

/// Total length of disjoint ranges.
pub fn total_len(ranges: &[Range<u64>]) -> u64 {
    ranges.iter().map(|r| r.end - r.start).sum()
}

/// `len` bytes centred on `addr`, clamped to the address space.
pub fn around(addr: u64, len: u64) -> Range<u64> {
    let start = addr.saturating_sub(len / 2);
    start..start.saturating_add(len)
}

/// One captured region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Region {
    pub start: u64,
    pub bytes: Vec<u8>,
}

impl Region {
    pub fn end(&self) -> u64 {
        self.start + self.bytes.len() as u64
    }
}

/// Disjoint captured regions, sorted by address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryImage {
    regions: Vec<Region>,
}

impl MemoryImage {
    /// Builds the image from regions in any order; touching regions are joined and a region
    /// overlapping an earlier one keeps only its new bytes.
    pub fn from_regions(mut regions: Vec<Region>) -> MemoryImage {
        regions.retain(|r| !r.bytes.is_empty());
        regions.sort_by_key(|r| r.start);
        let mut out: Vec<Region> = Vec::with_capacity(regions.len());
        for mut r in regions {
            if let Some(last) = out.last_mut() {
                let last_end = last.end();
                if r.start <= last_end {
                    let overlap = (last_end - r.start).min(r.bytes.len() as u64) as usize;
                    last.bytes.extend_from_slice(&r.bytes[overlap..]);
                    continue;
                }
            }
            r.bytes.shrink_to_fit();
            out.push(r);
        }
        MemoryImage { regions: out }
    }

    pub fn regions(&self) -> &[Region] {
        &self.regions
    }

    /// Both images as one (where they overlap, `self` wins).
    pub fn merged(self, other: MemoryImage) -> MemoryImage {
        let mut regions = self.regions;
        regions.extend(other.regions);
        MemoryImage::from_regions(regions)
    }

    pub fn total_bytes(&self) -> u64 {
        self.regions.iter().map(|r| r.bytes.len() as u64).sum()
    }

    /// The captured bytes of `range` as (address, bytes) pieces, in address order.
    pub fn slices(&self, range: Range<u64>) -> Vec<(u64, &[u8])> {
        self.regions
            .iter()
            .filter(|r| r.start < range.end && r.end() > range.start)
            .map(|r| {
                let s = range.start.max(r.start);
                let e = range.end.min(r.end());
                (s, &r.bytes[(s - r.start) as usize..(e - r.start) as usize])
            })
            .collect()
    }

    /// Exactly `len` bytes at `addr` if one region holds them all.
    pub fn read(&self, addr: u64, len: usize) -> Option<&[u8]> {
        let end = addr.checked_add(len as u64)?;
        let pieces = self.slices(addr..end);
        match pieces.as_slice() {
            [(start, bytes)] if *start == addr && bytes.len() == len => Some(bytes),
            _ => None,
        }
    }

    /// The bytes from `addr` to the end of the region holding `addr`.
    pub fn read_from(&self, addr: u64) -> Option<&[u8]> {
        self.regions
            .iter()
            .find(|r| r.start <= addr && addr < r.end())
            .map(|r| &r.bytes[(addr - r.start) as usize..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coalesce_overlapping_and_touching_merge() {
        let got = coalesce(vec![10..20, 5..6, 18..30, 30..31, 40..40, 50..60]);
        assert_eq!(got, vec![5..6, 10..31, 50..60]);
        assert_eq!(total_len(&got), 1 + 21 + 10);
    }

    #[test]
    fn around_near_zero_clamps() {
        assert_eq!(around(10, 256), 0..256);
        assert_eq!(around(1000, 256), 872..1128);
        assert_eq!(around(u64::MAX - 1, 256).end, u64::MAX);
    }

    #[test]
    fn image_slices_and_reads_follow_regions() {
        let img = MemoryImage::from_regions(vec![
            Region {
                start: 200,
                bytes: vec![2; 10],
            },
            Region {
                start: 100,
                bytes: vec![1; 10],
            },
            Region {
                start: 110,
                bytes: vec![3; 5],
            },
        ]);
        assert_eq!(img.regions().len(), 2);
        assert_eq!(img.total_bytes(), 25);
        assert_eq!(img.read(108, 4), Some(&[1, 1, 3, 3][..]));
        assert_eq!(img.read(113, 4), None);
        let pieces = img.slices(105..205);
        assert_eq!(pieces.len(), 2);
        assert_eq!((pieces[0].0, pieces[0].1.len()), (105, 10));
        assert_eq!((pieces[1].0, pieces[1].1.len()), (200, 5));
        assert_eq!(img.read_from(208), Some(&[2, 2][..]));
    }
}
