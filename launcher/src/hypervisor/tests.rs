//! Unit tests of the hypervisor-independent parts of `hypervisor` (mod.rs).
use super::test_utils::*;
use super::*;

#[test]
fn redact_hides_every_token_value() {
    use vm_proto::cmdline::KEY_TOKEN;
    let text = format!("a {KEY_TOKEN}={} b \"{KEY_TOKEN}=x,y\"", token_hex());
    assert_eq!(
        redact(&text),
        format!("a {KEY_TOKEN}=<redacted> b \"{KEY_TOKEN}=<redacted>,y\"")
    );
    assert_eq!(redact("no secret"), "no secret");
}

#[test]
fn debug_of_spec_and_command_never_shows_token() {
    let spec = full_spec();
    let mut cmd = HvCommand::new("x");
    cmd.pair("-append", spec.cmdline.clone());
    for text in [format!("{spec:?}"), format!("{cmd:?}"), cmd.to_string()] {
        assert!(!text.contains(&token_hex()), "{text}");
        assert!(text.contains("<redacted>"), "{text}");
    }
}

#[test]
fn check_zero_memory_or_cpus_or_reserved_cid_fails() {
    type Spoil = fn(&mut VmSpec);
    let cases: [(Spoil, &str); 4] = [
        (|s| s.mem_mib = 0, "mem_mib"),
        (|s| s.cpus = 0, "cpus"),
        (|s| s.vsock = VsockBackend::Vhost { cid: 2 }, "vsock cid"),
        (|s| s.cmdline.push('\n'), "cmdline"),
    ];
    for (spoil, field) in cases {
        let mut spec = full_spec();
        spoil(&mut spec);
        let err = spec.check("test").unwrap_err().to_string();
        assert!(err.contains(field), "{err}");
    }
}

#[test]
fn check_bad_or_repeated_disk_ids_fail() {
    for (id, why) in [
        ("", "use 1 to 20"),
        ("a/b", "use 1 to 20"),
        ("abcdefghijklmnopqrstu", "use 1 to 20"),
        ("rootfs", "names two disks"),
        ("disk0", "names two disks"),
    ] {
        let mut spec = full_spec();
        spec.disks.push(Disk {
            id: id.into(),
            path: "/img/x".into(),
            read_only: true,
        });
        let err = spec.check("test").unwrap_err().to_string();
        assert!(err.contains("disk id") && err.contains(why), "{id}: {err}");
    }
    let mut spec = full_spec();
    spec.disks.push(Disk {
        id: vm_proto::disks::extra(9),
        path: "/img/x".into(),
        read_only: true,
    });
    assert!(spec.check("test").is_ok());
}

#[test]
fn check_bad_or_repeated_share_tags_fail() {
    for (tag, why) in [
        ("", "use 1 to 31"),
        ("a b", "use 1 to 31"),
        ("vmvol0", "names two"),
    ] {
        let mut spec = full_spec();
        spec.shares.push(Share {
            tag: tag.into(),
            path: "/h/x".into(),
            read_only: false,
        });
        let err = spec.check("test").unwrap_err().to_string();
        assert!(
            err.contains("share tag") && err.contains(why),
            "{tag}: {err}"
        );
    }
    let mut spec = full_spec();
    spec.shares.push(test_utils::ro_share());
    assert!(spec.check("test").is_ok());
}

#[test]
fn cmdline_with_root_names_the_root_disk_mode_and_type() {
    let mut spec = full_spec();
    let rest = spec.cmdline.clone();
    assert_eq!(
        spec.cmdline_with_root(true),
        format!("root=/dev/vda ro rootwait {rest}")
    );
    assert_eq!(spec.cmdline_with_root(false), format!("rootwait {rest}"));
    let root = spec.rootfs.as_mut().unwrap();
    root.read_only = false;
    root.fs_type = FsType::Squashfs;
    assert_eq!(
        spec.cmdline_with_root(true),
        format!("root=/dev/vda rw rootwait rootfstype=squashfs {rest}")
    );
    spec.rootfs.as_mut().unwrap().fs_type = FsType::Unknown;
    assert_eq!(
        spec.cmdline_with_root(true),
        format!("root=/dev/vda rw rootwait {rest}")
    );
    spec.rootfs = None;
    assert_eq!(spec.cmdline_with_root(true), rest);
}

#[test]
fn no_comma_rejects_commas_naming_the_field() {
    assert!(no_comma("x", "rootfs", Path::new("/a/b")).is_ok());
    let err = no_comma("x", "rootfs", Path::new("/a,b")).unwrap_err();
    assert!(err.to_string().contains("rootfs"), "{err}");
}

#[test]
fn write_private_files_creates_mode_0600_and_replaces_old() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secret.cfg");
    fs::write(&path, "old").unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    let mut cmd = HvCommand::new("x");
    cmd.private_files.push(PrivateFile {
        path: path.clone(),
        contents: "new".into(),
    });
    cmd.write_private_files().unwrap();
    assert_eq!(fs::read_to_string(&path).unwrap(), "new");
    let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    cmd.remove_private_files();
    assert!(!path.exists());
}
