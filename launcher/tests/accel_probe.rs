//! The KVM probe on real QEMU: a real kernel reaches the panic the probe waits for (under
//! TCG, which runs everywhere), anything else is a "no" with QEMU's reason or a timeout, and
//! no probe QEMU outlives its probe. And `auto` on this host: whatever it picks, it says why.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use vm_launcher::hypervisor::accel::{self, boot_probe, Probe};
use vm_launcher::hypervisor::{Accel, Machine, Qemu};

use common::{artifacts, processes_mentioning};

const QEMU: &str = "qemu-system-x86_64";

/// The project kernel, copied to `dir` so the probe's QEMU can be found by its path.
fn kernel_in(dir: &Path) -> std::path::PathBuf {
    let copy = dir.join("bzImage");
    std::fs::copy(&artifacts().0, &copy).unwrap();
    copy
}

#[test]
fn boot_probe_under_tcg_sees_the_kernel_panic() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = kernel_in(dir.path());
    let took = boot_probe(
        Path::new(QEMU),
        Machine::Q35,
        Accel::Tcg,
        &kernel,
        Duration::from_secs(30),
    )
    .unwrap_or_else(|why| panic!("a real kernel must boot under TCG: {why}"));
    eprintln!("probe under TCG: {:.2} s", took.as_secs_f64());
    assert!(took < Duration::from_secs(30));
    assert!(processes_mentioning(dir.path().to_str().unwrap()).is_empty());
}

#[test]
fn boot_probe_of_a_non_kernel_is_no_with_qemus_reason() {
    let dir = tempfile::tempdir().unwrap();
    let bogus = dir.path().join("bzImage");
    std::fs::write(&bogus, "not a kernel").unwrap();
    let started = Instant::now();
    let why = boot_probe(
        Path::new(QEMU),
        Machine::Q35,
        Accel::Tcg,
        &bogus,
        Duration::from_secs(30),
    )
    .unwrap_err();
    assert!(
        why.contains("ended") && why.contains("before the kernel ran"),
        "{why}"
    );
    assert!(started.elapsed() < Duration::from_secs(10), "{why}");
}

#[test]
fn boot_probe_timeout_is_no_and_kills_its_qemu() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = kernel_in(dir.path());
    let why = boot_probe(
        Path::new(QEMU),
        Machine::Q35,
        Accel::Tcg,
        &kernel,
        Duration::from_millis(50),
    )
    .unwrap_err();
    assert!(why.contains("no kernel panic within 0.05 s"), "{why}");
    assert!(processes_mentioning(dir.path().to_str().unwrap()).is_empty());
}

#[test]
fn boot_probe_of_a_missing_qemu_says_so() {
    let why = boot_probe(
        Path::new("/nonexistent/qemu"),
        Machine::Q35,
        Accel::Tcg,
        Path::new("/nonexistent/bzImage"),
        Duration::from_secs(5),
    )
    .unwrap_err();
    assert!(why.starts_with("cannot run /nonexistent/qemu:"), "{why}");
}

/// This host's answer, decided afresh: KVM only if a guest really boots under /dev/kvm
/// (on the development machines /dev/kvm is there and cannot run a kernel: TCG, and why).
#[test]
fn auto_on_this_host_agrees_with_a_real_kvm_boot() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = kernel_in(dir.path());
    let mut probe = Probe::new(&Qemu::new(Accel::Kvm), &kernel);
    probe.cache = Some(dir.path().join("accel"));
    let choice = probe.choose();
    eprintln!("{}", choice.line());
    assert!(choice.fresh);
    let device = accel::check_device(Path::new(accel::KVM_DEVICE));
    match choice.accel {
        Accel::Kvm => assert!(choice
            .why
            .starts_with("a probe guest booted under /dev/kvm")),
        Accel::Tcg if device.is_err() => assert!(choice.why.contains("TCG is 30-100x slower")),
        Accel::Tcg => {
            assert!(choice
                .why
                .contains("/dev/kvm opens but cannot run this kernel"));
            // The same kernel boots under TCG: it is KVM that failed, not the kernel.
            let tcg = boot_probe(
                Path::new(QEMU),
                Machine::Q35,
                Accel::Tcg,
                &kernel,
                Duration::from_secs(30),
            );
            assert!(tcg.is_ok(), "{tcg:?}");
        }
    }
    assert!(
        !probe.choose().fresh,
        "the second answer comes from the cache"
    );
    assert!(processes_mentioning(dir.path().to_str().unwrap()).is_empty());
}
