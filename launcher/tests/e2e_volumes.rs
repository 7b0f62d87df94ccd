//! `--volume` in real VMs (QEMU, virtio-9p): one started VM with three volumes and its
//! application in a (busybox) container carries every case that needs a guest, through
//! `exec` into the VM and into the container; bad specs are refused before anything boots.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::*;

const APPLETS: &[&str] = &["sh", "cat", "echo", "ls", "ln", "mkdir", "sleep", "grep"];
const VM: &str = "vols-vm";

/// The host side: three shared directories and, beside them (outside every share), a
/// secret no guest may read.
struct HostDirs {
    tmp: tempfile::TempDir,
    secret: PathBuf,
    marker: String,
}

impl HostDirs {
    fn new() -> HostDirs {
        let tmp = tempfile::tempdir().unwrap();
        for dir in ["rw/sub", "ro", "gone"] {
            std::fs::create_dir_all(tmp.path().join(dir)).unwrap();
        }
        let marker = format!("host-secret-{}", std::process::id());
        let secret = tmp.path().join("secret");
        std::fs::write(&secret, &marker).unwrap();
        std::fs::write(tmp.path().join("rw/from-host"), "written on the host\n").unwrap();
        std::fs::write(tmp.path().join("ro/kept"), "read-only content\n").unwrap();
        std::fs::write(tmp.path().join("gone/file"), "soon gone\n").unwrap();
        // Symlinks made on the host that point out of the share.
        let link = |target: &Path, name: &str| {
            std::os::unix::fs::symlink(target, tmp.path().join("rw").join(name)).unwrap()
        };
        link(Path::new("../secret"), "up");
        link(&secret, "abs");
        link(Path::new("/"), "root");
        HostDirs {
            tmp,
            secret,
            marker,
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    fn spec(&self, rel: &str, guest: &str, mode: &str) -> String {
        format!("{}:{guest}{mode}", self.path(rel).display())
    }
}

fn exec(vm: &StartedVm, in_vm: bool, script: &str) -> Output {
    let mut args = vec!["exec", VM];
    if in_vm {
        args.push("--vm");
    }
    args.extend(["--", "sh", "-c", script]);
    vm_cmd_plain(vm.runtime.path(), &args)
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every guest-side case on one VM: its application sleeps in a container.
#[test]
fn volumes_share_read_write_refuse_escapes_and_survive_removal() {
    let host = HostDirs::new();
    let rootfs = tempfile::tempdir().unwrap();
    busybox_root(rootfs.path(), APPLETS);
    // The container image is read-only: the mount points are in it already.
    for dir in ["mnt/rw", "mnt/ro", "mnt/gone"] {
        std::fs::create_dir_all(rootfs.path().join(dir)).unwrap();
    }
    let specs = [
        host.spec("rw", "/mnt/rw", ""),
        host.spec("ro", "/mnt/ro", ":ro"),
        host.spec("gone", "/mnt/gone", ":rw"),
    ];
    let rootfs_arg = rootfs.path().to_str().unwrap();
    let mut extra = vec!["--container", rootfs_arg];
    for spec in &specs {
        extra.extend(["--volume", spec.as_str()]);
    }
    extra.extend(["--", "sleep", "100000"]);
    let vm = StartedVm::start_with(VM, &extra);

    // list --json shows them.
    let out = vm_cmd_plain(vm.runtime.path(), &["list", "--json"]);
    let json = stdout(&out);
    let want = format!(
        "\"volumes\":[{{\"host\":\"{}\",\"guest\":\"/mnt/rw\",\"mode\":\"rw\"}},{{\"host\":\"{}\",\"guest\":\"/mnt/ro\",\"mode\":\"ro\"}}",
        host.path("rw").canonicalize().unwrap().display(),
        host.path("ro").canonicalize().unwrap().display()
    );
    assert!(json.contains(&want), "{json}");

    // Host files are read in the VM and in the container; both write back.
    for (in_vm, who) in [(true, "vm"), (false, "container")] {
        let script =
            format!("cat /mnt/rw/from-host /mnt/ro/kept; echo from the {who} > /mnt/rw/from-{who}");
        let out = exec(&vm, in_vm, &script);
        assert_eq!(
            stdout(&out),
            "written on the host\nread-only content\n",
            "{who}: {}",
            show(&out)
        );
        let written = std::fs::read_to_string(host.path(&format!("rw/from-{who}"))).unwrap();
        assert_eq!(written, format!("from the {who}\n"));
    }

    // :ro refuses writes, in the container and in the VM, even after the VM's root remounts
    // the share read-write: QEMU (readonly=on) refuses them, not the guest's mount flag.
    // (The shell reports a failed redirection on its own stderr.)
    let write_ro = "echo x > /mnt/ro/new; echo x >> /mnt/ro/kept";
    let refusals = |out: &Output| {
        String::from_utf8_lossy(&out.stderr)
            .matches("Read-only file system")
            .count()
    };
    let out = exec(&vm, false, write_ro);
    assert_eq!(refusals(&out), 2, "{}", show(&out));
    let out = exec(
        &vm,
        true,
        &format!(
            "mount -o remount,rw /mnt/ro && grep -c ' /mnt/ro 9p rw,' /proc/mounts; {write_ro}"
        ),
    );
    assert_eq!(
        stdout(&out),
        "1\n",
        "remount rw did not take: {}",
        show(&out)
    );
    assert_eq!(refusals(&out), 2, "{}", show(&out));
    assert!(!host.path("ro/new").exists());
    assert_eq!(
        std::fs::read_to_string(host.path("ro/kept")).unwrap(),
        "read-only content\n"
    );

    // Escapes: .. past the share and symlinks out of it, made on the host and in the guest,
    // read and written, from the VM and from the container. The guest resolves every link
    // itself, inside the guest; QEMU never follows one on the host.
    let secret = host.secret.display().to_string();
    let escapes = format!(
        "ln -s / /mnt/rw/groot; ln -s ../../../.. /mnt/rw/gup; \
         for p in /mnt/rw/up /mnt/rw/abs /mnt/rw/root{secret} /mnt/rw/sub/../../../..{secret} \
                  /mnt/rw/groot{secret} /mnt/rw/gup{secret} /mnt/rw/../..{secret}; do \
             cat $p 2>/dev/null; done; \
         echo pwned > /mnt/rw/abs; echo pwned > /mnt/rw/up; \
         mkdir -p /mnt/rw/root{}/escaped 2>/dev/null; echo done",
        host.tmp.path().display()
    );
    for in_vm in [true, false] {
        let out = exec(&vm, in_vm, &escapes);
        let text = stdout(&out);
        assert!(text.ends_with("done\n"), "{}", show(&out));
        assert!(
            !text.contains(&host.marker),
            "escaped (vm: {in_vm}): {}",
            show(&out)
        );
        let _ = std::fs::remove_file(host.path("rw/groot"));
        let _ = std::fs::remove_file(host.path("rw/gup"));
    }
    assert_eq!(std::fs::read_to_string(&host.secret).unwrap(), host.marker);
    assert!(!host.path("escaped").exists());
    assert_eq!(
        std::fs::read_link(host.path("rw/up")).unwrap(),
        Path::new("../secret")
    );

    // A share removed on the host mid-run: I/O errors in the guest, the VM stays up.
    std::fs::remove_dir_all(host.path("gone")).unwrap();
    let out = exec(
        &vm,
        true,
        "cat /mnt/gone/file >/dev/null 2>&1; echo read=$?; \
         echo x > /mnt/gone/new 2>/dev/null; echo write=$?; \
         ls /mnt/gone >/dev/null 2>&1; echo list=$?",
    );
    let text = stdout(&out);
    for op in ["read", "write"] {
        assert!(
            text.contains(&format!("{op}=")) && !text.contains(&format!("{op}=0")),
            "{op} on a removed share succeeded: {}",
            show(&out)
        );
    }
    for in_vm in [true, false] {
        let out = exec(&vm, in_vm, "echo alive; cat /mnt/rw/from-host");
        assert_eq!(
            stdout(&out),
            "alive\nwritten on the host\n",
            "{}",
            show(&out)
        );
    }
}

/// A share the guest cannot mount stops the boot with its reason: here the mount point
/// cannot be made on the component image's read-only root.
#[test]
fn volume_that_cannot_be_mounted_stops_the_boot_naming_it() {
    let host = tempfile::tempdir().unwrap();
    let runtime = tempfile::tempdir().unwrap();
    let component = component().to_str().unwrap().to_string();
    let spec = format!("{}:/data-nowhere", host.path().display());
    let out = vm_cmd_image(
        runtime.path(),
        "run",
        &["--vm-path", &component],
        &["--volume", &spec, "--", "true"],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(125), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("volume /data-nowhere: cannot create the mount point"),
        "{}",
        show(&out)
    );
    assert!(processes_mentioning(runtime.path().to_str().unwrap()).is_empty());
}

/// Bad specs: one line on stderr, before anything boots (no kernel needed: these fail first).
#[test]
fn bad_volume_specs_fail_before_boot_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("kernel");
    std::fs::write(&kernel, "not a kernel").unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let share = dir.path().join("share");
    std::fs::create_dir(&share).unwrap();
    let (kernel, file, share) = (
        kernel.display().to_string(),
        file.display().to_string(),
        share.display().to_string(),
    );
    let missing = format!("{}/missing", dir.path().display());
    let cases: Vec<(Vec<String>, u8, String)> = vec![
        (
            vec![format!("{missing}:/data")],
            125,
            format!("--volume {missing}: no such directory on the host"),
        ),
        (vec![format!("{file}:/data")], 125, "not a directory".into()),
        (vec![format!("{share}:data")], 2, "must be absolute".into()),
        (vec![format!("{share}:/a/../etc")], 2, ". or ..".into()),
        (vec![format!("{share}:/proc/x")], 2, "/proc".into()),
        (
            vec![format!("{share}:/data:rwx")],
            2,
            "neither ro nor rw".into(),
        ),
        (vec![share.clone()], 2, "no guest path".into()),
        (
            vec![format!("{share}:/data"), format!("{share}:/data/sub")],
            2,
            "overlap".into(),
        ),
    ];
    for (specs, code, want) in cases {
        let runtime = tempfile::tempdir().unwrap();
        let mut args = vec!["start".to_string(), "--kernel".into(), kernel.clone()];
        args.extend(["--initrd".into(), kernel.clone()]);
        for spec in &specs {
            args.extend(["--volume".into(), spec.clone()]);
        }
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_vm_launcher"))
            .env("VM_LAUNCHER_RUNTIME_DIR", runtime.path())
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(code.into()),
            "{specs:?}: {}",
            show(&out)
        );
        assert!(stderr.contains(&want), "{specs:?}: {}", show(&out));
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "{specs:?}: {}",
            show(&out)
        );
        assert!(
            !runtime.path().join("vms").exists(),
            "{specs:?}: something started"
        );
    }
}

/// A read-only container image without the volume's directory: one clear line naming the
/// way out; with `--container-rw` the directory is made and the volume is there.
#[test]
fn container_mount_point_is_made_only_in_a_writable_image() {
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("f"), "shared\n").unwrap();
    let rootfs = tempfile::tempdir().unwrap();
    busybox_root(rootfs.path(), APPLETS);
    let spec = format!("{}:/srv/data", host.path().display());
    let rootfs_arg = rootfs.path().to_str().unwrap();
    let run = |extra: &[&str]| {
        let runtime = tempfile::tempdir().unwrap();
        let mut args = vec!["--volume", &spec, "--container", rootfs_arg];
        args.extend_from_slice(extra);
        args.extend(["--", "cat", "/srv/data/f"]);
        vm_cmd(runtime.path(), "run", &args).output().unwrap()
    };
    let out = run(&[]);
    assert_ne!(out.status.code(), Some(0), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("volume /srv/data: cannot create its mount point in the container")
            && stderr.contains("--container-rw"),
        "{}",
        show(&out)
    );
    let out = run(&["--container-rw"]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_eq!(out.stdout, b"shared\n", "{}", show(&out));
}
