//! The crash server of the upload tests: tests/support/crash_server.py (Python's
//! http.server, multipart parsed by hand) as a child process, killed when dropped, and
//! what it recorded.
#![allow(dead_code)] // each test file uses a different part

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// The Python crash server, killed when dropped.
pub struct CrashServer {
    child: Child,
    port: u16,
    out: tempfile::TempDir,
}

impl CrashServer {
    /// Answers the n-th request with `plan[n-1]` (200 after the plan).
    pub fn start(plan: &[u16]) -> CrashServer {
        let out = tempfile::tempdir().unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/crash_server.py");
        let plan: Vec<String> = plan.iter().map(u16::to_string).collect();
        let mut child = Command::new("python3")
            .arg(script)
            .arg(out.path())
            .arg(plan.join(","))
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 is needed for the crash server (apt-get install python3)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().parse().expect("the server's port");
        CrashServer { child, port, out }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/submit?x=1", self.port)
    }

    /// The requests received so far, in order.
    pub fn requests(&self) -> Vec<serde_json::Value> {
        let mut n = 1;
        let mut all = Vec::new();
        while let Ok(text) = std::fs::read_to_string(self.out.path().join(format!("req-{n}.json")))
        {
            all.push(serde_json::from_str(&text).unwrap());
            n += 1;
        }
        all
    }

    pub fn file(&self, n: u64, name: &str) -> Vec<u8> {
        std::fs::read(self.out.path().join(format!("req-{n}-{name}.bin"))).unwrap()
    }
}

impl Drop for CrashServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
