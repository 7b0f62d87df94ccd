//! Mount and SetTime: thin, validated wrappers over mount(2) and clock_settime(2). A Mount
//! source may name a disk by identity (`disk:<ID>`, see `disks`).

use nix::mount::MsFlags;
use nix::sys::time::TimeSpec;
use nix::time::{clock_settime, ClockId};
use vm_proto::protos::guest::{MountRequest, MountResponse, SetTimeRequest};

use crate::disks;

/// A validated Mount request: what mount(2) gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountArgs {
    source: Option<String>,
    target: String,
    fstype: Option<String>,
    flags: MsFlags,
    options: Option<String>,
}

/// Checks a Mount request without touching anything.
pub fn validate_mount(req: &MountRequest) -> Result<MountArgs, String> {
    if req.get_target().is_empty() {
        return Err("target is empty".to_string());
    }
    let Some(flags) = MsFlags::from_bits(req.get_mountflags()) else {
        return Err(format!("unknown mount flags {:#x}", req.get_mountflags()));
    };
    let source = req.get_source();
    if source.starts_with(vm_proto::disks::SOURCE_PREFIX)
        && vm_proto::disks::identity(source).is_none()
    {
        return Err(disks::DiskError::BadIdentity(source.to_string()).to_string());
    }
    let opt = |s: &str| (!s.is_empty()).then(|| s.to_string());
    Ok(MountArgs {
        source: opt(req.get_source()),
        target: req.get_target().to_string(),
        fstype: opt(req.get_fstype()),
        flags,
        options: opt(req.get_options()),
    })
}

/// Mount: the raw mount(2) after a `disk:<ID>` source is resolved to its device; the errno
/// goes back in the response, not as an RPC error (ENOENT for a disk that is not there).
/// It may block (waiting for a disk, a slow device, a network filesystem): never call it on
/// a gRPC thread.
pub fn mount(args: &MountArgs) -> MountResponse {
    let mut resp = MountResponse::new();
    let source = match args
        .source
        .as_deref()
        .map(|s| disks::resolve(s, disks::WAIT))
    {
        None => None,
        Some(Ok(device)) => Some(device),
        Some(Err(e)) => {
            crate::warn!("Mount on {}: {e}", args.target);
            resp.set_error(e.errno());
            return resp;
        }
    };
    let result = nix::mount::mount(
        source.as_deref(),
        args.target.as_str(),
        args.fstype.as_deref(),
        args.flags,
        args.options.as_deref(),
    );
    if let Err(errno) = result {
        resp.set_error(errno as i32);
    }
    resp
}

pub fn validate_time(req: &SetTimeRequest) -> Result<TimeSpec, String> {
    let time = req.time.as_ref().ok_or("time is missing")?;
    if time.get_seconds() <= 0 {
        return Err(format!(
            "seconds {} is not after the epoch",
            time.get_seconds()
        ));
    }
    if !(0..1_000_000_000).contains(&time.get_nanos()) {
        return Err(format!("nanos {} is not in 0..1e9", time.get_nanos()));
    }
    Ok(TimeSpec::new(
        time.get_seconds(),
        i64::from(time.get_nanos()),
    ))
}

pub fn set_time(time: TimeSpec) -> Result<(), String> {
    clock_settime(ClockId::CLOCK_REALTIME, time).map_err(|e| format!("clock_settime: {}", e.desc()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_proto::protos::common::Timestamp;

    fn time(seconds: i64, nanos: i32) -> SetTimeRequest {
        let mut ts = Timestamp::new();
        ts.set_seconds(seconds);
        ts.set_nanos(nanos);
        let mut req = SetTimeRequest::new();
        req.set_time(ts);
        req
    }

    #[test]
    fn validate_time_accepts_a_real_time() {
        let t = validate_time(&time(1_790_000_000, 5)).unwrap();
        assert_eq!((t.tv_sec(), t.tv_nsec()), (1_790_000_000, 5));
    }

    #[test]
    fn validate_time_rejects_bad_values() {
        assert!(validate_time(&SetTimeRequest::new()).is_err());
        assert!(validate_time(&time(0, 0)).is_err());
        assert!(validate_time(&time(-5, 0)).is_err());
        assert!(validate_time(&time(10, -1)).is_err());
        assert!(validate_time(&time(10, 1_000_000_000)).is_err());
    }

    #[test]
    fn validate_mount_rejects_unknown_flags_and_empty_target() {
        let mut req = MountRequest::new();
        assert_eq!(validate_mount(&req).unwrap_err(), "target is empty");
        req.set_target("/x".into());
        req.set_mountflags(1 << 62);
        assert!(validate_mount(&req)
            .unwrap_err()
            .contains("unknown mount flags"));
        req.set_mountflags(MsFlags::MS_RDONLY.bits());
        req.set_fstype("tmpfs".into());
        let args = validate_mount(&req).unwrap();
        assert_eq!(args.flags, MsFlags::MS_RDONLY);
        assert_eq!((args.source, args.fstype.as_deref()), (None, Some("tmpfs")));
        req.set_source("disk:../../dev/sda".into());
        assert!(validate_mount(&req)
            .unwrap_err()
            .contains("is not a disk identity"));
        req.set_source("disk:disk3".into());
        assert_eq!(
            validate_mount(&req).unwrap().source.as_deref(),
            Some("disk:disk3")
        );
    }
}
