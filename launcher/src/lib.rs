//! The vm_launcher library: what the binary is built from, reachable by tests and benches.
//!
//! - `pool`: per-VM host resources (id, CID, MAC, /30, host port) leased across processes.
//! - `disk_config`: kernel, initrd and disks from the flags (`--vm-path`, `--disk`), checked.
//! - `hypervisor`: the command lines of QEMU, crosvm and kvmtool (lkvm) for one VM.
//! - `backend`: per-back-end wiring (sockets, vsock helper, peer identity).
//! - `vm`: one VM's life from lease to teardown; `commands`/`cli`: the subcommands.
//! - `host_services`, `log_forward`, `crash_spool`: what the guest calls on the host;
//!   `crash_upload`: the spool's reports to a Breakpad/Crashpad crash server.
//! - `attach`, `stream_client`, `terminal`, `exec_broker`: the application's and `exec`'s
//!   stdio, terminal and signals over the process I/O stream; `vm_info`: what `list` shows.
//! - `volume`: `--volume` host directories, checked, as virtio-9p shares.

pub mod attach;
pub mod backend;
pub mod cli;
pub mod commands;
pub mod container_image;
pub mod crash_spool;
pub mod crash_upload;
pub mod disk_config;
pub mod exec_broker;
pub mod host_services;
pub mod hypervisor;
pub mod log_forward;
pub mod pool;
pub mod port_forward;
pub mod stream_client;
mod sys;
pub mod tap;
pub mod terminal;
pub mod vm;
pub mod vm_info;
pub mod volume;
