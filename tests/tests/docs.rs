//! The repository stands on its own: every link in README.md, docs/ and the
//! examples' READMEs points at a file (and, with `#anchor`, a heading) inside
//! it. A link outside (another folder, a web page) fails: a clone must carry
//! its own reference.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

/// The repository's root (this crate lives in `tests/`).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// Every Markdown file a reader of the repository meets.
fn markdown_files() -> Vec<PathBuf> {
    let root = root();
    let mut files = vec![root.join("README.md")];
    for dir in ["docs", "examples", "deploy", "bench"] {
        walk(&root.join(dir), &mut files);
    }
    files
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            walk(&path, out);
        } else if path.extension().is_some_and(|e| e == "md") {
            out.push(path);
        }
    }
}

/// The targets of `[text](target)` links, outside code blocks and spans.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_block = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_block = !in_block;
            continue;
        }
        if in_block {
            continue;
        }
        // Drop inline code so `a[i](x)` in code is not read as a link.
        let mut plain = String::new();
        for (i, part) in line.split('`').enumerate() {
            if i % 2 == 0 {
                plain.push_str(part);
            }
        }
        let mut rest = plain.as_str();
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let Some(end) = after.find(')') else { break };
            out.push(after[..end].to_owned());
            rest = &after[end..];
        }
    }
    out
}

/// A heading's anchor as Markdown renderers make it: lowercase, spaces to
/// dashes, punctuation other than `-` and `_` dropped.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

fn anchors(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| anchor(l.trim_start_matches('#')))
        .collect()
}

#[test]
fn every_link_resolves_inside_the_repository() {
    let root = root().canonicalize().unwrap();
    let mut broken = Vec::new();
    let files = markdown_files();
    assert!(files.len() > 5, "found only {files:?}");
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for link in links(&text) {
            let (path, fragment) = link.split_once('#').unwrap_or((&link, ""));
            if path.contains("://") || path.starts_with("mailto:") {
                broken.push(format!("{}: {link}: leaves the repository", file.display()));
                continue;
            }
            let target = if path.is_empty() {
                file.clone()
            } else {
                file.parent().unwrap().join(path)
            };
            let Ok(target) = target.canonicalize() else {
                broken.push(format!("{}: {link}: no such file", file.display()));
                continue;
            };
            if !target.starts_with(&root) {
                broken.push(format!(
                    "{}: {link}: outside the repository",
                    file.display()
                ));
                continue;
            }
            if !fragment.is_empty() && target.extension().is_some_and(|e| e == "md") {
                let heads = anchors(&std::fs::read_to_string(&target).unwrap());
                if !heads.iter().any(|h| h == fragment) {
                    broken.push(format!(
                        "{}: {link}: no heading #{fragment}",
                        file.display()
                    ));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn anchors_follow_the_renderers_rule() {
    for (heading, expected) in [
        ("Active health checks", "active-health-checks"),
        ("What `protocol` guarantees", "what-protocol-guarantees"),
        ("1. The smallest config", "1-the-smallest-config"),
    ] {
        assert_eq!(anchor(heading), expected);
    }
}

/// No page sends a reader to a document a clone does not have: the
/// product's interface is described in docs/reference/, not elsewhere.
#[test]
fn no_page_names_a_document_outside_the_repository() {
    for file in markdown_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        for outside in ["SPEC.md", "../shared/", "STYLE.md", "DEPENDENCIES.md"] {
            assert!(
                !text.contains(outside),
                "{} names {outside}, which is not in the repository",
                file.display()
            );
        }
    }
}
