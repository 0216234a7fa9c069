//! The access log line: one per request, formatted straight into a per-thread buffer (no
//! `tracing` event, no field visitors, no allocation once the buffer has grown) and handed to
//! [`crate::log_writer`], which writes lines in batches off the request path.
//!
//! The line looks like the rest of the log in the chosen format: in text,
//! `TIMESTAMP  INFO aadgate::access: request key=value …`; in JSON, one object with
//! `timestamp`, `level`, `message`, the fields and `target`, as `--log-format json` writes every
//! other event. `RUST_LOG` filters it like any event of target `aadgate::access` at level info.
//!
//! Text values are written bare when they are plain (`route=orders`) and quoted with escapes
//! otherwise (`path="/a b"`), so a value can never pose as another field.

use std::cell::RefCell;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How access lines are written: set once, when logging starts.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Style {
    /// One JSON object per line (`--log-format json`).
    pub json: bool,
    /// Terminal colours (text only), as the other log lines have them.
    pub ansi: bool,
}

static STYLE: OnceLock<Style> = OnceLock::new();

/// The target the access log is filtered by (`RUST_LOG=…,aadgate::access=off`).
const TARGET: &str = "aadgate::access";

/// Whether `RUST_LOG` lets access lines through (checked before a line is built).
pub(crate) fn enabled() -> bool {
    tracing::enabled!(target: TARGET, tracing::Level::INFO)
}

/// Sets the style of every access line; the first call wins.
pub(crate) fn set_style(style: Style) {
    let _ = STYLE.set(style);
}

/// One request, as the access log tells it. Every field is borrowed from the request's state.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AccessLine<'a> {
    pub request_id: &'a str,
    pub method: &'a str,
    /// `HTTP/1.1` or `HTTP/2` (and `HTTP/1.0`).
    pub proto: &'a str,
    /// The request target as received; written up to the query (never the query).
    pub raw_target: &'a [u8],
    pub route: &'a str,
    pub status: u16,
    pub reason: &'a str,
    pub upstream_status: u16,
    pub latency: Duration,
    pub auth: Option<Duration>,
    pub upstream: Option<Duration>,
    pub tenant_id: &'a str,
    pub client_id: &'a str,
    pub client_addr: Option<SocketAddr>,
    pub error: &'a str,
}

/// The longest path written (the rest of a longer target is cut).
const MAX_PATH: usize = 2048;

thread_local! {
    static LINE: RefCell<LineBuf> = RefCell::new(LineBuf::default());
}

/// A thread's line buffer, and the formatted second of its last timestamp.
#[derive(Default)]
struct LineBuf {
    buf: Vec<u8>,
    second: u64,
    second_text: [u8; 19],
}

/// Formats `line` and queues it for stderr.
pub(crate) fn write(line: &AccessLine<'_>) {
    let style = STYLE.get().copied().unwrap_or_default();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    LINE.with(|cell| {
        let Ok(mut lb) = cell.try_borrow_mut() else {
            return;
        };
        let lb = &mut *lb;
        lb.buf.clear();
        let stamp = lb.timestamp(now);
        if style.json {
            line.write_json(&mut lb.buf, &stamp);
        } else {
            line.write_text(&mut lb.buf, &stamp, style.ansi);
        }
        crate::log_writer::access(&lb.buf);
        // A huge line (a 2 KiB path escaped) does not keep its memory for ever.
        if lb.buf.capacity() > 16 * 1024 {
            lb.buf = Vec::new();
        }
    });
}

impl LineBuf {
    /// `2026-12-02T01:55:00.123456Z`: the date and time part is formatted once per second.
    fn timestamp(&mut self, now: Duration) -> [u8; 27] {
        let secs = now.as_secs();
        if self.second != secs || self.second_text[0] == 0 {
            self.second = secs;
            self.second_text = civil_second(secs);
        }
        let mut out = [0u8; 27];
        out[..19].copy_from_slice(&self.second_text);
        out[19] = b'.';
        let mut micros = now.subsec_micros();
        for i in (20..26).rev() {
            out[i] = b'0' + (micros % 10) as u8;
            micros /= 10;
        }
        out[26] = b'Z';
        out
    }
}

/// `YYYY-MM-DDTHH:MM:SS` (UTC) of a Unix time, by the days-to-civil algorithm.
fn civil_second(secs: u64) -> [u8; 19] {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut out = *b"0000-00-00T00:00:00";
    let mut put = |at: usize, width: usize, mut v: u64| {
        for i in (at..at + width).rev() {
            out[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, 4, year.clamp(0, 9999) as u64);
    put(5, 2, month as u64);
    put(8, 2, day as u64);
    put(11, 2, rem / 3600);
    put(14, 2, rem / 60 % 60);
    put(17, 2, rem % 60);
    out
}

/// The target up to the query, at most [`MAX_PATH`] bytes.
fn path_of(raw: &[u8]) -> &[u8] {
    let end = raw.iter().position(|b| *b == b'?').unwrap_or(raw.len());
    &raw[..end.min(MAX_PATH)]
}

/// A duration as milliseconds with three decimals (`0.278`): exact, no float formatting.
fn put_millis(buf: &mut Vec<u8>, d: Duration) {
    let micros = d.as_micros();
    let mut ib = itoa::Buffer::new();
    buf.extend_from_slice(ib.format(micros / 1000).as_bytes());
    let frac = (micros % 1000) as u16;
    buf.extend_from_slice(&[
        b'.',
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ]);
}

fn put_int(buf: &mut Vec<u8>, v: impl itoa::Integer) {
    buf.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

/// `a.b.c.d:port` without `core::fmt`; IPv6 addresses (rarer) the standard way.
fn put_addr(buf: &mut Vec<u8>, addr: Option<SocketAddr>) {
    match addr {
        Some(SocketAddr::V4(a)) => {
            put_ipv4(buf, a.ip().octets());
            buf.push(b':');
            put_int(buf, a.port());
        }
        // Writing into a Vec cannot fail.
        Some(a) => {
            let _ = write!(buf, "{a}");
        }
        None => buf.push(b'-'),
    }
}

/// `a.b.c.d`.
pub(crate) fn put_ipv4(buf: &mut Vec<u8>, octets: [u8; 4]) {
    for (i, o) in octets.into_iter().enumerate() {
        if i > 0 {
            buf.push(b'.');
        }
        put_int(buf, o);
    }
}

/// A text value: bare when it is plain, else quoted with escapes.
fn put_text_value(buf: &mut Vec<u8>, v: &[u8]) {
    let plain = !v.is_empty()
        && v.iter()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b'=' | b'\\'));
    if plain {
        buf.extend_from_slice(v);
        return;
    }
    buf.push(b'"');
    escape_into(buf, v);
    buf.push(b'"');
}

/// A JSON string's contents (also the quoted text form): `"` `\` and control characters
/// escaped, bytes that are not UTF-8 replaced by U+FFFD.
fn escape_into(buf: &mut Vec<u8>, v: &[u8]) {
    if v.iter()
        .all(|&b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
    {
        buf.extend_from_slice(v);
        return;
    }
    for chunk in v.utf8_chunks() {
        for &b in chunk.valid().as_bytes() {
            match b {
                b'"' => buf.extend_from_slice(b"\\\""),
                b'\\' => buf.extend_from_slice(b"\\\\"),
                b'\n' => buf.extend_from_slice(b"\\n"),
                b'\r' => buf.extend_from_slice(b"\\r"),
                b'\t' => buf.extend_from_slice(b"\\t"),
                0..=0x1f | 0x7f => {
                    let hex = b"0123456789abcdef";
                    buf.extend_from_slice(b"\\u00");
                    buf.push(hex[usize::from(b >> 4)]);
                    buf.push(hex[usize::from(b & 15)]);
                }
                _ => buf.push(b),
            }
        }
        if !chunk.invalid().is_empty() {
            buf.extend_from_slice("\u{fffd}".as_bytes());
        }
    }
}

impl AccessLine<'_> {
    /// `TIMESTAMP  INFO aadgate::access: request request_id=… method=GET …`
    fn write_text(&self, buf: &mut Vec<u8>, stamp: &[u8], ansi: bool) {
        let (dim, green, italic, reset): (&[u8], &[u8], &[u8], &[u8]) = if ansi {
            (b"\x1b[2m", b"\x1b[32m", b"\x1b[3m", b"\x1b[0m")
        } else {
            (b"", b"", b"", b"")
        };
        for part in [
            dim,
            stamp,
            reset,
            b" ",
            green,
            b" INFO",
            reset,
            b" ",
            dim,
            TARGET.as_bytes(),
            reset,
            dim,
            b":",
            reset,
            b" request",
        ] {
            buf.extend_from_slice(part);
        }
        let field = |buf: &mut Vec<u8>, name: &str| {
            if !ansi {
                buf.push(b' ');
                buf.extend_from_slice(name.as_bytes());
                buf.push(b'=');
                return;
            }
            for part in [b" ", italic, name.as_bytes(), reset, dim, b"=", reset] {
                buf.extend_from_slice(part);
            }
        };
        field(buf, "request_id");
        put_text_value(buf, self.request_id.as_bytes());
        field(buf, "method");
        put_text_value(buf, self.method.as_bytes());
        field(buf, "proto");
        put_text_value(buf, self.proto.as_bytes());
        field(buf, "path");
        put_text_value(buf, path_of(self.raw_target));
        field(buf, "route");
        put_text_value(buf, self.route.as_bytes());
        field(buf, "status");
        put_int(buf, self.status);
        field(buf, "reason");
        put_text_value(buf, self.reason.as_bytes());
        field(buf, "upstream_status");
        put_int(buf, self.upstream_status);
        field(buf, "latency_ms");
        put_millis(buf, self.latency);
        field(buf, "auth_us");
        put_int(buf, self.auth.map_or(0, |d| d.as_micros() as u64));
        field(buf, "upstream_ms");
        put_millis(buf, self.upstream.unwrap_or_default());
        field(buf, "tenant_id");
        put_text_value(buf, self.tenant_id.as_bytes());
        field(buf, "client_id");
        put_text_value(buf, self.client_id.as_bytes());
        field(buf, "client_addr");
        put_addr(buf, self.client_addr);
        field(buf, "error");
        put_text_value(buf, self.error.as_bytes());
        buf.push(b'\n');
    }

    /// `{"timestamp":…,"level":"INFO","message":"request",…fields…,"target":"aadgate::access"}`
    fn write_json(&self, buf: &mut Vec<u8>, stamp: &[u8]) {
        buf.extend_from_slice(b"{\"timestamp\":\"");
        buf.extend_from_slice(stamp);
        buf.extend_from_slice(b"\",\"level\":\"INFO\",\"message\":\"request\"");
        let number = |buf: &mut Vec<u8>, name: &str| {
            buf.extend_from_slice(b",\"");
            buf.extend_from_slice(name.as_bytes());
            buf.extend_from_slice(b"\":");
        };
        let string = |buf: &mut Vec<u8>, name: &str, v: &[u8]| {
            number(buf, name);
            buf.push(b'"');
            escape_into(buf, v);
            buf.push(b'"');
        };
        string(buf, "request_id", self.request_id.as_bytes());
        string(buf, "method", self.method.as_bytes());
        string(buf, "proto", self.proto.as_bytes());
        string(buf, "path", path_of(self.raw_target));
        string(buf, "route", self.route.as_bytes());
        number(buf, "status");
        put_int(buf, self.status);
        string(buf, "reason", self.reason.as_bytes());
        number(buf, "upstream_status");
        put_int(buf, self.upstream_status);
        number(buf, "latency_ms");
        put_millis(buf, self.latency);
        number(buf, "auth_us");
        put_int(buf, self.auth.map_or(0, |d| d.as_micros() as u64));
        number(buf, "upstream_ms");
        put_millis(buf, self.upstream.unwrap_or_default());
        string(buf, "tenant_id", self.tenant_id.as_bytes());
        string(buf, "client_id", self.client_id.as_bytes());
        buf.extend_from_slice(b",\"client_addr\":\"");
        put_addr(buf, self.client_addr);
        buf.push(b'"');
        string(buf, "error", self.error.as_bytes());
        buf.extend_from_slice(b",\"target\":\"");
        buf.extend_from_slice(TARGET.as_bytes());
        buf.extend_from_slice(b"\"}\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample<'a>() -> AccessLine<'a> {
        AccessLine {
            request_id: "req-1",
            method: "GET",
            proto: "HTTP/1.1",
            raw_target: b"/orders/1?code=secret",
            route: "orders",
            status: 200,
            reason: "ok",
            upstream_status: 200,
            latency: Duration::from_nanos(278_402),
            auth: Some(Duration::from_micros(3)),
            upstream: Some(Duration::from_micros(150)),
            tenant_id: "72f988bf-86f1-41af-91ab-2d7cd011db47",
            client_id: "-",
            client_addr: Some("127.0.0.1:5555".parse().expect("addr")),
            error: "-",
        }
    }

    fn text(line: &AccessLine<'_>) -> String {
        let mut buf = Vec::new();
        line.write_text(&mut buf, b"2026-12-02T01:55:00.000001Z", false);
        String::from_utf8(buf).expect("utf8")
    }

    fn json(line: &AccessLine<'_>) -> serde_json::Value {
        let mut buf = Vec::new();
        line.write_json(&mut buf, b"2026-12-02T01:55:00.000001Z");
        assert_eq!(buf.last(), Some(&b'\n'));
        serde_json::from_slice(&buf).expect("one JSON object")
    }

    #[test]
    fn a_text_line_reads_like_the_rest_of_the_log() {
        assert_eq!(
            text(&sample()),
            "2026-12-02T01:55:00.000001Z  INFO aadgate::access: request request_id=req-1 \
             method=GET proto=HTTP/1.1 path=/orders/1 route=orders status=200 reason=ok upstream_status=200 \
             latency_ms=0.278 auth_us=3 upstream_ms=0.150 \
             tenant_id=72f988bf-86f1-41af-91ab-2d7cd011db47 client_id=- \
             client_addr=127.0.0.1:5555 error=-\n"
        );
    }

    #[test]
    fn a_coloured_line_is_the_plain_line_with_escapes() {
        let mut coloured = Vec::new();
        sample().write_text(&mut coloured, b"2026-12-02T01:55:00.000001Z", true);
        let coloured = String::from_utf8(coloured).expect("utf8");
        assert!(coloured.contains("\x1b["), "{coloured:?}");
        let mut stripped = String::new();
        let mut rest = coloured.as_str();
        while let Some(at) = rest.find("\x1b[") {
            stripped.push_str(&rest[..at]);
            let end = rest[at..].find('m').expect("escape end");
            rest = &rest[at + end + 1..];
        }
        stripped.push_str(rest);
        assert_eq!(stripped, text(&sample()));
    }

    #[test]
    fn a_json_line_has_every_field_with_its_type() {
        let v = json(&sample());
        assert_eq!(v["timestamp"], "2026-12-02T01:55:00.000001Z");
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["target"], "aadgate::access");
        assert_eq!(v["message"], "request");
        assert_eq!(v["path"], "/orders/1", "never the query");
        assert_eq!(v["status"], 200);
        assert_eq!(v["latency_ms"], 0.278);
        assert_eq!(v["upstream_ms"], 0.15);
        assert_eq!(v["auth_us"], 3);
        assert_eq!(v["client_addr"], "127.0.0.1:5555");
        assert_eq!(v["tenant_id"], "72f988bf-86f1-41af-91ab-2d7cd011db47");
    }

    const FIELDS: [&str; 15] = [
        "request_id",
        "method",
        "proto",
        "path",
        "route",
        "status",
        "reason",
        "upstream_status",
        "latency_ms",
        "auth_us",
        "upstream_ms",
        "tenant_id",
        "client_id",
        "client_addr",
        "error",
    ];

    /// The `key=value` fields after `request `, reading quoted values with their escapes.
    fn logfmt(line: &str) -> Vec<(String, String)> {
        let rest = line.split_once(": request ").expect("message").1.trim_end();
        let mut out = Vec::new();
        let mut chars = rest.chars().peekable();
        while chars.peek().is_some() {
            let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
            let mut value = String::new();
            if chars.peek() == Some(&'"') {
                chars.next();
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => match chars.next() {
                            Some('n') => value.push('\n'),
                            Some('u') => {
                                let hex: String = chars.by_ref().take(4).collect();
                                let code = u32::from_str_radix(&hex, 16).expect("hex");
                                value.push(char::from_u32(code).expect("char"));
                            }
                            Some(other) => value.push(other),
                            None => break,
                        },
                        c => value.push(c),
                    }
                }
                chars.next_if_eq(&' ');
            } else {
                value = chars.by_ref().take_while(|c| *c != ' ').collect();
            }
            out.push((key, value));
        }
        out
    }

    #[test]
    fn odd_targets_cannot_break_a_line_or_pose_as_fields() {
        let targets: [&[u8]; 5] = [
            b"/a b\" status=999\nforged",
            b"x:/admin",
            &[b'/', 0xff, b'\\'],
            &[b'/', 0x01, 0x7f],
            &[b'a'; 5000],
        ];
        for raw in targets {
            let line = AccessLine {
                raw_target: raw,
                ..sample()
            };
            let t = text(&line);
            assert_eq!(t.matches('\n').count(), 1, "{t}");
            let fields = logfmt(&t);
            let names: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
            assert_eq!(names, FIELDS, "{t}");
            assert_eq!(fields[5].1, "200", "{t}");
            assert_eq!(fields[3].1, String::from_utf8_lossy(path_of(raw)), "{t}");
            let v = json(&line);
            let path = v["path"].as_str().expect("path");
            let expected = String::from_utf8_lossy(path_of(raw));
            assert_eq!(path, expected, "JSON keeps the path exactly");
        }
        assert_eq!(path_of(&[b'a'; 5000]).len(), MAX_PATH);
        assert!(text(&AccessLine {
            raw_target: b"x:/admin",
            ..sample()
        })
        .contains(" path=x:/admin "));
    }

    #[test]
    fn durations_are_milliseconds_rounded_down_to_the_microsecond() {
        let ms = |d: Duration| {
            let mut b = Vec::new();
            put_millis(&mut b, d);
            String::from_utf8(b).expect("utf8")
        };
        assert_eq!(ms(Duration::from_nanos(278_402)), "0.278");
        assert_eq!(ms(Duration::from_micros(5)), "0.005");
        assert_eq!(ms(Duration::from_secs(2)), "2000.000");
        assert_eq!(ms(Duration::ZERO), "0.000");
    }

    #[test]
    fn timestamps_are_utc_with_microseconds() {
        let civil = |s| String::from_utf8(civil_second(s).to_vec()).expect("utf8");
        assert_eq!(civil(0), "1970-01-01T00:00:00");
        assert_eq!(civil(951_782_400), "2000-02-29T00:00:00");
        assert_eq!(civil(1_764_640_500), "2025-12-02T01:55:00");
        assert_eq!(civil(4_102_444_799), "2099-12-31T23:59:59");
        let mut lb = LineBuf::default();
        let stamp = lb.timestamp(Duration::new(1_764_640_500, 123_456_789));
        assert_eq!(&stamp, b"2025-12-02T01:55:00.123456Z");
        let stamp = lb.timestamp(Duration::new(1_764_640_501, 7_000));
        assert_eq!(&stamp, b"2025-12-02T01:55:01.000007Z");
    }
}
