//! SPIFFE IDs, as the config and `skiff certs` both accept them.

/// A SPIFFE ID: `spiffe://` + a trust domain of lowercase letters, digits,
/// `.`, `-` and `_`, then optionally a path of non-empty segments of
/// letters, digits, `.`, `-` and `_`, none of them `.` or `..`.
pub fn check(s: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("{s:?} is not a SPIFFE ID: {why}"));
    let Some(rest) = s.strip_prefix("spiffe://") else {
        return bad("it starts with spiffe://, like spiffe://cluster.local/ns/default/sa/web");
    };
    let (domain, path) = rest
        .split_once('/')
        .map_or((rest, None), |(d, p)| (d, Some(p)));
    if domain.is_empty()
        || !domain
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b))
    {
        return bad("the trust domain is lowercase letters, digits, `.`, `-` and `_`");
    }
    let path_ok = path.is_none_or(|p| {
        p.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
        })
    });
    if !path_ok {
        return bad(
            "the path is non-empty segments of letters, digits, `.`, `-` and `_`, without a trailing /",
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn accepted_and_refused() {
        for (id, ok) in [
            ("spiffe://cluster.local/ns/default/sa/web", true),
            ("spiffe://example.org", true),
            ("spiffe://Example.org/x", false),
            ("spiffe:///x", false),
            ("spiffe://a/x/", false),
            ("spiffe://a//x", false),
            ("spiffe://a/../x", false),
            ("https://a/x", false),
        ] {
            assert_eq!(super::check(id).is_ok(), ok, "{id}");
        }
    }
}
