//! Starting a process: resolve the program, prepare every C string before the clone (the
//! child shares our memory and may only make async-signal-safe calls), then, as posix_spawn
//! does, clone(CLONE_VM | CLONE_VFORK) and in the child: new session, stdio, clean signal
//! state, chdir, execve. An exec failure comes back through shared memory as an errno, so
//! the caller gets FAILED, never a "launched" corpse.

use std::ffi::{CString, OsStr};
use std::fmt;
use std::fs::File;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crossbeam_channel::Receiver;
use nix::errno::Errno;

use crate::reaper::{Exit, OnExit, Reaper};
use crate::sys::{self, SpawnFailure};

pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Where the child's fds 0-2 go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stdio {
    Null,
    Console,
    /// stdin /dev/null, stdout and stderr into pipes the caller reads.
    Capture,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessSpec {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<PathBuf>,
    pub stdio: Stdio,
}

#[derive(Debug)]
pub enum SpawnError {
    EmptyArgv,
    /// A NUL byte in an argument or the environment.
    Nul(String),
    NotFound(String),
    /// The child could not exec (or set itself up); the errno it reported.
    Exec {
        program: String,
        errno: Errno,
    },
    Setup {
        what: &'static str,
        errno: Errno,
    },
}

impl SpawnError {
    /// The errno to report as a FAILED LaunchProcess code.
    pub fn errno(&self) -> i32 {
        match self {
            Self::EmptyArgv | Self::Nul(_) => libc::EINVAL,
            Self::NotFound(_) => libc::ENOENT,
            Self::Exec { errno, .. } | Self::Setup { errno, .. } => *errno as i32,
        }
    }
}

impl fmt::Display for SpawnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::EmptyArgv => write!(f, "argv is empty"),
            Self::Nul(what) => write!(f, "{what} contains a NUL byte"),
            Self::NotFound(p) => write!(f, "{p}: not found in PATH"),
            Self::Exec { program, errno } => {
                write!(f, "cannot execute {program}: {}", errno.desc())
            }
            Self::Setup { what, errno } => write!(f, "{what} failed: {}", errno.desc()),
        }
    }
}

impl std::error::Error for SpawnError {}

pub struct Spawned {
    pub pid: i32,
    pub exit: Receiver<Exit>,
    /// With [`Stdio::Capture`]: the read ends of stdout and stderr.
    pub output: Option<(File, File)>,
}

/// Everything the child needs, as C data, built before fork.
pub struct Prepared {
    pub program: CString,
    pub argv: Vec<CString>,
    pub envp: Vec<CString>,
    pub cwd: CString,
}

fn cstring(bytes: &[u8], what: &str) -> Result<CString, SpawnError> {
    CString::new(bytes).map_err(|_| SpawnError::Nul(what.to_string()))
}

/// `execvp`'s search, done in the parent with the child's PATH.
pub fn resolve(program: &str, path_var: &str) -> Option<PathBuf> {
    let is_executable = |p: &Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        return Some(PathBuf::from(program));
    }
    path_var
        .split(':')
        .filter(|dir| !dir.is_empty())
        .map(|dir| Path::new(dir).join(program))
        .find(|p| is_executable(p))
}

pub fn prepare(spec: &ProcessSpec) -> Result<Prepared, SpawnError> {
    let first = spec.argv.first().ok_or(SpawnError::EmptyArgv)?;
    let mut env = spec.env.clone();
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.push(("PATH".to_string(), DEFAULT_PATH.to_string()));
    }
    let path_var = env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map_or(DEFAULT_PATH, |(_, v)| v.as_str());
    let program = resolve(first, path_var).ok_or_else(|| SpawnError::NotFound(first.clone()))?;
    let argv = spec
        .argv
        .iter()
        .map(|a| cstring(a.as_bytes(), "an argument"))
        .collect::<Result<Vec<_>, _>>()?;
    let envp = env
        .iter()
        .map(|(k, v)| {
            if k.is_empty() || k.contains('=') {
                return Err(SpawnError::Nul(format!(
                    "environment name {k:?} (empty or with '=')"
                )));
            }
            cstring(format!("{k}={v}").as_bytes(), "the environment")
        })
        .collect::<Result<Vec<_>, _>>()?;
    let cwd = spec.cwd.as_deref().unwrap_or(Path::new("/"));
    Ok(Prepared {
        program: cstring(program.as_os_str().as_bytes(), "the program path")?,
        argv,
        envp,
        cwd: cstring(OsStr::as_bytes(cwd.as_os_str()), "the working directory")?,
    })
}

/// The fds the child's 0, 1 and 2 become.
pub struct ChildStdio {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// What maitred is (`Context::mode`), which decides two things about every child it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The VM's init: [`Stdio::Console`] is /dev/console, and PID 1 never exits, so children
    /// need no death signal.
    Pid1,
    /// Host mode (tests, demos). There is no console of our own: "console" means maitred's
    /// own stdout and stderr, so a launcher running host-mode maitred sees the application's
    /// output. And children die with maitred (PR_SET_PDEATHSIG; it follows the forking
    /// thread, and ours live as long as the process except a waiting LaunchProcess's, whose
    /// child is gone by then).
    Host,
}

impl Mode {
    pub fn of(pid1: bool) -> Mode {
        if pid1 {
            Mode::Pid1
        } else {
            Mode::Host
        }
    }

    /// Whether a child gets SIGKILL when maitred's forking thread ends.
    pub fn children_die_with_maitred(self) -> bool {
        self == Mode::Host
    }
}

fn open_stdio(mode: Mode, stdio: Stdio) -> Result<(ChildStdio, Option<(File, File)>), SpawnError> {
    let open = |path: &str, what: &'static str| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map(OwnedFd::from)
            .map_err(|e| SpawnError::Setup {
                what,
                errno: Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
            })
    };
    let pipe = || {
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|errno| SpawnError::Setup {
            what: "pipe2",
            errno,
        })
    };
    let dup = |fd: &OwnedFd| {
        fd.try_clone().map_err(|e| SpawnError::Setup {
            what: "dup",
            errno: Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
        })
    };
    let dup_std = |fd: std::os::fd::BorrowedFd<'_>| {
        fd.try_clone_to_owned().map_err(|e| SpawnError::Setup {
            what: "dup",
            errno: Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
        })
    };
    match stdio {
        Stdio::Console if mode == Mode::Host => {
            use std::os::fd::AsFd;
            Ok((
                ChildStdio {
                    stdin: open("/dev/null", "opening /dev/null")?,
                    stdout: dup_std(std::io::stdout().as_fd())?,
                    stderr: dup_std(std::io::stderr().as_fd())?,
                },
                None,
            ))
        }
        Stdio::Null | Stdio::Console => {
            let path = if stdio == Stdio::Null {
                "/dev/null"
            } else {
                "/dev/console"
            };
            let fd = open(path, "opening the child's stdio")?;
            Ok((
                ChildStdio {
                    stdin: dup(&fd)?,
                    stdout: dup(&fd)?,
                    stderr: fd,
                },
                None,
            ))
        }
        Stdio::Capture => {
            let (out_r, out_w) = pipe()?;
            let (err_r, err_w) = pipe()?;
            let stdin = open("/dev/null", "opening /dev/null")?;
            Ok((
                ChildStdio {
                    stdin,
                    stdout: out_w,
                    stderr: err_w,
                },
                Some((File::from(out_r), File::from(err_r))),
            ))
        }
    }
}

/// Starts `spec` as `mode` says and registers it with `reaper` before it can be reaped.
pub fn spawn_in(mode: Mode, reaper: &Reaper, spec: &ProcessSpec) -> Result<Spawned, SpawnError> {
    let (stdio, output) = open_stdio(mode, spec.stdio)?;
    let (pid, exit) = spawn_with(mode, reaper, spec, stdio)?;
    Ok(Spawned { pid, exit, output })
}

/// Starts `spec` (whose stdio must not be [`Stdio::Capture`]: nobody would read it) and
/// runs `on_exit` on the reaping thread when it ends; returns its pid. No thread waits. If it
/// does not start, `on_exit` is dropped unused.
/// `inherit` become its fds 3, 4, … (boot services' sockets).
pub fn spawn_then(
    mode: Mode,
    reaper: &Reaper,
    spec: &ProcessSpec,
    inherit: &[BorrowedFd<'_>],
    on_exit: OnExit,
) -> Result<i32, SpawnError> {
    let stdio = match (spec.stdio, open_stdio(mode, spec.stdio)) {
        (Stdio::Capture, _) => Err(SpawnError::Setup {
            what: "capturing output without a reader",
            errno: Errno::EINVAL,
        }),
        (_, opened) => opened.map(|(stdio, _)| stdio),
    };
    start(mode, reaper, spec, stdio?, inherit, on_exit)
}

/// Starts `spec` with `stdio` as its fds 0-2 (`spec.stdio` is not used); returns its pid
/// and where its exit status will arrive.
pub fn spawn_with(
    mode: Mode,
    reaper: &Reaper,
    spec: &ProcessSpec,
    stdio: ChildStdio,
) -> Result<(i32, Receiver<Exit>), SpawnError> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    let send: OnExit = Box::new(move |_, exit| {
        let _ = tx.send(exit);
    });
    let pid = start(mode, reaper, spec, stdio, &[], send)?;
    Ok((pid, rx))
}

/// Starts the process and registers `on_exit` for it under the reaper's lock, so its exit
/// cannot be reaped before someone waits for it.
fn start(
    mode: Mode,
    reaper: &Reaper,
    spec: &ProcessSpec,
    stdio: ChildStdio,
    inherit: &[BorrowedFd<'_>],
    on_exit: OnExit,
) -> Result<i32, SpawnError> {
    let prepared = prepare(spec)?;
    // Copies numbered above every target (3 .. 3 + n), so the child can move them into
    // place in any order; closed here once the child has exec'd.
    let above = 3 + inherit.len() as i32;
    let copies = inherit
        .iter()
        .map(|fd| sys::dup_at_least(*fd, above))
        .collect::<Result<Vec<OwnedFd>, Errno>>()
        .map_err(|errno| SpawnError::Setup {
            what: "passing a socket",
            errno,
        })?;
    let copies_raw: Vec<i32> = copies.iter().map(AsRawFd::as_raw_fd).collect();
    let registration = reaper.registration();
    let die_with_parent = mode.children_die_with_maitred();
    match sys::spawn_exec(&prepared, &stdio, &copies_raw, die_with_parent) {
        Ok(pid) => {
            registration.register_call(pid, on_exit);
            Ok(pid)
        }
        Err(SpawnFailure::Clone(errno)) => Err(SpawnError::Setup {
            what: "clone",
            errno,
        }),
        // The child exited 127; the reaper drops a status nobody registered for.
        Err(SpawnFailure::Exec { errno, .. }) => Err(SpawnError::Exec {
            program: spec.argv[0].clone(),
            errno,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(argv: &[&str]) -> ProcessSpec {
        ProcessSpec {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: vec![],
            cwd: None,
            stdio: Stdio::Null,
        }
    }

    #[test]
    fn prepare_adds_default_path_and_resolves() {
        let p = prepare(&spec(&["sh", "-c", "true"])).unwrap();
        assert!(p.program.to_bytes().ends_with(b"/sh"));
        assert!(p.envp.iter().any(|e| e.to_bytes().starts_with(b"PATH=")));
    }

    #[test]
    fn prepare_bad_input_is_a_clear_error() {
        assert!(matches!(prepare(&spec(&[])), Err(SpawnError::EmptyArgv)));
        assert!(matches!(
            prepare(&spec(&["no-such-program-here"])),
            Err(SpawnError::NotFound(_))
        ));
        assert!(matches!(
            prepare(&spec(&["sh", "a\0b"])),
            Err(SpawnError::Nul(_))
        ));
        let mut bad_env = spec(&["sh"]);
        bad_env.env.push(("A=B".into(), "c".into()));
        assert!(matches!(prepare(&bad_env), Err(SpawnError::Nul(_))));
    }

    fn same_file(a: &OwnedFd, b: std::os::fd::BorrowedFd<'_>) -> bool {
        let (a, b) = (
            nix::sys::stat::fstat(a).unwrap(),
            nix::sys::stat::fstat(b).unwrap(),
        );
        (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
    }

    #[test]
    fn mode_of_pid1_and_host() {
        assert_eq!(Mode::of(true), Mode::Pid1);
        assert_eq!(Mode::of(false), Mode::Host);
        assert!(Mode::Host.children_die_with_maitred());
        assert!(!Mode::Pid1.children_die_with_maitred());
    }

    #[test]
    fn open_stdio_host_console_is_maitreds_own_stdout_and_stderr() {
        use std::os::fd::AsFd;
        let (child, output) = open_stdio(Mode::Host, Stdio::Console).unwrap();
        assert!(output.is_none());
        assert!(same_file(&child.stdout, std::io::stdout().as_fd()));
        assert!(same_file(&child.stderr, std::io::stderr().as_fd()));
        let null = std::fs::File::open("/dev/null").unwrap();
        assert!(same_file(&child.stdin, null.as_fd()));
    }

    #[test]
    fn open_stdio_null_and_capture_do_not_depend_on_the_mode() {
        use std::os::fd::AsFd;
        let null = std::fs::File::open("/dev/null").unwrap();
        for mode in [Mode::Pid1, Mode::Host] {
            let (child, output) = open_stdio(mode, Stdio::Null).unwrap();
            assert!(output.is_none());
            for fd in [&child.stdin, &child.stdout, &child.stderr] {
                assert!(same_file(fd, null.as_fd()), "{mode:?}");
            }
            let (child, output) = open_stdio(mode, Stdio::Capture).unwrap();
            assert!(same_file(&child.stdin, null.as_fd()), "{mode:?}");
            assert!(output.is_some(), "{mode:?}");
        }
    }

    /// PR_SET_PDEATHSIG follows the forking thread: a Host-mode child dies with the thread
    /// that started it, a Pid1-mode child does not. Waited for by pid (not through a Reaper,
    /// whose waitpid(-1) would take other tests' children).
    #[test]
    fn host_mode_children_die_with_their_forking_thread_pid1_ones_do_not() {
        use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
        use nix::unistd::Pid;
        for mode in [Mode::Host, Mode::Pid1] {
            let pid = std::thread::spawn(move || {
                let prepared = prepare(&spec(&["sleep", "30"])).unwrap();
                let (stdio, _) = open_stdio(mode, Stdio::Null).unwrap();
                let die = mode.children_die_with_maitred();
                // As spawn_with does: the thread outlives the child's prctl (done by exec).
                sys::spawn_exec(&prepared, &stdio, &[], die).unwrap()
            })
            .join()
            .unwrap();
            let pid = Pid::from_raw(pid);
            // Host: the signal comes at once (5 s is slack); Pid1: none may come in 0.5 s.
            let wait = match mode {
                Mode::Host => std::time::Duration::from_secs(5),
                Mode::Pid1 => std::time::Duration::from_millis(500),
            };
            let deadline = std::time::Instant::now() + wait;
            let status = loop {
                let status = waitpid(pid, Some(WaitPidFlag::WNOHANG)).unwrap();
                if status != WaitStatus::StillAlive || std::time::Instant::now() > deadline {
                    break status;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            };
            match mode {
                Mode::Host => assert_eq!(
                    status,
                    WaitStatus::Signaled(pid, nix::sys::signal::Signal::SIGKILL, false)
                ),
                Mode::Pid1 => {
                    assert_eq!(status, WaitStatus::StillAlive);
                    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
                    waitpid(pid, None).unwrap();
                }
            }
        }
    }
}
