//! A thread's registers as `CONTEXT_AMD64` (MDRawContextAMD64 in breakpad): the general
//! registers from NT_PRSTATUS and the fxsave area from NT_FPREGSET, 1232 bytes.

use super::writer::{put_u16, put_u32, put_u64};
use crate::notes::ThreadNotes;

pub const CONTEXT_AMD64_SIZE: usize = 1232;
const CONTEXT_AMD64: u32 = 0x0010_0000;
const CONTROL: u32 = CONTEXT_AMD64 | 0x1;
const INTEGER: u32 = CONTEXT_AMD64 | 0x2;
const SEGMENTS: u32 = CONTEXT_AMD64 | 0x4;
const FLOATING_POINT: u32 = CONTEXT_AMD64 | 0x8;
/// Offset of `mxcsr` inside the fxsave area.
const FXSAVE_MXCSR: usize = 24;

/// Serializes one thread's context.
pub fn context_amd64(thread: &ThreadNotes) -> Vec<u8> {
    let r = &thread.regs;
    let mut out = Vec::with_capacity(CONTEXT_AMD64_SIZE);
    out.resize(6 * 8, 0); // p1_home .. p6_home
    let mut flags = CONTROL | INTEGER | SEGMENTS;
    if thread.fpregs.is_some() {
        flags |= FLOATING_POINT;
    }
    put_u32(&mut out, flags);
    let mxcsr = thread
        .fpregs
        .as_ref()
        .and_then(|f| f.get(FXSAVE_MXCSR..FXSAVE_MXCSR + 4))
        .and_then(|b| b.try_into().ok())
        .map_or(0, u32::from_le_bytes);
    put_u32(&mut out, mxcsr);
    for seg in [r.cs, r.ds, r.es, r.fs, r.gs, r.ss] {
        put_u16(&mut out, seg as u16);
    }
    put_u32(&mut out, r.eflags as u32);
    out.resize(out.len() + 6 * 8, 0); // dr0-dr3, dr6, dr7
    for v in [
        r.rax, r.rcx, r.rdx, r.rbx, r.rsp, r.rbp, r.rsi, r.rdi, r.r8, r.r9, r.r10, r.r11, r.r12,
        r.r13, r.r14, r.r15, r.rip,
    ] {
        put_u64(&mut out, v);
    }
    match &thread.fpregs {
        Some(area) => out.extend_from_slice(&area[..]),
        None => out.resize(out.len() + 512, 0),
    }
    // vector_register[26], vector_control, debug_control and the four branch records.
    out.resize(CONTEXT_AMD64_SIZE, 0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notes::Registers;

    #[test]
    fn context_amd64_places_registers_at_windows_offsets() {
        let mut fx = [0u8; 512];
        fx[24..28].copy_from_slice(&0x1f80u32.to_le_bytes());
        let t = ThreadNotes {
            tid: 1,
            cursig: 11,
            regs: Registers {
                rax: 0x1111,
                rsp: 0x7ffd_0000,
                rip: 0x40_1234,
                r15: 0xf15,
                cs: 0x33,
                ss: 0x2b,
                eflags: 0x246,
                ..Registers::default()
            },
            fpregs: Some(Box::new(fx)),
        };
        let c = context_amd64(&t);
        let u64_at = |off: usize| u64::from_le_bytes(c[off..off + 8].try_into().unwrap());
        let u32_at = |off: usize| u32::from_le_bytes(c[off..off + 4].try_into().unwrap());
        assert_eq!(c.len(), CONTEXT_AMD64_SIZE);
        assert_eq!(u32_at(48), 0x0010_000f);
        assert_eq!(u32_at(52), 0x1f80);
        assert_eq!(u16::from_le_bytes([c[56], c[57]]), 0x33);
        assert_eq!(u16::from_le_bytes([c[66], c[67]]), 0x2b);
        assert_eq!(u32_at(68), 0x246);
        assert_eq!(u64_at(120), 0x1111);
        assert_eq!(u64_at(152), 0x7ffd_0000);
        assert_eq!(u64_at(240), 0xf15);
        assert_eq!(u64_at(248), 0x40_1234);
        assert_eq!(u32_at(256 + 24), 0x1f80);
    }
}
