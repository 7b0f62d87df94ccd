//! The crash upload flags of `run`/`start` (`--crash-upload URL`, `--crash-upload-gzip`,
//! `--crash-upload-limit N/PERIOD`) and the `crash-upload` command.

use std::path::PathBuf;

use super::{Cli, CliError};
use crate::crash_upload::{RateLimit, Url};

pub const CRASH_UPLOAD_USAGE: &str = "\
usage: vm_launcher crash-upload URL [--crash-upload-gzip] [--crash-upload-limit N/PERIOD]
                                [--crash-spool DIR] [--runtime-dir DIR]

Uploads every pending report in the crash spool now (whatever its retry backoff, within
the host's limit), as --crash-upload does while a VM runs, and says how it went.
Exit status: 0 when nothing is left to retry, 1 when some upload failed and will be
retried, 2 for a malformed command line, 125 when the spool's state cannot be used.";

/// `--crash-upload` and its options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadArgs {
    pub url: Url,
    pub gzip: bool,
    pub limit: RateLimit,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrashUploadArgs {
    pub upload: UploadArgs,
    pub spool: Option<PathBuf>,
    pub runtime_dir: Option<PathBuf>,
}

/// The `--crash-upload*` flags, wherever they come.
#[derive(Default)]
pub(super) struct UploadFlags {
    url: Option<Url>,
    gzip: bool,
    limit: Option<RateLimit>,
}

impl UploadFlags {
    /// Takes `flag` (and its value from `rest`) if it is one of ours.
    pub(super) fn take(
        &mut self,
        flag: &str,
        rest: &mut std::slice::Iter<'_, String>,
    ) -> Result<bool, CliError> {
        let mut value = || {
            rest.next()
                .ok_or_else(|| CliError(format!("{flag} needs a value")))
        };
        match flag {
            "--crash-upload" => {
                let url = value()?;
                self.url = Some(url.parse().map_err(|e| CliError(format!("{e}")))?);
            }
            "--crash-upload-gzip" => self.gzip = true,
            "--crash-upload-limit" => {
                let limit = value()?;
                self.limit = Some(
                    limit
                        .parse()
                        .map_err(|e| CliError(format!("--crash-upload-limit {e}")))?,
                );
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    pub(super) fn finish(self) -> Result<Option<UploadArgs>, CliError> {
        match self.url {
            Some(url) => Ok(Some(UploadArgs {
                url,
                gzip: self.gzip,
                limit: self.limit.unwrap_or_default(),
            })),
            None if self.gzip || self.limit.is_some() => Err(CliError(
                "--crash-upload-gzip and --crash-upload-limit need --crash-upload URL".into(),
            )),
            None => Ok(None),
        }
    }
}

pub(super) fn parse_crash_upload(args: &[String]) -> Result<Cli, CliError> {
    let mut upload = UploadFlags::default();
    let (mut spool, mut runtime_dir) = (None, None);
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let flag = arg.as_str();
        if upload.take(flag, &mut it)? {
            continue;
        }
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| CliError(format!("{flag} needs a value")))
        };
        match flag {
            "--help" | "-h" => return Ok(Cli::Help(CRASH_UPLOAD_USAGE)),
            "--crash-spool" => spool = Some(value()?.into()),
            "--runtime-dir" => runtime_dir = Some(value()?.into()),
            other if other.starts_with('-') => {
                return Err(CliError(format!("unknown option {other:?}")))
            }
            url if upload.url.is_none() => {
                upload.url = Some(url.parse().map_err(|e| CliError(format!("{e}")))?)
            }
            other => return Err(CliError(format!("unexpected argument {other:?}"))),
        }
    }
    let upload = upload
        .finish()?
        .ok_or_else(|| CliError("crash-upload needs the server's URL".into()))?;
    Ok(Cli::CrashUpload(CrashUploadArgs {
        upload,
        spool,
        runtime_dir,
    }))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::CRASH_UPLOAD_USAGE;
    use crate::cli::{parse, Cli};

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parse_crash_upload_flags_on_run_and_the_command() {
        let base = ["start", "--kernel", "k", "--initrd", "i"];
        let with = |extra: &[&str]| {
            let mut a: Vec<&str> = base.to_vec();
            a.extend_from_slice(extra);
            parse(&args(&a))
        };
        let Ok(Cli::Start(run)) = with(&[]) else {
            panic!()
        };
        assert_eq!(run.crash_upload, None);
        let Ok(Cli::Start(run)) = with(&[
            "--crash-upload",
            "http://127.0.0.1:8080/submit",
            "--crash-upload-gzip",
            "--crash-upload-limit",
            "10/hour",
        ]) else {
            panic!()
        };
        let upload = run.crash_upload.unwrap();
        assert_eq!(upload.url.to_string(), "http://127.0.0.1:8080/submit");
        assert!(upload.gzip);
        assert_eq!(
            (upload.limit.count, upload.limit.period.as_secs()),
            (10, 3600)
        );
        let Ok(Cli::Start(run)) = with(&["--crash-upload", "http://h/"]) else {
            panic!()
        };
        assert_eq!(
            run.crash_upload.unwrap().limit,
            crate::crash_upload::RateLimit::default()
        );

        for (extra, want) in [
            (
                &["--crash-upload", "https://h/"][..],
                "https is not supported",
            ),
            (&["--crash-upload-gzip"][..], "need --crash-upload URL"),
            (
                &["--crash-upload", "http://h/", "--crash-upload-limit", "x"][..],
                "--crash-upload-limit \"x\": expected N/PERIOD",
            ),
        ] {
            let err = with(extra).unwrap_err().to_string();
            assert!(err.contains(want), "{extra:?}: {err}");
        }

        let Ok(Cli::CrashUpload(cmd)) = parse(&args(&[
            "crash-upload",
            "--crash-spool",
            "/s",
            "http://h:1/x",
            "--runtime-dir",
            "/r",
        ])) else {
            panic!()
        };
        assert_eq!(cmd.upload.url.port, 1);
        assert_eq!(cmd.spool, Some(PathBuf::from("/s")));
        assert_eq!(cmd.runtime_dir, Some(PathBuf::from("/r")));
        assert!(parse(&args(&["crash-upload"]))
            .unwrap_err()
            .to_string()
            .contains("needs the server's URL"));
        assert!(parse(&args(&["crash-upload", "http://a/", "http://b/"])).is_err());
        assert!(matches!(
            parse(&args(&["crash-upload", "--help"])),
            Ok(Cli::Help(CRASH_UPLOAD_USAGE))
        ));
    }
}
