//! Bad kernel, initrd and disk flags, through the real vm_launcher binary: each gives exactly
//! one line on stderr naming the flag and path, exit 2 (a malformed command line) or 125 (a
//! file the VM cannot use), and nothing starts: the fake hypervisor on PATH never runs and
//! the runtime dir holds nothing.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const LAUNCHER: &str = env!("CARGO_BIN_EXE_vm_launcher");

/// A temp dir with a kernel, an initrd, an ext4-looking image, a component directory and a
/// fake `qemu-system-x86_64` that leaves a marker if anything runs it.
struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        let env = Env {
            dir: tempfile::tempdir().unwrap(),
        };
        let d = env.path("");
        for name in ["bzImage", "initrd", "a.img", "b.img"] {
            std::fs::write(d.join(name), b"file").unwrap();
        }
        let component = d.join("component");
        std::fs::create_dir(&component).unwrap();
        std::fs::write(component.join("vm_kernel"), b"kernel").unwrap();
        let mut ext4 = vec![0u8; 4096];
        ext4[1080..1082].copy_from_slice(&[0x53, 0xEF]);
        std::fs::write(component.join("vm_rootfs.img"), &ext4).unwrap();
        std::fs::write(component.join("vm_tools.img"), &ext4).unwrap();
        std::fs::create_dir(d.join("bin")).unwrap();
        std::fs::create_dir(d.join("empty")).unwrap();
        // Each fake records its name and arguments; the vsock helper then serves (creates its
        // socket and waits to be stopped), the hypervisors fail at once.
        let serve = "sock=$(echo \"$2\" | sed 's/.*socket=\\([^,]*\\).*/\\1/')\n: > \"$sock\"\nexec sleep 1000";
        for (program, then) in [
            ("qemu-system-x86_64", "exit 1"),
            ("vhost-device-vsock", serve),
            ("crosvm", "exit 1"),
            ("lkvm", "exit 1"),
        ] {
            let fake = d.join("bin").join(program);
            let marker = d.join("started");
            let script = format!(
                "#!/bin/sh\nPATH=/usr/bin:/bin\necho \"$0 $*\" >> '{}'\n{then}\n",
                marker.display()
            );
            std::fs::write(&fake, script).unwrap();
            std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        std::os::unix::fs::symlink(d.join("a.img"), d.join("link-to-a.img")).unwrap();
        env
    }

    /// `name` under the temp dir, as a string.
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn p(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    /// Runs `vm_launcher COMMAND --runtime-dir … ARGS`; returns (exit code, stderr).
    fn launch(&self, command: &str, args: &[String]) -> (i32, String) {
        let out = Command::new(LAUNCHER)
            .env_clear()
            .env("PATH", format!("{}:/usr/bin:/bin", self.p("bin")))
            .arg(command)
            .arg("--runtime-dir")
            .arg(self.path("run"))
            .args(["--log-dest", "none", "--boot-timeout", "5"])
            // The fake QEMU is no hypervisor: no `--accel auto` probe of it.
            .args(["--accel", "tcg"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.code().unwrap_or(-1), stderr)
    }

    /// Nothing ran and nothing was left behind.
    fn assert_nothing_started(&self, case: &str) {
        let marker = self.path("started");
        assert!(
            !marker.exists(),
            "{case}: started {:?}",
            std::fs::read_to_string(&marker)
        );
        assert_eq!(
            files_under(&self.path("run")),
            Vec::<PathBuf>::new(),
            "{case}"
        );
    }
}

/// Every file and directory under `dir` (none if it does not exist).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries {
        let path = entry.unwrap().path();
        found.extend(files_under(&path));
        found.push(path);
    }
    found
}

fn strings(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

/// Each case: arguments, the exit code, and what its one stderr line holds.
fn cases(env: &Env) -> Vec<(Vec<String>, i32, String)> {
    let (k, i, a, b) = (
        env.p("bzImage"),
        env.p("initrd"),
        env.p("a.img"),
        env.p("b.img"),
    );
    let (missing, empty, comp) = (env.p("missing.img"), env.p("empty"), env.p("component"));
    let link = env.p("link-to-a.img");
    let tools = format!("{comp}/vm_tools.img");
    let mut eleven = strings(&["--kernel", &k, "--initrd", &i]);
    for _ in 0..11 {
        eleven.extend(strings(&["--disk", &a]));
    }
    let case = |args: &[&str], code: i32, want: String| (strings(args), code, want);
    vec![
        case(
            &["--kernel", &missing, "--initrd", &i],
            125,
            format!("vm_launcher: --kernel {missing}: no such file"),
        ),
        case(
            &["--kernel", &k, "--initrd", &missing],
            125,
            format!("vm_launcher: --initrd {missing}: no such file"),
        ),
        case(
            &["--kernel", &k, "--rootfs", &missing],
            125,
            format!("vm_launcher: --rootfs {missing}: no such file"),
        ),
        case(
            &["--kernel", &k, "--initrd", &i, "--disk", &missing],
            125,
            format!("vm_launcher: --disk {missing}: no such file"),
        ),
        case(
            &["--kernel", &k, "--initrd", &i, "--disk", &format!("{empty}:rw")],
            125,
            format!("vm_launcher: --disk {empty}: is a directory, not a file"),
        ),
        case(
            &["--vm-path", &missing],
            125,
            format!("vm_launcher: --vm-path {missing}: not a directory"),
        ),
        case(
            &["--vm-path", &empty],
            125,
            format!("vm_launcher: --vm-path {empty}/vm_kernel: no such file in the component directory; give --kernel"),
        ),
        case(
            &["--vm-path", &empty, "--kernel", &k],
            125,
            format!("vm_launcher: --vm-path {empty}/vm_rootfs.img: no such file in the component directory; give --rootfs"),
        ),
        case(
            &["--kernel", &k, "--rootfs", &a, "--disk", &b, "--disk", &link],
            125,
            format!("vm_launcher: --disk {link} is the same file as --rootfs {a} ({a}); attach a file once"),
        ),
        case(
            &["--vm-path", &comp, "--disk", &format!("{tools}:rw")],
            125,
            format!("vm_launcher: --disk {tools} is the same file as --vm-path {tools} ({tools}); attach a file once"),
        ),
        case(
            &["--kernel", &k, "--rootfs", &a, "--container", &link],
            125,
            format!("vm_launcher: --container {link} is the same file as --rootfs {a} ({a}); attach a file once"),
        ),
        case(
            &["--kernel", &k, "--rootfs", &a, "--container", &missing],
            125,
            format!("vm_launcher: --container {missing}: No such file or directory (os error 2)"),
        ),
        (
            eleven,
            2,
            "vm_launcher: --disk given 11 times; a VM takes at most 10 extra disks; see --help".into(),
        ),
        case(
            &["--kernel", &k],
            2,
            "vm_launcher: the guest needs a root filesystem: give --initrd, --rootfs or --vm-path; see --help".into(),
        ),
        case(
            &["--kernel", &k, "--initrd", &i, "--disk", ":ro"],
            2,
            "vm_launcher: --disk \":ro\": no path; expected PATH[:ro|rw]; see --help".into(),
        ),
        case(
            &["--hypervisor", "process", "--disk", &a],
            2,
            "vm_launcher: --disk: --hypervisor process has no disks (--container takes a directory there); see --help".into(),
        ),
        case(
            &["--hypervisor", "process", "--vm-path", &comp],
            2,
            "vm_launcher: --vm-path: --hypervisor process has no disks (--container takes a directory there); see --help".into(),
        ),
    ]
}

#[test]
fn run_bad_specs_give_one_line_and_start_nothing() {
    let env = Env::new();
    for (args, code, want) in cases(&env) {
        let mut args = args;
        args.extend(strings(&["--", "true"]));
        let (got, stderr) = env.launch("run", &args);
        assert_eq!(
            (got, stderr.as_str()),
            (code, format!("{want}\n").as_str()),
            "{args:?}"
        );
        env.assert_nothing_started(&format!("{args:?}"));
    }
}

#[test]
fn start_bad_specs_give_one_line_and_start_nothing() {
    let env = Env::new();
    for (args, code, want) in cases(&env) {
        // start takes no application, except with --container.
        let mut args = args;
        if args.iter().any(|a| a == "--container") {
            args.extend(strings(&["--", "true"]));
        }
        let (got, stderr) = env.launch("start", &args);
        assert_eq!(
            (got, stderr.as_str()),
            (code, format!("{want}\n").as_str()),
            "{args:?}"
        );
        env.assert_nothing_started(&format!("{args:?}"));
    }
}

/// The good spec next to the bad ones: the checks pass and the real launcher hands QEMU the
/// disks in the fixed order with their serials (the fake QEMU exits at once, so the boot
/// then fails and is cleaned up).
#[test]
fn good_spec_reaches_the_hypervisor_with_every_disk_in_order() {
    let env = Env::new();
    let comp = env.p("component");
    let (a, b) = (env.p("a.img"), env.p("b.img"));
    let ctr = env.p("initrd");
    let args = strings(&[
        "--vm-path",
        &comp,
        "--disk",
        &a,
        "--disk",
        &format!("{b}:rw"),
        "--container",
        &ctr,
        "--",
        "true",
    ]);
    let (code, stderr) = env.launch("run", &args);
    assert_eq!(code, 125, "{stderr}");
    let started = std::fs::read_to_string(env.path("started")).unwrap();
    let qemu = started
        .lines()
        .find(|l| l.contains("qemu-system-x86_64"))
        .unwrap_or_else(|| panic!("QEMU never ran: {started:?} {stderr}"));
    let words: Vec<&str> = qemu.split(' ').collect();
    let after = |flag: &str| -> Vec<&str> {
        words
            .windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1])
            .collect()
    };
    let drives = [
        format!("file={comp}/vm_rootfs.img,if=none,id=blk-rootfs,format=raw,readonly=on"),
        format!("file={ctr},if=none,id=blk-container,format=raw,readonly=on"),
        format!("file={comp}/vm_tools.img,if=none,id=blk-vm_tools,format=raw,readonly=on"),
        format!("file={a},if=none,id=blk-disk0,format=raw,readonly=on"),
        format!("file={b},if=none,id=blk-disk1,format=raw"),
    ];
    assert_eq!(after("-drive"), drives);
    let serials: Vec<&str> = after("-device")
        .into_iter()
        .filter_map(|d| d.strip_prefix("virtio-blk-pci,drive=blk-"))
        .collect();
    assert_eq!(
        serials,
        [
            "rootfs,serial=rootfs",
            "container,serial=container",
            "vm_tools,serial=vm_tools",
            "disk0,serial=disk0",
            "disk1,serial=disk1"
        ]
    );
    assert_eq!(after("-kernel"), [format!("{comp}/vm_kernel")]);
    assert!(after("-initrd").is_empty(), "{qemu}");
    assert_eq!(files_under(&env.path("run/vms")), Vec::<PathBuf>::new());
}
