//! maitred's own messages: to /dev/kmsg as `<pri>maitred: …` when it is PID 1 (the kernel log
//! reaches the serial console and vm_syslog), to stderr otherwise.

use std::fs::File;
use std::io::Write;
use std::sync::{Mutex, OnceLock};

static KMSG: OnceLock<Mutex<File>> = OnceLock::new();

pub const ERR: u8 = 3;
pub const WARNING: u8 = 4;
pub const INFO: u8 = 6;

/// Send messages to /dev/kmsg from now on; stays on stderr if it cannot be opened.
pub fn use_kmsg() {
    if let Ok(file) = std::fs::OpenOptions::new().write(true).open("/dev/kmsg") {
        let _ = KMSG.set(Mutex::new(file));
    }
}

pub fn write(priority: u8, message: &str) {
    // One write per line: /dev/kmsg takes one record per write.
    for line in message.lines() {
        let record = format!("<{priority}>maitred: {line}\n");
        let written = KMSG.get().is_some_and(|kmsg| {
            kmsg.lock()
                .map(|mut f| f.write_all(record.as_bytes()).is_ok())
                .unwrap_or(false)
        });
        if !written {
            let _ = std::io::stderr().write_all(&record.as_bytes()[3..]);
        }
    }
}

#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => { $crate::log::write($crate::log::INFO, &format!($($arg)*)) };
}

#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => { $crate::log::write($crate::log::WARNING, &format!($($arg)*)) };
}

#[macro_export]
macro_rules! error {
    ($($arg:tt)*) => { $crate::log::write($crate::log::ERR, &format!($($arg)*)) };
}
