//! Which memory to keep from the core, decided from the notes before the memory streams by:
//! each thread's stack from its stack pointer up, small windows around the crashing
//! instruction and the fault address, and the first page of every module (for build ids;
//! not written to the minidump). When the minidump would exceed its size cap, stacks are
//! trimmed (the far end first, other threads before the crashing one) and the plan says by
//! how much.

use std::ops::Range;

use crate::build_id::HEADER_PEEK;
use crate::core_reader::CoreLayout;
use crate::memory::{around, coalesce, total_len};
use crate::notes::ThreadNotes;

/// Bytes below the stack pointer kept (the x86-64 red zone).
pub const RED_ZONE: u64 = 128;
/// Stack bytes kept above the stack pointer: the crashing thread, the others.
pub const CRASH_STACK_MAX: u64 = 256 << 10;
pub const THREAD_STACK_MAX: u64 = 64 << 10;
/// The window kept around the crashing instruction and around the fault address.
pub const WINDOW: u64 = 256;

/// The memory to capture and which part of it each thread's stack is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Per thread (in note order): the stack range to write.
    pub stacks: Vec<Range<u64>>,
    /// Windows around the crash (instruction pointer, fault address).
    pub windows: Vec<Range<u64>>,
    /// Module first pages, read for build ids only.
    pub peeks: Vec<Range<u64>>,
    /// Bytes of memory left out to stay under the size cap.
    pub trimmed: u64,
}

impl Plan {
    /// Every range the core reader should capture.
    pub fn wanted(&self) -> Vec<Range<u64>> {
        let mut all = self.output();
        all.extend(self.peeks.iter().cloned());
        coalesce(all)
    }

    /// The ranges that go into the minidump (disjoint, sorted).
    pub fn output(&self) -> Vec<Range<u64>> {
        let mut all = self.stacks.clone();
        all.extend(self.windows.iter().cloned());
        coalesce(all)
    }
}

/// The stack of a thread: from just below `rsp` up to `max` bytes, not past its segment.
fn stack_range(layout: &CoreLayout, rsp: u64, max: u64) -> Range<u64> {
    let start = rsp.saturating_sub(RED_ZONE) & !0xf;
    let limit = layout
        .load_at(rsp)
        .map_or(start.saturating_add(max), |seg| {
            seg.p_vaddr.saturating_add(seg.p_memsz)
        });
    start..limit.min(start.saturating_add(max)).max(start)
}

fn shorten(r: &Range<u64>, len: u64) -> Range<u64> {
    r.start..r.start + len.min(r.end - r.start)
}

/// Plans the capture for `threads` (the crashing one first; the ones the minidump keeps).
/// `budget` is what the memory may take in the minidump.
pub fn plan(
    layout: &CoreLayout,
    threads: &[ThreadNotes],
    crash_addr: Option<u64>,
    module_bases: &[u64],
    budget: u64,
) -> Plan {
    let mut windows = Vec::new();
    if let Some(crash) = threads.first() {
        windows.push(around(crash.regs.rip, WINDOW));
    }
    if let Some(addr) = crash_addr.filter(|&a| layout.load_at(a).is_some()) {
        windows.push(around(addr, WINDOW));
    }
    let windows = coalesce(windows);
    let mut remaining = budget.saturating_sub(total_len(&windows));

    let wanted: Vec<Range<u64>> = threads
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let max = if i == 0 {
                CRASH_STACK_MAX
            } else {
                THREAD_STACK_MAX
            };
            stack_range(layout, t.regs.rsp, max)
        })
        .collect();
    let requested: u64 = wanted.iter().map(|r| r.end - r.start).sum();
    let mut stacks = wanted.clone();
    if let Some(first) = stacks.first_mut() {
        *first = shorten(first, remaining);
        remaining -= first.end - first.start;
    }
    // Water-fill the others: each gets an equal share, what a small stack leaves goes on.
    let mut order: Vec<usize> = (1..stacks.len()).collect();
    order.sort_by_key(|&i| stacks[i].end - stacks[i].start);
    let mut left = order.len() as u64;
    for i in order {
        let share = remaining / left.max(1);
        stacks[i] = shorten(&stacks[i], share);
        remaining -= stacks[i].end - stacks[i].start;
        left -= 1;
    }
    let granted: u64 = stacks.iter().map(|r| r.end - r.start).sum();
    let peeks = module_bases
        .iter()
        .map(|&b| b..b.saturating_add(HEADER_PEEK))
        .collect();
    Plan {
        stacks,
        windows,
        peeks,
        trimmed: requested - granted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elf::{ProgramHeader, PT_LOAD};
    use crate::notes::Registers;

    fn layout(rsps: &[u64]) -> CoreLayout {
        let mut l = CoreLayout::default();
        for (i, &rsp) in rsps.iter().enumerate() {
            l.notes.threads.push(ThreadNotes {
                tid: 100 + i as u32,
                cursig: 11,
                regs: Registers {
                    rsp,
                    rip: 0x40_1000,
                    ..Registers::default()
                },
                fpregs: None,
            });
            l.loads.push(ProgramHeader {
                p_type: PT_LOAD,
                p_flags: 6,
                p_offset: 0,
                p_vaddr: rsp & !0xf_ffff,
                p_filesz: 0x10_0000,
                p_memsz: 0x10_0000,
                p_align: 4096,
            });
        }
        l.loads.push(ProgramHeader {
            p_type: PT_LOAD,
            p_flags: 5,
            p_offset: 0,
            p_vaddr: 0x40_0000,
            p_filesz: 0x1_0000,
            p_memsz: 0x1_0000,
            p_align: 4096,
        });
        l
    }

    #[test]
    fn plan_ample_budget_keeps_full_stacks_within_segments() {
        let l = layout(&[0x7000_000f_0000, 0x7100_0008_0000]);
        let p = plan(
            &l,
            &l.notes.threads,
            Some(0x40_2000),
            &[0x40_0000],
            64 << 20,
        );
        assert_eq!(p.trimmed, 0);
        // Crashing stack: 64 KiB left in its 1 MiB segment above rsp, plus the red zone.
        assert_eq!(p.stacks[0], 0x7000_000e_ff80..0x7000_0010_0000);
        assert_eq!(p.stacks[1].end - p.stacks[1].start, THREAD_STACK_MAX);
        assert_eq!(p.windows, vec![0x40_0f80..0x40_1080, 0x40_1f80..0x40_2080]);
        assert_eq!(p.peeks, vec![0x40_0000..0x40_1000]);
        assert!(p.wanted().len() >= 4);
    }

    #[test]
    fn plan_fault_address_outside_the_core_gets_no_window() {
        let l = layout(&[0x7000_0008_0000]);
        let p = plan(&l, &l.notes.threads, Some(0x10), &[], 1 << 20);
        assert_eq!(p.windows.len(), 1);
    }

    #[test]
    fn plan_small_budget_trims_other_threads_first() {
        let l = layout(&[0x7000_0008_0000, 0x7100_0008_0000, 0x7200_0008_0000]);
        let p = plan(&l, &l.notes.threads, None, &[], 256 + 100_000);
        assert_eq!(p.stacks[0].end - p.stacks[0].start, 100_000);
        assert_eq!(p.stacks[1].start, p.stacks[1].end);
        let total: u64 = p.stacks.iter().map(|r| r.end - r.start).sum();
        assert_eq!(p.trimmed, CRASH_STACK_MAX + 2 * THREAD_STACK_MAX - total);
    }

    #[test]
    fn plan_water_fill_shares_evenly() {
        let l = layout(&[0x7000_0008_0000, 0x7100_0008_0000, 0x7200_0008_0000]);
        let crash = CRASH_STACK_MAX;
        let p = plan(&l, &l.notes.threads, None, &[], 256 + crash + 2 * 10_000);
        assert_eq!(p.stacks[0].end - p.stacks[0].start, crash);
        assert_eq!(p.stacks[1].end - p.stacks[1].start, 10_000);
        assert_eq!(p.stacks[2].end - p.stacks[2].start, 10_000);
    }

    #[test]
    fn plan_no_threads_is_empty() {
        let p = plan(&CoreLayout::default(), &[], Some(5), &[], 1 << 20);
        assert!(p.stacks.is_empty() && p.windows.is_empty());
        assert_eq!(p.trimmed, 0);
    }
}
