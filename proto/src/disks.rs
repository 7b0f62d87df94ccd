//! Disk identities: the launcher gives every disk it attaches a virtio-blk serial, and the
//! guest finds a disk by that serial (`/sys/block/<dev>/serial`), never by probe order. A
//! Mount source or a container's `rootfs_device` names a disk as `disk:<ID>`.

/// The root filesystem disk (`--rootfs`, or `vm_rootfs.img` of a component directory).
pub const ROOTFS: &str = "rootfs";
/// The disk `--container` turns into the application's container root.
pub const CONTAINER: &str = "container";
/// `vm_tools.img` of a component directory, mounted read-only at [`VM_TOOLS_MOUNT`].
pub const VM_TOOLS: &str = "vm_tools";
/// Where the guest mounts the `vm_tools` disk (read-only), as Termina does.
pub const VM_TOOLS_MOUNT: &str = "/opt/google/cros-containers";
/// At most this many `--disk` disks besides the root, container and vm_tools disks.
pub const MAX_EXTRA_DISKS: usize = 10;
/// How a Mount source or a container rootfs names a disk by identity.
pub const SOURCE_PREFIX: &str = "disk:";
/// virtio-blk serials are at most 20 bytes.
pub const SERIAL_MAX: usize = 20;

/// The identity of the `index`th `--disk` (0-based, in command-line order): `disk0`…`disk9`.
pub fn extra(index: usize) -> String {
    format!("disk{index}")
}

/// The identity in a `disk:<ID>` source, if it is one (an ID of 1 to 20 of A-Z a-z 0-9 _ -).
pub fn identity(source: &str) -> Option<&str> {
    let id = source.strip_prefix(SOURCE_PREFIX)?;
    let valid = !id.is_empty()
        && id.len() <= SERIAL_MAX
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    valid.then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_takes_only_valid_disk_sources() {
        assert_eq!(identity("disk:rootfs"), Some("rootfs"));
        assert_eq!(identity(&format!("disk:{}", extra(9))), Some("disk9"));
        assert_eq!(identity("/dev/vda"), None);
        assert_eq!(identity("disk:"), None);
        assert_eq!(identity("disk:../x"), None);
        assert_eq!(identity("disk:abcdefghijklmnopqrstu"), None);
    }
}
