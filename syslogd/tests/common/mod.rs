//! Shared by vm_syslog's host tests: a real launcher LogCollector ([`Host`]), a real
//! vm_syslog process on private paths ([`Daemon`]), a real rsyslogd with a private
//! configuration ([`Rsyslog`]) and helpers to read what arrived.
#![allow(dead_code)] // each test file uses a different part

use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vm_launcher::host_services::{CrashConfig, HostServices};
use vm_launcher::log_forward::{LogForwarder, LogSink};
use vm_proto::{Address, GuestParams, Listener, Token};

pub const VM_ID: &str = "it-vm";

pub fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The launcher's host services for one VM, with its LogCollector writing to `sink`.
pub struct Host {
    pub services: Option<HostServices>,
    pub addr: Address,
    token: Token,
    dir: PathBuf,
    sink: LogSink,
}

impl Host {
    pub fn start(dir: &Path, token: &Token, sink: LogSink) -> Host {
        let mut host = Host {
            services: None,
            addr: Address::Unix(dir.join("host.sock")),
            token: token.clone(),
            dir: dir.to_path_buf(),
            sink,
        };
        host.resume();
        host
    }

    /// The collector goes away: in-flight calls are cancelled, new ones cannot connect.
    pub fn stop(&mut self) {
        if let Some(services) = self.services.take() {
            services.server.shutdown();
        }
        let _ = std::fs::remove_file(self.addr.listen_path().unwrap());
    }

    pub fn resume(&mut self) {
        let listener = Listener::bind(&self.addr).expect("bind the host socket");
        let services = HostServices::start(
            VM_ID,
            self.token.clone(),
            listener,
            vm_proto::server::any_peer(),
            LogForwarder::new(VM_ID, self.sink.clone()),
            CrashConfig {
                spool: self.dir.join("spool"),
                reporter: None,
                keep: 1,
                upload: None,
            },
        )
        .expect("start the host services");
        self.services = Some(services);
    }
}

/// A vm_syslog process; SIGTERM and reaped when dropped.
pub struct Daemon {
    pub child: Child,
    pub socket: PathBuf,
    /// The SOCK_STREAM socket.
    pub stream_socket: PathBuf,
}

/// Writes a kernel command line with the VM's token and id.
pub fn write_cmdline(dir: &Path, token: &Token) -> PathBuf {
    let params = GuestParams {
        token: token.clone(),
        host_port: 9999,
        vm_id: VM_ID.into(),
    };
    let path = dir.join("cmdline");
    std::fs::write(&path, format!("console=ttyS0 {}\n", params.to_cmdline())).unwrap();
    path
}

impl Daemon {
    /// vm_syslog with its sockets `dir/log` and `dir/log-stream`, sending to `host`.
    pub fn command(dir: &Path, token: &Token, host: &Address) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vm_syslog"));
        cmd.arg("--socket")
            .arg(dir.join("log"))
            .arg("--stream-socket")
            .arg(dir.join("log-stream"))
            .arg("--host")
            .arg(host.to_string())
            .arg("--cmdline")
            .arg(write_cmdline(dir, token))
            .arg("--state")
            .arg(dir.join("state"))
            .stdin(Stdio::null());
        cmd
    }

    /// Starts vm_syslog on `dir/log` sending to `host`, with `extra` flags.
    pub fn start(dir: &Path, token: &Token, host: &Address, extra: &[&str]) -> Daemon {
        let socket = dir.join("log");
        let child = Daemon::command(dir, token, host)
            .args(extra)
            .spawn()
            .expect("start vm_syslog");
        let mut daemon = Daemon {
            child,
            socket,
            stream_socket: dir.join("log-stream"),
        };
        let socket = daemon.socket.clone();
        wait_for("vm_syslog's socket", Duration::from_secs(10), || {
            if let Ok(Some(status)) = daemon.child.try_wait() {
                panic!("vm_syslog exited early: {status}");
            }
            UnixDatagram::unbound()
                .and_then(|s| s.connect(&socket))
                .is_ok()
        });
        daemon
    }

    /// SIGTERM: vm_syslog flushes what it holds and exits 0.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        // SAFETY: kill takes plain integers; the pid is our own live child's.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait().expect("reap vm_syslog")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.terminate();
        }
    }
}

/// A client of the daemon's socket that blocks like glibc's syslog() when it is full.
pub fn client(socket: &Path) -> UnixDatagram {
    let c = UnixDatagram::unbound().unwrap();
    c.connect(socket).unwrap();
    c
}

/// A real rsyslogd: imuxsock on a private socket, omfile to a private file.
pub struct Rsyslog {
    pub child: Child,
    pub socket: PathBuf,
    pub output: PathBuf,
}

/// The rsyslogd binary, or a loud failure telling how to get it.
pub fn rsyslogd() -> PathBuf {
    for dir in ["/usr/sbin", "/sbin", "/usr/bin"] {
        let p = Path::new(dir).join("rsyslogd");
        if p.exists() {
            return p;
        }
    }
    panic!("rsyslogd is missing: run scripts/test, which installs the Debian package rsyslog");
}

/// imuxsock input options that parse RFC 5424 lines from the launcher whole.
pub const PARSE_RFC5424: &str = r#"UseSpecialParser="off" ParseHostname="on"
      UseSysTimeStamp="off" IgnoreTimestamp="off""#;

impl Rsyslog {
    /// `template`: the omfile line format (rsyslog template string).
    pub fn start(dir: &Path, template: &str) -> Rsyslog {
        Rsyslog::start_with(dir, template, PARSE_RFC5424)
    }

    /// `input`: more imuxsock input options ("" for rsyslog's defaults).
    pub fn start_with(dir: &Path, template: &str, input: &str) -> Rsyslog {
        let socket = dir.join("rsyslog.sock");
        let output = dir.join("rsyslog.out");
        let work = dir.join("rsyslog.work");
        std::fs::create_dir_all(&work).unwrap();
        let conf = dir.join("rsyslog.conf");
        let mut f = std::fs::File::create(&conf).unwrap();
        writeln!(
            f,
            r#"global(workDirectory="{work}" maxMessageSize="64k")
main_queue(queue.workerThreads="1")
module(load="imuxsock" SysSock.Use="off")
input(type="imuxsock" Socket="{socket}" RateLimit.Interval="0" {input})
template(name="t" type="string" string="{template}")
*.* action(type="omfile" file="{output}" template="t")"#,
            work = work.display(),
            socket = socket.display(),
            output = output.display(),
        )
        .unwrap();
        drop(f);
        let child = Command::new(rsyslogd())
            .arg("-n")
            .arg("-f")
            .arg(&conf)
            .arg("-i")
            .arg(dir.join("rsyslog.pid"))
            .stdin(Stdio::null())
            .spawn()
            .expect("start rsyslogd");
        let mut rsyslog = Rsyslog {
            child,
            socket,
            output,
        };
        let s = rsyslog.socket.clone();
        wait_for("rsyslogd's socket", Duration::from_secs(10), || {
            if let Ok(Some(status)) = rsyslog.child.try_wait() {
                panic!("rsyslogd exited early: {status}");
            }
            s.exists()
        });
        rsyslog
    }

    pub fn lines(&self) -> Vec<String> {
        read_lines(&self.output)
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        // SAFETY: kill takes plain integers; the pid is our own live child's.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// The complete lines of a file another process is still appending to.
pub fn read_lines(path: &Path) -> Vec<String> {
    let bytes = std::fs::read(path).unwrap_or_default();
    let complete = bytes.iter().rposition(|&c| c == b'\n').map_or(0, |i| i + 1);
    String::from_utf8_lossy(&bytes[..complete])
        .lines()
        .map(String::from)
        .collect()
}
