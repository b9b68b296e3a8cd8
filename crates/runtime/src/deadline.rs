//! The caller's deadline, as gRPC carries it: the `grpc-timeout` request header
//! (`<1-8 digits><unit>`, unit one of `H M S m u n`).
//!
//! Clients set it (`Request::set_timeout`, grpcio's `timeout=`, grpcurl's `-max-time`); every
//! service turns it into an `Instant` so work stops when nobody is waiting any more, and the
//! gateway splits what is left of it across the stages it calls.

use std::time::Duration;

use tonic::metadata::MetadataMap;

/// The `grpc-timeout` of a request, `None` when it has none.
pub fn timeout_from_metadata(metadata: &MetadataMap) -> Result<Option<Duration>, tonic::Status> {
    let Some(value) = metadata.get("grpc-timeout") else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .map_err(|_| tonic::Status::invalid_argument("grpc-timeout: not ASCII"))?;
    parse_timeout(text).map(Some).ok_or_else(|| {
        tonic::Status::invalid_argument(format!(
            "grpc-timeout: `{text}` is not 1-8 digits followed by one of H M S m u n"
        ))
    })
}

/// Parses a `grpc-timeout` value.
pub fn parse_timeout(text: &str) -> Option<Duration> {
    if text.len() < 2 || text.len() > 9 {
        return None;
    }
    let (digits, unit) = text.split_at(text.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let value: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(value.checked_mul(3600)?),
        "M" => Duration::from_secs(value.checked_mul(60)?),
        "S" => Duration::from_secs(value),
        "m" => Duration::from_millis(value),
        "u" => Duration::from_micros(value),
        "n" => Duration::from_nanos(value),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit_and_rejects_malformed_values() {
        assert_eq!(parse_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_timeout("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse_timeout("10S"), Some(Duration::from_secs(10)));
        assert_eq!(parse_timeout("1500m"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_timeout("7u"), Some(Duration::from_micros(7)));
        assert_eq!(
            parse_timeout("99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
        for bad in ["", "S", "10", "10s", "123456789S", "-1S", "1.5S"] {
            assert_eq!(parse_timeout(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn reads_the_header_tonic_clients_send() -> Result<(), tonic::Status> {
        let mut request = tonic::Request::new(());
        request.set_timeout(Duration::from_millis(2500));
        let timeout = timeout_from_metadata(request.metadata())?;
        assert_eq!(timeout, Some(Duration::from_millis(2500)));
        Ok(())
    }
}
