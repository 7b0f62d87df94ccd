//! Mount and SetTime: thin, validated wrappers over mount(2) and clock_settime(2).

use grpcio::{RpcStatus, RpcStatusCode};
use nix::mount::MsFlags;
use nix::sys::time::TimeSpec;
use nix::time::{clock_settime, ClockId};
use vm_proto::protos::guest::{MountRequest, MountResponse, SetTimeRequest};

/// Mount: the raw mount(2); its errno goes back in the response, not as an RPC error.
pub fn mount(req: &MountRequest) -> Result<MountResponse, RpcStatus> {
    if req.get_target().is_empty() {
        return Err(RpcStatus::with_message(
            RpcStatusCode::INVALID_ARGUMENT,
            "target is empty".to_string(),
        ));
    }
    let Some(flags) = MsFlags::from_bits(req.get_mountflags()) else {
        return Err(RpcStatus::with_message(
            RpcStatusCode::INVALID_ARGUMENT,
            format!("unknown mount flags {:#x}", req.get_mountflags()),
        ));
    };
    let opt = |s: &str| (!s.is_empty()).then(|| s.to_string());
    let result = nix::mount::mount(
        opt(req.get_source()).as_deref(),
        req.get_target(),
        opt(req.get_fstype()).as_deref(),
        flags,
        opt(req.get_options()).as_deref(),
    );
    let mut resp = MountResponse::new();
    if let Err(errno) = result {
        resp.set_error(errno as i32);
    }
    Ok(resp)
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
    fn mount_rejects_unknown_flags_and_empty_target() {
        let mut req = MountRequest::new();
        assert!(mount(&req).is_err());
        req.set_target("/x".into());
        req.set_mountflags(1 << 62);
        assert!(mount(&req).is_err());
    }
}
