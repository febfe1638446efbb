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

use crate::env::{self, Expanded, Vars};
use crate::locate::{Entry, Index, parent};
use crate::model::Config;
use crate::validate;

/// One problem in a config, located in its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    /// 1-based; 0 when the problem is with the file as a whole (it cannot
    /// be read), and there is no position to give.
    pub line: usize,
    /// 1-based, in characters; 0 with `line` 0.
    pub column: usize,
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            0 => write!(f, "{}: {}", self.file, self.message),
            line => write!(f, "{}:{line}:{}: {}", self.file, self.column, self.message),
        }
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

/// Serde stops at its first error; each unknown key or wrong value found
/// costs one more parse, so a file with more than this many mistakes
/// reports the first ones.
const MAX_RETRIES: usize = 64;

/// Reads, expands, parses and validates the config at `path`, taking
/// `${VAR}` from the process environment.
pub fn load_file(path: &Path) -> Result<Config, ConfigErrors> {
    load_file_with(path, &Vars::process())
}

/// [`load_file`] with `${VAR}` taken from `vars`.
pub fn load_file_with(path: &Path, vars: &Vars) -> Result<Config, ConfigErrors> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        let message = match e.kind() {
            std::io::ErrorKind::NotFound => "the config file does not exist".to_owned(),
            std::io::ErrorKind::PermissionDenied => {
                "no permission to read the config file".to_owned()
            }
            std::io::ErrorKind::IsADirectory => "this is a directory, not a config file".to_owned(),
            _ => format!("cannot read the config file: {e}"),
        };
        ConfigErrors(vec![ConfigError {
            file: name.clone(),
            line: 0,
            column: 0,
            message,
        }])
    })?;
    load_str_with(&text, &name, vars)
}

/// Expands, parses and validates `text`, taking `${VAR}` from the process
/// environment; `file` names the text in error messages.
pub fn load_str(text: &str, file: &str) -> Result<Config, ConfigErrors> {
    load_str_with(text, file, &Vars::process())
}

/// [`load_str`] with `${VAR}` taken from `vars`.
pub fn load_str_with(text: &str, file: &str, vars: &Vars) -> Result<Config, ConfigErrors> {
    load_with_env(text, file, |name| vars.get(name))
}

/// [`load_str`] with the environment given as a lookup function, so tests
/// need not mutate the process environment.
pub(crate) fn load_with_env(
    text: &str,
    file: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    let with_file = |problems: Vec<Problem>| in_file(file, problems);
    let expanded = expand(text, file, lookup)?;
    // A config that parses and validates needs no positions: the index of
    // where everything is (a second walk of the whole text, a map entry per
    // key) is built only to place problems. For a file of 10,000 routes it
    // was most of a reload's time (docs/benchmarks.md, "Mesh scale").
    if let Ok(config) = serde_saphyr::from_str::<Config>(&expanded.text)
        && validate::validate(&config).is_empty()
    {
        return Ok(config);
    }
    let Parsed {
        config,
        index,
        mut problems,
        stood_in,
    } = parse(&expanded);
    if let (Some(config), Some(index)) = (&config, &index) {
        problems.extend(
            validate::validate(config)
                .into_iter()
                .map(|invalid| place(index, &invalid.path, &invalid))
                .filter(|p| !about_a_stand_in(p, &stood_in))
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

/// Problems found in `file`, in file order.
fn in_file(file: &str, problems: Vec<Problem>) -> ConfigErrors {
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
}

/// `${VAR}` expansion, its problems placed in `file`.
fn expand(
    text: &str,
    file: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Expanded, ConfigErrors> {
    env::expand(text, lookup).map_err(|problems| {
        in_file(
            file,
            problems
                .into_iter()
                .map(|p| Problem {
                    line: p.line,
                    column: p.column,
                    message: p.message,
                })
                .collect(),
        )
    })
}

/// Where a validation problem points in a file, said of `path` (the path
/// in that file, which differs from `invalid.path` for a merged config).
fn place(index: &Index, path: &str, invalid: &validate::Invalid) -> Problem {
    // An endpoint's address: at `address:` in the long form.
    let long = format!("{path}.address");
    let path = match index.get(&long) {
        Some(_) if path.contains(".endpoints[") => long.as_str(),
        _ => path,
    };
    let mark = index.position(path, invalid.at_value);
    Problem {
        line: mark.line,
        column: mark.col + 1,
        message: format!("{path}: {}", invalid.message),
    }
}

/// One file parsed into the model but not validated: part of a config that
/// is validated once merged with others (`skiff control`'s directory, where
/// one file may hold the clusters another's routes name). It keeps where
/// everything is, to place the merged config's problems in this file.
#[derive(Debug)]
pub struct Fragment {
    pub config: Config,
    pub file: String,
    index: Index,
    expanded: Expanded,
}

impl Fragment {
    /// Expands and parses `text` (every unknown key and wrong type, as
    /// [`load_str_with`] reports them), without checking references or
    /// cross-field rules; `file` names it in errors.
    pub fn parse(text: &str, file: &str, vars: &Vars) -> Result<Self, ConfigErrors> {
        let expanded = expand(text, file, |name| vars.get(name))?;
        let parsed = parse(&expanded);
        match (parsed.config, parsed.index) {
            (Some(config), Some(index)) if parsed.problems.is_empty() => Ok(Self {
                config,
                file: file.to_owned(),
                index,
                expanded,
            }),
            _ => Err(in_file(file, parsed.problems)),
        }
    }

    /// `invalid` (found in a config this fragment is part of) placed at
    /// `path` in this file.
    pub fn locate(&self, path: &str, invalid: &validate::Invalid) -> ConfigError {
        let p = place(&self.index, path, invalid);
        ConfigError {
            file: self.file.clone(),
            line: p.line,
            column: self.expanded.original_column(p.line, p.column),
            message: p.message,
        }
    }

    /// Where the entry at `path` starts in this file, for problems that
    /// validation does not find (a name defined twice across files).
    pub fn at(&self, path: &str, message: String) -> ConfigError {
        let mark = self.index.position(path, false);
        ConfigError {
            file: self.file.clone(),
            line: mark.line,
            column: self.expanded.original_column(mark.line, mark.col + 1),
            message,
        }
    }
}

/// What parsing found.
struct Parsed {
    /// The config, if parsing got through (possibly after dropping unknown
    /// keys or standing in for wrong values: then `problems` is not empty,
    /// and the config is only good for finding more problems).
    config: Option<Config>,
    /// Where everything is in the text as written.
    index: Option<Index>,
    /// In original coordinates.
    problems: Vec<Problem>,
    /// Where a stand-in replaced a wrong value: line (of the expanded text)
    /// and path.
    stood_in: Vec<(usize, String)>,
}

/// Parses the expanded text, collecting every unknown key and every value
/// of the wrong type.
fn parse(expanded: &Expanded) -> Parsed {
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
            let p = problem(e.line, e.col + 1, plain_syntax(&e.message));
            return Parsed {
                config: None,
                index: None,
                problems: vec![p],
                stood_in: Vec::new(),
            };
        }
    };

    // Lines where a stand-in replaced a wrong value: validating the stand-in
    // would only repeat the problem already reported there.
    let mut stood_in = Vec::new();
    for _ in 0..=MAX_RETRIES {
        let err = match serde_saphyr::from_str::<Config>(&text) {
            Ok(config) => {
                return Parsed {
                    config: Some(config),
                    index: Some(index),
                    problems,
                    stood_in,
                };
            }
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
        // A value of the wrong type: report it, put a stand-in of a type
        // that parses in its place, and go on, so that one type error does
        // not hide the rest of the file's problems.
        if !msg.starts_with("missing field")
            && let Some(entry) = current.as_ref().and_then(|i| i.value_at(line, col0))
            && let Some(fixed) = stand_in(&text, entry, &msg, (line, col))
        {
            let value = text
                .get(entry.value.byte..entry.value_end.byte)
                .unwrap_or_default()
                .trim();
            let said = match whole_number(&msg) {
                true => format!("{value:?} is not a whole number"),
                false => tidy(&msg),
            };
            let shown = match entry.path.as_str() {
                "" => said,
                path => format!("{path}: {said}"),
            };
            problems.push(problem(line, col, shown));
            stood_in.push((line, entry.path.clone()));
            text = Cow::Owned(fixed);
            continue;
        }
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
        let msg = tidy(&msg);
        let msg = match path {
            Some(path) if !path.is_empty() => format!("{path}: {msg}"),
            _ => msg,
        };
        problems.push(problem(line, col, msg));
        break;
    }
    Parsed {
        config: None,
        index: Some(index),
        problems,
        stood_in,
    }
}

/// Whether a validation problem is about a stand-in rather than the file:
/// on its line, or said of a parent about the key stood in for (`clusters.a:
/// a cluster needs `endpoints:` after `endpoints: 5` became `[]`).
fn about_a_stand_in(p: &Problem, stood_in: &[(usize, String)]) -> bool {
    stood_in.iter().any(|(line, path)| {
        let key = path.rsplit(['.', '[']).next().unwrap_or(path);
        *line == p.line
            || parent(path).is_some_and(|up| {
                p.message.starts_with(&format!("{up}: ")) && p.message.contains(key)
            })
    })
}

/// serde's wording, made ours.
fn tidy(msg: &str) -> String {
    match msg {
        "expected sequence start" => {
            "expected a list: `[a, b]`, or one `- item` per line".to_owned()
        }
        "expected mapping start" => {
            "expected a map: `{ key: value }`, or one `key: value` per line".to_owned()
        }
        _ => msg
            .replace("unknown variant", "unknown value")
            .replace(", set DuplicateKeyPolicy in Options if acceptable", ""),
    }
}

/// serde's "invalid u32" and kin: a number field holding something else.
fn whole_number(msg: &str) -> bool {
    msg.strip_prefix("invalid ")
        .and_then(|t| t.strip_prefix(['u', 'i']))
        .is_some_and(|bits| bits == "size" || bits.bytes().all(|b| b.is_ascii_digit()))
}

/// A YAML syntax error in plain words, with the parser's own words after
/// them for searching. The parser says what it expected; a person wants to
/// know what to change.
fn plain_syntax(parser: &str) -> String {
    const PLAIN: [(&str, &str); 8] = [
        (
            "tabs disallowed",
            "a tab indents this line; YAML indents with spaces only",
        ),
        (
            "did not find expected key",
            "this line is indented differently from the lines around it",
        ),
        (
            "did not find expected '-'",
            "this list item is indented differently from the items before it",
        ),
        (
            "mapping values are not allowed",
            "a `: ` inside a value; quote the value (\"a: b\") or fix the indentation",
        ),
        ("unclosed bracket", "a `[` or `{` is never closed"),
        ("unclosed quote", "a quoted value is never closed"),
        (
            "cannot start any token",
            "a value cannot start with this character; quote the value",
        ),
        (
            "did not find expected node content",
            "a value is missing here",
        ),
    ];
    match PLAIN.iter().find(|(said, _)| parser.contains(said)) {
        Some((_, plain)) => format!("not valid YAML: {plain} (parser: {parser})"),
        None => format!("not valid YAML: {parser}"),
    }
}

/// `text` with the value of `entry` replaced by the first stand-in that
/// gets parsing past it, or `None` when none does. The stand-ins cover the
/// model's value types: an enum's first value (named in serde's message), a
/// number, a duration, a boolean, a list, a map, a string.
fn stand_in(text: &str, entry: &Entry, msg: &str, at: (usize, usize)) -> Option<String> {
    let variant = msg
        .split_once("expected one of ")
        .and_then(|(_, list)| list.split([',', ' ']).find(|v| !v.is_empty()))
        .map(|v| v.trim_matches('`').to_owned());
    let (from, to) = (entry.value.byte, entry.value_end.byte.min(text.len()));
    if from >= to || !text.is_char_boundary(from) || !text.is_char_boundary(to) {
        return None;
    }
    let candidates = variant
        .into_iter()
        .chain(["1", "1s", "false", "[]", "{}", "x"].map(str::to_owned));
    candidates.into_iter().find_map(|value| {
        let mut fixed = text.to_owned();
        fixed.replace_range(from..to, &value);
        match serde_saphyr::from_str::<Config>(&fixed) {
            Ok(_) => Some(fixed),
            Err(e) if location(&e) != at => Some(fixed),
            Err(_) => None,
        }
    })
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
