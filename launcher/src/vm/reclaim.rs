//! What a launcher that starts reclaims from launchers that died without tearing down
//! (`kill -9`, a crash, a power cut of the launcher alone): run dirs, `--container` disk
//! images, and TAPs, each only once no live launcher can own it.
//!
//! - A run dir `<runtime>/vms/<id>` is removed while we hold the id's lease ourselves
//!   (`Pool::allocate(Some(id))`), so no launcher can be creating it meanwhile.
//! - `<runtime>/container-<pid>.img` is removed when `<pid>` is no longer a vm_launcher.
//! - A `vmtap<cid>` whose alias names this runtime dir is deleted when no live lease has
//!   that id and CID. (A launcher that takes that CID in the instant between our check and
//!   the delete would lose its fresh tap; its boot then fails cleanly.)
//!
//! All of it is best effort: a failure here never stops a VM from booting.

use std::path::{Path, PathBuf};

use crate::pool::{LeaseInfo, Pool};
use crate::tap;

use super::steps::vms_dir;

/// Reclaims every leftover under `pool`'s runtime dir; one line on stderr per thing.
pub fn reclaim(pool: &Pool) {
    let Ok(live) = pool.list() else {
        return;
    };
    let runtime = pool.config().runtime_dir.clone();
    for id in run_dirs(&runtime) {
        if !live.iter().any(|l| l.id == id) {
            reclaim_run_dir(pool, &runtime, &id);
        }
    }
    for (pid, image) in container_images(&runtime) {
        if !is_launcher(pid) && std::fs::remove_file(&image).is_ok() {
            note(format_args!("{} (launcher {pid} is gone)", image.display()));
        }
    }
    // Only root can have made (or can delete) a tap.
    if nix::unistd::geteuid().is_root() {
        reclaim_taps(&runtime, &live);
    }
}

fn note(what: std::fmt::Arguments<'_>) {
    eprintln!("vm_launcher: reclaimed {what}");
}

/// The VM ids that have a run dir.
fn run_dirs(runtime: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(vms_dir(runtime)) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect()
}

fn reclaim_run_dir(pool: &Pool, runtime: &Path, id: &str) {
    // Holding the id's lease: nobody else can be booting a VM with this id now. A name
    // that is not a valid id cannot be a run dir of ours; a held id is someone's.
    let Ok(lease) = pool.allocate(Some(id)) else {
        return;
    };
    let dir = vms_dir(runtime).join(id);
    if std::fs::remove_dir_all(&dir).is_ok() {
        note(format_args!(
            "{} (VM {id}: its launcher is gone)",
            dir.display()
        ));
    }
    drop(lease);
}

/// `<runtime>/container-<pid>.img` files, with the pid that made each.
fn container_images(runtime: &Path) -> Vec<(u32, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(runtime) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| {
            let path = e.ok()?.path();
            let name = path.file_name()?.to_str()?;
            let pid = name.strip_prefix("container-")?.strip_suffix(".img")?;
            Some((pid.parse().ok()?, path))
        })
        .collect()
}

/// Is `pid` a running vm_launcher? A pid reused by anything else means the image's maker
/// is gone; a reused pid that is again a vm_launcher only delays the reclaim.
fn is_launcher(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .is_ok_and(|comm| comm.trim_end() == "vm_launcher")
}

fn reclaim_taps(runtime: &Path, live: &[LeaseInfo]) {
    let ours = |owner: &tap::Owner| same_dir(&owner.runtime_dir, runtime);
    for t in tap::existing() {
        let Some(owner) = t.owner.filter(ours) else {
            continue;
        };
        let held = live
            .iter()
            .any(|l| l.id == owner.vm_id && l.cid.is_none_or(|c| c == t.cid));
        // Read again just before deleting: a new owner may have replaced it meanwhile.
        if !held && tap::owner_of(&t.name).as_ref() == Some(&owner) && tap::delete(&t.name).is_ok()
        {
            note(format_args!(
                "tap {} (VM {}: its launcher is gone)",
                t.name, owner.vm_id
            ));
        }
    }
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}
