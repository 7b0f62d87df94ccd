//! `stop` and `list`: the commands that act on VMs already running, found through the pool's
//! leases and each VM's run dir.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::{fail, runtime_dir};
use crate::pool::{Pool, PoolConfig};
use crate::vm_info;

pub fn stop(ids: Vec<String>, all: bool, runtime: Option<PathBuf>) -> ExitCode {
    let pool = match Pool::open(PoolConfig::new(runtime_dir(runtime))) {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    let leases = match pool.list() {
        Ok(l) => l,
        Err(e) => return fail(e),
    };
    let mut missing = false;
    let targets: Vec<_> = if all {
        leases
    } else {
        ids.iter()
            .filter_map(|id| {
                let found = leases.iter().find(|l| &l.id == id).cloned();
                if found.is_none() {
                    eprintln!("vm_launcher: no running VM {id:?}");
                    missing = true;
                }
                found
            })
            .collect()
    };
    // The VM's launcher tears everything down on SIGTERM. The lease records its launcher's
    // start time, so a pid since reused by another process is never signalled.
    let targets: Vec<_> = targets
        .into_iter()
        .filter(|lease| match lease.signal(Signal::SIGTERM) {
            Ok(true) => true,
            Ok(false) => {
                eprintln!(
                    "vm_launcher: VM {}: its launcher (pid {:?}) is no longer running; not signalling it",
                    lease.id, lease.pid
                );
                missing = true;
                false
            }
            Err(e) => {
                eprintln!("vm_launcher: VM {}: cannot signal its launcher: {e}", lease.id);
                missing = true;
                false
            }
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    for lease in &targets {
        while pool
            .list()
            .is_ok_and(|l| l.iter().any(|x| x.id == lease.id))
        {
            if Instant::now() > deadline {
                return fail(format!("VM {} did not stop within 60s", lease.id));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        println!("stopped {}", lease.id);
    }
    if missing {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

pub fn list(runtime: Option<PathBuf>, json: bool) -> ExitCode {
    let runtime = runtime_dir(runtime);
    let pool = match Pool::open(PoolConfig::new(&runtime)) {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    let leases = match pool.list() {
        Ok(l) => l,
        Err(e) => return fail(e),
    };
    let info = |id: &str| vm_info::read(&runtime.join("vms").join(id));
    if json {
        let opt = |v: Option<String>| v.unwrap_or_else(|| "null".into());
        let entries: Vec<String> = leases
            .iter()
            .map(|l| {
                let info = info(&l.id);
                let app = info.as_ref().map(|i| {
                    let args: Vec<String> =
                        i.app.iter().map(|a| vm_info::json_string(a)).collect();
                    format!("[{}]", args.join(","))
                });
                let ports = |pick: fn(&vm_info::VmInfo) -> &[String]| {
                    info.as_ref().map(|i| vm_info::json_strings(pick(i)))
                };
                let volumes = info.as_ref().map(|i| {
                    let list: Vec<String> = i.volumes.iter().map(|v| v.to_json()).collect();
                    format!("[{}]", list.join(","))
                });
                format!(
                    "{{\"id\":{},\"cid\":{},\"pid\":{},\"state\":\"{}\",\"started\":{},\"guest_ip\":{},\"host_port\":{},\"hypervisor\":{},\"app\":{},\"publish\":{},\"forward\":{},\"volumes\":{}}}",
                    vm_info::json_string(&l.id),
                    opt(l.cid.map(|v| v.to_string())),
                    opt(l.pid.map(|v| v.to_string())),
                    if info.is_some() { "running" } else { "starting" },
                    opt(info.as_ref().map(|i| i.started.to_string())),
                    opt(l.guest_ip.map(|v| vm_info::json_string(&v.to_string()))),
                    opt(l.host_port.map(|v| v.to_string())),
                    opt(info.as_ref().map(|i| vm_info::json_string(&i.hypervisor))),
                    opt(app),
                    opt(ports(|i| &i.publish)),
                    opt(ports(|i| &i.forward)),
                    opt(volumes),
                )
            })
            .collect();
        println!("[{}]", entries.join(","));
        return ExitCode::SUCCESS;
    }
    let show = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    println!(
        "{:<24} {:>6} {:>8} {:<15} {:>9} STATE",
        "ID", "CID", "PID", "GUEST_IP", "HOST_PORT"
    );
    for l in leases {
        let state = if info(&l.id).is_some() {
            "running"
        } else {
            "starting"
        };
        println!(
            "{:<24} {:>6} {:>8} {:<15} {:>9} {state}",
            l.id,
            show(l.cid.map(|v| v.to_string())),
            show(l.pid.map(|v| v.to_string())),
            show(l.guest_ip.map(|v| v.to_string())),
            show(l.host_port.map(|v| v.to_string())),
        );
    }
    ExitCode::SUCCESS
}
