//! Stage 2 and 3 of the pipeline: take the bearer token from the request, then decode the JWS
//! compact form (header and claims) without trusting anything in it yet.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::HeaderValue;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::reason::{Reason, Rejection};

/// Extracts the bearer token from the `Authorization` header values of a request.
///
/// Exactly one `Authorization` header is allowed; the scheme is case-insensitive; the token must
/// be non-empty, at most `max_len` bytes, and consist of base64url characters and dots only.
/// No header, or a header with another scheme, is `missing_token`.
pub fn extract_bearer<'a>(
    mut values: impl Iterator<Item = &'a HeaderValue>,
    max_len: usize,
) -> Result<&'a str, Rejection> {
    let Some(value) = values.next() else {
        return Err(Rejection::new(
            Reason::MissingToken,
            "this route needs an Azure AD access token: send `Authorization: Bearer <token>`",
        ));
    };
    if values.next().is_some() {
        return Err(Rejection::new(
            Reason::MalformedToken,
            "the request has more than one Authorization header; send exactly one",
        ));
    }
    let bytes = value.as_bytes();
    // Anything after "Bearer" that is not an ASCII space (a tab, a non-breaking space) ends up
    // in the token and makes it malformed, rather than passing for another scheme.
    let scheme_end = 6.min(bytes.len());
    if !bytes[..scheme_end].eq_ignore_ascii_case(b"bearer") {
        return Err(Rejection::new(
            Reason::MissingToken,
            "the Authorization header does not carry a bearer token; send `Authorization: Bearer <token>`",
        ));
    }
    let rest = &bytes[scheme_end..];
    let start = rest.iter().position(|b| *b != b' ').unwrap_or(rest.len());
    let mut token = &rest[start..];
    while let [head @ .., b' ' | b'\t'] = token {
        token = head;
    }
    if token.is_empty() {
        return Err(Rejection::new(
            Reason::MalformedToken,
            "the Authorization header has the Bearer scheme but no token after it",
        ));
    }
    if token.len() > max_len {
        return Err(Rejection::new(
            Reason::MalformedToken,
            format!(
                "the token is {} bytes long; this gateway accepts at most {max_len}",
                token.len()
            ),
        ));
    }
    if !is_token_text(token) {
        return Err(Rejection::new(
            Reason::MalformedToken,
            "the token contains characters outside base64url and '.'; it is not a JWS compact token",
        ));
    }
    // All bytes are ASCII, checked just above.
    std::str::from_utf8(token)
        .map_err(|_| Rejection::new(Reason::MalformedToken, "the token is not ASCII"))
}

/// Bytes allowed in a JWS compact token: the base64url alphabet and '.'.
const TOKEN_BYTE: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric() || c == b'-' || c == b'_' || c == b'.';
        b += 1;
    }
    t
};

/// True when every byte is base64url or '.'. A table lookup folded without early exit, so the
/// compiler keeps it branch-free over the ~1–2 KB of a token (it runs on every request).
fn is_token_text(token: &[u8]) -> bool {
    token
        .iter()
        .fold(true, |ok, &b| ok & TOKEN_BYTE[usize::from(b)])
}

/// The JOSE header fields the gateway uses. `jku`, `x5u`, `jwk` and `x5c` are never read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoseHeader {
    /// `alg`, required and a string (else `malformed_token`); must be in `identity.algorithms`.
    pub alg: String,
    /// `kid`: the key to look up; `None` when the header has none.
    pub kid: Option<String>,
    /// `x5t`: the certificate thumbprint, looked up only when there is no `kid`; `None` when
    /// absent.
    pub x5t: Option<String>,
    /// Microsoft Graph tokens carry a `nonce` in the header and can only be validated by Graph.
    pub has_nonce: bool,
}

/// A structurally valid token, not yet verified.
#[derive(Debug)]
pub struct ParsedToken<'a> {
    /// The decoded JOSE header.
    pub header: JoseHeader,
    /// The decoded payload; no key appears twice and `exp`, `nbf`, `iat` are numbers when present.
    pub claims: Map<String, Value>,
    /// The claims as the JSON text the token carried.
    pub claims_json: String,
    /// `header.payload`, the bytes the signature covers.
    pub signing_input: &'a str,
    /// The base64url signature segment (possibly empty).
    pub signature: &'a str,
}

fn malformed(message: impl Into<String>) -> Rejection {
    Rejection::new(Reason::MalformedToken, message)
}

/// Decodes a token already checked by [`extract_bearer`] into header and claims.
///
/// Refuses: a number of segments other than three, bad base64url or JSON, a non-object,
/// duplicate keys, a `crit` header, a missing or non-string `alg`, non-string `kid`/`x5t`,
/// and non-numeric `exp`/`nbf`/`iat`.
pub fn parse(token: &str) -> Result<ParsedToken<'_>, Rejection> {
    let mut parts = token.splitn(4, '.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed(
            "the token is not a JWS compact token (three base64url segments separated by '.'); an encrypted (JWE) or opaque token cannot be validated here",
        ));
    };
    let header = decode_object(h, "header")?;
    if header.contains_key("crit") {
        return Err(malformed(
            "the token header has a `crit` member; no critical extensions are supported",
        ));
    }
    let alg = match header.get("alg") {
        Some(Value::String(a)) => a.clone(),
        Some(_) => return Err(malformed("the token header's `alg` is not a string")),
        None => return Err(malformed("the token header has no `alg`")),
    };
    let string_member = |name: &str| -> Result<Option<String>, Rejection> {
        match header.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(malformed(format!(
                "the token header's `{name}` is not a string"
            ))),
        }
    };
    let kid = string_member("kid")?;
    let x5t = string_member("x5t")?;
    let has_nonce = header.contains_key("nonce");
    let (claims, claims_json) = decode_object_text(p, "payload")?;
    // An empty signature is `bad_signature` (checked with the key); anything else must be
    // base64url itself, or the token is malformed rather than badly signed.
    if !is_canonical_base64url(s) {
        return Err(malformed("the token signature is not valid base64url"));
    }
    for name in ["exp", "nbf", "iat"] {
        if let Some(v) = claims.get(name) {
            if !v.is_number() {
                return Err(malformed(format!(
                    "the token's `{name}` claim is not a number"
                )));
            }
        }
    }
    Ok(ParsedToken {
        header: JoseHeader {
            alg,
            kid,
            x5t,
            has_nonce,
        },
        claims,
        claims_json,
        signing_input: &token[..h.len() + 1 + p.len()],
        signature: s,
    })
}

/// True when `s` is unpadded base64url that decodes (as the strict decoder of the header and
/// payload does): only base64url characters, no length of the form 4k+1, and zero bits in the
/// last character's unused positions. Checked without decoding (the signature check decodes it
/// once, later).
fn is_canonical_base64url(s: &str) -> bool {
    fn value(b: u8) -> Option<u8> {
        match b {
            b'A'..=b'Z' => Some(b - b'A'),
            b'a'..=b'z' => Some(b - b'a' + 26),
            b'0'..=b'9' => Some(b - b'0' + 52),
            b'-' => Some(62),
            b'_' => Some(63),
            _ => None,
        }
    }
    let bytes = s.as_bytes();
    if !bytes.iter().all(|b| value(*b).is_some()) {
        return false;
    }
    let unused_mask = match bytes.len() % 4 {
        0 => return true,
        1 => return false,
        2 => 0b1111,
        _ => 0b11,
    };
    bytes
        .last()
        .and_then(|b| value(*b))
        .is_some_and(|v| v & unused_mask == 0)
}

fn decode_object(segment: &str, what: &str) -> Result<Map<String, Value>, Rejection> {
    decode_object_text(segment, what).map(|(map, _)| map)
}

/// Decodes a segment into a JSON object, also returning its text (kept by the token cache).
fn decode_object_text(
    segment: &str,
    what: &str,
) -> Result<(Map<String, Value>, String), Rejection> {
    let bytes = URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| malformed(format!("the token {what} is not valid base64url")))?;
    let mut de = serde_json::Deserializer::from_slice(&bytes);
    let map = UniqueKeys::deserialize(&mut de)
        .and_then(|m| de.end().map(|()| m))
        .map_err(|e| {
            if e.to_string().starts_with("duplicate key") {
                malformed(format!("the token {what} has a duplicate JSON key"))
            } else {
                malformed(format!("the token {what} is not a JSON object"))
            }
        })?;
    // serde_json only accepts UTF-8, so this conversion cannot fail after a successful parse.
    let text = String::from_utf8(bytes)
        .map_err(|_| malformed(format!("the token {what} is not UTF-8")))?;
    Ok((map.0, text))
}

/// A JSON object that refuses duplicate keys at its top level (serde_json keeps the last one
/// silently, which would let a token say two things at once).
struct UniqueKeys(Map<String, Value>);

impl<'de> Deserialize<'de> for UniqueKeys {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = UniqueKeys;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<UniqueKeys, A::Error> {
                let mut map = Map::new();
                while let Some(key) = access.next_key::<String>()? {
                    let value: Value = access.next_value()?;
                    if map.insert(key, value).is_some() {
                        return Err(serde::de::Error::custom("duplicate key"));
                    }
                }
                Ok(UniqueKeys(map))
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        URL_SAFE_NO_PAD.encode(s)
    }

    fn hv(s: &str) -> HeaderValue {
        HeaderValue::from_str(s).expect("header value")
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_surrounding_spaces_are_ignored() {
        for v in [
            "Bearer abc.def.ghi",
            "bearer abc.def.ghi",
            "BEARER   abc.def.ghi  ",
        ] {
            let h = hv(v);
            assert_eq!(
                extract_bearer(std::iter::once(&h), 100),
                Ok("abc.def.ghi"),
                "{v}"
            );
        }
    }

    #[test]
    fn bearer_extraction_refuses_bad_headers_with_the_right_reason() {
        let table: [(&[&str], Reason); 7] = [
            (&[], Reason::MissingToken),
            (&["Basic dXNlcjpwYXNz"], Reason::MissingToken),
            (&["Bearer"], Reason::MalformedToken),
            (&["Bearer    "], Reason::MalformedToken),
            (&["Bearer a.b.c", "Bearer a.b.c"], Reason::MalformedToken),
            (&["Bearer a.b.c+"], Reason::MalformedToken),
            (
                &["Bearer aaaaaaaaaa.bbbbbbbbbbbbb.ccccccccc"],
                Reason::MalformedToken,
            ),
        ];
        for (values, want) in table {
            let hs: Vec<HeaderValue> = values.iter().map(|v| hv(v)).collect();
            let got = extract_bearer(hs.iter(), 20).map_err(|r| r.reason);
            assert_eq!(got, Err(want), "{values:?}");
        }
    }

    #[test]
    fn non_ascii_space_after_bearer_is_malformed() {
        let h = HeaderValue::from_bytes("Bearer\u{a0}a.b.c".as_bytes()).expect("bytes");
        assert_eq!(
            extract_bearer(std::iter::once(&h), 100).map_err(|r| r.reason),
            Err(Reason::MalformedToken)
        );
        let h = HeaderValue::from_bytes("Bearer \u{a0}a.b.c".as_bytes()).expect("bytes");
        assert_eq!(
            extract_bearer(std::iter::once(&h), 100).map_err(|r| r.reason),
            Err(Reason::MalformedToken)
        );
    }

    #[test]
    fn a_well_formed_token_parses_into_header_and_claims() {
        let t = format!(
            "{}.{}.c2ln",
            b64(r#"{"alg":"RS256","kid":"k1"}"#),
            b64(r#"{"exp":1,"tid":"t"}"#)
        );
        let p = parse(&t).expect("parses");
        assert_eq!(p.header.alg, "RS256");
        assert_eq!(p.header.kid.as_deref(), Some("k1"));
        assert_eq!(p.claims["tid"], "t");
        assert_eq!(p.signature, "c2ln");
        assert!(t.starts_with(p.signing_input) && p.signing_input.matches('.').count() == 1);
    }

    #[test]
    fn structural_defects_are_malformed() {
        let ok_h = b64(r#"{"alg":"RS256","kid":"k"}"#);
        let ok_p = b64(r#"{"exp":1}"#);
        let table = [
            ("two segments", format!("{ok_h}.{ok_p}")),
            ("four segments", format!("{ok_h}.{ok_p}.c.d")),
            ("bad base64", format!("{ok_h}.!!!.c2ln")),
            ("header not json", format!("{}.{ok_p}.c2ln", b64("nope"))),
            ("header an array", format!("{}.{ok_p}.c2ln", b64("[1]"))),
            (
                "duplicate header key",
                format!("{}.{ok_p}.c2ln", b64(r#"{"alg":"RS256","alg":"none"}"#)),
            ),
            (
                "duplicate claim",
                format!("{ok_h}.{}.c2ln", b64(r#"{"aud":"a","aud":"b"}"#)),
            ),
            (
                "crit header",
                format!("{}.{ok_p}.c2ln", b64(r#"{"alg":"RS256","crit":["x"]}"#)),
            ),
            (
                "alg missing",
                format!("{}.{ok_p}.c2ln", b64(r#"{"kid":"k"}"#)),
            ),
            (
                "alg not a string",
                format!("{}.{ok_p}.c2ln", b64(r#"{"alg":1}"#)),
            ),
            (
                "kid not a string",
                format!("{}.{ok_p}.c2ln", b64(r#"{"alg":"RS256","kid":7}"#)),
            ),
            (
                "exp a string",
                format!("{ok_h}.{}.c2ln", b64(r#"{"exp":"1"}"#)),
            ),
            (
                "nbf a string",
                format!("{ok_h}.{}.c2ln", b64(r#"{"nbf":"1"}"#)),
            ),
            (
                "trailing bytes",
                format!("{ok_h}.{}.c2ln", b64(r#"{"exp":1} x"#)),
            ),
            // Found by tests/fuzz.rs: a signature segment that is not base64url.
            ("signature of one character", format!("{ok_h}.{ok_p}.0")),
            ("signature with stray bits", format!("{ok_h}.{ok_p}.c2l")),
            ("signature with stray bits", format!("{ok_h}.{ok_p}.cB")),
        ];
        for (name, t) in table {
            assert_eq!(
                parse(&t).map(|_| ()).map_err(|r| r.reason),
                Err(Reason::MalformedToken),
                "{name}"
            );
        }
    }

    #[test]
    fn an_empty_signature_parses_and_is_left_to_the_signature_check() {
        let t = format!("{}.{}.", b64(r#"{"alg":"RS256"}"#), b64("{}"));
        assert_eq!(parse(&t).expect("parses").signature, "");
    }

    #[test]
    fn nonce_header_is_noticed() {
        let t = format!(
            "{}.{}.c2ln",
            b64(r#"{"alg":"RS256","nonce":"n"}"#),
            b64("{}")
        );
        assert!(parse(&t).expect("parses").header.has_nonce);
    }
}
