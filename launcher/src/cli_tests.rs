//! `cli`'s unit tests: every command and flag, and one clear error for each bad input.

use super::*;
use crate::log_forward::journald::JOURNAL_SOCKET;
use crate::log_forward::Rotation;

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

#[test]
fn parse_run_full() {
    let cli = parse(&args(&[
        "run",
        "--kernel",
        "k",
        "--initrd",
        "i",
        "--mem",
        "256",
        "--cpus",
        "2",
        "--name",
        "vm1",
        "--params",
        "quiet",
        "--rootfs",
        "r.img",
        "--rootfs-rw",
        "--",
        "sh",
        "-c",
        "exit 3",
    ]))
    .unwrap();
    let Cli::Run(run) = cli else {
        panic!("{cli:?}")
    };
    assert_eq!(run.kernel, Some("k".into()));
    assert_eq!((run.mem_mib, run.cpus), (256, 2));
    assert_eq!(run.name.as_deref(), Some("vm1"));
    assert_eq!(run.app, args(&["sh", "-c", "exit 3"]));
    assert_eq!((run.rootfs, run.rootfs_rw), (Some("r.img".into()), true));
}

#[test]
fn parse_vm_path_and_disks_in_order() {
    let Cli::Run(run) = parse(&args(&[
        "run",
        "--vm-path",
        "/c",
        "--disk",
        "/a.img",
        "--disk",
        "/b:c.img:rw",
        "--disk",
        "/d.img:ro",
        "--container",
        "/ctr.img",
        "--",
        "x",
    ]))
    .unwrap() else {
        panic!()
    };
    assert_eq!(run.vm_path, Some("/c".into()));
    assert_eq!((run.kernel, run.initrd, run.rootfs), (None, None, None));
    let disks: Vec<(String, bool)> = run
        .disks
        .iter()
        .map(|d| (d.path.display().to_string(), d.read_only))
        .collect();
    let want = [("/a.img", true), ("/b:c.img", false), ("/d.img", true)];
    let want: Vec<(String, bool)> = want.iter().map(|(p, r)| (p.to_string(), *r)).collect();
    assert_eq!(disks, want);
    assert_eq!(run.container, Some("/ctr.img".into()));
}

#[test]
fn parse_rootfs_without_initrd_is_enough() {
    let Cli::Run(run) =
        parse(&args(&["run", "--kernel", "k", "--rootfs", "r", "--", "x"])).unwrap()
    else {
        panic!()
    };
    assert_eq!((run.initrd, run.rootfs_rw), (None, false));
}

#[test]
fn parse_bad_disk_specs_are_one_clear_error_each() {
    let eleven: Vec<&str> = (0..11).flat_map(|_| ["--disk", "d.img"]).collect();
    let mut too_many = vec!["run", "--kernel", "k", "--initrd", "i"];
    too_many.extend(eleven);
    too_many.extend(["--", "x"]);
    for (a, want) in [
        (
            too_many,
            "--disk given 11 times; a VM takes at most 10 extra disks",
        ),
        (
            vec!["run", "--kernel", "k", "--", "x"],
            "give --initrd, --rootfs or --vm-path",
        ),
        (
            vec!["run", "--initrd", "i", "--", "x"],
            "--kernel is required",
        ),
        (
            vec![
                "run", "--kernel", "k", "--initrd", "i", "--disk", ":rw", "--", "x",
            ],
            "--disk \":rw\": no path",
        ),
        (
            vec!["run", "--kernel", "k", "--initrd", "i", "--disk"],
            "--disk needs a value",
        ),
        (
            vec![
                "run",
                "--kernel",
                "k",
                "--initrd",
                "i",
                "--rootfs-rw",
                "--",
                "x",
            ],
            "--rootfs-rw needs --rootfs",
        ),
        (
            vec!["run", "--hypervisor", "process", "--disk", "d", "--", "x"],
            "--disk: --hypervisor process has no disks",
        ),
        (
            vec!["run", "--hypervisor", "process", "--rootfs", "r", "--", "x"],
            "--rootfs: --hypervisor process has no disks",
        ),
        (
            vec![
                "run",
                "--hypervisor",
                "process",
                "--vm-path",
                "d",
                "--",
                "x",
            ],
            "--vm-path: --hypervisor process has no disks",
        ),
    ] {
        let err = parse(&args(&a)).unwrap_err().to_string();
        assert!(err.contains(want), "{a:?}: {err}");
    }
    let ten: Vec<&str> = (0..10).flat_map(|_| ["--disk", "d.img"]).collect();
    let mut max = vec!["start", "--vm-path", "c"];
    max.extend(ten);
    assert!(parse(&args(&max)).is_ok());
    let process = [
        "run",
        "--hypervisor",
        "process",
        "--container",
        "d",
        "--",
        "x",
    ];
    assert!(parse(&args(&process)).is_ok());
}

#[test]
fn parse_bad_input_is_a_clear_error() {
    for (a, want) in [
        (vec!["run", "--kernel", "k"], "application"),
        (vec!["run", "--", "true"], "--kernel"),
        (
            vec!["run", "--kernel", "k", "--mem", "lots", "--", "x"],
            "--mem",
        ),
        (
            vec!["run", "--kernel", "k", "--name", "../x", "--", "x"],
            "--name",
        ),
        (
            vec![
                "run",
                "--kernel",
                "k",
                "--params",
                "maitred.token=00",
                "--",
                "x",
            ],
            "maitred",
        ),
        (vec!["run", "--hypervisor", "xen", "--", "x"], "xen"),
        (vec!["stop"], "ids or --all"),
        (vec!["stop", "a", "--all"], "ids or --all"),
        (vec!["frobnicate"], "unknown command"),
    ] {
        let err = parse(&args(&a)).unwrap_err().to_string();
        assert!(err.contains(want), "{a:?}: {err}");
    }
}

#[test]
fn parse_log_dest_every_form_and_default() {
    let dest = |v: &str| -> Result<Option<LogSink>, CliError> {
        match parse(&args(&["start", "--vm-path", "c", "--log-dest", v]))? {
            Cli::Start(run) => Ok(run.log_dest),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(dest("terminal"), Ok(Some(LogSink::Terminal)));
    assert_eq!(dest("syslog"), Ok(Some(LogSink::host_syslog())));
    assert_eq!(
        dest("unix:/tmp/log"),
        Ok(Some(LogSink::Syslog("/tmp/log".into())))
    );
    assert_eq!(
        dest("file:/tmp/vm.log"),
        Ok(Some(LogSink::File("/tmp/vm.log".into())))
    );
    let err = dest("tcp:x").unwrap_err().to_string();
    assert!(err.contains("--log-dest") && err.contains("tcp:x"), "{err}");
    assert_eq!(
        dest("journald"),
        Ok(Some(LogSink::Journald(JOURNAL_SOCKET.into())))
    );
    let Cli::Start(run) = parse(&args(&["start", "--vm-path", "c"])).unwrap() else {
        panic!()
    };
    assert_eq!(run.log_dest, None);
}

#[test]
fn parse_log_rotation_applies_to_dir_only() {
    let start = |extra: &[&str]| {
        let mut a = vec!["start", "--vm-path", "c"];
        a.extend_from_slice(extra);
        match parse(&args(&a)) {
            Ok(Cli::Start(run)) => Ok(run.log_dest),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e.to_string()),
        }
    };
    let rotated = start(&[
        "--log-rotate-size",
        "64K",
        "--log-dest",
        "dir:/var/log/vms",
        "--log-rotate-keep",
        "3",
    ]);
    assert_eq!(
        rotated,
        Ok(Some(LogSink::Dir {
            path: "/var/log/vms".into(),
            rotation: Rotation {
                max_bytes: 65536,
                keep: 3
            }
        }))
    );
    let err = start(&["--log-rotate-keep", "3"]).unwrap_err();
    assert!(err.contains("dir:PATH"), "{err}");
    let err = start(&["--log-dest", "dir:/d", "--log-rotate-size", "0"]).unwrap_err();
    assert!(err.contains("--log-rotate-size"), "{err}");
}

#[test]
fn parse_exec_and_shell() {
    let cli = parse(&args(&[
        "exec", "-T", "-e", "A=b=c", "-w", "/srv", "--vm", "vm1", "--", "ls", "-l",
    ]))
    .unwrap();
    let Cli::Exec(exec) = cli else {
        panic!("{cli:?}")
    };
    assert_eq!(exec.id, "vm1");
    assert_eq!(exec.tty, Some(false));
    assert_eq!(exec.env, vec![("A".to_string(), "b=c".to_string())]);
    assert_eq!(exec.workdir.as_deref(), Some("/srv"));
    assert!(exec.in_vm);
    assert_eq!(exec.argv, args(&["ls", "-l"]));

    let Cli::Exec(shell) = parse(&args(&["shell", "vm1"])).unwrap() else {
        panic!()
    };
    assert_eq!((shell.tty, shell.argv), (Some(true), args(&["/bin/sh"])));

    for (a, want) in [
        (vec!["exec", "vm1"], "command after --"),
        (vec!["exec", "--", "ls"], "which VM"),
        (
            vec!["exec", "-e", "novalue", "vm1", "--", "ls"],
            "NAME=VALUE",
        ),
        (vec!["exec", "-x", "vm1", "--", "ls"], "unknown option"),
        (vec!["shell", "a", "b"], "unexpected argument"),
        (vec!["shell", "-t", "a"], "unknown option"),
    ] {
        let err = parse(&args(&a)).unwrap_err().to_string();
        assert!(err.contains(want), "{a:?}: {err}");
    }
}

#[test]
fn parse_run_tty_console_and_start_app() {
    let Cli::Run(run) = parse(&args(&[
        "run",
        "--vm-path",
        "c",
        "-t",
        "--console",
        "--",
        "sh",
    ]))
    .unwrap() else {
        panic!()
    };
    assert_eq!((run.tty, run.console), (Some(true), true));
    let Cli::Start(start) = parse(&args(&[
        "start",
        "--vm-path",
        "c",
        "--container",
        "r",
        "--",
        "srv",
    ]))
    .unwrap() else {
        panic!()
    };
    assert_eq!(start.app, args(&["srv"]));
    let err = parse(&args(&["start", "--kernel", "k", "--container", "r"]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("needs an application"), "{err}");
    let Cli::List { json, .. } = parse(&args(&["list", "--json"])).unwrap() else {
        panic!()
    };
    assert!(json);
}

#[test]
fn run_usage_names_the_contracts_paths_and_limits() {
    assert!(RUN_USAGE.contains(vm_proto::disks::VM_TOOLS_MOUNT));
    let max = format!("up to {}", vm_proto::disks::MAX_EXTRA_DISKS);
    assert!(RUN_USAGE.contains(&max));
}

#[test]
fn parse_help_everywhere() {
    assert_eq!(parse(&[]).unwrap(), Cli::Help(USAGE));
    assert_eq!(
        parse(&args(&["run", "--help"])).unwrap(),
        Cli::Help(RUN_USAGE)
    );
    assert!(matches!(
        parse(&args(&["stop", "--help"])).unwrap(),
        Cli::Help(_)
    ));
    assert!(matches!(
        parse(&args(&["list", "-h"])).unwrap(),
        Cli::Help(_)
    ));
}

#[test]
fn parse_pool_ranges_reach_the_pool_config() {
    let Cli::Start(start) = parse(&args(&[
        "start",
        "--vm-path",
        "c",
        "--cid-range",
        "100-199",
        "--subnet",
        "10.1.0.0/16",
        "--host-port-range",
        "20000-20999",
    ]))
    .unwrap() else {
        panic!()
    };
    let pool = start.pool("/rt".into());
    assert_eq!(pool.runtime_dir, PathBuf::from("/rt"));
    assert_eq!(pool.cids, 100..=199);
    assert_eq!(
        (pool.subnet_base, pool.subnet_prefix),
        ("10.1.0.0".parse().unwrap(), 16)
    );
    assert_eq!(pool.host_ports, 20000..=20999);
    let Cli::Run(run) = parse(&args(&["run", "--vm-path", "c", "--", "x"])).unwrap() else {
        panic!()
    };
    assert_eq!(run.pool("/rt".into()), PoolConfig::new("/rt"));
}

#[test]
fn parse_bad_pool_ranges_name_the_flag() {
    for (flag, value, want) in [
        ("--cid-range", "5", "--cid-range \"5\": expected FIRST-LAST"),
        (
            "--cid-range",
            "0-9",
            "cid range 0-9: must be a non-empty range",
        ),
        (
            "--cid-range",
            "9-5",
            "cid range 9-5: must be a non-empty range",
        ),
        (
            "--subnet",
            "10.0.0.0",
            "--subnet \"10.0.0.0\": expected a network",
        ),
        (
            "--subnet",
            "10.0.0.4/24",
            "subnet 10.0.0.4/24: must be a network address",
        ),
        ("--subnet", "10.0.0.0/31", "prefix length from /8 to /30"),
        ("--host-port-range", "0-10", "host port range 0-10: must be"),
        (
            "--host-port-range",
            "a-b",
            "--host-port-range \"a-b\": expected FIRST-LAST",
        ),
    ] {
        let a = ["run", "--vm-path", "c", flag, value, "--", "x"];
        let err = parse(&args(&a)).unwrap_err().to_string();
        assert!(err.contains(want), "{flag} {value}: {err}");
        assert!(err.contains(flag), "{flag} {value}: {err}");
    }
}

#[test]
fn run_usage_lists_every_flag_the_pool_errors_name() {
    for flag in [
        crate::pool::FLAG_CID_RANGE,
        crate::pool::FLAG_SUBNET,
        crate::pool::FLAG_HOST_PORT_RANGE,
        crate::pool::FLAG_RUNTIME_DIR,
        crate::pool::FLAG_NAME,
    ] {
        assert!(RUN_USAGE.contains(&format!("  {flag} ")), "{flag}");
    }
}

#[test]
fn parse_accel_auto_is_the_default() {
    let accel = |extra: &[&str]| {
        let mut a = vec!["run", "--vm-path", "c"];
        a.extend(extra);
        a.extend(["--", "x"]);
        match parse(&args(&a)) {
            Ok(Cli::Run(run)) => Ok(run.accel),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e.to_string()),
        }
    };
    assert_eq!(accel(&[]), Ok(None));
    assert_eq!(accel(&["--accel", "auto"]), Ok(None));
    assert_eq!(accel(&["--accel", "kvm"]), Ok(Some(Accel::Kvm)));
    assert_eq!(accel(&["--accel", "tcg"]), Ok(Some(Accel::Tcg)));
    let err = accel(&["--accel", "xen"]).unwrap_err();
    assert!(
        err.contains("--accel \"xen\": expected auto, kvm or tcg"),
        "{err}"
    );
}

#[test]
fn parse_volumes_in_order_on_run_and_start() {
    for command in ["run", "start"] {
        let cli = parse(&args(&[
            command,
            "--kernel",
            "k",
            "--initrd",
            "i",
            "--volume",
            "/h/src:/src",
            "--volume",
            "/h/data:/data:ro",
            "--",
            "x",
        ]))
        .unwrap();
        let (Cli::Run(run) | Cli::Start(run)) = cli else {
            panic!("{cli:?}")
        };
        let guest: Vec<(&str, bool)> = run
            .volumes
            .iter()
            .map(|v| (v.guest.as_str(), v.read_only))
            .collect();
        assert_eq!(guest, [("/src", false), ("/data", true)]);
        assert_eq!(run.volumes[1].host, PathBuf::from("/h/data"));
    }
}

#[test]
fn parse_bad_volumes_fail_before_boot_with_one_line() {
    let base = ["start", "--kernel", "k", "--initrd", "i"];
    for (extra, want) in [
        (vec!["--volume"], "--volume needs a value"),
        (vec!["--volume", "/h"], "no guest path"),
        (vec!["--volume", "/h:rel"], "must be absolute"),
        (vec!["--volume", "/h:/a/../b"], ". or .."),
        (vec!["--volume", "/h:/g:rwx"], "neither ro nor rw"),
        (vec!["--volume", "/h:/a", "--volume", "/i:/a/b"], "overlap"),
        (vec!["--volume", "/h:/a", "--volume", "/i:/a"], "overlap"),
        (
            vec!["--hypervisor", "process", "--volume", "/h:/a"],
            "--volume: --hypervisor process has no volumes",
        ),
    ] {
        let mut a: Vec<&str> = base.to_vec();
        a.extend(extra.iter().copied());
        let err = parse(&args(&a)).unwrap_err().to_string();
        assert!(err.contains(want), "{a:?}: {err}");
        assert!(!err.contains('\n'), "{err}");
    }
    let mut nine = base.to_vec();
    let specs: Vec<String> = (0..9).map(|i| format!("/h:/v{i}")).collect();
    for spec in &specs {
        nine.extend(["--volume", spec.as_str()]);
    }
    let err = parse(&args(&nine)).unwrap_err().to_string();
    assert!(err.contains("at most 8"), "{err}");
}
