//! Writes the minidump: the streams breakpad's Linux writer emits (ThreadList, ModuleList,
//! MemoryList, Exception, SystemInfo and the Linux text streams), from what the core and
//! /proc gave. Thread stacks point into the memory list's regions, so no byte is stored twice.

mod context;
mod streams;
mod writer;

use std::ops::Range;

pub use context::CONTEXT_AMD64_SIZE;
pub use streams::{CpuFacts, Exception};
pub use writer::TooLarge;

use crate::memory::MemoryImage;
use crate::modules::Module;
use crate::notes::ThreadNotes;
use streams::*;
use writer::{put_u32, Builder, Location};

/// The Linux text streams, in the order written. Empty ones are left out.
#[derive(Debug, Clone, Default)]
pub struct TextStreams {
    pub cpuinfo: Vec<u8>,
    pub status: Vec<u8>,
    pub lsb_release: Vec<u8>,
    pub cmdline: Vec<u8>,
    pub environ: Vec<u8>,
    pub auxv: Vec<u8>,
    pub maps: Vec<u8>,
}

impl TextStreams {
    fn entries(&self) -> [(u32, &[u8]); 7] {
        [
            (LINUX_CPU_INFO, &self.cpuinfo),
            (LINUX_PROC_STATUS, &self.status),
            (LINUX_LSB_RELEASE, &self.lsb_release),
            (LINUX_CMD_LINE, &self.cmdline),
            (LINUX_ENVIRON, &self.environ),
            (LINUX_AUXV, &self.auxv),
            (LINUX_MAPS, &self.maps),
        ]
    }

    pub fn total_len(&self) -> u64 {
        self.entries().iter().map(|(_, b)| b.len() as u64 + 8).sum()
    }
}

/// Everything one minidump is made of.
pub struct DumpInput<'a> {
    pub threads: &'a [ThreadNotes],
    /// One stack range per thread (same order as `threads`).
    pub stacks: &'a [Range<u64>],
    /// Disjoint ranges of memory to write (the stacks and the crash windows).
    pub memory: &'a [Range<u64>],
    pub image: &'a MemoryImage,
    pub modules: &'a [Module],
    pub exception: Option<Exception>,
    pub cpu: CpuFacts,
    pub kernel_release: String,
    /// The OS description SystemInfo carries ("Linux 6.1.0 #1 SMP … x86_64").
    pub os_description: String,
    pub text: TextStreams,
    pub time: u32,
}

/// Bytes a minidump takes besides captured memory, for the size budget.
pub fn overhead(
    threads: usize,
    modules: &[Module],
    memory_regions: usize,
    text: &TextStreams,
) -> u64 {
    let per_module: u64 = modules
        .iter()
        .map(|m| MODULE_SIZE as u64 + 16 + 2 * m.path.len() as u64 + 16 + 8 + 64)
        .sum();
    // Header, directory, list counts, exception, system info, its OS string, and a margin for
    // alignment padding and memory regions split by segment boundaries.
    let fixed = 32 + 16 * 12 + 8 * 32 + EXCEPTION_STREAM_SIZE + SYSTEM_INFO_SIZE + 512 + 4096;
    fixed as u64
        + (8 + threads * (THREAD_SIZE + CONTEXT_AMD64_SIZE + 8)) as u64
        + 8
        + per_module
        + (8 + memory_regions * (MEMORY_DESCRIPTOR_SIZE + 8)) as u64
        + text.total_len()
}

/// The location of `range`'s first bytes within the written memory regions.
fn locate(written: &[(u64, Location)], range: &Range<u64>) -> Option<(u64, Location)> {
    written.iter().find_map(|&(start, loc)| {
        let end = start + u64::from(loc.size);
        (start <= range.start && range.start < end).then(|| {
            let skip = (range.start - start) as u32;
            let size = (range.end.min(end) - range.start) as u32;
            (
                range.start,
                Location {
                    size,
                    rva: loc.rva + skip,
                },
            )
        })
    })
}

/// Serializes the minidump.
pub fn write(input: &DumpInput<'_>) -> Result<Vec<u8>, TooLarge> {
    let mut b = Builder::new(5 + 7, input.time);

    // Memory first: thread stacks and the memory list refer into it.
    let mut written = Vec::new();
    for range in input.memory {
        for (start, bytes) in input.image.slices(range.clone()) {
            written.push((start, b.append(bytes)?));
        }
    }

    let mut contexts = Vec::with_capacity(input.threads.len());
    for t in input.threads {
        contexts.push(b.append(&context::context_amd64(t))?);
    }
    let mut list = Vec::with_capacity(4 + input.threads.len() * THREAD_SIZE);
    put_u32(&mut list, input.threads.len() as u32);
    for (i, t) in input.threads.iter().enumerate() {
        let (start, stack) = input
            .stacks
            .get(i)
            .and_then(|r| locate(&written, r))
            .unwrap_or((t.regs.rsp, Location::default()));
        thread(&mut list, t.tid, start, stack, contexts[i]);
    }
    b.add_stream(THREAD_LIST, &list)?;

    let mut list = Vec::with_capacity(4 + input.modules.len() * MODULE_SIZE);
    put_u32(&mut list, input.modules.len() as u32);
    for m in input.modules {
        let name = b.append_string(&m.path)?;
        let cv = match &m.build_id {
            Some(id) => b.append(&codeview_elf(id))?,
            None => Location::default(),
        };
        module(
            &mut list,
            m.base,
            m.size.min(u64::from(u32::MAX)) as u32,
            name,
            cv,
        );
    }
    b.add_stream(MODULE_LIST, &list)?;

    let mut list = Vec::with_capacity(4 + written.len() * MEMORY_DESCRIPTOR_SIZE);
    put_u32(&mut list, written.len() as u32);
    for &(start, loc) in &written {
        memory_descriptor(&mut list, start, loc);
    }
    b.add_stream(MEMORY_LIST, &list)?;

    if let Some(e) = &input.exception {
        let context = input
            .threads
            .iter()
            .position(|t| t.tid == e.tid)
            .map_or_else(Location::default, |i| contexts[i]);
        let mut rec = Vec::with_capacity(EXCEPTION_STREAM_SIZE);
        exception(&mut rec, e, context);
        b.add_stream(EXCEPTION, &rec)?;
    }

    let csd = b.append_string(&input.os_description)?;
    let mut info = Vec::with_capacity(SYSTEM_INFO_SIZE);
    system_info(&mut info, &input.cpu, &input.kernel_release, csd);
    b.add_stream(SYSTEM_INFO, &info)?;

    for (stream_type, bytes) in input.text.entries() {
        if !bytes.is_empty() {
            b.add_stream(stream_type, bytes)?;
        }
    }
    Ok(b.finish())
}
