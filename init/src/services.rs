//! Boot services from `/etc/maitred/*.conf`, started in name order, and the respawn policy.
//!
//! A service file is `key = value` lines; `#` starts a comment line:
//!
//! ```text
//! # /etc/maitred/10-syslog.conf
//! argv = /sbin/vm_syslog --flag "an argument with spaces"
//! env = RUST_LOG=info        # may repeat
//! respawn = yes              # yes|no (default no)
//! console = no               # stdio on /dev/console instead of /dev/null (default no)
//! socket = dgram /run/x/log  # bound by maitred, passed as fd 3, 4, … (may repeat)
//! ```
//!
//! Every service's sockets are bound at boot ([`prepare_all`]); the services themselves
//! start once the host knows the VM is ready ([`start_all`]), so that they do not compete
//! with maitred for the CPU before then, and nothing sent to them in between is lost.
//!
//! `argv` is split like the kernel command line (white space; double quotes group). A bad
//! file is reported with its path and line and skipped; the other services still start.

use std::collections::VecDeque;
use std::fmt;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::context::Context;
use crate::reaper::Exit;
use crate::service_sockets::SocketSpec;
use crate::spawn::{self, ProcessSpec, SpawnError, Stdio};
use crate::{error, info, warn};

/// The original vm_tools' policy: 10 spawns within 30 s and the service is stopped.
pub const RESPAWN_LIMIT: usize = 10;
pub const RESPAWN_WINDOW: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceConfig {
    pub name: String,
    pub spec: ProcessSpec,
    pub respawn: bool,
    /// Passed as fds 3, 4, … in this order.
    pub sockets: Vec<SocketSpec>,
}

#[derive(Debug, PartialEq, Eq)]
pub struct ServiceConfigError {
    pub path: PathBuf,
    pub line: usize,
    pub reason: String,
}

impl fmt::Display for ServiceConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.path.display(), self.reason)
        } else {
            write!(f, "{}:{}: {}", self.path.display(), self.line, self.reason)
        }
    }
}

fn parse_bool(value: &str) -> Option<bool> {
    match value {
        "yes" | "true" | "1" => Some(true),
        "no" | "false" | "0" => Some(false),
        _ => None,
    }
}

pub fn parse_service(path: &Path, text: &str) -> Result<ServiceConfig, ServiceConfigError> {
    let err = |line, reason: String| ServiceConfigError {
        path: path.to_path_buf(),
        line,
        reason,
    };
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut spec = ProcessSpec {
        argv: Vec::new(),
        env: Vec::new(),
        cwd: None,
        stdio: Stdio::Null,
    };
    let mut respawn = false;
    let mut sockets = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| err(n, format!("expected `key = value`, got {line:?}")))?;
        let (key, value) = (key.trim(), value.trim());
        let flag = |v| {
            parse_bool(v).ok_or_else(|| err(n, format!("{key}: expected yes or no, got {v:?}")))
        };
        match key {
            "argv" => spec.argv = vm_proto::cmdline::words(value),
            "env" => {
                let (k, v) = value
                    .split_once('=')
                    .filter(|(k, _)| !k.is_empty())
                    .ok_or_else(|| err(n, format!("env: expected NAME=VALUE, got {value:?}")))?;
                spec.env.push((k.to_string(), v.to_string()));
            }
            "respawn" => respawn = flag(value)?,
            "console" => {
                spec.stdio = if flag(value)? {
                    Stdio::Console
                } else {
                    Stdio::Null
                }
            }
            "socket" => sockets.push(SocketSpec::parse(value).map_err(|e| err(n, e))?),
            _ => {
                return Err(err(
                    n,
                    format!("unknown key {key:?} (argv, env, respawn, console, socket)"),
                ))
            }
        }
    }
    if spec.argv.is_empty() {
        return Err(err(0, "no argv".to_string()));
    }
    Ok(ServiceConfig {
        name,
        spec,
        respawn,
        sockets,
    })
}

/// Every `*.conf` in `dir`, in name order; each bad file becomes an error entry.
pub fn load_dir(dir: &Path) -> Vec<Result<ServiceConfig, ServiceConfigError>> {
    let mut paths: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "conf"))
            .collect(),
        Err(_) => return Vec::new(), // no directory, no services
    };
    paths.sort();
    paths
        .into_iter()
        .map(|path| match std::fs::read_to_string(&path) {
            Ok(text) => parse_service(&path, &text),
            Err(e) => Err(ServiceConfigError {
                path,
                line: 0,
                reason: e.to_string(),
            }),
        })
        .collect()
}

/// Spawn times within the window; refuses the spawn that would exceed the limit.
#[derive(Debug, Default)]
pub struct RespawnWindow {
    spawns: VecDeque<Instant>,
}

impl RespawnWindow {
    pub fn allow(&mut self, now: Instant) -> bool {
        while self
            .spawns
            .front()
            .is_some_and(|t| now.duration_since(*t) >= RESPAWN_WINDOW)
        {
            self.spawns.pop_front();
        }
        if self.spawns.len() >= RESPAWN_LIMIT {
            return false;
        }
        self.spawns.push_back(now);
        true
    }
}

/// One started service: what to restart and how often it was started. No thread waits for
/// it: its exit runs [`Supervised::exited`] on the reaping thread (the signal loop).
struct Supervised {
    ctx: Arc<Context>,
    name: String,
    spec: ProcessSpec,
    respawn: bool,
    window: Mutex<RespawnWindow>,
    /// Its sockets, open for as long as maitred runs, passed to every start.
    sockets: Vec<OwnedFd>,
}

impl Supervised {
    /// Starts the service once more; its exit comes back to [`Supervised::exited`].
    fn spawn(self: &Arc<Self>) -> Result<i32, SpawnError> {
        let me = self.clone();
        let sockets: Vec<BorrowedFd<'_>> = self.sockets.iter().map(AsFd::as_fd).collect();
        spawn::spawn_then(
            self.ctx.mode(),
            &self.ctx.reaper,
            &self.spec,
            &sockets,
            Box::new(move |_, exit| me.exited(exit)),
        )
    }

    fn exited(self: Arc<Self>, exit: Exit) {
        let name = &self.name;
        if self.ctx.stopping.load(Ordering::SeqCst) {
            return;
        }
        if !self.respawn {
            info!("service {name} ended: {exit:?}");
            return;
        }
        let allowed = self
            .window
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .allow(Instant::now());
        if !allowed {
            error!(
                "service {name} was spawned {RESPAWN_LIMIT} times within {}s; not restarting it",
                RESPAWN_WINDOW.as_secs()
            );
            return;
        }
        warn!("service {name} ended ({exit:?}); restarting");
        if let Err(e) = self.spawn() {
            error!("service {name}: {e}; not restarting it");
        }
    }
}

/// A boot service loaded and its sockets bound, not started yet.
pub struct Prepared {
    config: ServiceConfig,
    sockets: Vec<OwnedFd>,
}

/// Loads every service in `dir` and binds its sockets. A bad file, or a socket that cannot
/// be bound, is logged and that service skipped; the others still start.
pub fn prepare_all(dir: &Path) -> Vec<Prepared> {
    let mut prepared = Vec::new();
    for entry in load_dir(dir) {
        let config = match entry {
            Ok(config) => config,
            Err(e) => {
                error!("skipping service: {e}");
                continue;
            }
        };
        match config.sockets.iter().map(SocketSpec::bind).collect() {
            Ok(sockets) => prepared.push(Prepared { config, sockets }),
            Err(e) => error!("skipping service {}: {e}", config.name),
        }
    }
    prepared
}

/// Starts every prepared service. Errors are logged.
pub fn start_all(ctx: &Arc<Context>, services: Vec<Prepared>) {
    for Prepared { config, sockets } in services {
        match supervise(ctx, &config.name, config.spec, config.respawn, sockets) {
            Ok(pid) => info!("started service {} (pid {pid})", config.name),
            Err(e) => error!("service {}: {e}", config.name),
        }
    }
}

/// Starts `spec`; with `respawn`, it is restarted whenever it exits, within the policy.
/// Returns the first pid.
pub fn start(
    ctx: &Arc<Context>,
    name: &str,
    spec: ProcessSpec,
    respawn: bool,
) -> Result<i32, SpawnError> {
    supervise(ctx, name, spec, respawn, Vec::new())
}

fn supervise(
    ctx: &Arc<Context>,
    name: &str,
    spec: ProcessSpec,
    respawn: bool,
    sockets: Vec<OwnedFd>,
) -> Result<i32, SpawnError> {
    let mut window = RespawnWindow::default();
    window.allow(Instant::now());
    let service = Arc::new(Supervised {
        ctx: ctx.clone(),
        name: name.to_string(),
        spec,
        respawn,
        window: Mutex::new(window),
        sockets,
    });
    service.spawn()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ServiceConfig, ServiceConfigError> {
        parse_service(Path::new("/etc/maitred/10-x.conf"), text)
    }

    #[test]
    fn parse_full_file() {
        let svc = parse(
            "# comment\nargv = /sbin/x -a \"b c\"\nenv = A=1=2\nenv=B=\nrespawn = yes\nconsole = no\n",
        )
        .unwrap();
        assert_eq!(svc.name, "10-x");
        assert_eq!(svc.spec.argv, vec!["/sbin/x", "-a", "b c"]);
        assert_eq!(
            svc.spec.env,
            vec![("A".into(), "1=2".into()), ("B".into(), "".into())]
        );
        assert!(svc.respawn);
        assert_eq!(svc.spec.stdio, Stdio::Null);
    }

    #[test]
    fn parse_bad_files_name_path_and_line() {
        let cases = [
            ("argv = x\nrespawn = maybe\n", 2, "respawn"),
            ("argv = x\nbogus = 1\n", 2, "unknown key"),
            ("argv = x\njust words\n", 2, "key = value"),
            ("env = =x\nargv = x\n", 1, "NAME=VALUE"),
            ("respawn = yes\n", 0, "no argv"),
        ];
        for (text, line, want) in cases {
            let err = parse(text).unwrap_err();
            assert_eq!(err.line, line, "{text}");
            let msg = err.to_string();
            assert!(msg.contains(want) && msg.contains("10-x.conf"), "{msg}");
        }
    }

    #[test]
    fn load_dir_keeps_order_and_reports_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("20-b.conf"), "argv = b\n").unwrap();
        std::fs::write(dir.path().join("10-a.conf"), "argv = a\n").unwrap();
        std::fs::write(dir.path().join("15-bad.conf"), "nonsense\n").unwrap();
        std::fs::write(dir.path().join("README"), "not a service\n").unwrap();
        let loaded = load_dir(dir.path());
        assert_eq!(loaded.len(), 3);
        assert_eq!(loaded[0].as_ref().unwrap().name, "10-a");
        assert!(loaded[1].is_err());
        assert_eq!(loaded[2].as_ref().unwrap().name, "20-b");
        assert!(load_dir(&dir.path().join("missing")).is_empty());
    }

    #[test]
    fn respawn_window_allows_ten_in_thirty_seconds() {
        let mut window = RespawnWindow::default();
        let t0 = Instant::now();
        for i in 0..10 {
            assert!(window.allow(t0 + Duration::from_secs(i)), "spawn {i}");
        }
        assert!(!window.allow(t0 + Duration::from_secs(10)));
        // Once the first spawn is 30 s old, there is room again.
        assert!(window.allow(t0 + Duration::from_secs(30)));
        assert!(!window.allow(t0 + Duration::from_secs(30)));
    }
}
