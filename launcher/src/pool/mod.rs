//! Per-VM host resources (VM id, vsock CID, MAC, IPv4 /30, host vsock port), leased safely
//! across concurrent launcher processes on one host.
//!
//! Every leasable value is one lock file, `<runtime_dir>/leases/<kind>/<value>.lock`, held with
//! `flock(LOCK_EX|LOCK_NB)` on an fd that lives in the [`Lease`] for the VM's whole life. There
//! is no shared state file: the kernel's lock is the only truth. A holder that dies, even by
//! `kill -9`, closes its fds and so frees its leases at once; the next allocator simply locks
//! the left-over file. A clean release of a VM id or MAC unlinks its file while still holding
//! the lock (those namespaces are open-ended), so an allocator re-checks after locking that
//! the file it locked is still the one at the path.
//! The files hold `pid=… pid_start=… id=…` (the VM id's file the whole lease) for
//! [`Pool::list`] and `stop`: `pid_start` is the holder's start time (see [`pid`]), so `stop`
//! signals the holder only while that very process runs, never a process that reused its pid.
//! Lock fds are close-on-exec: a hypervisor child never inherits (and so never keeps) a lease.
//!
//! Host state is private ([`private`]): the runtime dir, `leases/…` and `vms/` are 0700 and
//! owned by the launcher's effective user, lock files 0600. Other users cannot lock a lease
//! (a lock needs only an open fd, so a readable lock file would be enough), see who runs
//! what, or plant files. A runtime dir owned by another user, writable by group or others,
//! or a symlink is refused, for root too.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::net::Ipv4Addr;
use std::ops::RangeInclusive;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use vm_proto::cmdline::{validate_vm_id, CmdlineError};

mod addr;
mod config;
pub mod pid;
pub mod private;
mod sys;

pub use addr::{Ipv4Subnet, MacAddr};
pub use config::{
    default_runtime_dir, parse_range, parse_subnet, PoolConfig, DEFAULT_RUNTIME_DIR,
    FLAG_CID_RANGE, FLAG_HOST_PORT_RANGE, FLAG_RUNTIME_DIR, FLAG_SUBNET, RUNTIME_DIR_ENV,
};
pub use pid::ProcessId;
pub use private::PrivateDirError;
use sys::try_flock;

pub const FLAG_NAME: &str = "--name";
/// How often a lock found held by a momentary prober (`list`, another allocator checking a
/// stale file) is retried before a name is reported as in use.
const BUSY_RETRIES: u32 = 5;

#[derive(Debug)]
pub enum PoolError {
    BadConfig {
        what: &'static str,
        value: String,
        why: &'static str,
        flag: &'static str,
    },
    BadName(CmdlineError),
    AlreadyRunning {
        name: String,
        pid: Option<u32>,
    },
    Exhausted {
        pool: &'static str,
        range: String,
        flag: &'static str,
        dir: PathBuf,
    },
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// The runtime dir (or a directory in it) is not private: see [`private`].
    NotPrivate {
        path: PathBuf,
        source: PrivateDirError,
    },
}

impl fmt::Display for PoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadConfig { what, value, why, flag } => {
                write!(f, "{what} {value}: {why}; fix it with {flag}")
            }
            Self::BadName(err) => write!(f, "VM name: {err}"),
            Self::AlreadyRunning { name, pid } => {
                let pid = pid.map_or_else(|| "unknown".to_string(), |p| p.to_string());
                write!(f, "a VM named {name:?} is already running (launcher pid {pid}); stop it or pick another {FLAG_NAME}")
            }
            Self::Exhausted { pool, range, flag, dir } => write!(
                f,
                "no free {pool} in {range}: all are leased by running VMs (leases in {}); stop a VM or widen the pool with {flag}",
                dir.display()
            ),
            Self::Io { op, path, source } => {
                write!(f, "cannot {op} {}: {source}", path.display())?;
                if source.kind() == io::ErrorKind::PermissionDenied {
                    write!(f, "; pass {FLAG_RUNTIME_DIR} or set {RUNTIME_DIR_ENV} to a directory you can write")?;
                }
                Ok(())
            }
            Self::NotPrivate { path, source } => write!(
                f,
                "refusing runtime directory {}: it {source}; remove it (or make it yours, mode 0700) or pick another with {FLAG_RUNTIME_DIR} or {RUNTIME_DIR_ENV}",
                path.display()
            ),
        }
    }
}

impl std::error::Error for PoolError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::BadName(err) => Some(err),
            Self::Io { source, .. } => Some(source),
            Self::NotPrivate { source, .. } => Some(source),
            _ => None,
        }
    }
}

fn range_label(range: &RangeInclusive<u32>) -> String {
    config::range_text(range)
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> PoolError + 'a {
    move |source| PoolError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Creates or checks the private directory `path` (see [`private`]).
fn private_dir(path: &Path, parents: bool) -> Result<(), PoolError> {
    private::ensure_dir(path, parents).map_err(|source| match source {
        PrivateDirError::Io { op, source } => PoolError::Io {
            op,
            path: path.to_path_buf(),
            source,
        },
        source => PoolError::NotPrivate {
            path: path.to_path_buf(),
            source,
        },
    })
}

/// Is `file` still the file at `path` (not unlinked by a releaser after we opened it)?
/// Returns its mode too when it is.
fn still_linked(file: &File, path: &Path) -> Option<u32> {
    match (file.metadata(), fs::metadata(path)) {
        (Ok(ours), Ok(now)) if ours.dev() == now.dev() && ours.ino() == now.ino() => {
            Some(ours.mode() & 0o7777)
        }
        _ => None,
    }
}

/// One held lock file; dropping it closes the fd, which releases the lock. Files of
/// open-ended namespaces (VM ids, MACs) are unlinked first, while still locked, so the
/// directory does not fill up; files of bounded ranges stay for the next allocator to reuse.
#[derive(Debug)]
struct LeaseFile {
    path: PathBuf,
    file: File,
    unlink: bool,
}

impl LeaseFile {
    /// Ok(None) when someone else holds `path`.
    fn try_take(path: PathBuf, unlink: bool) -> Result<Option<LeaseFile>, PoolError> {
        for _ in 0..BUSY_RETRIES {
            // Opening an existing file first skips the directory's exclusive lock that
            // O_CREAT takes, which all allocators scanning the same directory contend on.
            let mut open = OpenOptions::new();
            open.read(true).write(true);
            let file = match open.open(&path) {
                Err(err) if err.kind() == io::ErrorKind::NotFound => {
                    open.create(true).mode(private::FILE_MODE).open(&path)
                }
                other => other,
            }
            .map_err(io_err("open lease file", &path))?;
            if !try_flock(&file).map_err(io_err("lock lease file", &path))? {
                return Ok(None);
            }
            if let Some(mode) = still_linked(&file, &path) {
                // A file left by an older launcher (0644): nobody else may open it from now on.
                if mode != private::FILE_MODE {
                    file.set_permissions(fs::Permissions::from_mode(private::FILE_MODE))
                        .map_err(io_err("set mode 0600 on lease file", &path))?;
                }
                return Ok(Some(LeaseFile { path, file, unlink }));
            }
        }
        Ok(None)
    }

    /// Records who holds it, for `list` (informational only).
    /// Overwrites, then trims only if the old record was longer: truncating a file to zero
    /// makes ext4 flush it on close (auto_da_alloc), which cost ~12 ms per allocation.
    fn record(&self, text: &str) -> Result<(), PoolError> {
        let write = || {
            self.file.write_all_at(text.as_bytes(), 0)?;
            let len = text.len() as u64;
            if self.file.metadata()?.len() > len {
                self.file.set_len(len)?;
            }
            Ok(())
        };
        write().map_err(io_err("write lease file", &self.path))
    }
}

impl Drop for LeaseFile {
    fn drop(&mut self) {
        // Unlinked while still locked: see `still_linked`. A failure only leaves a stale
        // file that the next allocator takes over.
        if self.unlink {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Everything one VM holds; dropping it releases all of it.
#[derive(Debug)]
pub struct Lease {
    // Declared first so it is released first: `list` stops showing the VM before its parts go.
    id_file: LeaseFile,
    parts: [LeaseFile; 4],
    id: String,
    cid: u32,
    mac: MacAddr,
    net: Ipv4Subnet,
    host_port: u32,
}

impl Lease {
    pub fn id(&self) -> &str {
        &self.id
    }
    pub fn cid(&self) -> u32 {
        self.cid
    }
    pub fn mac(&self) -> MacAddr {
        self.mac
    }
    pub fn net(&self) -> Ipv4Subnet {
        self.net
    }
    pub fn host_port(&self) -> u32 {
        self.host_port
    }
}

/// `id=… cid=… mac=… net=…/30 gateway=… guest=… host_port=…`, the form `list` reads back.
impl fmt::Display for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (id, cid, mac, n, port) = (&self.id, self.cid, self.mac, self.net, self.host_port);
        write!(
            f,
            "id={id} cid={cid} mac={mac} net={n} gateway={} guest={} host_port={port}",
            n.gateway, n.guest
        )
    }
}

/// A held lease as `list` sees it; fields are None while the holder is still writing them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseInfo {
    pub id: String,
    pub pid: Option<u32>,
    /// The holder's start time (`/proc/PID/stat` field 22); None in a record from a launcher
    /// that did not write it, or one still being written.
    pub pid_start: Option<u64>,
    pub cid: Option<u32>,
    pub mac: Option<MacAddr>,
    pub guest_ip: Option<Ipv4Addr>,
    pub gateway: Option<Ipv4Addr>,
    pub host_port: Option<u32>,
}

impl LeaseInfo {
    fn parse(id: String, record: &str) -> LeaseInfo {
        let get = |key: &str| {
            record
                .split_whitespace()
                .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        };
        LeaseInfo {
            pid: get("pid").and_then(|v| v.parse().ok()),
            pid_start: get("pid_start").and_then(|v| v.parse().ok()),
            cid: get("cid").and_then(|v| v.parse().ok()),
            mac: get("mac").and_then(|v| v.parse().ok()),
            guest_ip: get("guest").and_then(|v| v.parse().ok()),
            gateway: get("gateway").and_then(|v| v.parse().ok()),
            host_port: get("host_port").and_then(|v| v.parse().ok()),
            id,
        }
    }

    /// The holder as the record names it: pid and start time, both needed.
    pub fn process(&self) -> Option<ProcessId> {
        Some(ProcessId {
            pid: self.pid?,
            start: self.pid_start?,
        })
    }

    /// The holder's pid, only if the process with that pid now is the one that took the
    /// lease (same start time). None for a reused pid, an exited holder, or a record without
    /// a start time.
    pub fn live_pid(&self) -> Option<i32> {
        self.process()?.live_pid()
    }

    /// Signals the holder if it still runs: Ok(true) if sent, Ok(false) if there is no such
    /// process (exited, pid reused, no start time recorded). Race-free where pidfds exist:
    /// see [`ProcessId::signal`].
    pub fn signal(&self, signal: nix::sys::signal::Signal) -> io::Result<bool> {
        match self.process() {
            Some(process) => process.signal(signal),
            None => Ok(false),
        }
    }
}

/// The host's lease pools, shared with every other launcher using the same runtime dir.
#[derive(Debug)]
pub struct Pool {
    config: PoolConfig,
    leases: PathBuf,
}

const KINDS: [&str; 5] = ["id", "cid", "mac", "net", "port"];

impl Pool {
    /// Checks the config, then creates (or checks and tightens) the private directories
    /// `<runtime_dir>`, `leases/{id,cid,mac,net,port}` and `vms`, all 0700. A runtime dir of
    /// another user, writable by group or others, or a symlink is refused
    /// ([`PoolError::NotPrivate`]).
    pub fn open(config: PoolConfig) -> Result<Pool, PoolError> {
        config.validate()?;
        let runtime = &config.runtime_dir;
        private_dir(runtime, true)?;
        let leases = runtime.join("leases");
        private_dir(&leases, false)?;
        for kind in KINDS {
            private_dir(&leases.join(kind), false)?;
        }
        private_dir(&runtime.join("vms"), false)?;
        Ok(Pool { config, leases })
    }

    /// Where VM `id`'s run dir lives: `<runtime_dir>/vms/<id>`.
    pub fn run_dir(&self, id: &str) -> PathBuf {
        self.config.runtime_dir.join("vms").join(id)
    }

    /// A fresh, empty run dir for the VM `lease` holds, mode 0700: anything a crashed
    /// launcher left there is removed first.
    pub fn create_run_dir(&self, lease: &Lease) -> Result<PathBuf, PoolError> {
        let dir = self.run_dir(lease.id());
        match fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(io_err("remove old run directory", &dir)(e))
            }
            _ => {}
        }
        private_dir(&dir, false)?;
        Ok(dir)
    }

    pub fn config(&self) -> &PoolConfig {
        &self.config
    }

    fn path(&self, kind: &str, value: &str) -> PathBuf {
        self.leases.join(kind).join(format!("{value}.lock"))
    }

    /// Leases a VM id (`name`, or the first free `vm-<n>`), a CID, a /30, a host port and a
    /// MAC. On any failure the values already taken are released again.
    pub fn allocate(&self, name: Option<&str>) -> Result<Lease, PoolError> {
        let (id, id_file) = match name {
            Some(name) => (name.to_string(), self.take_name(name)?),
            None => self.take_generated_name()?,
        };
        let cfg = &self.config;
        let (cid, cid_file) = self
            .take_first("cid", cfg.cids.clone(), |c| c.to_string())?
            .ok_or_else(|| self.exhausted("cid", range_label(&cfg.cids), FLAG_CID_RANGE))?;
        let subnets = 0..=cfg.subnet_count() - 1;
        let network = |n| Ipv4Subnet::nth(cfg.subnet_base, n).network.to_string();
        let (n, net_file) = self.take_first("net", subnets, network)?.ok_or_else(|| {
            let label = format!("{}/{}", cfg.subnet_base, cfg.subnet_prefix);
            self.exhausted("subnet", label, FLAG_SUBNET)
        })?;
        let ports = cfg.host_ports.clone();
        let (host_port, port_file) = self
            .take_first("port", ports, |p| p.to_string())?
            .ok_or_else(|| {
                let label = range_label(&cfg.host_ports);
                self.exhausted("host port", label, FLAG_HOST_PORT_RANGE)
            })?;
        let (mac, mac_file) = self.take_mac()?;
        let lease = Lease {
            id_file,
            parts: [cid_file, net_file, port_file, mac_file],
            id,
            cid,
            mac,
            net: Ipv4Subnet::nth(cfg.subnet_base, n),
            host_port,
        };
        let pid = std::process::id();
        // Without /proc the record has no start time, and `stop` then signals nothing.
        let pid = match pid::own_start_time() {
            Some(start) => format!("pid={pid} pid_start={start}"),
            None => format!("pid={pid}"),
        };
        for part in &lease.parts {
            part.record(&format!("{pid} id={}\n", lease.id))?;
        }
        lease.id_file.record(&format!("{pid} {lease}\n"))?;
        Ok(lease)
    }

    fn take_name(&self, name: &str) -> Result<LeaseFile, PoolError> {
        validate_vm_id(name).map_err(PoolError::BadName)?;
        let path = self.path("id", name);
        for _ in 0..BUSY_RETRIES {
            if let Some(file) = LeaseFile::try_take(path.clone(), true)? {
                return Ok(file);
            }
            // Possibly only `list` probing a stale file for a moment.
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let record = fs::read_to_string(&path).unwrap_or_default();
        let pid = LeaseInfo::parse(String::new(), &record).pid;
        Err(PoolError::AlreadyRunning {
            name: name.to_string(),
            pid,
        })
    }

    fn take_generated_name(&self) -> Result<(String, LeaseFile), PoolError> {
        // More names than CIDs can exist only if names were given by hand; stop somewhere.
        let cids = &self.config.cids;
        let limit = (cids.end() - cids.start()).saturating_add(1025);
        for n in 1..=limit {
            let id = format!("vm-{n}");
            if let Some(file) = LeaseFile::try_take(self.path("id", &id), true)? {
                return Ok((id, file));
            }
        }
        Err(self.exhausted("generated VM id", format!("vm-1..vm-{limit}"), FLAG_NAME))
    }

    /// The first free value of `range`, or None when all are held.
    fn take_first(
        &self,
        kind: &str,
        range: RangeInclusive<u32>,
        name: impl Fn(u32) -> String,
    ) -> Result<Option<(u32, LeaseFile)>, PoolError> {
        for n in range {
            if let Some(file) = LeaseFile::try_take(self.path(kind, &name(n)), false)? {
                return Ok(Some((n, file)));
            }
        }
        Ok(None)
    }

    fn take_mac(&self) -> Result<(MacAddr, LeaseFile), PoolError> {
        let urandom = Path::new("/dev/urandom");
        for _ in 0..64 {
            let mac = MacAddr::random_local().map_err(io_err("read", urandom))?;
            let file_name = mac.to_string().replace(':', "-");
            if let Some(file) = LeaseFile::try_take(self.path("mac", &file_name), true)? {
                return Ok((mac, file));
            }
        }
        Err(self.exhausted("mac", "02:xx:xx:xx:xx:xx".into(), FLAG_RUNTIME_DIR))
    }

    fn exhausted(&self, pool: &'static str, range: String, flag: &'static str) -> PoolError {
        let dir = self.leases.clone();
        PoolError::Exhausted {
            pool,
            range,
            flag,
            dir,
        }
    }

    /// The VMs holding leases now, by id. A lock file nobody holds is stale (its holder
    /// died) and is removed instead of listed.
    pub fn list(&self) -> Result<Vec<LeaseInfo>, PoolError> {
        let dir = self.leases.join("id");
        let mut infos = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err("read directory", &dir))? {
            let path = entry.map_err(io_err("read directory", &dir))?.path();
            let Some(id) = path
                .file_name()
                .and_then(|n| n.to_str()?.strip_suffix(".lock"))
            else {
                continue;
            };
            let Ok(mut file) = File::open(&path) else {
                continue;
            }; // released meanwhile
            if try_flock(&file).map_err(io_err("lock lease file", &path))? {
                if still_linked(&file, &path).is_some() {
                    let _ = fs::remove_file(&path);
                }
                continue;
            }
            let mut record = String::new();
            file.read_to_string(&mut record)
                .map_err(io_err("read lease file", &path))?;
            infos.push(LeaseInfo::parse(id.to_string(), &record));
        }
        infos.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(infos)
    }
}
