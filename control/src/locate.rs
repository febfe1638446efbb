//! Where each key and value sits in the YAML text, by key path.
//!
//! serde gives us typed values without positions, so validation would have
//! nowhere to point. Walking the parser's event stream once more records, for
//! every path such as `routes.app[0].cluster`, where its key and its value
//! are. Validation then points at `FILE:LINE:COL` of the offending key or
//! value, and the loader can blank out an unknown key to find the next one.

use std::collections::HashMap;

use serde_saphyr::granit_parser::{Event, Parser, StructureStyle};

/// A position in the text: 1-based line, 0-based column in characters (as
/// the parser counts), and a byte offset.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Mark {
    pub line: usize,
    pub col: usize,
    pub byte: usize,
}

/// Text that is not well-formed YAML: 1-based line, 0-based column.
#[derive(Debug, Clone)]
pub(crate) struct SyntaxError {
    pub line: usize,
    pub col: usize,
    pub message: String,
}

/// One key/value pair (or sequence item) of the document.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub path: String,
    /// Where the key starts; `None` for sequence items and the root.
    pub key: Option<Mark>,
    /// Where the value starts.
    pub value: Mark,
    /// Where the value ends (exclusive).
    pub value_end: Mark,
    /// Whether the entry sits in a flow collection (`{ ... }` / `[ ... ]`),
    /// where removing it must also remove its separating comma.
    pub in_flow: bool,
}

/// Every entry of a document by path.
#[derive(Debug, Default)]
pub(crate) struct Index {
    entries: HashMap<String, Entry>,
}

impl Index {
    /// Walks `text`; fails only if the text is not well-formed YAML (the
    /// caller then reports serde-saphyr's error for it).
    pub fn build(text: &str) -> Result<Self, SyntaxError> {
        let mut index = Index::default();
        let mut stack: Vec<Frame> = Vec::new();

        for next in Parser::new_from_str(text) {
            let (event, span) = next.map_err(|e| SyntaxError {
                line: e.marker().line(),
                col: e.marker().col(),
                message: e.info(),
            })?;
            let start = mark(&span.start);
            let end = mark(&span.end);
            let node = match event {
                Event::Scalar(ref value, ..) => Node::Scalar(value.to_string()),
                Event::Alias(_) => Node::Scalar(String::new()),
                Event::MappingStart(style, ..) => Node::Open(Kind::Map, style),
                Event::SequenceStart(style, ..) => Node::Open(Kind::Seq, style),
                Event::MappingEnd | Event::SequenceEnd => {
                    if let Some(frame) = stack.pop() {
                        index.finish(frame, end);
                    }
                    continue;
                }
                _ => continue,
            };

            // A scalar in key position names the next value.
            if let Some(Frame {
                kind: Kind::Map,
                pending_key: pending @ None,
                ..
            }) = stack.last_mut()
            {
                let name = match &node {
                    Node::Scalar(s) => s.clone(),
                    // Complex keys do not occur in Skiff's schema; give them
                    // a name that cannot collide with a real path.
                    Node::Open(..) => "?".to_owned(),
                };
                *pending = Some((name, start));
                if let Node::Open(kind, style) = node {
                    // Swallow the complex key's events under a throwaway frame.
                    stack.push(Frame::new(kind, style, "?".to_owned(), None, start, true));
                }
                continue;
            }

            let (path, key, in_flow) = match stack.last_mut() {
                None => (String::new(), None, false),
                Some(frame) => {
                    let in_flow = frame.style == StructureStyle::Flow;
                    match frame.kind {
                        Kind::Map => {
                            let (name, key) = frame.pending_key.take().unwrap_or_default();
                            (join_key(&frame.path, &name), Some(key), in_flow)
                        }
                        Kind::Seq => {
                            let path = format!("{}[{}]", frame.path, frame.items);
                            frame.items += 1;
                            (path, None, in_flow)
                        }
                    }
                }
            };
            let throwaway = stack.last().is_some_and(|f| f.throwaway);
            match node {
                Node::Scalar(_) => {
                    if !throwaway {
                        index.insert(Entry {
                            path,
                            key,
                            value: start,
                            value_end: end,
                            in_flow,
                        });
                    }
                }
                Node::Open(kind, style) => {
                    let mut frame = Frame::new(kind, style, path, key, start, throwaway);
                    frame.in_flow = in_flow;
                    stack.push(frame);
                }
            }
        }
        Ok(index)
    }

    fn finish(&mut self, frame: Frame, end: Mark) {
        if frame.throwaway {
            return;
        }
        self.insert(Entry {
            path: frame.path,
            key: frame.key,
            value: frame.start,
            value_end: end,
            in_flow: frame.in_flow,
        });
    }

    fn insert(&mut self, entry: Entry) {
        // With duplicate keys the first one stands, as serde-saphyr refuses
        // the document anyway.
        self.entries.entry(entry.path.clone()).or_insert(entry);
    }

    pub fn get(&self, path: &str) -> Option<&Entry> {
        self.entries.get(path)
    }

    /// The entry whose key starts at `line`/`col` (parser coordinates).
    pub fn key_at(&self, line: usize, col: usize) -> Option<&Entry> {
        self.entries
            .values()
            .find(|e| e.key.is_some_and(|k| k.line == line && k.col == col))
    }

    /// The innermost entry whose value starts at `line`/`col`.
    pub fn value_at(&self, line: usize, col: usize) -> Option<&Entry> {
        self.entries
            .values()
            .filter(|e| e.value.line == line && e.value.col == col)
            .max_by_key(|e| e.path.len())
    }

    /// The innermost entry whose key-and-value range holds `line`/`col`.
    pub fn containing(&self, line: usize, col: usize) -> Option<&Entry> {
        let at = (line, col);
        self.entries
            .values()
            .filter(|e| {
                let start = e.key.unwrap_or(e.value);
                (start.line, start.col) <= at && at < (e.value_end.line, e.value_end.col)
            })
            .max_by_key(|e| e.path.len())
    }

    /// Where to point for `path`: its value if `at_value`, else its key; an
    /// absent path (a default) points at its nearest present ancestor.
    pub fn position(&self, path: &str, at_value: bool) -> Mark {
        let mut p = path;
        loop {
            if let Some(e) = self.entries.get(p) {
                return match (at_value, e.key) {
                    (false, Some(k)) => k,
                    _ => e.value,
                };
            }
            match parent(p) {
                Some(up) => p = up,
                None => {
                    return Mark {
                        line: 1,
                        col: 0,
                        byte: 0,
                    };
                }
            }
        }
    }
}

/// `a.b[3].c` → `a.b[3]` → `a.b` → `a` → ``.
pub(crate) fn parent(path: &str) -> Option<&str> {
    if path.is_empty() {
        return None;
    }
    let cut = path.rfind(['.', '[']).unwrap_or(0);
    Some(&path[..cut])
}

pub(crate) fn join_key(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Map,
    Seq,
}

enum Node {
    Scalar(String),
    Open(Kind, StructureStyle),
}

struct Frame {
    kind: Kind,
    style: StructureStyle,
    path: String,
    key: Option<Mark>,
    start: Mark,
    in_flow: bool,
    /// A complex key's insides: walked, not recorded.
    throwaway: bool,
    /// In a mapping: the key read, waiting for its value.
    pending_key: Option<(String, Mark)>,
    /// In a sequence: items seen so far.
    items: usize,
}

impl Frame {
    fn new(
        kind: Kind,
        style: StructureStyle,
        path: String,
        key: Option<Mark>,
        start: Mark,
        throwaway: bool,
    ) -> Self {
        Self {
            kind,
            style,
            path,
            key,
            start,
            in_flow: false,
            throwaway,
            pending_key: None,
            items: 0,
        }
    }
}

fn mark(m: &serde_saphyr::granit_parser::Marker) -> Mark {
    Mark {
        line: m.line(),
        col: m.col(),
        byte: m.byte_offset().unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_keys_and_values() {
        let text =
            "listeners:\n  - name: a\n    address: \"x\"\nroutes: { app: [ { cluster: c } ] }\n";
        let index = Index::build(text).unwrap();
        let at = |path: &str, value: bool| {
            let m = index.position(path, value);
            (m.line, m.col + 1)
        };
        assert_eq!(at("listeners", false), (1, 1));
        assert_eq!(at("listeners[0]", true), (2, 5));
        assert_eq!(at("listeners[0].name", false), (2, 5));
        assert_eq!(at("listeners[0].name", true), (2, 11));
        assert_eq!(at("listeners[0].address", true), (3, 14));
        assert_eq!(at("routes.app[0].cluster", true), (4, 29));
        // Absent paths fall back to the nearest ancestor.
        assert_eq!(at("listeners[0].protocol", false), (2, 5));
        assert_eq!(at("clusters.x", false), (1, 1));
        let e = index.get("routes.app[0].cluster").unwrap();
        assert!(e.in_flow);
        assert_eq!(index.key_at(4, 19).unwrap().path, "routes.app[0].cluster");
    }

    #[test]
    fn parent_paths() {
        assert_eq!(parent("a.b[3].c"), Some("a.b[3]"));
        assert_eq!(parent("a.b[3]"), Some("a.b"));
        assert_eq!(parent("a"), Some(""));
        assert_eq!(parent(""), None);
    }
}
