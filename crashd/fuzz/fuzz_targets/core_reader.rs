//! Any bytes as a core, streamed like a pipe: reading, planning and writing the minidump must
//! never panic or hang, must stay within the size cap, and must always produce a minidump
//! (a broken core gives a partial one, marked so in the metadata).
#![no_main]

use crash_collector::collect::{convert, CrashArgs, MemorySource, Options};
use crash_collector::ProcSnapshot;
use libfuzzer_sys::fuzz_target;

const MAX_SIZE: u64 = 256 << 10;

fuzz_target!(|data: &[u8]| {
    let args = CrashArgs {
        pid: 42,
        signal: 11,
        time: 1_700_000_000,
        exe: "fuzz".into(),
    };
    let opts = Options {
        max_size: MAX_SIZE,
        // Paths in a fuzzed NT_FILE must not make the fuzzer read the machine's files.
        read_module_files: false,
        // Both ways through the stream: stop when the memory is found, or read to the end.
        memory_source: if data.len() % 2 == 0 {
            MemorySource::Auto
        } else {
            MemorySource::Core
        },
    };
    let report = convert(data, ProcSnapshot::default(), &args, &opts);
    assert_eq!(&report.minidump[..4], b"MDMP");
    assert!(report.minidump.len() as u64 <= MAX_SIZE + (64 << 10));
    if report.metadata.get("threads").is_some_and(|t| t == "0") {
        assert_eq!(
            report.metadata.get("partial").map(String::as_str),
            Some("yes")
        );
    }
});
