//! What kind of request this is and how its response went, read from headers
//! and trailers. Retries, breakers and metrics all ask here, so they agree.

use std::time::Duration;

use http::header::CONTENT_TYPE;
use http::{HeaderMap, StatusCode};

use crate::error::Reason;

/// A request is gRPC when its content-type starts with `application/grpc`.
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The `grpc-status` code carried in a header block, if any.
pub fn grpc_status(headers: &HeaderMap) -> Option<u32> {
    // A prepared name: looking up by `&str` parses and validates the name
    // on every call, twice per request on the data path.
    static GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");
    let v = headers.get(&GRPC_STATUS)?;
    std::str::from_utf8(v.as_bytes()).ok()?.trim().parse().ok()
}

/// Whether a gRPC status means the call failed on the server's side
/// (UNKNOWN, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED, UNIMPLEMENTED,
/// INTERNAL, UNAVAILABLE, DATA_LOSS), as the dashboard's success rate
/// counts it; a client's own mistakes (NOT_FOUND, INVALID_ARGUMENT, ...)
/// are served calls.
pub fn is_server_failure(code: u32) -> bool {
    matches!(code, 2 | 4 | 8 | 10 | 12 | 13 | 14 | 15)
}

/// gRPC code numbers as label text, without allocating.
pub fn grpc_status_label(code: Option<u32>) -> &'static str {
    const NAMES: [&str; 17] = [
        "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
    ];
    match code {
        None => "",
        Some(c) => NAMES.get(c as usize).copied().unwrap_or("unknown"),
    }
}

/// The `grpc-timeout` a gRPC client sent: at most 8 digits and a unit
/// (`H`ours, `M`inutes, `S`econds, `m`illis, `u`micros, `n`anos), per the
/// gRPC over HTTP/2 spec. A malformed value is ignored, as gRPC servers do.
pub fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get("grpc-timeout")?.as_bytes();
    let (&unit, digits) = v.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// gRPC's status codes by their canonical names, in the kebab-case that
/// `retry.on` uses (`ok` is left out: it is never a reason to retry).
pub const GRPC_STATUS_NAMES: [(&str, u32); 16] = [
    ("cancelled", 1),
    ("unknown", 2),
    ("invalid-argument", 3),
    ("deadline-exceeded", 4),
    ("not-found", 5),
    ("already-exists", 6),
    ("permission-denied", 7),
    ("resource-exhausted", 8),
    ("failed-precondition", 9),
    ("aborted", 10),
    ("out-of-range", 11),
    ("unimplemented", 12),
    ("internal", 13),
    ("unavailable", 14),
    ("data-loss", 15),
    ("unauthenticated", 16),
];

/// What a retry policy's `on:` list asks to retry, parsed once.
///
/// As Envoy: `5xx` and `gateway-error` also cover failures where no response
/// came (connect failures and resets), since Skiff would answer those itself
/// with a 503 or 502.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetryOn {
    pub connect_failure: bool,
    pub reset: bool,
    pub server_error: bool,
    pub gateway_error: bool,
    pub retriable_4xx: bool,
    /// Explicit HTTP statuses (`"503"`).
    pub statuses: Vec<u16>,
    /// gRPC codes as a bit set (bit n = code n).
    pub grpc: u32,
}

/// An `on:` entry that names no condition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown retry condition {0:?}")]
pub struct UnknownCondition(pub String);

impl RetryOn {
    pub fn parse<S: AsRef<str>>(list: &[S]) -> Result<Self, UnknownCondition> {
        let mut on = RetryOn::default();
        for item in list {
            let item = item.as_ref();
            match item {
                "connect-failure" => on.connect_failure = true,
                "reset" => on.reset = true,
                "5xx" => on.server_error = true,
                "gateway-error" => on.gateway_error = true,
                "retriable-4xx" => on.retriable_4xx = true,
                _ => {
                    if let Some(&(_, code)) = GRPC_STATUS_NAMES.iter().find(|(n, _)| *n == item) {
                        on.grpc |= 1 << code;
                    } else if let Some(status) = explicit_status(item) {
                        on.statuses.push(status);
                    } else {
                        return Err(UnknownCondition(item.to_owned()));
                    }
                }
            }
        }
        Ok(on)
    }

    /// Whether a failure without a response is worth another attempt.
    /// Refusals by Skiff's own policy (circuit open, rate limited, fault,
    /// no endpoints) never are: retrying would only add load.
    pub fn retries_error(&self, reason: Reason) -> bool {
        let any_5xx = self.server_error || self.gateway_error;
        match reason {
            Reason::ConnectFailed => self.connect_failure || any_5xx,
            Reason::UpstreamReset => self.reset || any_5xx,
            _ => false,
        }
    }

    /// Whether a response status (and, for gRPC, its `grpc-status`) is retried.
    pub fn retries_response(&self, status: StatusCode, grpc_status: Option<u32>) -> bool {
        let code = status.as_u16();
        (self.server_error && status.is_server_error())
            || (self.gateway_error && matches!(code, 502..=504))
            || (self.retriable_4xx && code == 409)
            || self.statuses.contains(&code)
            || grpc_status.is_some_and(|c| self.retries_grpc(c))
    }

    pub fn retries_grpc(&self, code: u32) -> bool {
        code < 32 && self.grpc & (1 << code) != 0
    }

    /// Whether any gRPC status is listed (the response may then need its
    /// trailers read before it can be judged).
    pub fn wants_grpc_status(&self) -> bool {
        self.grpc != 0
    }
}

/// `"503"`: an HTTP status from 100 to 599.
fn explicit_status(s: &str) -> Option<u16> {
    if s.len() != 3 {
        return None;
    }
    s.parse().ok().filter(|n| (100..=599).contains(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_content_types() {
        for (ct, grpc) in [
            ("application/grpc", true),
            ("application/grpc+proto", true),
            ("application/grpc-web", true),
            ("application/json", false),
        ] {
            let mut h = HeaderMap::new();
            h.insert(CONTENT_TYPE, ct.parse().unwrap());
            assert_eq!(is_grpc(&h), grpc, "{ct}");
        }
        assert!(!is_grpc(&HeaderMap::new()));
    }

    #[test]
    fn status_labels() {
        let mut h = HeaderMap::new();
        h.insert("grpc-status", "14".parse().unwrap());
        assert_eq!(grpc_status(&h), Some(14));
        assert_eq!(grpc_status_label(Some(14)), "14");
        assert_eq!(grpc_status_label(None), "");
        assert_eq!(grpc_status_label(Some(99)), "unknown");
    }

    #[test]
    fn grpc_timeout_table() {
        for (value, want) in [
            ("1H", Some(Duration::from_secs(3600))),
            ("2M", Some(Duration::from_secs(120))),
            ("3S", Some(Duration::from_secs(3))),
            ("250m", Some(Duration::from_millis(250))),
            ("1500u", Some(Duration::from_micros(1500))),
            ("99999999n", Some(Duration::from_nanos(99_999_999))),
            ("0m", Some(Duration::ZERO)),
            ("100000000m", None), // 9 digits
            ("10", None),         // no unit
            ("m", None),          // no digits
            ("10x", None),        // unknown unit
            ("-1S", None),
            ("1.5S", None),
            (" 1S", None),
        ] {
            let mut h = HeaderMap::new();
            h.insert("grpc-timeout", value.parse().unwrap());
            assert_eq!(grpc_timeout(&h), want, "{value:?}");
        }
        assert_eq!(grpc_timeout(&HeaderMap::new()), None);
    }

    #[test]
    fn retry_conditions_parse() {
        let on = RetryOn::parse(&["connect-failure", "503", "unavailable", "cancelled"]).unwrap();
        assert!(on.connect_failure && !on.reset && !on.server_error);
        assert_eq!(on.statuses, vec![503]);
        assert!(on.retries_grpc(14) && on.retries_grpc(1) && !on.retries_grpc(5));
        for bad in [
            "ok",
            "5XX",
            "Unavailable",
            "600",
            "99",
            "5035",
            "unavailable ",
        ] {
            assert_eq!(
                RetryOn::parse(&[bad]),
                Err(UnknownCondition(bad.to_owned())),
                "{bad}"
            );
        }
        for (name, _) in GRPC_STATUS_NAMES {
            assert!(RetryOn::parse(&[name]).is_ok(), "{name}");
        }
    }

    #[test]
    fn which_outcomes_each_condition_retries() {
        use Reason::*;
        let st = |c: u16| StatusCode::from_u16(c).unwrap();
        // (condition, retried statuses, not retried statuses, retried errors)
        type Case = (
            &'static str,
            &'static [u16],
            &'static [u16],
            &'static [Reason],
        );
        let table: [Case; 6] = [
            (
                "5xx",
                &[500, 502, 503, 504, 599],
                &[200, 404, 409, 429],
                &[ConnectFailed, UpstreamReset],
            ),
            (
                "gateway-error",
                &[502, 503, 504],
                &[500, 501, 409],
                &[ConnectFailed, UpstreamReset],
            ),
            ("retriable-4xx", &[409], &[400, 404, 429, 500], &[]),
            ("connect-failure", &[], &[500, 503], &[ConnectFailed]),
            ("reset", &[], &[502, 503], &[UpstreamReset]),
            ("429", &[429], &[409, 503], &[]),
        ];
        let never = [
            CircuitOpen,
            RateLimited,
            Timeout,
            NoHealthyEndpoints,
            NoRoute,
            Forbidden,
        ];
        for (cond, yes, no, errors) in table {
            let on = RetryOn::parse(&[cond]).unwrap();
            for &c in yes {
                assert!(on.retries_response(st(c), None), "{cond} retries {c}");
            }
            for &c in no {
                assert!(!on.retries_response(st(c), None), "{cond} keeps {c}");
            }
            for r in [ConnectFailed, UpstreamReset] {
                assert_eq!(on.retries_error(r), errors.contains(&r), "{cond} {r}");
            }
            for r in never {
                assert!(!on.retries_error(r), "{cond} never retries {r}");
            }
        }
        let on = RetryOn::parse(&["unavailable"]).unwrap();
        assert!(on.retries_response(StatusCode::OK, Some(14)));
        assert!(
            !on.retries_response(StatusCode::OK, Some(5)),
            "NOT_FOUND is not retried"
        );
        assert!(!on.retries_response(StatusCode::OK, None));
        assert!(!on.retries_error(UpstreamReset));
    }
}
