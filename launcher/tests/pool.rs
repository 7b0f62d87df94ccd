//! The lease pool across real processes: this test binary re-runs itself as lease holders
//! (`child_holder`, active only with `VM_POOL_TEST_CHILD` set), which allocate on a signal,
//! print their lease and hold it until their stdin closes or they are killed.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::ops::RangeInclusive;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use vm_launcher::pool::{Ipv4Subnet, Lease, MacAddr, Pool, PoolConfig, PoolError};

const CHILD_ENV: &str = "VM_POOL_TEST_CHILD";
const PROCESSES: usize = 32;

/// Not a test of its own: the body of each lease-holding child process.
#[test]
fn child_holder() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let pool = Pool::open(PoolConfig::new(dir)).unwrap();
    let mut line = String::new();
    println!("READY");
    std::io::stdin().read_line(&mut line).unwrap();
    match pool.allocate(None) {
        Ok(lease) => {
            println!("LEASE {lease}");
            // Hold it until the parent closes our stdin (or kills us).
            while std::io::stdin().read_line(&mut line).is_ok_and(|n| n > 0) {}
            drop(lease);
        }
        Err(err) => println!("ERROR {err}"),
    }
}

/// A child process holding (or about to take) one lease.
struct Holder {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
}

impl Holder {
    fn spawn(dir: &Path) -> Holder {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "child_holder", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        Holder {
            child,
            stdin,
            lines,
        }
    }

    /// The rest of the first line holding `marker` (libtest may print on the same line).
    fn wait_for(&self, marker: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("child {} never printed {marker}", self.child.id()));
            if let Some(at) = line.find(marker) {
                return line[at + marker.len()..].trim().to_string();
            }
            assert!(!line.contains("ERROR"), "child failed: {line}");
        }
    }

    fn go(&mut self) {
        writeln!(self.stdin.as_mut().unwrap(), "go").unwrap();
    }

    fn lease(&mut self) -> Fields {
        self.wait_for("READY");
        self.go();
        Fields(self.wait_for("LEASE "))
    }

    fn kill_9(&mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

/// A printed lease, `key=value` words.
struct Fields(String);

impl Fields {
    fn get(&self, key: &str) -> &str {
        let word = self
            .0
            .split_whitespace()
            .find(|w| w.starts_with(&format!("{key}=")));
        &word.unwrap_or_else(|| panic!("no {key} in {}", self.0))[key.len() + 1..]
    }
}

fn pool_in(dir: &Path) -> Pool {
    Pool::open(PoolConfig::new(dir)).unwrap()
}

#[test]
fn concurrent_processes_never_share_a_resource() {
    let dir = tempfile::tempdir().unwrap();
    let mut holders: Vec<Holder> = (0..PROCESSES).map(|_| Holder::spawn(dir.path())).collect();
    for holder in &holders {
        holder.wait_for("READY");
    }
    // All allocate at once.
    holders.iter_mut().for_each(Holder::go);
    let leases: Vec<Fields> = holders
        .iter()
        .map(|h| Fields(h.wait_for("LEASE ")))
        .collect();
    for key in ["id", "cid", "mac", "net", "gateway", "guest", "host_port"] {
        let values: HashSet<&str> = leases.iter().map(|l| l.get(key)).collect();
        assert_eq!(values.len(), PROCESSES, "{key} collided: {values:?}");
    }
    let listed = pool_in(dir.path()).list().unwrap();
    assert_eq!(listed.len(), PROCESSES);
    let pids: HashSet<u32> = holders.iter().map(|h| h.child.id()).collect();
    assert!(listed.iter().all(|info| pids.contains(&info.pid.unwrap())));
    // Each record names its holder by pid and start time: `stop` may signal exactly these.
    for info in &listed {
        assert_eq!(info.live_pid(), info.pid.map(|p| p as i32), "{info:?}");
    }
    drop(holders);
    assert_eq!(pool_in(dir.path()).list().unwrap(), []);
}

#[test]
fn kill_9_of_holder_frees_its_leases_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let pool = pool_in(dir.path());
    let mut holder = Holder::spawn(dir.path());
    let held = holder.lease();
    let listed = pool.list().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].live_pid(), Some(holder.child.id() as i32));

    holder.kill_9();

    // The record of a dead holder names no process, even read back after the kill.
    assert_eq!(listed[0].live_pid(), None);
    assert!(!listed[0].signal(nix::sys::signal::Signal::SIGTERM).unwrap());

    assert_eq!(pool.list().unwrap(), [], "a dead holder is not listed");
    let lease = pool.allocate(None).unwrap();
    assert_eq!(lease.cid().to_string(), held.get("cid"));
    assert_eq!(lease.net().to_string(), held.get("net"));
    assert_eq!(lease.host_port().to_string(), held.get("host_port"));
    assert_eq!(lease.id(), held.get("id"));
}

#[test]
fn exhausted_cid_range_names_the_pool_and_flag() {
    let dir = tempfile::tempdir().unwrap();
    let pool = Pool::open(PoolConfig {
        cids: 3..=4,
        ..PoolConfig::new(dir.path())
    })
    .unwrap();
    let _a = pool.allocate(None).unwrap();
    let _b = pool.allocate(None).unwrap();

    let err = pool.allocate(None).unwrap_err();

    assert!(
        matches!(err, PoolError::Exhausted { pool: "cid", .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    for part in ["no free cid in 3-4", "--cid-range"] {
        assert!(msg.contains(part), "{msg}");
    }
}

#[test]
fn failure_half_way_releases_what_was_taken() {
    let dir = tempfile::tempdir().unwrap();
    let one_subnet = PoolConfig {
        subnet_prefix: 30,
        ..PoolConfig::new(dir.path())
    };
    let pool = Pool::open(one_subnet).unwrap();
    let _a = pool.allocate(Some("a")).unwrap();

    let err = pool.allocate(Some("b")).unwrap_err();

    assert!(
        matches!(err, PoolError::Exhausted { pool: "subnet", .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("--subnet"), "{err}");
    // Name "b" and CID 4 were taken before the subnet failed; both are free again.
    let bigger = PoolConfig {
        subnet_prefix: 29,
        ..PoolConfig::new(dir.path())
    };
    let b = Pool::open(bigger).unwrap().allocate(Some("b")).unwrap();
    assert_eq!((b.id(), b.cid()), ("b", 4));
}

#[test]
fn name_taken_twice_is_refused_until_released() {
    let dir = tempfile::tempdir().unwrap();
    let pool = pool_in(dir.path());
    let first = pool.allocate(Some("web")).unwrap();

    let err = pool.allocate(Some("web")).unwrap_err();

    match &err {
        PoolError::AlreadyRunning { name, pid } => {
            assert_eq!((name.as_str(), *pid), ("web", Some(std::process::id())));
        }
        other => panic!("{other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.contains("\"web\"") && msg.contains("--name"), "{msg}");
    drop(first);
    assert_eq!(pool.allocate(Some("web")).unwrap().id(), "web");
}

#[test]
fn bad_names_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pool = pool_in(dir.path());
    for name in ["../etc", "-rf", "", "a b"] {
        let err = pool.allocate(Some(name)).unwrap_err();
        assert!(matches!(err, PoolError::BadName(_)), "{name}: {err:?}");
    }
}

#[test]
fn generated_names_count_up_and_reuse_released_ones() {
    let dir = tempfile::tempdir().unwrap();
    let pool = pool_in(dir.path());
    let leases: Vec<Lease> = (0..3).map(|_| pool.allocate(None).unwrap()).collect();
    let ids: Vec<&str> = leases.iter().map(Lease::id).collect();
    assert_eq!(ids, ["vm-1", "vm-2", "vm-3"]);
    let cids: Vec<u32> = leases.iter().map(Lease::cid).collect();
    assert_eq!(cids, [3, 4, 5]);
    drop(leases);
    assert_eq!(pool.allocate(None).unwrap().id(), "vm-1");
}

#[test]
fn mac_is_locally_administered_unicast_and_unique() {
    let dir = tempfile::tempdir().unwrap();
    let pool = pool_in(dir.path());
    let leases: Vec<Lease> = (0..64).map(|_| pool.allocate(None).unwrap()).collect();
    let macs: HashSet<MacAddr> = leases.iter().map(Lease::mac).collect();
    assert_eq!(macs.len(), leases.len());
    for mac in macs {
        assert!(
            mac.is_locally_administered() && !mac.is_multicast(),
            "{mac}"
        );
        assert_eq!(mac.0[0], 0x02);
        let text = mac.to_string();
        assert_eq!(text.len(), 17);
        assert!(text.split(':').all(|p| p.len() == 2), "{text}");
        assert_eq!(text.parse::<MacAddr>(), Ok(mac));
    }
    assert!("02:00:00:00:00".parse::<MacAddr>().is_err());
    assert!("02:00:00:00:00:00:00".parse::<MacAddr>().is_err());
}

#[test]
fn subnet_math_gives_point_to_point_30s() {
    let base = Ipv4Addr::new(100, 115, 92, 0);
    let mask = Ipv4Addr::new(255, 255, 255, 252);
    let first = Ipv4Subnet::nth(base, 0);
    assert_eq!(first.network, Ipv4Addr::new(100, 115, 92, 0));
    assert_eq!(first.gateway, Ipv4Addr::new(100, 115, 92, 1));
    assert_eq!(first.guest, Ipv4Addr::new(100, 115, 92, 2));
    assert_eq!(first.netmask, mask);
    let last = Ipv4Subnet::nth(base, 63);
    assert_eq!(last.gateway, Ipv4Addr::new(100, 115, 92, 253));
    assert_eq!(last.guest, Ipv4Addr::new(100, 115, 92, 254));
    assert_eq!(last.to_string(), "100.115.92.252/30");
    assert_eq!(PoolConfig::new("/x").subnet_count(), 64);

    let dir = tempfile::tempdir().unwrap();
    let pool = pool_in(dir.path());
    let (a, b) = (pool.allocate(None).unwrap(), pool.allocate(None).unwrap());
    assert_eq!((a.net(), b.net()), (first, Ipv4Subnet::nth(base, 1)));
    assert_eq!((a.host_port(), b.host_port()), (10000, 10001));
}

#[test]
fn list_shows_holders_and_skips_released() {
    let dir = tempfile::tempdir().unwrap();
    let pool = pool_in(dir.path());
    let a = pool.allocate(Some("alpha")).unwrap();
    let b = pool.allocate(Some("beta")).unwrap();

    let listed = pool.list().unwrap();

    assert_eq!(listed.len(), 2);
    for (info, lease) in listed.iter().zip([&a, &b]) {
        assert_eq!(info.id, lease.id());
        assert_eq!(info.pid, Some(std::process::id()));
        assert_eq!(info.cid, Some(lease.cid()));
        assert_eq!(info.mac, Some(lease.mac()));
        assert_eq!(info.guest_ip, Some(lease.net().guest));
        assert_eq!(info.gateway, Some(lease.net().gateway));
        assert_eq!(info.host_port, Some(lease.host_port()));
    }
    drop(a);
    let ids: Vec<String> = pool.list().unwrap().into_iter().map(|i| i.id).collect();
    assert_eq!(ids, ["beta"]);
}

#[test]
fn bad_config_is_refused_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let base = || PoolConfig::new(dir.path());
    let cases = [
        (
            PoolConfig {
                cids: 0..=10,
                ..base()
            },
            "--cid-range",
        ),
        (
            PoolConfig {
                cids: RangeInclusive::new(9, 8), // empty
                ..base()
            },
            "--cid-range",
        ),
        (
            PoolConfig {
                cids: 3..=u32::MAX,
                ..base()
            },
            "--cid-range",
        ),
        (
            PoolConfig {
                subnet_base: Ipv4Addr::new(10, 0, 0, 4),
                subnet_prefix: 24,
                ..base()
            },
            "--subnet",
        ),
        (
            PoolConfig {
                subnet_prefix: 31,
                ..base()
            },
            "--subnet",
        ),
        (
            PoolConfig {
                host_ports: 0..=5,
                ..base()
            },
            "--host-port-range",
        ),
    ];
    for (config, flag) in cases {
        let err = Pool::open(config).unwrap_err();
        assert!(matches!(err, PoolError::BadConfig { .. }), "{err:?}");
        assert!(err.to_string().contains(flag), "{err}");
    }
}

#[test]
fn unusable_runtime_dir_error_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, "").unwrap();

    let err = Pool::open(PoolConfig::new(&file)).unwrap_err();

    assert!(matches!(err, PoolError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("not-a-dir"), "{err}");
}
