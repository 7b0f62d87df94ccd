//! Host state is private (issue 12, item 3), attacked by a real second local user: each test
//! creates one with `useradd` (removed again by a Drop guard) and runs `flock`, `cat`, `ls`,
//! `touch` as it through `setpriv`. Every route is tried: the path, the file itself with the
//! directories above it opened up, and the holder's `/proc/PID/fd`. The tests run with umask 0,
//! so the modes they see are the ones the code asks for, not the umask's.
//! They need root (to create the user); without root they fail with a message saying so.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::sys::stat::{umask, Mode};
use nix::unistd::{Gid, Uid};
use vm_launcher::crash_spool;
use vm_launcher::pool::{pid, Pool, PoolConfig, PoolError};
use vm_proto::protos::host::CrashReport;

/// useradd/userdel lock /etc/passwd; tests in this binary take turns.
static ACCOUNTS: Mutex<()> = Mutex::new(());
static NEXT: AtomicU32 = AtomicU32::new(0);

/// A throwaway local user, deleted on drop.
struct OtherUser {
    name: String,
    uid: u32,
    gid: u32,
}

fn must(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl OtherUser {
    fn create() -> OtherUser {
        assert!(
            nix::unistd::geteuid().is_root(),
            "host_privacy tests must run as root: they create a local user with useradd and \
             attack the launcher's files as that user"
        );
        for tool in ["useradd", "userdel", "setpriv", "flock"] {
            let found = Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .is_ok_and(|o| o.status.success());
            assert!(
                found,
                "{tool} is missing: apt-get install passwd util-linux"
            );
        }
        let name = format!(
            "vmlpriv{}x{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let _turn = ACCOUNTS.lock().unwrap_or_else(|e| e.into_inner());
        must(Command::new("useradd").args([
            "--system",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            "--user-group",
            &name,
        ]));
        let id = |flag: &str| {
            let out = must(Command::new("id").args([flag, name.as_str()]));
            String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
        };
        let user = OtherUser {
            uid: id("-u"),
            gid: id("-g"),
            name,
        };
        assert_ne!(user.uid, 0);
        user
    }

    /// Runs `args` as this user with no supplementary groups and no capabilities.
    fn run(&self, args: &[&str]) -> Output {
        let (uid, gid) = (self.uid.to_string(), self.gid.to_string());
        Command::new("setpriv")
            .args(["--reuid", &uid, "--regid", &gid, "--clear-groups", "--"])
            .args(args)
            .output()
            .unwrap()
    }

    /// The attack must fail, with EACCES (not for some unrelated reason).
    fn denied(&self, args: &[&str]) {
        let out = self.run(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains("Permission denied"),
            "{args:?} as {} was not refused with EACCES: status {}, stdout {:?}, stderr {stderr:?}",
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stdout),
        );
    }

    /// The same tool works for this user where access is allowed: the refusals are about
    /// permissions, not a broken tool or user.
    fn allowed(&self, args: &[&str]) {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{args:?} as {} failed: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for OtherUser {
    fn drop(&mut self) {
        let _turn = ACCOUNTS.lock().unwrap_or_else(|e| e.into_inner());
        for _ in 0..20 {
            let ok = Command::new("userdel")
                .arg(&self.name)
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("could not userdel {}", self.name);
    }
}

/// A temp dir that others may traverse, like /run: what keeps them out is our code's modes.
fn open_parent() -> tempfile::TempDir {
    umask(Mode::empty());
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

/// Every directory under `root` (itself included) is 0700, every file 0600, all ours.
fn assert_private_tree(root: &Path) -> usize {
    let meta = fs::symlink_metadata(root).unwrap();
    assert_eq!(meta.uid(), nix::unistd::geteuid().as_raw(), "{root:?}");
    let mut count = 1;
    if meta.is_dir() {
        assert_eq!(mode(root), 0o700, "{root:?}");
        for entry in fs::read_dir(root).unwrap() {
            count += assert_private_tree(&entry.unwrap().path());
        }
    } else {
        assert!(meta.is_file(), "{root:?}");
        assert_eq!(mode(root), 0o600, "{root:?}");
    }
    count
}

/// Opens the directories on the way to `path` for search (0711), as a careless admin might:
/// the file's own mode must still keep others out.
fn open_dirs_for_search(from: &Path, path: &Path) {
    for dir in path.ancestors().skip(1) {
        if !dir.starts_with(from) || dir == from {
            break;
        }
        fs::set_permissions(dir, fs::Permissions::from_mode(0o711)).unwrap();
    }
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Our fd on the lock file `path`, as another process would reach it: /proc/PID/fd/N.
fn proc_fd_of(path: &Path) -> PathBuf {
    for entry in fs::read_dir("/proc/self/fd").unwrap() {
        let link = entry.unwrap().path();
        if fs::read_link(&link).is_ok_and(|target| target == path) {
            let n = link.file_name().unwrap().to_str().unwrap().to_string();
            return PathBuf::from(format!("/proc/{}/fd/{n}", std::process::id()));
        }
    }
    panic!("no fd open on {path:?}");
}

#[test]
fn other_user_cannot_lock_read_or_plant_lease_files() {
    let user = OtherUser::create();
    let parent = open_parent();
    let runtime = parent.path().join("run");
    let pool = Pool::open(PoolConfig::new(&runtime)).unwrap();
    let lease = pool.allocate(Some("held")).unwrap();
    let released = pool.allocate(None).unwrap();
    let free_cid = runtime.join(format!("leases/cid/{}.lock", released.cid()));
    drop(released); // its CID file stays, unlocked: free for the next allocator
    let held_id = runtime.join("leases/id/held.lock");
    let held_port = runtime.join(format!("leases/port/{}.lock", lease.host_port()));
    assert!(free_cid.exists() && held_id.exists() && held_port.exists());
    assert!(assert_private_tree(&runtime) >= 14);

    let control = parent.path().join("control.lock");
    fs::write(&control, "").unwrap();
    fs::set_permissions(&control, fs::Permissions::from_mode(0o666)).unwrap();
    user.allowed(&["flock", "-n", s(&control), "true"]);

    // By path: the runtime dir stops them.
    for lock in [&free_cid, &held_id, &held_port] {
        user.denied(&["flock", "-n", s(lock), "true"]);
        user.denied(&["cat", s(lock)]);
    }
    user.denied(&["ls", s(&runtime)]);
    user.denied(&["ls", s(&runtime.join("leases/id"))]);
    user.denied(&["touch", s(&runtime.join("leases/cid/999.lock"))]);
    // Through the holder's open fd.
    user.denied(&["flock", "-n", s(&proc_fd_of(&held_port)), "true"]);
    // With every directory above opened for search, the files' own mode still refuses.
    open_dirs_for_search(parent.path(), &free_cid);
    open_dirs_for_search(parent.path(), &held_id);
    user.allowed(&["stat", s(&free_cid)]);
    user.denied(&["flock", "-n", s(&free_cid), "true"]);
    user.denied(&["cat", s(&held_id)]);
    user.denied(&["ls", s(&runtime.join("leases/cid"))]);
    user.denied(&["touch", s(&runtime.join("leases/cid/999.lock"))]);

    // A pool opened again tightens the dirs back, and the lease is still ours alone.
    let pool = Pool::open(PoolConfig::new(&runtime)).unwrap();
    assert_private_tree(&runtime);
    let listed = pool.list().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, "held");
    let next = pool.allocate(None).unwrap();
    assert_eq!(next.cid(), 4, "the free CID file was not taken by anyone");
}

#[test]
fn old_world_readable_lock_file_is_made_private_when_taken() {
    let parent = open_parent();
    let runtime = parent.path().join("run");
    let pool = Pool::open(PoolConfig::new(&runtime)).unwrap();
    let old = runtime.join("leases/cid/3.lock");
    fs::write(&old, "pid=1 id=old\n").unwrap();
    fs::set_permissions(&old, fs::Permissions::from_mode(0o644)).unwrap();

    let lease = pool.allocate(None).unwrap();

    assert_eq!(lease.cid(), 3);
    assert_eq!(mode(&old), 0o600);
}

fn report(exe: &str) -> CrashReport {
    let mut r = CrashReport::new();
    r.set_minidump(b"MDMP secret stack memory".to_vec());
    r.mut_metadata().insert("exe".into(), exe.into());
    r.mut_metadata().insert("pid".into(), "7".into());
    r
}

#[test]
fn other_user_cannot_read_the_crash_spool() {
    let user = OtherUser::create();
    let parent = open_parent();
    let spool = parent.path().join("spool/crash");
    let (dmp, meta) = crash_spool::store(&spool, "vm1", &report("app"), 0).unwrap();
    // A left-over temp file of another mode does not lend its mode to the next report.
    let tmp = spool.join("vm1/app.19700101.000001.7.tmp");
    fs::write(&tmp, "old").unwrap();
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o666)).unwrap();
    let (dmp2, meta2) = crash_spool::store(&spool, "vm1", &report("app"), 1).unwrap();
    assert_eq!(assert_private_tree(&spool), 6);

    let control = parent.path().join("control");
    fs::write(&control, "x").unwrap();
    user.allowed(&["cat", s(&control)]);
    for file in [&dmp, &meta, &dmp2, &meta2] {
        user.denied(&["cat", s(file)]);
    }
    user.denied(&["ls", s(&spool)]);
    user.denied(&["ls", s(&spool.join("vm1"))]);
    user.denied(&["touch", s(&spool.join("vm1/planted.meta"))]);
    open_dirs_for_search(parent.path(), &dmp);
    user.allowed(&["stat", s(&dmp)]);
    for file in [&dmp, &meta] {
        user.denied(&["cat", s(file)]);
    }
    user.denied(&["ls", s(&spool.join("vm1"))]);

    // The next store tightens what was loosened.
    crash_spool::store(&spool, "vm1", &report("other"), 2).unwrap();
    assert_private_tree(&spool);
}

#[test]
fn crash_spool_of_another_user_or_open_to_others_is_refused() {
    let user = OtherUser::create();
    let parent = open_parent();
    let theirs = parent.path().join("theirs");
    fs::create_dir(&theirs).unwrap();
    nix::unistd::chown(
        &theirs,
        Some(Uid::from_raw(user.uid)),
        Some(Gid::from_raw(user.gid)),
    )
    .unwrap();
    let open = parent.path().join("open");
    fs::create_dir(&open).unwrap();
    fs::set_permissions(&open, fs::Permissions::from_mode(0o1777)).unwrap();
    let link = parent.path().join("link");
    std::os::unix::fs::symlink(parent.path(), &link).unwrap();
    // A per-VM directory another user planted in a spool that is ours.
    let ours = parent.path().join("ours");
    fs::create_dir_all(ours.join("vm1")).unwrap();
    fs::set_permissions(&ours, fs::Permissions::from_mode(0o700)).unwrap();
    nix::unistd::chown(&ours.join("vm1"), Some(Uid::from_raw(user.uid)), None).unwrap();

    for (spool, bad) in [
        (&theirs, theirs.clone()),
        (&open, open.clone()),
        (&link, link.clone()),
        (&ours, ours.join("vm1")),
    ] {
        let err = crash_spool::store(spool, "vm1", &report("app"), 0).unwrap_err();
        assert_eq!(err.path, bad);
        assert_eq!(err.source.kind(), std::io::ErrorKind::PermissionDenied);
        let text = err.to_string();
        assert!(text.contains(s(&bad)), "{text}");
    }
    assert_eq!(fs::read_dir(&theirs).unwrap().count(), 0);
    assert_eq!(fs::read_dir(&open).unwrap().count(), 0);
}

#[test]
fn other_user_cannot_list_or_enter_a_run_dir() {
    let user = OtherUser::create();
    let parent = open_parent();
    let runtime = parent.path().join("run");
    let pool = Pool::open(PoolConfig::new(&runtime)).unwrap();
    let lease = pool.allocate(Some("web")).unwrap();
    let stale = pool.run_dir("web").join("old-console.log");
    fs::create_dir_all(stale.parent().unwrap()).unwrap();
    fs::write(&stale, "left by a crashed launcher").unwrap();

    let run_dir = pool.create_run_dir(&lease).unwrap();

    assert_eq!(run_dir, runtime.join("vms/web"));
    assert!(!stale.exists());
    assert_eq!(mode(&run_dir), 0o700);
    assert_eq!(mode(&runtime.join("vms")), 0o700);
    // What a hypervisor writes there with umask 0 is still out of reach.
    let console = run_dir.join("console.log");
    fs::write(&console, "maitred.token=secret").unwrap();
    assert_eq!(mode(&console), 0o666);
    user.denied(&["ls", s(&run_dir)]);
    user.denied(&["ls", s(&runtime.join("vms"))]);
    user.denied(&["cat", s(&console)]);
    user.denied(&["touch", s(&run_dir.join("planted"))]);
    // Opened up one level at a time: vms/ alone is still not enough.
    fs::set_permissions(&runtime, fs::Permissions::from_mode(0o711)).unwrap();
    user.denied(&["ls", s(&run_dir)]);
    user.denied(&["cat", s(&console)]);
}

fn refused(runtime: &Path, why: &str, path: &Path) {
    let err = Pool::open(PoolConfig::new(runtime)).unwrap_err();
    assert!(matches!(err, PoolError::NotPrivate { .. }), "{err:?}");
    let text = err.to_string();
    for part in [
        s(path),
        why,
        "--runtime-dir",
        "VM_LAUNCHER_RUNTIME_DIR",
        "remove it",
    ] {
        assert!(text.contains(part), "{part:?} missing in: {text}");
    }
}

#[test]
fn runtime_dir_of_another_user_is_refused() {
    let user = OtherUser::create();
    let parent = open_parent();
    let runtime = parent.path().join("run");
    fs::create_dir(&runtime).unwrap();
    fs::set_permissions(&runtime, fs::Permissions::from_mode(0o700)).unwrap();
    nix::unistd::chown(
        &runtime,
        Some(Uid::from_raw(user.uid)),
        Some(Gid::from_raw(user.gid)),
    )
    .unwrap();

    refused(
        &runtime,
        &format!("owned by another user (owner uid {}, mode 0700", user.uid),
        &runtime,
    );
    assert_eq!(
        fs::read_dir(&runtime).unwrap().count(),
        0,
        "nothing created in it"
    );

    // A lease directory inside our own runtime dir that another user owns.
    nix::unistd::chown(&runtime, Some(Uid::from_raw(0)), Some(Gid::from_raw(0))).unwrap();
    Pool::open(PoolConfig::new(&runtime)).unwrap();
    let cid_dir = runtime.join("leases/cid");
    nix::unistd::chown(&cid_dir, Some(Uid::from_raw(user.uid)), None).unwrap();
    refused(&runtime, "owned by another user", &cid_dir);
}

#[test]
fn runtime_dir_writable_by_others_or_a_symlink_is_refused() {
    let parent = open_parent();
    for bad in [0o777, 0o770, 0o702, 0o1777, 0o720] {
        let runtime = parent.path().join(format!("run{bad:o}"));
        fs::create_dir(&runtime).unwrap();
        fs::set_permissions(&runtime, fs::Permissions::from_mode(bad)).unwrap();
        refused(
            &runtime,
            &format!("writable by group or others (owner uid 0, mode {bad:04o}"),
            &runtime,
        );
        assert_eq!(mode(&runtime), bad, "a refused dir is left as it was");
    }
    let real = parent.path().join("real");
    fs::create_dir(&real).unwrap();
    fs::set_permissions(&real, fs::Permissions::from_mode(0o700)).unwrap();
    let link = parent.path().join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    refused(&link, "symbolic link", &link);

    // Ours and only readable by others (an older launcher's 0755): tightened and used.
    let old = parent.path().join("old");
    fs::create_dir_all(old.join("leases/cid")).unwrap();
    for dir in ["", "leases", "leases/cid"] {
        fs::set_permissions(old.join(dir), fs::Permissions::from_mode(0o755)).unwrap();
    }
    Pool::open(PoolConfig::new(&old)).unwrap();
    assert_private_tree(&old);
    // A fresh one, parents included, under umask 0.
    let fresh = parent.path().join("a/b/run");
    Pool::open(PoolConfig::new(&fresh)).unwrap();
    assert_private_tree(&fresh);
}

/// A child process killed on drop.
struct Sleeper(Child);

impl Sleeper {
    fn spawn(program: &Path) -> Sleeper {
        let child = Command::new(program)
            .arg("60")
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        Sleeper(child)
    }

    fn running(&mut self) -> bool {
        std::thread::sleep(Duration::from_millis(200));
        self.0.try_wait().unwrap().is_none()
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn stop_after_pid_reuse_signals_nothing() {
    let parent = open_parent();
    let runtime = parent.path().join("run");
    let pool = Pool::open(PoolConfig::new(&runtime)).unwrap();
    let _lease = pool.allocate(Some("vm")).unwrap();
    let me = std::process::id();
    let mine = pool.list().unwrap().remove(0);
    assert_eq!(mine.pid, Some(me));
    assert_eq!(mine.pid_start, pid::own_start_time());
    assert!(mine.pid_start.is_some());
    assert_eq!(mine.live_pid(), Some(me as i32));

    // The record as a dead holder left it, its pid since given to another process.
    let record = runtime.join("leases/id/vm.lock");
    let mut sleeper = Sleeper::spawn(Path::new("/bin/sleep"));
    let child = sleeper.0.id();
    let start = pid::start_time(child).unwrap();
    let rewrite = |text: String| {
        fs::write(&record, text).unwrap();
        pool.list().unwrap().remove(0)
    };
    for wrong in [start + 1, start - 1, 0] {
        let stale = rewrite(format!("pid={child} pid_start={wrong} id=vm cid=3\n"));
        assert_eq!(stale.pid, Some(child));
        assert_eq!(stale.live_pid(), None);
        assert!(!stale.signal(Signal::SIGTERM).unwrap());
        assert!(sleeper.running(), "a reused pid was signalled");
    }
    // The same for our own pid: signalling it would end this test.
    let start_me = mine.pid_start.unwrap();
    let stale_me = rewrite(format!("pid={me} pid_start={} id=vm\n", start_me + 7));
    assert_eq!(stale_me.live_pid(), None);
    assert!(!stale_me.signal(Signal::SIGTERM).unwrap());
    // A record without a start time (older launcher) names no process to signal.
    let old = rewrite(format!("pid={child} id=vm\n"));
    assert_eq!(
        (old.pid, old.pid_start, old.live_pid()),
        (Some(child), None, None)
    );
    assert!(!old.signal(Signal::SIGTERM).unwrap());
    assert!(sleeper.running());

    // The recorded process itself is signalled.
    let live = rewrite(format!("pid={child} pid_start={start} id=vm\n"));
    assert_eq!(live.live_pid(), Some(child as i32));
    assert!(live.signal(Signal::SIGTERM).unwrap());
    let status = sleeper.0.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(15)
    );
    // Gone now: nothing to signal, no error.
    assert_eq!(live.live_pid(), None);
    assert!(!live.signal(Signal::SIGTERM).unwrap());
}

#[test]
fn start_time_of_a_process_named_with_spaces_and_parens() {
    let dir = tempfile::tempdir().unwrap();
    let program = dir.path().join("a) (b c");
    fs::copy("/bin/sleep", &program).unwrap();
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .unwrap()
        .unwrap() as f64;
    let uptime = || -> f64 {
        let text = fs::read_to_string("/proc/uptime").unwrap();
        text.split_whitespace().next().unwrap().parse().unwrap()
    };
    let before = uptime();
    let mut sleeper = Sleeper::spawn(&program);
    let after = uptime();
    let stat = fs::read_to_string(format!("/proc/{}/stat", sleeper.0.id())).unwrap();
    assert!(stat.contains("(a) (b c)"), "{stat}");

    let start = pid::start_time(sleeper.0.id()).unwrap() as f64 / ticks;

    assert!(
        start >= before - 0.05 && start <= after + 0.05,
        "{before} <= {start} <= {after}"
    );
    assert!(sleeper.running());
}
