//! QEMU's accelerator: `--accel auto` (the default) is KVM when /dev/kvm opens read-write,
//! speaks API 12 and a probe guest boots under it; TCG otherwise. `--accel kvm|tcg` forces one.
//!
//! Opening the device proves little: the nested /dev/kvm of some cloud VMs (kvm_pvm, as on our
//! development machines) opens, answers the API ioctl and even runs `qemu -accel kvm -M none`,
//! then spins a core forever on a real kernel without printing a byte (measured: 30 s, no
//! output). So the probe boots the VM's own kernel, no initrd, `panic=-1`: a kernel that runs
//! ends in "Kernel panic - not syncing: VFS: Unable to mount root fs", and the probe stops at
//! that line (0.8-0.9 s under TCG here; a fraction of that under a working KVM). A kernel that
//! has not got there within [`PROBE_TIMEOUT`] means TCG.
//!
//! A hung KVM costs the whole timeout, so a decision is cached for the boot
//! (`$XDG_CACHE_HOME/vm_launcher/accel`, keyed by boot id, QEMU program and machine, and what
//! the device check saw; not by kernel: whether KVM runs guests is the host's property, the
//! first VM's kernel only serves to ask). A fresh decision prints one
//! line on stderr saying which and why; a cached one is silent, so `run`'s stderr stays the
//! application's.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};

use super::{Machine, Qemu};

/// What `KVM_GET_API_VERSION` has returned since Linux 2.6.22.
pub const KVM_API_VERSION: i32 = 12;
pub const KVM_DEVICE: &str = "/dev/kvm";
/// How long a probe guest may take to reach its panic (TCG needs ~0.9 s here, KVM far less).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// What a probe kernel prints once it has run all the way to mounting a root filesystem.
const PROBE_MARKER: &[u8] = b"Kernel panic";
/// No initramfs init (even a built-in one), no root: the kernel panics, `panic=-1` at once.
const PROBE_CMDLINE: &str = "console=ttyS0 loglevel=1 panic=-1 rdinit=/vm-launcher-kvm-probe";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        })
    }
}

impl FromStr for Accel {
    type Err = String;

    fn from_str(text: &str) -> Result<Accel, String> {
        match text {
            "kvm" => Ok(Accel::Kvm),
            "tcg" => Ok(Accel::Tcg),
            _ => Err(format!("accelerator {text:?}: expected kvm or tcg")),
        }
    }
}

/// `--accel`'s value: `auto` is None (decide with [`Probe::choose`]).
pub fn parse_flag(text: &str) -> Result<Option<Accel>, String> {
    match text {
        "auto" => Ok(None),
        "kvm" | "tcg" => text.parse().map(Some),
        _ => Err(format!("--accel {text:?}: expected auto, kvm or tcg")),
    }
}

/// Why `device` cannot serve as KVM, if it cannot: it must open read-write and speak API 12.
pub fn check_device(device: &Path) -> Result<(), String> {
    let name = device.display();
    let kvm = match OpenOptions::new().read(true).write(true).open(device) {
        Ok(kvm) => kvm,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(format!("no {name}")),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            return Err(format!(
                "cannot open {name}: permission denied (join the group that owns it, often kvm)"
            ))
        }
        Err(e) => return Err(format!("cannot open {name}: {e}")),
    };
    match crate::sys::kvm_api_version(kvm.as_fd()) {
        Ok(KVM_API_VERSION) => Ok(()),
        Ok(other) => Err(format!(
            "{name} speaks KVM API {other}, not {KVM_API_VERSION}"
        )),
        Err(e) => Err(format!("{name} is not KVM: {e}")),
    }
}

/// What `auto` decided and why; `fresh` when decided now rather than taken from the cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Choice {
    pub accel: Accel,
    pub why: String,
    pub fresh: bool,
}

impl Choice {
    /// The one line a fresh decision prints.
    pub fn line(&self) -> String {
        format!("vm_launcher: --accel auto: {}: {}", self.accel, self.why)
    }
}

/// The decision, given what the device check and (only if it passed) the probe found.
pub fn decide(
    device: &Path,
    checked: Result<(), String>,
    probe: impl FnOnce() -> Result<Duration, String>,
) -> (Accel, String) {
    let slow = "TCG is 30-100x slower than KVM";
    if let Err(why) = checked {
        return (Accel::Tcg, format!("{why}; {slow}"));
    }
    match probe() {
        Ok(took) => (
            Accel::Kvm,
            format!(
                "a probe guest booted under {} in {:.2} s",
                device.display(),
                took.as_secs_f64()
            ),
        ),
        Err(why) => (
            Accel::Tcg,
            format!(
                "{} opens but cannot run this kernel ({why}); {slow}, --accel kvm forces KVM",
                device.display()
            ),
        ),
    }
}

/// Boots `kernel` under `accel` with nothing to mount, until it panics for want of a root
/// filesystem: how long that took, or why it did not happen within `timeout`.
pub fn boot_probe(
    program: &Path,
    machine: Machine,
    accel: Accel,
    kernel: &Path,
    timeout: Duration,
) -> Result<Duration, String> {
    let mut cmd = Command::new(program);
    cmd.args(["-M", &machine.to_string(), "-accel", &accel.to_string()]);
    if accel == Accel::Kvm {
        cmd.args(["-cpu", "host"]);
    }
    cmd.args(["-m", "128M", "-smp", "1", "-nodefaults", "-no-reboot"])
        .args(["-display", "none", "-serial", "stdio", "-kernel"])
        .arg(kernel)
        .args(["-append", PROBE_CMDLINE])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    crate::sys::kill_with_parent(&mut cmd);
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
    let (seen_tx, seen_rx) = crossbeam_channel::bounded(1);
    let stdout = child.stdout.take();
    let reader = std::thread::spawn(move || {
        if let Some(out) = stdout {
            if watch_for_marker(out) {
                let _ = seen_tx.send(());
            }
        }
    });
    let result = match seen_rx.recv_timeout(timeout) {
        Ok(()) => Ok(started.elapsed()),
        Err(crossbeam_channel::RecvTimeoutError::Timeout) => Err(format!(
            "its probe guest printed no kernel panic within {} s",
            timeout.as_secs_f64()
        )),
        Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
            let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
            let mut text = String::new();
            if let Some(err) = child.stderr.take() {
                let _ = err.take(4096).read_to_string(&mut text);
            }
            let last = text.lines().rev().find(|l| !l.trim().is_empty());
            Err(format!(
                "its probe guest ended ({status}) before the kernel ran: {}",
                last.unwrap_or("no message").trim()
            ))
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    let _ = reader.join();
    result
}

/// Reads the serial console until [`PROBE_MARKER`] (true) or end of file (false).
fn watch_for_marker(mut out: impl Read) -> bool {
    let mut window = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match out.read(&mut buf) {
            Ok(0) => return false,
            Ok(n) => window.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
        if window
            .windows(PROBE_MARKER.len())
            .any(|w| w == PROBE_MARKER)
        {
            return true;
        }
        // Keep only a tail that could still start the marker.
        let keep = window.len().min(PROBE_MARKER.len());
        window.drain(..window.len() - keep);
    }
}

/// `auto` for one QEMU and kernel.
#[derive(Clone, Debug)]
pub struct Probe {
    pub program: PathBuf,
    pub machine: Machine,
    pub kernel: PathBuf,
    pub device: PathBuf,
    pub timeout: Duration,
    /// Where the decision is kept for this boot; None: decide every time.
    pub cache: Option<PathBuf>,
}

impl Probe {
    /// The real device, timeout and cache for `qemu` booting `kernel`.
    pub fn new(qemu: &Qemu, kernel: &Path) -> Probe {
        Probe {
            program: qemu.program.clone(),
            machine: qemu.machine,
            kernel: kernel.to_path_buf(),
            device: KVM_DEVICE.into(),
            timeout: PROBE_TIMEOUT,
            cache: default_cache(),
        }
    }

    /// KVM or TCG, from the cache when this boot already decided for the same QEMU and
    /// device state; otherwise decided now (concurrent launchers wait for one probe).
    pub fn choose(&self) -> Choice {
        let checked = check_device(&self.device);
        let key = self.key(&checked);
        let _lock = self.cache.as_deref().and_then(lock);
        if let Some(cache) = &self.cache {
            if let Some((accel, why)) = read_cache(cache, &key) {
                return Choice {
                    accel,
                    why,
                    fresh: false,
                };
            }
        }
        let (accel, why) = decide(&self.device, checked, || {
            boot_probe(
                &self.program,
                self.machine,
                Accel::Kvm,
                &self.kernel,
                self.timeout,
            )
        });
        if let Some(cache) = &self.cache {
            // A cache we cannot write only means deciding again next time.
            let _ = write_cache(cache, &key, accel, &why);
        }
        Choice {
            accel,
            why,
            fresh: true,
        }
    }

    /// Everything the decision depends on, as one line.
    fn key(&self, checked: &Result<(), String>) -> String {
        let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .unwrap_or_default()
            .trim()
            .to_string();
        let device = checked.as_ref().err().map_or("ok", String::as_str);
        format!(
            "boot={boot_id} qemu={:?} machine={} device={:?} {device:?} timeout={}",
            self.program,
            self.machine,
            self.device,
            self.timeout.as_millis()
        )
    }
}

/// `$XDG_CACHE_HOME/vm_launcher/accel`, else `~/.cache/vm_launcher/accel`.
pub fn default_cache() -> Option<PathBuf> {
    let nonempty = |name| std::env::var_os(name).filter(|v| !v.is_empty());
    let base = nonempty("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| nonempty("HOME").map(|home| PathBuf::from(home).join(".cache")))?;
    Some(base.join("vm_launcher").join("accel"))
}

/// An exclusive lock beside `cache`, held while deciding.
fn lock(cache: &Path) -> Option<Flock<File>> {
    std::fs::create_dir_all(cache.parent()?).ok()?;
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(cache.with_extension("lock"))
        .ok()?;
    Flock::lock(file, FlockArg::LockExclusive).ok()
}

/// The cached decision, if the cache holds one for `key`.
pub fn read_cache(cache: &Path, key: &str) -> Option<(Accel, String)> {
    let text = std::fs::read_to_string(cache).ok()?;
    let mut lines = text.lines();
    if lines.next()? != key {
        return None;
    }
    let accel = lines.next()?.parse().ok()?;
    Some((accel, lines.next()?.to_string()))
}

/// Keeps the decision for `key` (written whole, then renamed into place).
pub fn write_cache(cache: &Path, key: &str, accel: Accel, why: &str) -> io::Result<()> {
    let parent = cache.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    let tmp = cache.with_extension(format!("tmp{}", std::process::id()));
    let mut file = File::create(&tmp)?;
    writeln!(file, "{key}\n{accel}\n{}", why.replace('\n', " "))?;
    drop(file);
    std::fs::rename(&tmp, cache)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_flag_auto_kvm_tcg_and_nothing_else() {
        assert_eq!(parse_flag("auto"), Ok(None));
        assert_eq!(parse_flag("kvm"), Ok(Some(Accel::Kvm)));
        assert_eq!(parse_flag("tcg"), Ok(Some(Accel::Tcg)));
        let err = parse_flag("hvf").unwrap_err();
        assert!(err.contains("auto, kvm or tcg"), "{err}");
        for accel in [Accel::Kvm, Accel::Tcg] {
            assert_eq!(accel.to_string().parse::<Accel>(), Ok(accel));
        }
    }

    #[test]
    fn check_device_missing_or_not_kvm_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("kvm");
        assert_eq!(
            check_device(&missing),
            Err(format!("no {}", missing.display()))
        );
        let err = check_device(Path::new("/dev/null")).unwrap_err();
        assert!(err.starts_with("/dev/null is not KVM:"), "{err}");
    }

    #[test]
    fn decide_device_failure_is_tcg_without_probing() {
        let (accel, why) = decide(Path::new("/dev/kvm"), Err("no /dev/kvm".into()), || {
            panic!("no probe without a device")
        });
        assert_eq!(accel, Accel::Tcg);
        assert!(why.starts_with("no /dev/kvm; TCG is"), "{why}");
    }

    #[test]
    fn decide_probe_boot_is_kvm_and_probe_failure_is_tcg() {
        let dev = Path::new("/dev/kvm");
        let (accel, why) = decide(dev, Ok(()), || Ok(Duration::from_millis(210)));
        assert_eq!(
            (accel, why.as_str()),
            (Accel::Kvm, "a probe guest booted under /dev/kvm in 0.21 s")
        );
        let (accel, why) = decide(dev, Ok(()), || Err("it hung".into()));
        assert_eq!(accel, Accel::Tcg);
        assert!(
            why.contains("/dev/kvm opens but cannot run this kernel (it hung)"),
            "{why}"
        );
        assert!(why.contains("--accel kvm forces KVM"), "{why}");
    }

    #[test]
    fn cache_answers_only_its_own_key() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("sub").join("accel");
        assert_eq!(read_cache(&cache, "k1"), None);
        write_cache(&cache, "k1", Accel::Tcg, "slow\nreason").unwrap();
        assert_eq!(
            read_cache(&cache, "k1"),
            Some((Accel::Tcg, "slow reason".to_string()))
        );
        assert_eq!(read_cache(&cache, "k2"), None);
        write_cache(&cache, "k2", Accel::Kvm, "fast").unwrap();
        assert_eq!(read_cache(&cache, "k1"), None);
        assert_eq!(read_cache(&cache, "k2"), Some((Accel::Kvm, "fast".into())));
    }

    #[test]
    fn choose_decides_once_then_answers_from_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("bzImage");
        std::fs::write(&kernel, "not a kernel").unwrap();
        let probe = Probe {
            program: "qemu-system-x86_64".into(),
            machine: Machine::Q35,
            kernel: kernel.clone(),
            device: dir.path().join("no-kvm"),
            timeout: PROBE_TIMEOUT,
            cache: Some(dir.path().join("accel")),
        };
        let first = probe.choose();
        assert_eq!((first.accel, first.fresh), (Accel::Tcg, true));
        assert!(
            first
                .line()
                .starts_with("vm_launcher: --accel auto: tcg: no "),
            "{}",
            first.line()
        );
        let second = probe.choose();
        assert_eq!(
            second,
            Choice {
                fresh: false,
                ..first.clone()
            }
        );
        // Not another kernel: KVM works or not for the host.
        let other_kernel = Probe {
            kernel: dir.path().join("other"),
            ..probe.clone()
        };
        assert!(!other_kernel.choose().fresh);
        // Another device state is another decision.
        std::fs::write(dir.path().join("no-kvm"), "").unwrap();
        let other = probe.choose();
        assert!(other.fresh && other.why.contains("is not KVM"), "{other:?}");
        let uncached = Probe {
            cache: None,
            ..probe
        };
        assert!(uncached.choose().fresh && uncached.choose().fresh);
    }

    #[test]
    fn watch_for_marker_finds_it_across_reads_or_reports_eof() {
        struct Chunks(Vec<&'static [u8]>);
        impl Read for Chunks {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0.is_empty() {
                    return Ok(0);
                }
                let chunk = self.0.remove(0);
                buf[..chunk.len()].copy_from_slice(chunk);
                Ok(chunk.len())
            }
        }
        assert!(watch_for_marker(Chunks(vec![
            b"[ 0.4] Kernel pa",
            b"nic - not syncing"
        ])));
        assert!(!watch_for_marker(Chunks(vec![
            b"[ 0.4] Kernel pa",
            b"ge fault"
        ])));
        assert!(!watch_for_marker(io::empty()));
    }
}
