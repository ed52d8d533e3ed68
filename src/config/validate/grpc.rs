//! `[grpc]`: which gRPC statuses count as errors.

use super::super::GrpcCodeSet;
use super::super::raw::RawGrpc;
use super::*;

impl Validator<'_> {
    /// `error_codes`: names (`"UNAVAILABLE"`, any case) or numbers (`14`),
    /// 0 to 16; the default set when absent.
    pub(super) fn grpc_error_codes(&mut self, raw: &RawGrpc) -> GrpcCodeSet {
        let Some(list) = &raw.error_codes else {
            return GrpcCodeSet::default();
        };
        let mut codes = GrpcCodeSet(0);
        for (i, v) in list.get_ref().iter().enumerate() {
            let code = match v.get_ref() {
                toml::Value::Integer(n) => u8::try_from(*n).ok().filter(|n| *n <= 16),
                toml::Value::String(s) => GrpcCodeSet::NAMES
                    .iter()
                    .position(|n| n.eq_ignore_ascii_case(s))
                    .map(|n| n as u8),
                _ => None,
            };
            match code {
                Some(c) => codes = codes.with(c),
                None => self.error(
                    v,
                    format!(
                        "grpc.error_codes[{i}]: {} is not a gRPC status (a name such as \"UNAVAILABLE\" or a number 0..=16)",
                        v.get_ref()
                    ),
                ),
            }
        }
        codes
    }
}
