//! Parse then validate, in one call: no unvalidated config escapes this module.
//!
//! The steps, each reporting as much as it can before giving up:
//! 1. `${VAR}` expansion (env.rs): every unset variable, at its `${`.
//! 2. Parsing with serde-saphyr into the model. serde stops at the first
//!    error, so an unknown key is blanked out of the text (positions kept)
//!    and parsing retried, to report every unknown key in one go.
//! 3. Validation (validate.rs): every cross-field problem at once.
//!
//! Positions are always those of the file as written, before expansion.
use std::borrow::Cow;
use std::path::Path;

use serde_saphyr::{DefaultMessageFormatter, MessageFormatter};

use crate::env::{self, Expanded};
use crate::locate::{Index, parent};
use crate::model::Config;
use crate::validate;

/// One problem in a config, located in its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    /// 1-based.
    pub line: usize,
    /// 1-based, in characters.
    pub column: usize,
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )
    }
}

/// Every problem found, in file order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
pub struct ConfigErrors(pub Vec<ConfigError>);

/// A problem before it is given its file name: 1-based line and column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Problem {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// Serde stops at its first error; each unknown key found costs one more
/// parse, so a file with more than this many typos reports the first ones.
const MAX_UNKNOWN_KEYS: usize = 64;

/// Reads, expands, parses and validates the config at `path`.
pub fn load_file(path: &Path) -> Result<Config, ConfigErrors> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: name.clone(),
            line: 1,
            column: 1,
            message: format!("cannot read the config: {e}"),
        }])
    })?;
    load_str(&text, &name)
}

/// Expands, parses and validates `text`, taking `${VAR}` from the process
/// environment; `file` names the text in error messages.
pub fn load_str(text: &str, file: &str) -> Result<Config, ConfigErrors> {
    load_with_env(text, file, |name| std::env::var(name).ok())
}

/// [`load_str`] with the environment given as a lookup function, so tests
/// need not mutate the process environment.
pub(crate) fn load_with_env(
    text: &str,
    file: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    let with_file = |problems: Vec<Problem>| {
        let mut errors: Vec<ConfigError> = problems
            .into_iter()
            .map(|p| ConfigError {
                file: file.to_owned(),
                line: p.line,
                column: p.column,
                message: p.message,
            })
            .collect();
        errors.sort_by_key(|e| (e.line, e.column));
        ConfigErrors(errors)
    };

    let expanded = env::expand(text, lookup).map_err(|problems| {
        with_file(
            problems
                .into_iter()
                .map(|p| Problem {
                    line: p.line,
                    column: p.column,
                    message: p.message,
                })
                .collect(),
        )
    })?;
    let (config, index, mut problems) = parse(&expanded);
    if let (Some(config), Some(index)) = (&config, &index) {
        problems.extend(
            validate::validate(config, index)
                .into_iter()
                .map(|p| Problem {
                    column: expanded.original_column(p.line, p.column),
                    ..p
                }),
        );
    }
    match config {
        Some(config) if problems.is_empty() => Ok(config),
        _ => Err(with_file(problems)),
    }
}

/// Parses the expanded text, collecting every unknown key. Returns the
/// config if parsing got through (possibly after dropping unknown keys),
/// the position index, and the problems in original coordinates.
fn parse(expanded: &Expanded) -> (Option<Config>, Option<Index>, Vec<Problem>) {
    let mut text = Cow::Borrowed(expanded.text.as_str());
    let mut problems = Vec::new();
    let problem = |line: usize, column: usize, message: String| Problem {
        line,
        column: expanded.original_column(line, column),
        message,
    };

    // The index of the text as the user wrote it (expanded), for validation.
    let index = match Index::build(&text) {
        Ok(index) => index,
        Err(e) => {
            // Not well-formed YAML. serde-saphyr would report the same
            // error, but only once its streaming parse gets there, after
            // complaining about earlier keys of a document that is broken.
            let p = problem(e.line, e.col + 1, e.message);
            return (None, None, vec![p]);
        }
    };

    for _ in 0..=MAX_UNKNOWN_KEYS {
        let err = match serde_saphyr::from_str::<Config>(&text) {
            Ok(config) => return (Some(config), Some(index), problems),
            Err(e) => e,
        };
        let (line, col) = location(&err);
        let msg = message(&err);

        if let Some(rest) = msg.strip_prefix("unknown field `") {
            // Positions in `text` equal those in the expanded text: blanking
            // keeps every line and column.
            let current = Index::build(&text).ok();
            let entry = current
                .as_ref()
                .and_then(|i| i.key_at(line, col.saturating_sub(1)));
            if let Some(entry) = entry {
                let (key, tail) = rest.split_once('`').unwrap_or((rest, ""));
                problems.push(problem(
                    line,
                    col,
                    format!("{}: unknown key `{key}`{tail}", entry.path),
                ));
                let from = entry.key.map_or(entry.value.byte, |k| k.byte);
                blank(text.to_mut(), from, entry.value_end.byte, entry.in_flow);
                // A block mapping left with no keys would read as null, and
                // `runtime: null` is an error of its own: make it `{}`.
                if let Some(up) = parent(&entry.path).and_then(|p| current.as_ref()?.get(p)) {
                    let (start, end) = (up.value.byte, up.value_end.byte);
                    let emptied = text
                        .get(start..end.min(text.len()))
                        .is_some_and(|s| s.bytes().all(|b| b.is_ascii_whitespace()));
                    if emptied && end >= start + 2 {
                        text.to_mut().replace_range(start..start + 2, "{}");
                    }
                }
                continue;
            }
        }

        // Any other error ends parsing; name the path when we can.
        let current = Index::build(&text).ok();
        let col0 = col.saturating_sub(1);
        let found = current.as_ref().and_then(|i| {
            i.value_at(line, col0)
                .or_else(|| i.key_at(line, col0))
                .or_else(|| i.containing(line, col0))
        });
        let (mut line, mut col, mut path) = (line, col, found.map(|e| e.path.clone()));
        // serde-saphyr places a missing field at the mapping's last key;
        // the mapping that lacks it is the clearer place to point.
        if msg.starts_with("missing field")
            && let Some(p) = found.and_then(|e| parent(&e.path))
        {
            // The index of the text before any blanking: the mapping may
            // have started with a key since removed.
            let m = index.position(p, false);
            (line, col, path) = (m.line, m.col + 1, Some(p.to_owned()));
        }
        let msg = msg
            .replace("unknown variant", "unknown value")
            .replace(", set DuplicateKeyPolicy in Options if acceptable", "");
        let msg = match path {
            Some(path) if !path.is_empty() => format!("{path}: {msg}"),
            _ => msg,
        };
        problems.push(problem(line, col, msg));
        return (None, Some(index), problems);
    }
    (None, Some(index), problems)
}

/// Replaces `text[from..to]` (a key and its value) with spaces, keeping
/// line breaks, so that every other position stays where it was. In a flow
/// collection the following comma goes too, or `{ bad: 1, good: 2 }` would
/// become `{ , good: 2 }`. Returns the end of the blanked range.
fn blank(text: &mut String, from: usize, to: usize, in_flow: bool) -> usize {
    let mut bytes = std::mem::take(text).into_bytes();
    let to = to.min(bytes.len());
    let mut end = to;
    if in_flow {
        let mut i = to;
        while i < bytes.len() && matches!(bytes[i], b' ' | b'\t' | b'\n' | b'\r') {
            i += 1;
        }
        if bytes.get(i) == Some(&b',') {
            end = i + 1;
        }
    }
    for b in &mut bytes[from.min(end)..end] {
        if !matches!(*b, b'\n' | b'\r') {
            // Multi-byte characters become several spaces: columns count
            // characters, so later ones on the line would move left by a
            // few, but nothing after a removed key on its line matters
            // more than the lines staying put.
            *b = b' ';
        }
    }
    // Only ASCII spaces were written over whole characters' bytes.
    *text = String::from_utf8_lossy(&bytes).into_owned();
    end
}

fn location(e: &serde_saphyr::Error) -> (usize, usize) {
    e.location().map_or((1, 1), |l| {
        (
            usize::try_from(l.line()).unwrap_or(1).max(1),
            usize::try_from(l.column()).unwrap_or(1).max(1),
        )
    })
}

/// serde-saphyr's message without its location suffix or snippet, with
/// control characters escaped so that one problem stays on one line.
fn message(e: &serde_saphyr::Error) -> String {
    let raw = DefaultMessageFormatter.format_message(e.without_snippet());
    raw.chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_debug().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

#[cfg(test)]
mod tests;
