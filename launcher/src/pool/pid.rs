//! Which process a lease names: its pid plus the pid's start time (field 22 of
//! `/proc/PID/stat`, clock ticks since boot). A pid alone is not an identity: once the holder
//! dies the kernel may give the number to any new process, of any user. `stop` signals only
//! a process whose start time still matches the one its lease recorded.

use std::io;
use std::sync::Mutex;

use super::sys;

/// The start time (field 22, `starttime`) in the text of `/proc/PID/stat`, or None for
/// anything that does not look like one. Field 2 is the command name in parentheses and may
/// itself hold spaces and `)` (a process chooses it), so fields are counted after the LAST
/// `)`, where field 3 starts.
pub fn parse_start_time(stat: &str) -> Option<u64> {
    let (head, rest) = stat.rsplit_once(')')?;
    // The pid and the opening parenthesis come first: "PID (".
    let (pid, _comm) = head.split_once(" (")?;
    pid.trim().parse::<u32>().ok()?;
    // Field 3 is the first after ')'; field 22 is therefore the 20th.
    rest.split_ascii_whitespace().nth(22 - 3)?.parse().ok()
}

/// The start time of process `pid`, or None when it does not exist (or /proc is unreadable).
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_start_time(&stat)
}

/// This process's own start time, recorded in each lease it takes. Read once per process
/// (the pid is part of the key: a forked child reads its own).
pub fn own_start_time() -> Option<u64> {
    static OWN: Mutex<Option<(u32, u64)>> = Mutex::new(None);
    let pid = std::process::id();
    let mut own = OWN.lock().unwrap_or_else(|e| e.into_inner());
    match *own {
        Some((cached, start)) if cached == pid => Some(start),
        _ => {
            let start = start_time(pid)?;
            *own = Some((pid, start));
            Some(start)
        }
    }
}

/// A process as a lease records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessId {
    pub pid: u32,
    pub start: u64,
}

impl ProcessId {
    /// The pid, if a process with it runs now and is the one recorded (same start time).
    pub fn live_pid(self) -> Option<i32> {
        let pid = i32::try_from(self.pid).ok().filter(|p| *p > 0)?;
        (start_time(self.pid) == Some(self.start)).then_some(pid)
    }

    /// Sends `signal` to this process if it still runs: Ok(true) if it was sent, Ok(false) if
    /// the process is gone (its pid free or reused by another process). The pid is pinned with
    /// a pidfd before the start time is compared, so the signal cannot reach a process that
    /// took the pid between the check and the send. Kernels before 5.3 (no pidfd) fall back
    /// to check-then-kill, which leaves that window open.
    pub fn signal(self, signal: nix::sys::signal::Signal) -> io::Result<bool> {
        let Some(pid) = i32::try_from(self.pid).ok().filter(|p| *p > 0) else {
            return Ok(false);
        };
        let gone = |e: &io::Error| e.raw_os_error() == Some(libc::ESRCH);
        let pidfd = match sys::pidfd_open(pid) {
            Ok(fd) => fd,
            Err(e) if gone(&e) => return Ok(false),
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
                if self.live_pid().is_none() {
                    return Ok(false);
                }
                let pid = nix::unistd::Pid::from_raw(pid);
                return match nix::sys::signal::kill(pid, signal) {
                    Ok(()) => Ok(true),
                    Err(nix::errno::Errno::ESRCH) => Ok(false),
                    Err(e) => Err(e.into()),
                };
            }
            Err(e) => return Err(e),
        };
        // The pidfd names whoever had the pid when it was opened. The recorded process started
        // before that, so a matching start time now means the pidfd names that very process.
        if self.live_pid().is_none() {
            return Ok(false);
        }
        match sys::pidfd_send_signal(&pidfd, signal as i32) {
            Ok(()) => Ok(true),
            Err(e) if gone(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real line's shape: 52 fields on Linux 6.x.
    fn stat_line(comm: &str, start: &str) -> String {
        let mut fields: Vec<String> = (3..=52).map(|n| n.to_string()).collect();
        fields[0] = "S".into();
        fields[22 - 3] = start.into();
        format!("4242 ({comm}) {}\n", fields.join(" "))
    }

    #[test]
    fn parse_start_time_plain_comm_reads_field_22() {
        assert_eq!(
            parse_start_time(&stat_line("sleep", "123456")),
            Some(123456)
        );
    }

    #[test]
    fn parse_start_time_comm_with_spaces_and_parens_counts_after_last_paren() {
        for comm in [
            "a b c",
            "x) (y z",
            ") ) )",
            "((",
            "1 2 3 4 5 6 7)",
            "nl\nin)",
        ] {
            assert_eq!(
                parse_start_time(&stat_line(comm, "987")),
                Some(987),
                "{comm:?}"
            );
        }
    }

    #[test]
    fn parse_start_time_real_self_is_some() {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
        assert!(parse_start_time(&stat).is_some(), "{stat}");
        assert_eq!(own_start_time(), start_time(std::process::id()));
    }

    #[test]
    fn parse_start_time_garbage_is_none() {
        let truncated = stat_line("sleep", "5");
        let cut = &truncated[..truncated.find(" 5 ").unwrap_or(20)];
        for text in [
            "",
            ")",
            "(",
            "4242",
            "4242 (sleep)",
            "4242 (sleep) S 1 2",
            cut,
            "x (sleep) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22",
            &stat_line("sleep", "-5"),
            &stat_line("sleep", "12x"),
            &stat_line("sleep", "99999999999999999999999"),
            "\u{fffd}\0\u{7f})))",
        ] {
            assert_eq!(parse_start_time(text), None, "{text:?}");
        }
    }

    #[test]
    fn parse_start_time_never_panics_on_any_prefix_or_byte() {
        let line = stat_line("a) b", "77");
        for end in 0..=line.len() {
            if line.is_char_boundary(end) {
                let _ = parse_start_time(&line[..end]);
            }
        }
        for byte in 0u8..=127 {
            let text = line.replace('7', &char::from(byte).to_string());
            let _ = parse_start_time(&text);
        }
    }

    #[test]
    fn live_pid_wrong_start_is_none() {
        let me = std::process::id();
        let start = own_start_time().unwrap();
        assert_eq!(ProcessId { pid: me, start }.live_pid(), Some(me as i32));
        let stale = ProcessId {
            pid: me,
            start: start + 1,
        };
        assert_eq!(stale.live_pid(), None);
        assert!(!stale.signal(nix::sys::signal::Signal::SIGTERM).unwrap());
        assert_eq!(ProcessId { pid: 0, start }.live_pid(), None);
        assert_eq!(
            ProcessId {
                pid: u32::MAX,
                start
            }
            .live_pid(),
            None
        );
    }
}
