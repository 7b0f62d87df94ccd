//! The real [`Collector`]: the host's LogCollector service through a re-dialling
//! [`Connector`] that attaches the VM's token to every call.

use std::time::Duration;

use protobuf::RepeatedField;
use vm_proto::protos::common::Timestamp as ProtoTimestamp;
use vm_proto::protos::host::{LogRecord, LogRequest, LogSeverity, SdElement, SdParam};
use vm_proto::protos::host_grpc::LogCollectorClient;
use vm_proto::{CallError, Connector};

use crate::delivery_state::BatchId;
use crate::record::{Kind, Record};
use crate::sender::Collector;

/// A stuck host fails the call after this long; the batch is then retried.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Syslog severity (0 emerg … 7 debug) to the proto enum (the contract's mapping).
pub fn severity(syslog: u8) -> LogSeverity {
    vm_proto::severity::from_syslog(syslog)
}

pub fn to_log_record(record: &Record) -> LogRecord {
    let mut out = LogRecord::new();
    out.set_severity(severity(record.severity));
    let mut ts = ProtoTimestamp::new();
    ts.set_seconds(record.timestamp.secs);
    ts.set_nanos(record.timestamp.nanos as i32);
    out.set_timestamp(ts);
    out.set_content(record.content.clone());
    out.set_facility(u32::from(record.facility));
    out.set_app_name(record.app_name.clone());
    out.set_pid(record.pid);
    out.set_truncated(record.truncated);
    if !record.kernel_dict.is_empty() {
        let mut element = SdElement::new();
        element.set_id(vm_proto::KMSG_SD_ID.into());
        for (key, value) in &record.kernel_dict {
            let mut param = SdParam::new();
            param.set_name(key.clone());
            param.set_value(value.clone());
            element.mut_params().push(param);
        }
        out.mut_structured_data().push(element);
    }
    out
}

pub struct GrpcCollector {
    connector: Connector,
}

impl GrpcCollector {
    pub fn new(connector: Connector) -> GrpcCollector {
        GrpcCollector { connector }
    }
}

impl Collector for GrpcCollector {
    type Error = CallError;

    fn send(&mut self, kind: Kind, id: &BatchId, records: &[Record]) -> Result<(), CallError> {
        let mut request = LogRequest::new();
        request.set_boot_id(id.stream.clone());
        request.set_sequence(id.number);
        request.set_records(RepeatedField::from_vec(
            records.iter().map(to_log_record).collect(),
        ));
        self.connector
            .call(CALL_TIMEOUT, |channel, options| {
                let client = LogCollectorClient::new(channel);
                match kind {
                    Kind::User => client.collect_user_logs_opt(&request, options),
                    Kind::Kernel => client.collect_kernel_logs_opt(&request, options),
                }
            })
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Timestamp;

    #[test]
    fn token_key_matches_the_contract() {
        let key = format!("{}=", vm_proto::cmdline::KEY_TOKEN);
        assert_eq!(crate::record::TOKEN_KEY, key.as_bytes());
    }

    #[test]
    fn severity_maps_every_syslog_level() {
        let all: Vec<LogSeverity> = (0..=7).map(severity).collect();
        assert_eq!(
            all,
            [
                LogSeverity::EMERGENCY,
                LogSeverity::ALERT,
                LogSeverity::CRITICAL,
                LogSeverity::ERROR,
                LogSeverity::WARNING,
                LogSeverity::NOTICE,
                LogSeverity::INFO,
                LogSeverity::DEBUG
            ]
        );
    }

    #[test]
    fn to_log_record_copies_every_field() {
        let mut r = Record::new(
            8 * 3 + 3,
            Timestamp {
                secs: 1_795_743_040,
                nanos: 918_779_000,
            },
        );
        r.app_name = "sshd".into();
        r.pid = 42;
        r.set_content(b"bad \xff bytes");
        r.truncated = true;
        r.kernel_dict = vec![("SUBSYSTEM".into(), "pci".into())];
        let l = to_log_record(&r);
        let sd = l.get_structured_data();
        assert_eq!(sd.len(), 1);
        assert_eq!(sd[0].get_id(), "kmsg@32473");
        let p = &sd[0].get_params()[0];
        assert_eq!((p.get_name(), p.get_value()), ("SUBSYSTEM", "pci"));
        assert_eq!(l.get_severity(), LogSeverity::ERROR);
        assert_eq!(l.get_facility(), 3);
        assert_eq!(l.get_timestamp().get_seconds(), 1_795_743_040);
        assert_eq!(l.get_timestamp().get_nanos(), 918_779_000);
        assert_eq!((l.get_app_name(), l.get_pid()), ("sshd", 42));
        assert_eq!(l.get_content(), b"bad \xff bytes");
        assert!(l.get_truncated());
    }
}
