//! Client assertion checks (RFC 7523 `private_key_jwt`), in the order AAD runs them: the JWS
//! shape, `typ`, the certificate thumbprint, `alg`, the registered certificate (revoked, validity
//! window), the signature, `aud`, `iss`/`sub`, the time window and `jti` replay. Each check is a
//! function that answers AAD's `invalid_client` error (see the table in [`super`]).

use axum::http::{header, HeaderMap};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::{Map, Value};

use super::errors::AadstsError;
use crate::serve::lock;
use crate::state::{EmuState, RegisteredApp, RegisteredCert, TokenRequestRecord};
use crate::{b64url_decode, iso_timestamp, unix_now, AAD_AUTHORITY_HOST};

/// Clock skew allowed on client assertion times, seconds.
const ASSERTION_SKEW_SECS: i64 = 300;

/// How far ahead a client assertion's `exp` may be, seconds.
const ASSERTION_MAX_AHEAD_SECS: i64 = 86_400;

const CERT_DOCS: &str =
    "Review the documentation at https://learn.microsoft.com/entra/identity-platform/certificate-credentials .";

/// A parsed (not yet trusted) JWS.
pub(super) struct Jws {
    pub(super) header: Map<String, Value>,
    pub(super) claims: Map<String, Value>,
    pub(super) signing_input: String,
    pub(super) signature: String,
}

pub(super) fn parse_jws(token: &str) -> Option<Jws> {
    let mut parts = token.split('.');
    let (h, c, s) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let header: Map<String, Value> = serde_json::from_slice(&b64url_decode(h)?).ok()?;
    let claims: Map<String, Value> = serde_json::from_slice(&b64url_decode(c)?).ok()?;
    Some(Jws {
        header,
        claims,
        signing_input: format!("{h}.{c}"),
        signature: s.to_string(),
    })
}

fn numeric(value: Option<&Value>) -> Option<i64> {
    let v = value?;
    v.as_i64().or_else(|| v.as_f64().map(|f| f as i64))
}

/// "Start=MM/DD/YYYY HH:MM:SS, End=…" as AAD prints a found key's validity.
fn key_window(cert: &RegisteredCert) -> String {
    let us = |secs: i64| {
        let iso = iso_timestamp(secs);
        // iso: YYYY-MM-DDTHH:MM:SS.0000000Z
        format!(
            "{}/{}/{} {}",
            &iso[5..7],
            &iso[8..10],
            &iso[0..4],
            &iso[11..19]
        )
    };
    format!("Start={}, End={}", us(cert.not_before), us(cert.not_after))
}

fn key_docs(client_id: &str) -> String {
    format!(
        "Please visit the Azure Portal, Graph Explorer or directly use MS Graph to see configured \
         keys for app Id '{client_id}'. Review the documentation at \
         https://docs.microsoft.com/en-us/graph/deployments to determine the corresponding \
         service endpoint and \
         https://docs.microsoft.com/en-us/graph/api/application-get?view=graph-rest-1.0&tabs=http \
         to build a query request URL, such as \
         'https://graph.microsoft.com/beta/applications/{client_id}'"
    )
}

/// Checks a client assertion for `app`, presented to `tenant`'s token endpoint, and remembers its
/// `jti`. Records the thumbprint the assertion names in `record` as soon as it is known.
pub(super) fn check_assertion(
    state: &EmuState,
    app: &RegisteredApp,
    assertion: &str,
    tenant: &str,
    headers: &HeaderMap,
    record: &mut TokenRequestRecord,
) -> Result<(), AadstsError> {
    let jws = parse_jws(assertion)
        .ok_or_else(|| AadstsError::invalid_client(50_027, "JWT token is invalid or malformed."))?;
    check_type(&jws)?;
    let thumbprint = Thumbprint::of(&jws)?;
    record.assertion_thumbprint = Some(thumbprint.presented_hex.clone());
    let alg = algorithm(&jws)?;
    let cert = find_certificate(app, &thumbprint)?;
    record.assertion_thumbprint = Some(cert.thumbprint_hex.clone());
    let now = unix_now();
    check_certificate(&cert, now)?;
    check_signature(&jws, app, &cert, alg)?;
    check_audience(state, &jws, tenant, headers)?;
    check_issuer(&jws, app)?;
    check_time_window(&jws, now)?;
    check_replay(state, &jws, app, now)
}

/// `typ`, when present, is `JWT` (any case) or the JWT URI.
fn check_type(jws: &Jws) -> Result<(), AadstsError> {
    if let Some(typ) = jws.header.get("typ") {
        let ok = typ.as_str().is_some_and(|t| {
            t.eq_ignore_ascii_case("JWT") || t == "http://openid.net/specs/jwt/1.0"
        });
        if !ok {
            return Err(AadstsError::invalid_client(
                5_002_727,
                "Invalid JWT header type specified, must be 'JWT' or 'http://openid.net/specs/jwt/1.0'.",
            ));
        }
    }
    Ok(())
}

/// The certificate an assertion header names: by `x5c` (the leaf of the chain, as subject
/// name + issuer authentication sends it; standard base64 DER, line breaks allowed), `x5t#S256`
/// or `x5t`.
///
/// Thumbprints are base64url; Entra ID accepts them with or without `=` padding (MSAL for
/// Python pads its `x5t`), so both forms are read here, as is the standard base64 alphabet.
struct Thumbprint {
    /// The `x5c` chain, DER, leaf first; empty without `x5c`.
    x5c: Vec<Vec<u8>>,
    /// SHA-1 of the `x5c` leaf, when the header carries a readable `x5c`.
    x5c_sha1: Option<Vec<u8>>,
    x5t: Option<Vec<u8>>,
    x5t_s256: Option<Vec<u8>>,
    /// Uppercase hex of the named thumbprint (`x5c` leaf, else `x5t`, else `x5t#S256`), as AAD
    /// prints it; the raw header value when it is not base64.
    presented_hex: String,
}

/// Decodes base64url or base64, with or without `=` padding.
fn decode_thumbprint(text: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    let url_safe: String = text
        .trim()
        .chars()
        .map(|c| match c {
            '+' => '-',
            '/' => '_',
            other => other,
        })
        .collect();
    engine.decode(url_safe.as_bytes()).ok()
}

/// Decodes one `x5c` entry: standard base64 DER; MSAL for Python sends the PEM body with its
/// line breaks, which are skipped.
fn decode_certificate(entry: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    let compact: String = entry.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(compact.as_bytes())
        .ok()
}

pub(super) fn hex_upper(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

impl Thumbprint {
    /// Reads `x5c`, `x5t` and `x5t#S256`; at least one must be present.
    fn of(jws: &Jws) -> Result<Self, AadstsError> {
        let text = |name: &str| jws.header.get(name).and_then(Value::as_str);
        let (x5t_text, s256_text) = (text("x5t"), text("x5t#S256"));
        let x5c: Vec<Vec<u8>> = match jws.header.get("x5c") {
            None => Vec::new(),
            Some(Value::Array(chain)) if !chain.is_empty() => chain
                .iter()
                .map(|entry| entry.as_str().and_then(decode_certificate))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(bad_x5c)?,
            Some(_) => return Err(bad_x5c()),
        };
        let x5c_leaf = x5c.first();
        if x5c_leaf.is_none() && x5t_text.is_none() && s256_text.is_none() {
            return Err(AadstsError::invalid_client(
                50_027,
                "Invalid JWT token. No certificate thumbprint specified in token header.",
            ));
        }
        let x5c_sha1 = x5c_leaf.map(|der| {
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, der)
                .as_ref()
                .to_vec()
        });
        let x5t = x5t_text.and_then(decode_thumbprint);
        let x5t_s256 = s256_text.and_then(decode_thumbprint);
        let presented_hex = x5c_sha1
            .as_deref()
            .or(x5t.as_deref())
            .or(x5t_s256.as_deref())
            .map(hex_upper)
            .unwrap_or_else(|| x5t_text.or(s256_text).unwrap_or_default().to_string());
        Ok(Thumbprint {
            x5c,
            x5c_sha1,
            x5t,
            x5t_s256,
            presented_hex,
        })
    }
}

fn bad_x5c() -> AadstsError {
    AadstsError::invalid_client(
        50_027,
        "Invalid JWT token. The 'x5c' header must be an array of base64 DER certificates.",
    )
}

/// `alg` is one AAD accepts for client assertions.
pub(super) fn algorithm(jws: &Jws) -> Result<Algorithm, AadstsError> {
    match jws.header.get("alg").and_then(Value::as_str) {
        Some("RS256") => Ok(Algorithm::RS256),
        Some("RS384") => Ok(Algorithm::RS384),
        Some("RS512") => Ok(Algorithm::RS512),
        Some("PS256") => Ok(Algorithm::PS256),
        other => Err(AadstsError::invalid_client(
            5_002_738,
            format!(
                "Invalid JWT token. '{}' is not a supported signature algorithm. Supported \
                 signing algorithms are: 'RS256, RS384, RS512, PS256'",
                other.unwrap_or("")
            ),
        )),
    }
}

/// The app's certificate the assertion names: the `x5c` leaf first (a registered certificate,
/// else one the app trusts by subject name and issuer, see [`super::sni`]), then `x5t#S256`
/// (AAD's preferred thumbprint), then `x5t`.
fn find_certificate(
    app: &RegisteredApp,
    thumbprint: &Thumbprint,
) -> Result<RegisteredCert, AadstsError> {
    let by_sha1 = |sha1: &[u8]| {
        app.certs
            .iter()
            .find(|c| c.thumbprint_hex == hex_upper(sha1))
    };
    let found = match &thumbprint.x5c_sha1 {
        Some(leaf) if by_sha1(leaf).is_none() && !app.trusted_subjects.is_empty() => {
            return super::sni::trusted_leaf(app, &thumbprint.x5c);
        }
        Some(leaf) => by_sha1(leaf),
        None => thumbprint
            .x5t_s256
            .as_deref()
            .and_then(|t| {
                let t = crate::b64url(t);
                app.certs.iter().find(|c| c.x5t_s256 == t)
            })
            .or_else(|| thumbprint.x5t.as_deref().and_then(by_sha1)),
    };
    found.cloned().ok_or_else(|| {
        AadstsError::invalid_client(
            700_027,
            format!(
                "Client assertion contains an invalid signature. [Reason - The key was not \
                 found., Thumbprint of key used by client: '{}', {}]",
                thumbprint.presented_hex,
                key_docs(&app.client_id)
            ),
        )
    })
}

/// The certificate is not revoked and `now` is within its validity window.
fn check_certificate(cert: &RegisteredCert, now: i64) -> Result<(), AadstsError> {
    if cert.revoked {
        return Err(AadstsError::invalid_client(
            7_000_214,
            format!(
                "Certificate has been revoked. Thumbprint of key used by client: '{}'.",
                cert.thumbprint_hex
            ),
        ));
    }
    if now < cert.not_before || now > cert.not_after {
        return Err(AadstsError::invalid_client(
            1_000_502,
            format!(
                "The certificate used to sign the client assertion is outside its validity \
                 window. [Thumbprint of key used by client: '{}', Found key '{}']",
                cert.thumbprint_hex,
                key_window(cert)
            ),
        ));
    }
    Ok(())
}

/// The signature verifies with the certificate's key.
fn check_signature(
    jws: &Jws,
    app: &RegisteredApp,
    cert: &RegisteredCert,
    alg: Algorithm,
) -> Result<(), AadstsError> {
    let key = DecodingKey::from_rsa_raw_components(&cert.n, &cert.e);
    let verified = !jws.signature.is_empty()
        && jsonwebtoken::crypto::verify(&jws.signature, jws.signing_input.as_bytes(), &key, alg)
            .unwrap_or(false);
    if !verified {
        return Err(AadstsError::invalid_client(
            700_027,
            format!(
                "Client assertion contains an invalid signature. [Reason - Key was found, but use \
                 of the key to verify the signature failed., Thumbprint of key used by client: \
                 '{}', Found key '{}', {}]",
                cert.thumbprint_hex,
                key_window(cert),
                key_docs(&app.client_id)
            ),
        ));
    }
    Ok(())
}

/// `aud`: this tenant's token endpoint, as AAD names it or as the emulator serves it.
fn check_audience(
    state: &EmuState,
    jws: &Jws,
    tenant: &str,
    headers: &HeaderMap,
) -> Result<(), AadstsError> {
    let mut hosts = vec![AAD_AUTHORITY_HOST.to_string(), state.base_url.clone()];
    if let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) {
        hosts.push(format!("http://{host}"));
        hosts.push(format!("https://{host}"));
    }
    let accepted: Vec<String> = hosts
        .iter()
        .flat_map(|h| {
            [
                format!("{h}/{tenant}/oauth2/v2.0/token"),
                format!("{h}/{tenant}/oauth2/token"),
            ]
        })
        .collect();
    let aud_ok = |aud: &str| accepted.iter().any(|a| a.eq_ignore_ascii_case(aud));
    let aud_matches = match jws.claims.get("aud") {
        Some(Value::String(aud)) => aud_ok(aud),
        Some(Value::Array(auds)) => auds.iter().filter_map(Value::as_str).any(aud_ok),
        _ => false,
    };
    if !aud_matches {
        return Err(AadstsError::invalid_client(
            700_023,
            format!("Client assertion audience claim does not match Realm issuer. {CERT_DOCS}"),
        ));
    }
    Ok(())
}

/// `iss` = `sub` = the app's client id.
fn check_issuer(jws: &Jws, app: &RegisteredApp) -> Result<(), AadstsError> {
    let iss = jws.claims.get("iss").and_then(Value::as_str);
    let sub = jws.claims.get("sub").and_then(Value::as_str);
    if iss != sub {
        return Err(AadstsError::invalid_client(
            50_048,
            "Subject mismatches Issuer claim in the client assertion.",
        ));
    }
    if !iss.is_some_and(|iss| iss.eq_ignore_ascii_case(&app.client_id)) {
        return Err(AadstsError::invalid_client(
            700_021,
            format!("Client assertion application identifier doesn't match 'client_id' parameter. {CERT_DOCS}"),
        ));
    }
    Ok(())
}

/// `exp` not past and at most a day ahead, `nbf` not in the future (both with skew).
pub(super) fn check_time_window(jws: &Jws, now: i64) -> Result<(), AadstsError> {
    let exp = numeric(jws.claims.get("exp"));
    let nbf = numeric(jws.claims.get("nbf"));
    let in_range = exp.is_some_and(|exp| {
        exp + ASSERTION_SKEW_SECS >= now
            && exp <= now + ASSERTION_MAX_AHEAD_SECS + ASSERTION_SKEW_SECS
    }) && nbf.is_none_or(|nbf| nbf <= now + ASSERTION_SKEW_SECS);
    if !in_range {
        return Err(AadstsError::invalid_client(
            700_024,
            format!(
                "Client assertion is not within its valid time range. Current time: {}, \
                 assertion valid from {}, expiry time of assertion {}. {CERT_DOCS}",
                iso_timestamp(now),
                iso_timestamp(nbf.unwrap_or(0)),
                iso_timestamp(exp.unwrap_or(0))
            ),
        ));
    }
    Ok(())
}

/// Replay: AAD does not document a jti check or its code for client assertions; the emulator
/// rejects a reused `jti` (RFC 7523 §3 allows it) with AADSTS50013 "InvalidAssertion", the
/// code AAD uses for assertions that are otherwise well formed but not acceptable. A `jti` is
/// remembered until its assertion's `exp` (plus skew) has passed.
fn check_replay(
    state: &EmuState,
    jws: &Jws,
    app: &RegisteredApp,
    now: i64,
) -> Result<(), AadstsError> {
    if let Some(jti) = jws.claims.get("jti").and_then(Value::as_str) {
        let exp = numeric(jws.claims.get("exp"));
        let key = format!("{}|{jti}", app.client_id.to_ascii_lowercase());
        let mut used = lock(&state.used_jtis);
        used.retain(|_, exp| *exp + ASSERTION_SKEW_SECS >= now);
        if used.contains_key(&key) {
            return Err(AadstsError::invalid_client(
                50_013,
                format!(
                    "Assertion is invalid: the client assertion with jti '{jti}' has already been \
                     used. Send a new assertion with a fresh 'jti' for every request."
                ),
            ));
        }
        used.insert(key, exp.unwrap_or(now));
    }
    Ok(())
}
