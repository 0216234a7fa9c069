//! The request id every response and log line carries: the gateway and the tower layer apply
//! the same rule.

use http::HeaderValue;

/// A request id from the caller's `x-request-id` when it is 1–128 characters of
/// `[A-Za-z0-9._-]`, else a new UUID. Runs once per request, before any check.
pub fn request_id(incoming: Option<&HeaderValue>) -> String {
    incoming
        .and_then(|v| v.to_str().ok())
        .filter(|s| {
            !s.is_empty()
                && s.len() <= 128
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        })
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), String::from)
}

#[cfg(test)]
mod tests {
    use super::request_id;
    use http::HeaderValue;

    #[test]
    fn a_valid_caller_id_is_kept_and_anything_else_replaced() {
        let keep = "req-1.A_b";
        assert_eq!(request_id(Some(&HeaderValue::from_static(keep))), keep);
        let long = "a".repeat(129);
        for bad in ["", "with space", "semi;colon", long.as_str()] {
            let got = request_id(Some(&HeaderValue::from_str(bad).expect("header value")));
            assert_ne!(got, bad, "{bad:?}");
            assert!(uuid::Uuid::parse_str(&got).is_ok(), "{bad:?} -> {got}");
        }
        assert!(uuid::Uuid::parse_str(&request_id(None)).is_ok());
    }
}
