//! What kind of request this is and how its response went, read from headers
//! and trailers. Retries, breakers and metrics all ask here, so they agree.

use http::HeaderMap;
use http::header::CONTENT_TYPE;

/// A request is gRPC when its content-type starts with `application/grpc` (SPEC.md).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The `grpc-status` code carried in a header block, if any.
pub fn grpc_status(headers: &HeaderMap) -> Option<u32> {
    let v = headers.get("grpc-status")?;
    std::str::from_utf8(v.as_bytes()).ok()?.trim().parse().ok()
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
}
