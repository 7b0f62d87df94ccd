//! crash_collector: the guest's core dump handler. The kernel pipes a crashed process's ELF
//! core into it (core_pattern `|/sbin/crash_collector -- %P %s %t %e`); it turns the core and
//! the process's /proc entries into a minidump and sends that, with metadata and the process
//! tree, to the host's CrashListener.
//!
//! Modules, from the bytes up:
//! - `elf`: ELF64 header, program header and note parsing.
//! - `notes`: the core's notes (registers per thread, signal, auxv, mapped files).
//! - `memory`: address ranges and the sparse image of captured memory.
//! - `core_reader`: the core as a forward-only stream: headers and notes, then wanted memory.
//! - `proc_info`: /proc/PID readers (any root directory, for tests) and the process tree.
//! - `proc_mem`: the crashed process's memory from /proc/PID/mem while the dump is in flight.
//! - `build_id`: NT_GNU_BUILD_ID from captured memory or from the mapped file.
//! - `modules`: mapped images → the module list.
//! - `plan`: which memory to keep within the minidump's size cap.
//! - `minidump`: the minidump writer (container, streams, CPU context).
//! - `collect`: core + /proc → minidump + metadata.
//! - `report`, `spool`: the report on disk and the bounded guest spool.
//! - `args`: the command line; `log`: one line per event; `sys`: syscalls.
//! - `program`: the collector, [`run_main`]: core → report in the spool, then it becomes
//!   crash_sender. It needs no gRPC: the guest's /sbin/crash_collector is built without
//!   the `grpc` feature, a small static binary.
//! - `send`, `sender` (feature `grpc`): crash_sender, which sends the spool to the host;
//!   the guest's multi-call `vm_tools_guest` runs it as /sbin/crash_sender.

pub mod args;
pub mod build_id;
pub mod collect;
pub mod core_reader;
pub mod elf;
pub mod log;
pub mod memory;
pub mod minidump;
pub mod modules;
pub mod notes;
pub mod plan;
pub mod proc_info;
pub mod proc_mem;
pub mod program;
pub mod report;
#[cfg(feature = "grpc")]
pub mod send;
#[cfg(feature = "grpc")]
pub mod sender;
pub mod spool;
pub mod sys;

pub use collect::{capture, convert, CrashArgs, Options};
pub use proc_info::{ProcSnapshot, ProcSource};
pub use program::run_main;
pub use report::CrashReportData;
