//! The fixed-layout records of the minidump streams this collector writes: MINIDUMP_THREAD,
//! MINIDUMP_MODULE (with a breakpad 'BpEL' CodeView record carrying the build id),
//! MINIDUMP_MEMORY_DESCRIPTOR, MINIDUMP_EXCEPTION_STREAM and MINIDUMP_SYSTEM_INFO, plus the
//! CPU facts SystemInfo takes from /proc/cpuinfo.

use super::writer::{put_u16, put_u32, put_u64, Location};

pub const THREAD_LIST: u32 = 3;
pub const MODULE_LIST: u32 = 4;
pub const MEMORY_LIST: u32 = 5;
pub const EXCEPTION: u32 = 6;
pub const SYSTEM_INFO: u32 = 7;
pub const LINUX_CPU_INFO: u32 = 0x4767_0003;
pub const LINUX_PROC_STATUS: u32 = 0x4767_0004;
pub const LINUX_LSB_RELEASE: u32 = 0x4767_0005;
pub const LINUX_CMD_LINE: u32 = 0x4767_0006;
pub const LINUX_ENVIRON: u32 = 0x4767_0007;
pub const LINUX_AUXV: u32 = 0x4767_0008;
pub const LINUX_MAPS: u32 = 0x4767_0009;

pub const THREAD_SIZE: usize = 48;
pub const MODULE_SIZE: usize = 108;
pub const MEMORY_DESCRIPTOR_SIZE: usize = 16;
pub const EXCEPTION_STREAM_SIZE: usize = 168;
pub const SYSTEM_INFO_SIZE: usize = 56;
/// 'BpEL': breakpad's CodeView signature for an ELF build id.
pub const CV_SIGNATURE_ELF: u32 = 0x4270_454c;
const PROCESSOR_ARCHITECTURE_AMD64: u16 = 9;
const PLATFORM_LINUX: u32 = 0x8201;

/// MINIDUMP_THREAD: id, stack (start address + location), context location.
pub fn thread(out: &mut Vec<u8>, tid: u32, stack_start: u64, stack: Location, context: Location) {
    put_u32(out, tid);
    put_u32(out, 0); // suspend count
    put_u32(out, 0); // priority class
    put_u32(out, 0); // priority
    put_u64(out, 0); // teb
    put_u64(out, stack_start);
    stack.put(out);
    context.put(out);
}

/// MINIDUMP_MODULE. Version info stays zero: ELF has none.
pub fn module(out: &mut Vec<u8>, base: u64, size: u32, name_rva: u32, cv: Location) {
    put_u64(out, base);
    put_u32(out, size);
    put_u32(out, 0); // checksum
    put_u32(out, 0); // time_date_stamp
    put_u32(out, name_rva);
    out.resize(out.len() + 52, 0); // VS_FIXEDFILEINFO
    cv.put(out);
    Location::default().put(out); // misc record
    out.resize(out.len() + 16, 0); // reserved0, reserved1
}

/// The CodeView record of an ELF module: 'BpEL' then the build id bytes.
pub fn codeview_elf(build_id: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + build_id.len());
    put_u32(&mut out, CV_SIGNATURE_ELF);
    out.extend_from_slice(build_id);
    out
}

/// MINIDUMP_MEMORY_DESCRIPTOR.
pub fn memory_descriptor(out: &mut Vec<u8>, start: u64, loc: Location) {
    put_u64(out, start);
    loc.put(out);
}

/// The signal as breakpad's Linux writers record it: code = signal number, flags =
/// `si_code`, address = the fault address (0 for signals sent by a process).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exception {
    pub tid: u32,
    pub signo: u32,
    pub si_code: u32,
    pub address: u64,
}

/// MINIDUMP_EXCEPTION_STREAM.
pub fn exception(out: &mut Vec<u8>, e: &Exception, context: Location) {
    put_u32(out, e.tid);
    put_u32(out, 0); // alignment
    put_u32(out, e.signo);
    put_u32(out, e.si_code);
    put_u64(out, 0); // nested exception record
    put_u64(out, e.address);
    put_u32(out, 0); // number of parameters
    put_u32(out, 0); // alignment
    out.resize(out.len() + 15 * 8, 0);
    context.put(out);
}

/// CPU facts for MINIDUMP_SYSTEM_INFO.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CpuFacts {
    pub vendor: String,
    pub family: u32,
    pub model: u32,
    pub stepping: u32,
    pub count: u32,
}

impl CpuFacts {
    /// Reads the first processor's vendor, family, model, stepping and counts processors.
    pub fn from_cpuinfo(text: &[u8]) -> CpuFacts {
        let text = String::from_utf8_lossy(text);
        let mut facts = CpuFacts::default();
        for line in text.lines() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let (key, value) = (key.trim(), value.trim());
            let number = || value.parse().unwrap_or(0);
            match key {
                "processor" => facts.count += 1,
                "vendor_id" if facts.vendor.is_empty() => facts.vendor = value.to_string(),
                "cpu family" if facts.count == 1 => facts.family = number(),
                "model" if facts.count == 1 => facts.model = number(),
                "stepping" if facts.count == 1 => facts.stepping = number(),
                _ => {}
            }
        }
        facts
    }

    /// CPUID leaf 1 EAX rebuilt from family, model and stepping.
    fn cpuid_version(&self) -> u32 {
        let (base_family, ext_family) = if self.family >= 15 {
            (15, self.family - 15)
        } else {
            (self.family, 0)
        };
        (self.stepping & 0xf)
            | (self.model & 0xf) << 4
            | (base_family & 0xf) << 8
            | (self.model >> 4 & 0xf) << 16
            | (ext_family & 0xff) << 20
    }
}

/// Parses "6.1.192-foo" into (6, 1, 192).
pub fn kernel_version(release: &str) -> (u32, u32, u32) {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse().unwrap_or(0));
    (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    )
}

/// MINIDUMP_SYSTEM_INFO for x86-64 Linux.
pub fn system_info(out: &mut Vec<u8>, cpu: &CpuFacts, release: &str, csd_rva: u32) {
    let (major, minor, build) = kernel_version(release);
    put_u16(out, PROCESSOR_ARCHITECTURE_AMD64);
    put_u16(out, cpu.family as u16);
    put_u16(
        out,
        ((cpu.model as u16) << 8) | (cpu.stepping as u16 & 0xff),
    );
    out.push(cpu.count.clamp(1, 255) as u8);
    out.push(0); // product type
    put_u32(out, major);
    put_u32(out, minor);
    put_u32(out, build);
    put_u32(out, PLATFORM_LINUX);
    put_u32(out, csd_rva);
    put_u16(out, 0); // suite mask
    put_u16(out, 0);
    let mut vendor = [0u8; 12];
    for (dst, src) in vendor.iter_mut().zip(cpu.vendor.bytes()) {
        *dst = src;
    }
    out.extend_from_slice(&vendor);
    put_u32(out, cpu.cpuid_version());
    put_u32(out, 0); // feature information
    put_u32(out, 0); // AMD extended features
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_sizes_match_the_format() {
        let mut t = Vec::new();
        thread(&mut t, 1, 2, Location::default(), Location::default());
        assert_eq!(t.len(), THREAD_SIZE);
        let mut m = Vec::new();
        module(&mut m, 1, 2, 3, Location::default());
        assert_eq!(m.len(), MODULE_SIZE);
        let mut e = Vec::new();
        exception(
            &mut e,
            &Exception {
                tid: 1,
                signo: 11,
                si_code: 1,
                address: 5,
            },
            Location::default(),
        );
        assert_eq!(e.len(), EXCEPTION_STREAM_SIZE);
        let mut s = Vec::new();
        system_info(&mut s, &CpuFacts::default(), "6.1.0", 0);
        assert_eq!(s.len(), SYSTEM_INFO_SIZE);
        let mut d = Vec::new();
        memory_descriptor(&mut d, 1, Location::default());
        assert_eq!(d.len(), MEMORY_DESCRIPTOR_SIZE);
    }

    #[test]
    fn cpu_facts_from_cpuinfo_first_processor_and_count() {
        let text = b"processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 85\nstepping\t: 7\n\n\
                     processor\t: 1\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 99\n";
        let facts = CpuFacts::from_cpuinfo(text);
        assert_eq!(
            facts,
            CpuFacts {
                vendor: "GenuineIntel".into(),
                family: 6,
                model: 85,
                stepping: 7,
                count: 2
            }
        );
        assert_eq!(facts.cpuid_version(), 0x0005_0657);
    }

    #[test]
    fn kernel_version_odd_strings() {
        assert_eq!(kernel_version("6.1.192-2-amd64"), (6, 1, 192));
        assert_eq!(kernel_version("6.18.44-fc-v669"), (6, 18, 44));
        assert_eq!(kernel_version(""), (0, 0, 0));
    }

    #[test]
    fn codeview_elf_starts_with_bpel() {
        assert_eq!(&codeview_elf(&[1, 2])[..], b"LEpB\x01\x02");
    }
}
