//! The container's seccomp filter: no user namespaces.
//!
//! Why a filter and not `user.max_user_namespaces=0`: that sysctl belongs to the user
//! namespace, and the container shares the VM's (it has no user namespace of its own), so
//! setting it would take user namespaces away from the whole VM. The filter applies to the
//! container's processes only, and is inherited by everything they start.
//!
//! What it refuses (every other system call is allowed):
//! - `clone` and `unshare` with `CLONE_NEWUSER`: EPERM;
//! - `setns`: EPERM (every other namespace type already needs CAP_SYS_ADMIN, which the
//!   container lacks; only a user namespace could be joined without it);
//! - `clone3`: ENOSYS, because its flags sit in memory a filter cannot read; libc then falls
//!   back to `clone`, which is checked (Docker's default profile does the same);
//! - on x86_64, the x32 ABI (ENOSYS), whose numbers would otherwise slip past the checks.
//!
//! The i386 ABI (if the kernel runs 32-bit programs) gets the same checks under its own
//! numbers. Installed after `no_new_privs`, so it needs no privilege and cannot be lifted.

use nix::errno::Errno;

// Classic BPF opcodes (linux/bpf_common.h); fixed ABI values.
const BPF_LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
const BPF_JMP_JEQ_K: u16 = 0x05 | 0x10;
const BPF_JMP_JGE_K: u16 = 0x05 | 0x30;
const BPF_JMP_JSET_K: u16 = 0x05 | 0x40;
const BPF_RET_K: u16 = 0x06;

// linux/audit.h
const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
const AUDIT_ARCH_I386: u32 = 0x4000_0003;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

// Offsets in struct seccomp_data: nr, arch, then args[0] (its low 32 bits, little-endian).
const OFFSET_NR: u32 = 0;
const OFFSET_ARCH: u32 = 4;
const OFFSET_ARG0_LOW: u32 = 16;

const RET_ALLOW: u32 = 0x7fff_0000;
const RET_ERRNO: u32 = 0x0005_0000;

/// System call numbers of one ABI.
struct Abi {
    arch: u32,
    clone: u32,
    unshare: u32,
    setns: u32,
    clone3: u32,
}

const X86_64: Abi = Abi {
    arch: AUDIT_ARCH_X86_64,
    clone: 56,
    unshare: 272,
    setns: 308,
    clone3: 435,
};

const I386: Abi = Abi {
    arch: AUDIT_ARCH_I386,
    clone: 120,
    unshare: 310,
    setns: 346,
    clone3: 435,
};

fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

fn errno(e: Errno) -> u32 {
    RET_ERRNO | (e as u32 & 0xffff)
}

/// The checks of one ABI, entered with the system call number loaded; every path returns.
fn abi_block(abi: &Abi, refuse_x32: bool) -> Vec<libc::sock_filter> {
    let mut p = Vec::new();
    if refuse_x32 {
        // 0: x32 numbers → ENOSYS; else fall through.
        p.push(jump(BPF_JMP_JGE_K, X32_SYSCALL_BIT, 0, 1));
        p.push(stmt(BPF_RET_K, errno(Errno::ENOSYS)));
    }
    // Jump offsets count instructions after the jump itself.
    p.push(jump(BPF_JMP_JEQ_K, abi.clone, 6, 0)); // → check flags
    p.push(jump(BPF_JMP_JEQ_K, abi.unshare, 5, 0)); // → check flags
    p.push(jump(BPF_JMP_JEQ_K, abi.setns, 2, 0)); // → EPERM
    p.push(jump(BPF_JMP_JEQ_K, abi.clone3, 0, 2)); // → ENOSYS, else → allow
    p.push(stmt(BPF_RET_K, errno(Errno::ENOSYS)));
    p.push(stmt(BPF_RET_K, errno(Errno::EPERM)));
    p.push(stmt(BPF_RET_K, RET_ALLOW));
    // Check flags: clone(flags, …) and unshare(flags) both take them first.
    p.push(stmt(BPF_LD_W_ABS, OFFSET_ARG0_LOW));
    p.push(jump(BPF_JMP_JSET_K, libc::CLONE_NEWUSER as u32, 0, 1));
    p.push(stmt(BPF_RET_K, errno(Errno::EPERM)));
    p.push(stmt(BPF_RET_K, RET_ALLOW));
    p
}

/// The whole program.
pub fn program() -> Vec<libc::sock_filter> {
    let x86_64 = abi_block(&X86_64, true);
    let i386 = abi_block(&I386, false);
    let mut p = vec![stmt(BPF_LD_W_ABS, OFFSET_ARCH)];
    // x86_64 → its block (after loading nr); else → the i386 test.
    p.push(jump(
        BPF_JMP_JEQ_K,
        X86_64.arch,
        0,
        (x86_64.len() + 1) as u8,
    ));
    p.push(stmt(BPF_LD_W_ABS, OFFSET_NR));
    p.extend(x86_64);
    // i386 → its block; any other ABI cannot run on this kernel: refuse it outright.
    p.push(jump(BPF_JMP_JEQ_K, I386.arch, 1, 0));
    p.push(stmt(BPF_RET_K, errno(Errno::ENOSYS)));
    p.push(stmt(BPF_LD_W_ABS, OFFSET_NR));
    p.extend(i386);
    p
}

/// Installs [`program`] on the calling thread (and so on everything it starts). Needs
/// `no_new_privs` or CAP_SYS_ADMIN.
pub fn install() -> Result<(), Errno> {
    let filter = program();
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr().cast_mut(),
    };
    // SAFETY: PR_SET_SECCOMP reads `prog` and the `filter` array it points to, both alive
    // for the duration of the call; the kernel copies the program.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER as libc::c_ulong,
            &prog as *const libc::sock_fprog,
        )
    };
    Errno::result(rc).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `filter` on one system call the way the kernel does, for the opcodes used here.
    fn run(filter: &[libc::sock_filter], arch: u32, nr: u32, arg0: u64) -> u32 {
        let word = |offset: u32| match offset {
            OFFSET_NR => nr,
            OFFSET_ARCH => arch,
            OFFSET_ARG0_LOW => arg0 as u32,
            other => panic!("load of offset {other}"),
        };
        let (mut pc, mut acc) = (0usize, 0u32);
        loop {
            let i = filter[pc];
            let taken = |cond: bool| pc + 1 + if cond { i.jt } else { i.jf } as usize;
            pc = match i.code {
                BPF_LD_W_ABS => {
                    acc = word(i.k);
                    pc + 1
                }
                BPF_JMP_JEQ_K => taken(acc == i.k),
                BPF_JMP_JGE_K => taken(acc >= i.k),
                BPF_JMP_JSET_K => taken(acc & i.k != 0),
                BPF_RET_K => return i.k,
                other => panic!("opcode {other:#x}"),
            };
        }
    }

    const NEWUSER: u64 = libc::CLONE_NEWUSER as u64;
    const NEWUTS: u64 = libc::CLONE_NEWUTS as u64;

    #[test]
    fn program_refuses_user_namespaces_on_both_abis_and_allows_the_rest() {
        let p = program();
        assert!(p.len() < 64, "a short, linear filter");
        for abi in [X86_64, I386] {
            let a = abi.arch;
            assert_eq!(run(&p, a, abi.unshare, NEWUSER), errno(Errno::EPERM));
            assert_eq!(
                run(&p, a, abi.unshare, NEWUSER | NEWUTS),
                errno(Errno::EPERM)
            );
            assert_eq!(run(&p, a, abi.clone, NEWUSER | 17), errno(Errno::EPERM));
            assert_eq!(run(&p, a, abi.setns, 0), errno(Errno::EPERM));
            assert_eq!(run(&p, a, abi.clone3, 0), errno(Errno::ENOSYS));
            assert_eq!(run(&p, a, abi.unshare, NEWUTS), RET_ALLOW);
            assert_eq!(run(&p, a, abi.clone, 17), RET_ALLOW, "fork");
            assert_eq!(run(&p, a, 0, 0), RET_ALLOW);
            assert_eq!(
                run(&p, a, 1, NEWUSER),
                RET_ALLOW,
                "flags only matter to clone"
            );
        }
        assert_eq!(
            run(&p, AUDIT_ARCH_X86_64, X32_SYSCALL_BIT | 272, NEWUSER),
            errno(Errno::ENOSYS),
            "x32"
        );
        assert_eq!(run(&p, 0xC000_00B7, 97, NEWUSER), errno(Errno::ENOSYS));
    }

    /// The real kernel, in a forked child (the filter cannot be removed once installed).
    #[test]
    fn installed_filter_refuses_unshare_newuser_and_clone3_but_not_fork() {
        // SAFETY: the child only makes raw system calls and _exits; it allocates nothing.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let code = (|| {
                if nix::sys::prctl::set_no_new_privs().is_err() || install().is_err() {
                    return 10;
                }
                // SAFETY: unshare takes a plain flag word.
                if unsafe { libc::unshare(libc::CLONE_NEWUSER) } != -1
                    || Errno::last() != Errno::EPERM
                {
                    return 11;
                }
                let null = std::ptr::null::<u8>();
                // SAFETY: clone3 gets a null pointer, which the filter refuses before the
                // kernel would read it.
                let clone3 = unsafe { libc::syscall(libc::SYS_clone3, null, 0usize) };
                if clone3 != -1 || Errno::last() != Errno::ENOSYS {
                    return 12;
                }
                // SAFETY: fork in a single-threaded child; the grandchild _exits at once.
                match unsafe { libc::fork() } {
                    // SAFETY: the grandchild ends at once, running nothing of the parent's.
                    0 => unsafe { libc::_exit(0) },
                    n if n > 0 => 0,
                    _ => 13,
                }
            })();
            // SAFETY: ends the forked child without running the test harness's atexit.
            unsafe { libc::_exit(code) };
        }
        let status = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None).unwrap();
        assert_eq!(
            status,
            nix::sys::wait::WaitStatus::Exited(nix::unistd::Pid::from_raw(pid), 0)
        );
    }
}
