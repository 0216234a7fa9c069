//! The request target and the normalized path (SPEC section 8, "Routes and headers"): which
//! request targets are served, the path routes are matched on, and the path the upstream gets
//! after `strip_prefix`.
//!
//! Pure functions of bytes and two settings; no configuration types, so the configuration
//! compiler folds route prefixes with the same code that folds request paths.

use std::borrow::Cow;

use http::Method;

use crate::reason::{Reason, Rejection};

/// `[server] path_case`: whether route prefixes and request paths compare with ASCII case
/// folded (`Insensitive`, the default, as ASP.NET Core and IIS route) or exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PathCase {
    /// ASCII letters fold to lower case before matching (default).
    #[default]
    Insensitive,
    /// Paths match byte for byte (after the other normalization steps).
    Sensitive,
}

/// The form of a request target that is served (RFC 9112 section 3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetForm {
    /// `/path?query`: forwarded as received unless the route rewrites the path.
    Origin,
    /// `http(s)://authority/path?query`: always forwarded in origin form.
    Absolute,
    /// `*` with `OPTIONS`: routed as `/`, forwarded as `*`.
    Asterisk,
}

/// A request target that passed [`parse_target`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target<'a> {
    /// Origin, absolute or asterisk form.
    pub form: TargetForm,
    /// The path as received (for absolute form, the part after the authority, `/` when
    /// empty; for asterisk form, `*`).
    pub path: &'a str,
    /// The query as received, without the `?`.
    pub query: Option<&'a str>,
}

fn bad(message: &str) -> Rejection {
    Rejection::new(Reason::BadRequest, message)
}

/// Classifies a raw request target (the bytes of the request line, as pingora's
/// `RequestHeader::raw_path` keeps them).
///
/// Longer than `max_uri_bytes` → `414 uri_too_long` (checked first). Served: origin form
/// (`/…`), absolute form with an `http`/`https` scheme (any case) and a non-empty authority
/// without userinfo, and `*` with `OPTIONS`. Anything else (`x:/a`, `a/b`, `?q`, `*` with
/// another method, a non-UTF-8 target) → `400 bad_request`. A fragment (`#…`) is ignored.
pub fn parse_target<'a>(
    method: &Method,
    raw: &'a [u8],
    max_uri_bytes: usize,
) -> Result<Target<'a>, Rejection> {
    if raw.len() > max_uri_bytes {
        return Err(Rejection::new(
            Reason::UriTooLong,
            format!(
                "the request target is {} bytes long; this gateway accepts at most {max_uri_bytes} (server.max_uri_bytes)",
                raw.len()
            ),
        ));
    }
    let Ok(raw) = std::str::from_utf8(raw) else {
        return Err(bad("the request target is not valid UTF-8"));
    };
    let raw = raw.split_once('#').map_or(raw, |(before, _)| before);
    let split = |pq: &'a str| match pq.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (pq, None),
    };
    if raw.starts_with('/') {
        let (path, query) = split(raw);
        return Ok(Target {
            form: TargetForm::Origin,
            path,
            query,
        });
    }
    if raw == "*" {
        if *method == Method::OPTIONS {
            return Ok(Target {
                form: TargetForm::Asterisk,
                path: "*",
                query: None,
            });
        }
        return Err(bad("the request target '*' is only allowed with OPTIONS"));
    }
    let Some((scheme, rest)) = raw.split_once("://") else {
        return Err(bad(
            "the request target must be a path starting with '/' (origin form) or an http(s) URL (absolute form)",
        ));
    };
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return Err(bad(
            "an absolute request target must use the http or https scheme",
        ));
    }
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, pq) = rest.split_at(end);
    if authority.is_empty() || authority.contains(['@', '\\']) {
        return Err(bad(
            "the authority of the absolute request target is empty or ambiguous",
        ));
    }
    let (path, query) = split(pq);
    Ok(Target {
        form: TargetForm::Absolute,
        path: if path.is_empty() { "/" } else { path },
        query,
    })
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')
}

/// True when the raw segment is its own normal form: no `%`, `;`, `\` or NUL, and no upper
/// case letter when folding. One scan, no allocation: the common case.
fn segment_is_normal(seg: &[u8], fold: bool) -> bool {
    seg.iter().all(|&b| match b {
        b'%' | b';' | b'\\' | 0 => false,
        b'A'..=b'Z' => !fold,
        _ => true,
    })
}

/// Appends the normal form of one raw segment (no `/` in it) to `out`: unreserved characters
/// percent-decoded, other escapes kept with upper-case hex (lower-case when folding),
/// everything from the first `;` dropped, ASCII folded when `fold`. The whole segment,
/// parameters included, is checked for NUL, `\`, `%2F`, `%5C` and malformed escapes.
fn segment_into(seg: &[u8], fold: bool, out: &mut Vec<u8>) -> Result<(), Rejection> {
    if segment_is_normal(seg, false) {
        // Nothing to decode or drop (the usual segment, e.g. gRPC's `pkg.Service`): copied
        // whole, then folded in place, rather than byte by byte.
        let from = out.len();
        out.extend_from_slice(seg);
        if fold {
            out[from..].make_ascii_lowercase();
        }
        return Ok(());
    }
    let mut params = false;
    let mut i = 0;
    while i < seg.len() {
        let b = seg[i];
        match b {
            0 => return Err(bad("the request path contains a NUL byte")),
            b'\\' => return Err(bad("the request path contains a backslash")),
            b';' => params = true,
            b'%' => {
                let (Some(h), Some(l)) = (
                    seg.get(i + 1).copied().and_then(hex),
                    seg.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(bad("the request path has a malformed percent-encoding"));
                };
                let c = h * 16 + l;
                match c {
                    0 => return Err(bad("the request path contains an encoded NUL")),
                    b'/' => return Err(bad("the request path contains an encoded '/' (%2F)")),
                    b'\\' => return Err(bad("the request path contains an encoded '\\' (%5C)")),
                    _ => {}
                }
                if !params {
                    if unreserved(c) {
                        out.push(if fold { c.to_ascii_lowercase() } else { c });
                    } else {
                        let digits: &[u8; 16] = if fold {
                            b"0123456789abcdef"
                        } else {
                            b"0123456789ABCDEF"
                        };
                        out.extend_from_slice(&[
                            b'%',
                            digits[usize::from(h)],
                            digits[usize::from(l)],
                        ]);
                    }
                }
                i += 3;
                continue;
            }
            _ if !params => out.push(if fold { b.to_ascii_lowercase() } else { b }),
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

fn refuse_dot_segment(seg: &[u8]) -> Result<(), Rejection> {
    if seg == b"." || seg == b".." {
        return Err(bad(
            "the request path contains a '.' or '..' segment (also when encoded or followed by ';')",
        ));
    }
    Ok(())
}

/// The **normalized path** routes are matched on (SPEC section 8): unreserved characters
/// percent-decoded; in each segment everything from the first `;` removed; empty segments
/// removed (a trailing `/` is kept); ASCII case folded unless `case` is
/// [`PathCase::Sensitive`]. A `.` or `..` segment (after decoding and `;` removal), `%2F`,
/// `%5C`, a raw `\`, a NUL (raw or `%00`) or a malformed escape → `400 bad_request`; so is a
/// path that does not start with `/`.
///
/// Borrows `path` when it is already normal (the common case): no allocation.
pub fn normalize_path(path: &str, case: PathCase) -> Result<Cow<'_, str>, Rejection> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(bad("the request path must start with '/'"));
    }
    let fold = case == PathCase::Insensitive;
    // `None` while the output equals `path[..start]`; the owned copy is made at the first
    // difference.
    let mut out: Option<Vec<u8>> = None;
    let mut start = 1;
    loop {
        let end = bytes[start..]
            .iter()
            .position(|&b| b == b'/')
            .map_or(bytes.len(), |p| start + p);
        let last = end == bytes.len();
        let seg = &bytes[start..end];
        match out.as_mut() {
            None if segment_is_normal(seg, fold) && (!seg.is_empty() || last) => {
                refuse_dot_segment(seg)?;
            }
            _ => {
                let o = out.get_or_insert_with(|| bytes[..start].to_vec());
                let seg_start = o.len();
                segment_into(seg, fold, o)?;
                refuse_dot_segment(&o[seg_start..])?;
                if o.len() > seg_start && !last {
                    o.push(b'/');
                }
            }
        }
        if last {
            break;
        }
        start = end + 1;
    }
    match out {
        None => Ok(Cow::Borrowed(path)),
        Some(v) => String::from_utf8(v)
            .map(Cow::Owned)
            .map_err(|_| bad("the request path is not UTF-8")),
    }
}

/// The path sent upstream for a route with `strip_prefix = prefix` (`prefix` normalized the
/// way [`normalize_path`] normalizes): the leading raw segments of `raw` whose normalized form
/// is `prefix` are removed (empty segments and `;` parameters among them included), the rest
/// is kept byte for byte after a leading `/`. So `/SVC//x;v=1/y` with `/svc` gives `/x;v=1/y`.
///
/// A prefix that ends inside a segment (`/ord` of `/orders/1`) removes that many normalized
/// characters of the segment. When `raw` does not start with `prefix` (the route did not
/// match on it), `raw` is returned unchanged.
pub fn strip_prefix<'a>(raw: &'a str, prefix: &str, case: PathCase) -> Cow<'a, str> {
    let fold = case == PathCase::Insensitive;
    let mut wanted = prefix.split('/').filter(|s| !s.is_empty()).peekable();
    let bytes = raw.as_bytes();
    let mut pos = 0; // at a '/' (or the end) after the last consumed segment
    let mut seg_buf = Vec::new();
    while let Some(want) = wanted.next() {
        let is_last = wanted.peek().is_none();
        loop {
            if pos >= bytes.len() {
                return Cow::Borrowed(raw);
            }
            let start = pos + 1;
            let end = bytes[start..]
                .iter()
                .position(|&b| b == b'/')
                .map_or(bytes.len(), |p| start + p);
            let seg = &bytes[start..end];
            let plain_match = if fold {
                seg.eq_ignore_ascii_case(want.as_bytes())
            } else {
                seg == want.as_bytes()
            };
            if plain_match && segment_is_normal(seg, false) {
                // The usual case: the raw segment is the prefix's segment, no decoding.
                pos = end;
                break;
            }
            seg_buf.clear();
            if segment_into(seg, fold, &mut seg_buf).is_err() {
                return Cow::Borrowed(raw);
            }
            pos = end;
            if seg_buf.is_empty() {
                continue;
            }
            if seg_buf == want.as_bytes() {
                break;
            }
            if is_last && seg_buf.starts_with(want.as_bytes()) {
                // The prefix ends inside this segment: keep the raw bytes after it when the
                // raw segment starts with the prefix's bytes as they are, else the rest of
                // the normalized segment.
                let raw_seg = &raw[start..end];
                let cut = want.len();
                let head = raw_seg.get(..cut).unwrap_or("");
                let same = segment_is_normal(head.as_bytes(), false)
                    && if fold {
                        head.eq_ignore_ascii_case(want)
                    } else {
                        head == want
                    };
                let tail = if same {
                    raw_seg[cut..].to_string()
                } else {
                    String::from_utf8_lossy(&seg_buf[cut..]).into_owned()
                };
                return Cow::Owned(format!("/{tail}{}", &raw[end..]));
            }
            return Cow::Borrowed(raw);
        }
    }
    let after = &raw[pos..];
    let rest = after.trim_start_matches('/');
    if after.len() == rest.len() + 1 {
        // Exactly one '/' before the rest: a slice of `raw` will do.
        return Cow::Borrowed(after);
    }
    Cow::Owned(format!("/{rest}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const I: PathCase = PathCase::Insensitive;
    const S: PathCase = PathCase::Sensitive;

    fn norm(p: &str, case: PathCase) -> Result<String, Reason> {
        normalize_path(p, case)
            .map(Cow::into_owned)
            .map_err(|r| r.reason)
    }

    #[test]
    fn paths_are_normalized_as_the_common_frameworks_read_them() {
        for (raw, case, want) in [
            ("/", I, "/"),
            ("/orders/42", I, "/orders/42"),
            ("/orders/", I, "/orders/"),
            ("/ADMIN/users", I, "/admin/users"),
            ("/ADMIN/users", S, "/ADMIN/users"),
            ("/orders//sync/run", I, "/orders/sync/run"),
            ("//orders///sync//", I, "/orders/sync/"),
            ("//", I, "/"),
            ("/orders/sync;x/run", I, "/orders/sync/run"),
            ("/orders/sync;jsessionid=1;a=b/run", I, "/orders/sync/run"),
            ("/orders/;x/sync", I, "/orders/sync"),
            ("/orders/;x", I, "/orders/"),
            ("/;x", I, "/"),
            ("/orders/%41bc", I, "/orders/abc"),
            ("/orders/%41bc", S, "/orders/Abc"),
            ("/%7Euser/%2D%5F%2e%2E.x", S, "/~user/-_...x"),
            ("/a%20b", S, "/a%20b"),
            ("/a%3a", S, "/a%3A"),
            ("/a%3A", I, "/a%3a"),
            ("/a%3Bb/c", I, "/a%3bb/c"),
            ("/a/...b/c.d", I, "/a/...b/c.d"),
            ("/a/.../b", I, "/a/.../b"),
            ("/caf\u{e9}/X", I, "/caf\u{e9}/x"),
        ] {
            assert_eq!(norm(raw, case).as_deref(), Ok(want), "{raw} ({case:?})");
        }
    }

    #[test]
    fn ambiguous_paths_are_refused_with_bad_request() {
        for raw in [
            "/a/../b",
            "/a/./b",
            "/..",
            "/.",
            "/a/..",
            "/a/%2e%2e/b",
            "/a/%2E/b",
            "/a/.%2e/b",
            "/a/..;x/b",
            "/a/.;x/b",
            "/a/%2e%2e;x/b",
            "/a//../b",
            "/a%2fb",
            "/a%2Fb",
            "/a%5cb",
            "/a%5Cb",
            "/a\\b",
            "/a;\\..\\b",
            "/a;%2F",
            "/a%00b",
            "/a\0b",
            "relative",
            "",
            "*",
            "/a%zz",
            "/a%2",
            "/a%",
        ] {
            for case in [I, S] {
                assert_eq!(
                    norm(raw, case),
                    Err(Reason::BadRequest),
                    "{raw:?} ({case:?})"
                );
            }
        }
    }

    #[test]
    fn a_path_that_is_already_normal_is_borrowed() {
        for p in ["/", "/orders/42", "/orders/", "/a-b_c~d/e.f"] {
            assert!(matches!(normalize_path(p, I), Ok(Cow::Borrowed(_))), "{p}");
        }
        assert!(matches!(normalize_path("/Orders", S), Ok(Cow::Borrowed(_))));
        assert!(matches!(normalize_path("/Orders", I), Ok(Cow::Owned(_))));
    }

    #[test]
    fn normalizing_twice_changes_nothing() {
        for raw in [
            "/ADMIN//x;y/%41/",
            "/a%20B/%7e",
            "/orders/sync;x/run",
            "//",
            "/a/;x",
        ] {
            for case in [I, S] {
                let once = norm(raw, case).expect("normal");
                assert_eq!(norm(&once, case).as_deref(), Ok(once.as_str()), "{raw}");
            }
        }
    }

    #[test]
    fn strip_prefix_removes_the_raw_segments_that_normalize_to_the_prefix() {
        for (raw, prefix, case, want) in [
            ("/svc/x", "/svc", I, "/x"),
            ("/SVC//x;v=1/y", "/svc", I, "/x;v=1/y"),
            ("/svc;v=2/x", "/svc", I, "/x"),
            ("//svc/x", "/svc", I, "/x"),
            ("/%73vc/x%2Fy", "/svc", I, "/x%2Fy"),
            ("/svc", "/svc", I, "/"),
            ("/svc/", "/svc", I, "/"),
            ("/svc/", "/svc/", I, "/"),
            ("/svc/x", "/svc/", I, "/x"),
            ("/a/;p/b/c", "/a/b", I, "/c"),
            ("/orders/42", "/ord", I, "/ers/42"),
            ("/ORDERS/42", "/ord", I, "/ERS/42"),
            ("/%6Frders/42", "/ord", I, "/ers/42"),
            ("/other/x", "/svc", I, "/other/x"),
            ("/SVC/x", "/svc", S, "/SVC/x"),
        ] {
            assert_eq!(strip_prefix(raw, prefix, case), want, "{raw} - {prefix}");
        }
    }

    #[test]
    fn request_targets_in_origin_absolute_and_asterisk_form_are_served() {
        fn t(m: Method, raw: &str) -> Result<Target<'_>, Rejection> {
            parse_target(&m, raw.as_bytes(), 8192)
        }
        assert_eq!(
            t(Method::GET, "/a/b?q=1#frag"),
            Ok(Target {
                form: TargetForm::Origin,
                path: "/a/b",
                query: Some("q=1")
            })
        );
        for (raw, path, query) in [
            ("http://h/a/b?q=1", "/a/b", Some("q=1")),
            ("HTTPS://h:8443/a", "/a", None),
            ("hTtP://h", "/", None),
            ("http://h?q", "/", Some("q")),
        ] {
            assert_eq!(
                t(Method::GET, raw),
                Ok(Target {
                    form: TargetForm::Absolute,
                    path,
                    query
                }),
                "{raw}"
            );
        }
        assert_eq!(
            t(Method::OPTIONS, "*").map(|t| t.form),
            Ok(TargetForm::Asterisk)
        );
    }

    #[test]
    fn other_request_targets_are_refused() {
        for (m, raw) in [
            (Method::GET, "x:/admin/users"),
            (Method::GET, "admin/users"),
            (Method::GET, "?q"),
            (Method::GET, "*"),
            (Method::POST, "*"),
            (Method::GET, "ftp://h/a"),
            (Method::GET, "http:/h/a"),
            (Method::GET, "http:///a"),
            (Method::GET, "http://u@h/a"),
            (Method::GET, "http://h\\x/a"),
            (Method::GET, "mailto:a@b"),
            (Method::GET, ""),
        ] {
            assert_eq!(
                parse_target(&m, raw.as_bytes(), 8192).map_err(|r| r.reason),
                Err(Reason::BadRequest),
                "{m} {raw}"
            );
        }
        assert_eq!(
            parse_target(&Method::GET, b"/a\xff", 8192).map_err(|r| r.reason),
            Err(Reason::BadRequest)
        );
    }

    #[test]
    fn a_target_longer_than_max_uri_bytes_is_refused_first() {
        let long = format!("/{}", "a".repeat(100));
        assert!(parse_target(&Method::GET, long.as_bytes(), 101).is_ok());
        assert_eq!(
            parse_target(&Method::GET, long.as_bytes(), 100).map_err(|r| r.reason),
            Err(Reason::UriTooLong)
        );
        assert_eq!(
            parse_target(&Method::GET, b"x:/\xff\xff", 3).map_err(|r| r.reason),
            Err(Reason::UriTooLong)
        );
    }
}
