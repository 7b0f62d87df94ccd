//! The host-wide upload limit: at most N uploads per period for all launchers of a runtime
//! dir together (several run at once, one per VM), as ChromeOS crash_sender's 32 a day.
//! The times of the uploads in the last period are lines of Unix seconds in one state file,
//! read and rewritten under an `flock` on it.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};

/// `N/PERIOD`: the default is ChromeOS crash_sender's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub count: u32,
    pub period: Duration,
}

impl Default for RateLimit {
    fn default() -> RateLimit {
        RateLimit {
            count: 32,
            period: Duration::from_secs(86_400),
        }
    }
}

impl std::str::FromStr for RateLimit {
    type Err = String;

    /// `N` (a day), `N/day`, `N/hour`, `N/minute` or `N/<secs>s|m|h|d`.
    fn from_str(text: &str) -> Result<RateLimit, String> {
        let bad = || format!("{text:?}: expected N/PERIOD, e.g. 32/day, 10/hour, 5/90s");
        let (count, period) = text.split_once('/').unwrap_or((text, "day"));
        let count = count.trim().parse().map_err(|_| bad())?;
        let secs = match period.trim() {
            "day" | "d" => 86_400,
            "hour" | "h" => 3_600,
            "minute" | "min" | "m" => 60,
            other => {
                let split = other.len().saturating_sub(1);
                let (n, unit) = other.split_at(split);
                let n: u64 = n.parse().map_err(|_| bad())?;
                let unit = match unit {
                    "s" => 1,
                    "m" => 60,
                    "h" => 3_600,
                    "d" => 86_400,
                    _ => return Err(bad()),
                };
                n.checked_mul(unit).ok_or_else(bad)?
            }
        };
        if secs == 0 {
            return Err(bad());
        }
        Ok(RateLimit {
            count,
            period: Duration::from_secs(secs),
        })
    }
}

#[derive(Debug)]
pub struct RateError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

impl fmt::Display for RateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "crash upload rate state {}: {}",
            self.path.display(),
            self.source
        )
    }
}

/// The state file shared by every launcher of the host.
pub struct HostRate {
    path: PathBuf,
    limit: RateLimit,
}

impl HostRate {
    pub fn new(path: &Path, limit: RateLimit) -> HostRate {
        HostRate {
            path: path.to_path_buf(),
            limit,
        }
    }

    fn lock(&self) -> Result<Flock<File>, RateError> {
        let err = |source| RateError {
            path: self.path.clone(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&self.path)
            .map_err(err)?;
        Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| err(errno.into()))
    }

    /// Takes one upload slot at `now` (Unix seconds) if the host has one: Ok(None). Else
    /// Ok(Some(t)): no slot until `t`.
    pub fn take(&self, now: u64) -> Result<Option<u64>, RateError> {
        let err = |source| RateError {
            path: self.path.clone(),
            source,
        };
        let period = self.limit.period.as_secs();
        if self.limit.count == 0 {
            return Ok(Some(now + period));
        }
        let mut file = self.lock()?;
        let mut text = String::new();
        file.read_to_string(&mut text).map_err(err)?;
        // Times within the period; junk (a torn write) and future times are dropped.
        let mut times: Vec<u64> = text
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .filter(|t: &u64| *t <= now && now - *t < period)
            .collect();
        times.sort_unstable();
        if times.len() >= self.limit.count as usize {
            // The slot frees when the count-th newest upload leaves the period.
            let oldest_counted = times[times.len() - self.limit.count as usize];
            return Ok(Some(oldest_counted + period));
        }
        times.push(now);
        let text: String = times.iter().map(|t| format!("{t}\n")).collect();
        file.set_len(0).map_err(err)?;
        file.rewind().map_err(err)?;
        file.write_all(text.as_bytes()).map_err(err)?;
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_parses_counts_and_periods() {
        let p = |t: &str| {
            t.parse::<RateLimit>()
                .map(|r| (r.count, r.period.as_secs()))
        };
        assert_eq!(p("32"), Ok((32, 86_400)));
        assert_eq!(p("10/hour"), Ok((10, 3_600)));
        assert_eq!(p("5/90s"), Ok((5, 90)));
        assert_eq!(p("1/2d"), Ok((1, 172_800)));
        for bad in ["", "x/day", "3/0s", "3/fortnight", "-1/day"] {
            assert!(p(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn take_allows_n_per_period_across_handles_then_frees_the_oldest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rate");
        let limit = RateLimit {
            count: 2,
            period: Duration::from_secs(100),
        };
        let (a, b) = (HostRate::new(&path, limit), HostRate::new(&path, limit));
        assert_eq!(a.take(1000).unwrap(), None);
        assert_eq!(b.take(1010).unwrap(), None);
        assert_eq!(a.take(1020).unwrap(), Some(1100));
        assert_eq!(b.take(1099).unwrap(), Some(1100));
        assert_eq!(b.take(1100).unwrap(), None);
        assert_eq!(a.take(1101).unwrap(), Some(1110));
        // A torn file is not an error: what parses counts.
        std::fs::write(&path, "1100\n11").unwrap();
        assert_eq!(a.take(1150).unwrap(), None);
    }
}
