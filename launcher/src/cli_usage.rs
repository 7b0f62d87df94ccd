//! The usage texts `vm_launcher --help` and each command's `--help` print.

pub const USAGE: &str = "\
usage: vm_launcher <command> [options]

commands:
  run    boot a VM, run an application in it as if it ran here (stdin, stdout, stderr,
         terminal, signals, exit code), then stop the VM
  start  boot a VM in the background and print its id
  exec   run a command in a started VM: exec [-t|-T] [-e K=V]... [-w DIR] [--vm] ID -- CMD...
  shell  an interactive shell in a started VM: shell ID (exec -t ID -- /bin/sh)
  stop   stop a VM started with `start`: stop ID | stop --all
  list   list running VMs (id, cid, pid, guest ip, host port); list --json for scripts
  crash-upload  upload the crash spool's pending reports now: crash-upload URL [options]

`vm_launcher <command> --help` describes each command.";

pub const RUN_USAGE: &str = "\
usage: vm_launcher run [options] -- APP [ARGS...]
       vm_launcher start [options] [-- APP [ARGS...]]

The application's stdin, stdout and stderr are this command's, byte for byte (over vsock,
not the serial console). It gets a terminal when stdin is one (or with -t).
  -t, --tty              give the application a terminal (raw mode here, window size sent)
  -T, --no-tty           never a terminal, even when stdin is one
  --console              copy the guest's serial console (kernel, maitred) to stderr

  --vm-path DIR          a component directory: DIR/vm_kernel, DIR/vm_rootfs.img (the root
                         disk) and, if there, DIR/vm_tools.img (read-only, mounted at
                         /opt/google/cros-containers); the flags below override each file
  --kernel PATH          guest kernel (bzImage)
  --initrd PATH          initramfs (needed unless there is a root disk)
  --rootfs PATH          raw disk image (ext4 or squashfs) to boot from: /dev/vda, read-only
  --rootfs-rw            attach the rootfs read-write
  --container ROOTFS     run APP in a container whose root is ROOTFS: an ext4 image, or a
                         directory (turned into an image with mke2fs -d); read-only.
                         With start, APP is the container's main process and `exec`
                         enters the container
  --container-rw         the container's root is writable
  --disk PATH[:ro|rw]    one more disk (default read-only), up to 10: the guest finds the
                         Nth as disk:diskN (its virtio-blk serial; lkvm has no serials,
                         its guests see disks in the order rootfs, container, vm_tools,
                         disk0, …)
  --volume HOST:GUEST[:ro|rw]  share the host directory HOST at GUEST in the guest (and
                         in --container's container), read-write unless :ro (enforced by
                         the host side: QEMU refuses the writes); repeatable, up to 8.
                         GUEST is absolute, outside /proc /sys /dev /run /tmp; virtio-9p
  --hypervisor NAME      qemu (default), crosvm, lkvm, or process: no hypervisor at all,
                         host-mode maitred as a child process (tests and demos)
  --accel auto|kvm|tcg   QEMU accelerator. auto (default): KVM when /dev/kvm works, which
                         a probe guest checks once per boot; TCG otherwise, with one line
                         on stderr saying why when it is decided
  --mem MIB              guest memory (default 512)
  --cpus N               vCPUs the guest can use (default 1)
  --name ID              VM id (default: generated); also the guest's hostname
  --params TEXT          extra guest kernel command line (repeatable)
  --net tap|none         tap: a TAP device with the VM's /30 (root only), configured in the
                         guest with ConfigureNetwork once it is ready (default none)
  -p, --publish [HOST_ADDR:]HOST_PORT:GUEST_PORT[/tcp]
                         the host listens on HOST_ADDR:HOST_PORT (default address
                         127.0.0.1) and each connection reaches 127.0.0.1:GUEST_PORT in the
                         guest, or in its container (repeatable)
  --forward GUEST_PORT:HOST_ADDR:HOST_PORT
                         the application's 127.0.0.1:GUEST_PORT reaches HOST_ADDR:HOST_PORT
                         on the host, and only that address (repeatable)
  --boot-timeout SECS    how long to wait for the guest to report ready (default 120)
  --runtime-dir DIR      pool and per-VM state (default $VM_LAUNCHER_RUNTIME_DIR or /run/vm_launcher)
  --cid-range A-B        vsock CIDs the pool hands out (default 3-1026)
  --subnet NET/N         network split into one /30 per VM (default 100.115.92.0/24)
  --host-port-range A-B  host vsock ports for each VM's host services (default 10000-10999)
  --crash-spool DIR      where crash reports go (default <runtime-dir>/crash)
  --crash-reporter CMD   run CMD DMP META after each crash report (split on spaces)
  --crash-keep N         crash reports kept per VM in the spool, newest first (default 10)
  --crash-upload URL     upload each crash report to a Breakpad/Crashpad server (Socorro,
                         Sentry's minidump endpoint, Backtrace, BugSplat): a multipart POST
                         with prod, ver, guid, the .meta keys and upload_file_minidump.
                         http:// only (no TLS library here: use a local relay or proxy).
                         4xx: not retried; 5xx or network errors: retried with backoff,
                         also by later launchers; the crash id goes into the .meta
  --crash-upload-gzip    gzip the upload (Content-Encoding: gzip)
  --crash-upload-limit N/PERIOD  uploads per period for the whole host (default 32/day;
                         e.g. 10/hour, 5/90s)
  --log-dest DEST        guest logs: syslog (the host's /dev/log; the default when it
                         exists, else none), terminal (stderr; kernel records only from
                         warning up), journald[:PATH] (native protocol, VM_ID= field),
                         unix:PATH (a syslog socket), file:PATH (RFC 5424 lines),
                         dir:PATH (PATH/<id>.log, rotated) or none
  --log-rotate-size N    dir: rotate <id>.log past N bytes; K, M suffixes (default 10M)
  --log-rotate-keep N    dir: rotated files kept, <id>.log.1 … (default 5)
  --maitred PATH         host-mode maitred for --hypervisor process (default: beside vm_launcher)
  --vhost-device-vsock PATH  the vhost-user vsock back-end (default: from PATH)

Without a terminal, SIGINT, SIGTERM, SIGHUP and SIGQUIT are passed on to the application;
a second SIGINT within 3 s, or SIGTERM unanswered for 10 s, stops the VM.

Exit status of run: the application's exit code, 128+N if a signal N killed it, 127 if it
was not found, 126 if it could not run, 125 if the VM could not be started (a kernel,
initrd or disk missing or unreadable, a file given twice, …) or stopped before the
application ended; 2 for a malformed command line.";

pub const EXEC_USAGE: &str = "\
usage: vm_launcher exec [options] ID -- CMD [ARGS...]
       vm_launcher shell [--runtime-dir DIR] ID          (exec -t ID -- /bin/sh)

Runs CMD in the VM ID (started with `start`) with this command's stdin, stdout, stderr,
terminal and signals, and exits with its status, like `run`. When the VM's application
runs in a container, CMD runs inside that container (like `docker exec`). Only the user
who started the VM, or root, may exec into it.

  -t, --tty              give CMD a terminal (default: when stdin is one)
  -T, --no-tty           never a terminal
  -e, --env K=V          set an environment variable (repeatable)
  -w, --workdir DIR      working directory (default /)
  --vm                   run in the VM itself, not in the application's container
  --runtime-dir DIR      where the VM's launcher keeps its state (as for start)

Exit status: CMD's exit code, 128+N if signal N killed it, 127 not found, 126 not
runnable, 125 if the VM could not run it to its end.";
