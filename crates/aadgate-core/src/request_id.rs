//! The request id every response and log line carries: the gateway and the tower layer apply
//! the same rule.
//!
//! A caller's `x-request-id` is kept when it is 1–128 characters of `[A-Za-z0-9._-]`. Otherwise
//! the gateway makes one: a UUID (RFC 9562 version 8, the custom layout) whose first 64 bits
//! are random per process and whose last 62 bits count the ids the process has made. Ids are
//! unique across replicas and restarts without a random draw per request, and are formatted
//! without allocation beyond the header value itself.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use http::HeaderValue;

/// A request id, valid as a header value and as a log field.
#[derive(Debug, Clone)]
pub struct RequestId(HeaderValue);

impl RequestId {
    /// The id as text (always ASCII).
    pub fn as_str(&self) -> &str {
        // Checked or made of `[A-Za-z0-9._-]` only, so this never falls back.
        self.0.to_str().unwrap_or("-")
    }

    /// The id as a header value (cheap to clone: it shares its bytes).
    pub fn header_value(&self) -> &HeaderValue {
        &self.0
    }
}

impl Default for RequestId {
    /// `-`: the id of a request not yet given one.
    fn default() -> Self {
        RequestId(HeaderValue::from_static("-"))
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The caller's id when it is valid, else a new one. Runs once per request, before any check.
///
/// The value is marked sensitive, which HTTP/2 header compression (HPACK) reads as "never
/// index": an id differs on every request, so entering it in a connection's table would only
/// push out the entries that do repeat (HTTP/1.1 ignores the mark).
pub fn request_id(incoming: Option<&HeaderValue>) -> RequestId {
    let mut value = match incoming {
        Some(v) if is_valid(v.as_bytes()) => v.clone(),
        _ => new_id(),
    };
    value.set_sensitive(true);
    RequestId(value)
}

/// 1–128 characters of `[A-Za-z0-9._-]`.
fn is_valid(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The process's random half of every id it makes.
fn process_half() -> u64 {
    static HALF: OnceLock<u64> = OnceLock::new();
    *HALF.get_or_init(|| {
        let b = uuid::Uuid::new_v4();
        let (hi, _) = b.as_u64_pair();
        hi
    })
}

/// A new id: `xxxxxxxx-xxxx-8xxx-yxxx-xxxxxxxxxxxx`.
fn new_id() -> HeaderValue {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // Version 8 in bits 48..52, variant 0b10 in bits 64..66.
    let hi = (process_half() & !0xf000) | 0x8000;
    let lo = (n & 0x3fff_ffff_ffff_ffff) | 0x8000_0000_0000_0000;
    let bytes = (u128::from(hi) << 64 | u128::from(lo)).to_be_bytes();
    let mut text = [0u8; 36];
    let hex = b"0123456789abcdef";
    let mut at = 0;
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            text[at] = b'-';
            at += 1;
        }
        text[at] = hex[usize::from(b >> 4)];
        text[at + 1] = hex[usize::from(b & 15)];
        at += 2;
    }
    // Hex digits and dashes are always a valid header value.
    HeaderValue::from_bytes(&text).unwrap_or(HeaderValue::from_static("-"))
}

#[cfg(test)]
mod tests {
    use super::request_id;
    use http::HeaderValue;

    #[test]
    fn a_valid_caller_id_is_kept_and_anything_else_replaced() {
        let keep = "req-1.A_b";
        assert_eq!(
            request_id(Some(&HeaderValue::from_static(keep))).as_str(),
            keep
        );
        let long = "a".repeat(129);
        for bad in ["", "with space", "semi;colon", long.as_str()] {
            let got = request_id(Some(&HeaderValue::from_str(bad).expect("header value")));
            assert_ne!(got.as_str(), bad, "{bad:?}");
            assert!(
                uuid::Uuid::parse_str(got.as_str()).is_ok(),
                "{bad:?} -> {got}"
            );
        }
        assert!(uuid::Uuid::parse_str(request_id(None).as_str()).is_ok());
    }

    #[test]
    fn ids_are_never_indexed_by_header_compression() {
        assert!(request_id(None).header_value().is_sensitive());
        let caller = HeaderValue::from_static("req-1");
        assert!(request_id(Some(&caller)).header_value().is_sensitive());
    }

    #[test]
    fn made_ids_are_version_8_uuids_that_never_repeat() {
        let ids: Vec<String> = (0..1000)
            .map(|_| request_id(None).as_str().to_string())
            .collect();
        let distinct: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
        for id in &ids {
            let u = uuid::Uuid::parse_str(id).expect("a UUID");
            assert_eq!(u.get_version_num(), 8, "{id}");
            assert_eq!(u.get_variant(), uuid::Variant::RFC4122, "{id}");
            assert_eq!(&id[..8], &ids[0][..8], "one process, one random half");
        }
    }
}
