//! The guest kernel command line contract: `maitred.token=<64 hex>`,
//! `maitred.host_port=<u32>` and `maitred.vm_id=<name>`, written by the launcher and read by
//! every guest program from /proc/cmdline.
//!
//! Splitting follows the kernel (lib/cmdline.c): words are separated by white space, double
//! quotes group spaces and are removed, a lone `--` ends the kernel's arguments (what follows
//! belongs to init and never sets a key), and a repeated key's last value wins.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::address::Address;
use crate::auth::{Token, TokenError};

pub const KEY_TOKEN: &str = "maitred.token";
pub const KEY_HOST_PORT: &str = "maitred.host_port";
pub const KEY_VM_ID: &str = "maitred.vm_id";
/// A VM id becomes the guest's hostname and part of host paths.
pub const VM_ID_MAX_LEN: usize = 63;
/// Where a guest program reads the kernel command line.
pub const PROC_CMDLINE: &str = "/proc/cmdline";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestParams {
    pub token: Token,
    pub host_port: u32,
    pub vm_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CmdlineError {
    Missing(&'static str),
    BadToken(TokenError),
    BadHostPort(String),
    BadVmId(String),
}

/// At most this much of a hostile value is echoed back in an error.
const ECHO_MAX: usize = 64;

fn echo(value: &str) -> String {
    let cut: String = value.chars().take(ECHO_MAX).collect();
    let more = if cut.len() < value.len() { "…" } else { "" };
    format!("\"{}{more}\"", cut.escape_debug())
}

impl fmt::Display for CmdlineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing(key) => write!(
                f,
                "kernel command line has no {key}=; was this VM started by vm_launcher?"
            ),
            Self::BadToken(err) => write!(f, "kernel command line {KEY_TOKEN}: {err}"),
            Self::BadHostPort(v) => write!(
                f,
                "kernel command line {KEY_HOST_PORT}={}: must be a vsock port from 1 to 4294967294",
                echo(v)
            ),
            Self::BadVmId(v) => write!(
                f,
                "kernel command line {KEY_VM_ID}={}: must be 1 to {VM_ID_MAX_LEN} of A-Z a-z 0-9 . _ -, not starting with . or -",
                echo(v)
            ),
        }
    }
}

impl std::error::Error for CmdlineError {}

/// Reading the guest parameters from a file (normally [`PROC_CMDLINE`]) failed.
#[derive(Debug)]
pub enum ParamsError {
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    Parse {
        path: PathBuf,
        source: CmdlineError,
    },
}

impl fmt::Display for ParamsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Read { path, source } => write!(f, "cannot read {}: {source}", path.display()),
            Self::Parse { path, source } => write!(f, "{}: {source}", path.display()),
        }
    }
}

impl std::error::Error for ParamsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Read { source, .. } => Some(source),
            Self::Parse { source, .. } => Some(source),
        }
    }
}

/// Splits a command line into words the way the kernel does.
pub fn words(cmdline: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut in_quote = false;
    for c in cmdline.chars() {
        match c {
            '"' => {
                in_quote = !in_quote;
                in_word = true;
            }
            c if c.is_whitespace() && !in_quote => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// The last value given to `key` before any lone `--`.
pub fn lookup(cmdline: &str, key: &str) -> Option<String> {
    words(cmdline)
        .into_iter()
        .take_while(|w| w != "--")
        .filter_map(|w| {
            let (k, v) = w.split_once('=')?;
            (k == key).then(|| v.to_string())
        })
        .last()
}

pub fn validate_vm_id(id: &str) -> Result<(), CmdlineError> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    let valid = !id.is_empty()
        && id.len() <= VM_ID_MAX_LEN
        && id.chars().all(ok_char)
        && !id.starts_with(['.', '-']);
    if valid {
        Ok(())
    } else {
        Err(CmdlineError::BadVmId(id.to_string()))
    }
}

pub fn parse_host_port(value: &str) -> Result<u32, CmdlineError> {
    match value.parse::<u32>() {
        Ok(port) if port != 0 && port != u32::MAX => Ok(port),
        _ => Err(CmdlineError::BadHostPort(value.to_string())),
    }
}

impl GuestParams {
    pub fn from_cmdline(cmdline: &str) -> Result<GuestParams, CmdlineError> {
        let get = |key| lookup(cmdline, key).ok_or(CmdlineError::Missing(key));
        let token = Token::parse(&get(KEY_TOKEN)?).map_err(CmdlineError::BadToken)?;
        let host_port = parse_host_port(&get(KEY_HOST_PORT)?)?;
        let vm_id = get(KEY_VM_ID)?;
        validate_vm_id(&vm_id)?;
        Ok(GuestParams {
            token,
            host_port,
            vm_id,
        })
    }

    /// Reads and parses a kernel command line file: what every guest program does at start
    /// (`path` is [`PROC_CMDLINE`] unless a test points it elsewhere). Invalid UTF-8 is
    /// replaced, so a stray byte elsewhere on the line cannot hide the keys.
    pub fn from_proc_cmdline(path: &Path) -> Result<GuestParams, ParamsError> {
        let bytes = std::fs::read(path).map_err(|source| ParamsError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        GuestParams::from_cmdline(&String::from_utf8_lossy(&bytes)).map_err(|source| {
            ParamsError::Parse {
                path: path.to_path_buf(),
                source,
            }
        })
    }

    /// The host services' default address, seen from the guest: vsock CID 2 (the host) on
    /// `maitred.host_port`. A guest program's `--host` flag overrides it in tests.
    pub fn host_address(&self) -> Address {
        Address::Vsock {
            cid: crate::HOST_CID,
            port: self.host_port,
        }
    }

    /// The words to append to the guest's kernel command line. Holds the secret token.
    pub fn to_cmdline(&self) -> String {
        format!(
            "{KEY_TOKEN}={} {KEY_HOST_PORT}={} {KEY_VM_ID}={}",
            self.token.to_hex(),
            self.host_port,
            self.vm_id
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn line(extra: &str) -> String {
        format!("console=ttyS0 {KEY_TOKEN}={HEX} {KEY_HOST_PORT}=5000 {KEY_VM_ID}=vm1 {extra}")
    }

    #[test]
    fn from_cmdline_valid_line_gives_all_params() {
        let p = GuestParams::from_cmdline(&line("quiet")).unwrap();
        assert_eq!(p.token.to_hex(), HEX);
        assert_eq!(p.host_port, 5000);
        assert_eq!(p.vm_id, "vm1");
        assert_eq!(GuestParams::from_cmdline(&p.to_cmdline()).unwrap(), p);
    }

    #[test]
    fn from_proc_cmdline_reads_file_and_names_it_in_errors() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("cmdline");
        let mut bytes = line("quiet").into_bytes();
        bytes.extend_from_slice(b" junk=\xff\n");
        std::fs::write(&good, bytes).unwrap();
        let p = GuestParams::from_proc_cmdline(&good).unwrap();
        assert_eq!((p.host_port, p.vm_id.as_str()), (5000, "vm1"));
        assert_eq!(
            p.host_address(),
            Address::Vsock {
                cid: crate::HOST_CID,
                port: 5000
            }
        );

        let missing = dir.path().join("nope");
        let err = GuestParams::from_proc_cmdline(&missing).unwrap_err();
        assert!(matches!(err, ParamsError::Read { .. }), "{err:?}");
        assert!(err.to_string().starts_with("cannot read "), "{err}");
        assert!(err.to_string().contains("nope"), "{err}");

        let bad = dir.path().join("bad");
        std::fs::write(&bad, "console=ttyS0").unwrap();
        let err = GuestParams::from_proc_cmdline(&bad).unwrap_err();
        assert!(
            matches!(
                err,
                ParamsError::Parse {
                    source: CmdlineError::Missing(KEY_TOKEN),
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("bad: kernel command line"),
            "{err}"
        );
    }

    #[test]
    fn lookup_repeated_key_last_wins() {
        let p = GuestParams::from_cmdline(&line(&format!("{KEY_VM_ID}=second"))).unwrap();
        assert_eq!(p.vm_id, "second");
    }

    #[test]
    fn lookup_after_double_dash_is_ignored() {
        let p = GuestParams::from_cmdline(&line(&format!("-- {KEY_VM_ID}=evil"))).unwrap();
        assert_eq!(p.vm_id, "vm1");
    }

    #[test]
    fn words_quotes_group_spaces_and_vanish() {
        assert_eq!(
            words("a=\"b c\"  d \"e f\"=g\n\th"),
            vec!["a=b c", "d", "e f=g", "h"]
        );
        // An unterminated quote runs to the end, like the kernel.
        assert_eq!(words("x=\"a b"), vec!["x=a b"]);
        assert_eq!(words("\"\""), vec![""]);
        assert!(words("   ").is_empty());
    }

    #[test]
    fn from_cmdline_quoted_values_are_unquoted() {
        let quoted = format!("{KEY_TOKEN}=\"{HEX}\" {KEY_HOST_PORT}=\"77\" \"{KEY_VM_ID}=q\"");
        let p = GuestParams::from_cmdline(&quoted).unwrap();
        assert_eq!((p.host_port, p.vm_id.as_str()), (77, "q"));
    }

    #[test]
    fn from_cmdline_missing_keys_named() {
        assert_eq!(
            GuestParams::from_cmdline("console=ttyS0"),
            Err(CmdlineError::Missing(KEY_TOKEN))
        );
        let no_port = format!("{KEY_TOKEN}={HEX} {KEY_VM_ID}=a");
        assert_eq!(
            GuestParams::from_cmdline(&no_port),
            Err(CmdlineError::Missing(KEY_HOST_PORT))
        );
        let msg = CmdlineError::Missing(KEY_TOKEN).to_string();
        assert!(msg.contains("maitred.token="), "{msg}");
    }

    #[test]
    fn from_cmdline_hostile_values_rejected() {
        for (extra, want) in [
            (format!("{KEY_HOST_PORT}=0"), "host_port"),
            (format!("{KEY_HOST_PORT}=4294967295"), "host_port"),
            (format!("{KEY_HOST_PORT}=-1"), "host_port"),
            (format!("{KEY_HOST_PORT}=99999999999999999999"), "host_port"),
            (format!("{KEY_VM_ID}=../../etc"), "vm_id"),
            (format!("{KEY_VM_ID}=-rf"), "vm_id"),
            (format!("{KEY_VM_ID}="), "vm_id"),
            (format!("{KEY_VM_ID}={}", "a".repeat(64)), "vm_id"),
            (format!("{KEY_VM_ID}=\"a b\""), "vm_id"),
            (format!("{KEY_TOKEN}={}", &HEX[1..]), "token"),
            (format!("{KEY_TOKEN}={}", HEX.to_uppercase()), "token"),
        ] {
            let err = GuestParams::from_cmdline(&line(&extra)).unwrap_err();
            assert!(err.to_string().contains(want), "{extra}: {err}");
        }
    }

    #[test]
    fn error_echo_is_bounded_and_escaped() {
        let long = format!("{KEY_HOST_PORT}={}\u{1b}[31m", "9".repeat(10_000));
        let msg = GuestParams::from_cmdline(&line(&long))
            .unwrap_err()
            .to_string();
        assert!(msg.len() < 300, "{}", msg.len());
        assert!(!msg.contains('\u{1b}'));
    }

    #[test]
    fn token_error_never_echoes_the_value() {
        let bad = format!("{KEY_TOKEN}={}", "Z".repeat(64));
        let msg = GuestParams::from_cmdline(&line(&bad))
            .unwrap_err()
            .to_string();
        assert!(!msg.contains("ZZ"), "{msg}");
    }

    proptest::proptest! {
        #[test]
        fn from_cmdline_never_panics(s in "\\PC*") {
            let _ = GuestParams::from_cmdline(&s);
        }

        #[test]
        fn from_cmdline_finds_keys_amid_junk(
            junk in "[a-z0-9=. \"_]{0,40}", // no "-": a lone -- ends the kernel arguments
            port in 1u32..u32::MAX,
            id in "[a-z0-9][a-z0-9._-]{0,20}",
        ) {
            // Junk may open a quote; close it before our keys, as a launcher would not.
            let closed = if junk.matches('"').count() % 2 == 1 { "\"" } else { "" };
            let text = format!(
                "{junk}{closed} {KEY_TOKEN}={HEX} {KEY_HOST_PORT}={port} {KEY_VM_ID}={id}"
            );
            let p = GuestParams::from_cmdline(&text).unwrap();
            proptest::prop_assert_eq!(p.host_port, port);
            proptest::prop_assert_eq!(p.vm_id, id);
        }
    }
}
