//! `${VAR}` expansion, done on the text before YAML parsing, with the
//! fallback forms shells and Docker Compose accept: `${VAR:-default}`,
//! `${VAR-default}`, `${VAR:?message}` and `${VAR?message}`.
//!
//! Expanding text rather than parsed values lets a variable appear anywhere a
//! value can (inside a flow mapping, as part of a longer scalar, unquoted), as
//! Compose and envsubst users expect. Two rules keep error positions honest:
//! a value may not contain a line break (so every line keeps its number), and
//! every replacement is recorded so that a column in the expanded text can be
//! mapped back to the column the user wrote.
//!
//! Comments are left alone, so that a commented-out `${OLD_VAR}` is not an
//! error. Telling a comment from a `#` inside a value takes a little lexing:
//! quoted scalars and block scalars (`|`, `>`) are tracked well enough for
//! config files; see the tests for the cases covered.

use std::collections::BTreeMap;

/// Where `${NAME}` takes its values: the process environment, under values
/// set by the program itself (`skiff demo` names its backends' ports this
/// way, without touching the environment its children would inherit).
#[derive(Debug, Clone, Default)]
pub struct Vars {
    set: BTreeMap<String, String>,
}

impl Vars {
    /// The process environment alone.
    pub fn process() -> Self {
        Self::default()
    }

    /// `name` is `value`, whatever the environment says.
    pub fn with(mut self, name: &str, value: impl Into<String>) -> Self {
        self.set.insert(name.to_owned(), value.into());
        self
    }

    /// The value of `name`, if set.
    pub fn get(&self, name: &str) -> Option<String> {
        self.set
            .get(name)
            .cloned()
            .or_else(|| std::env::var(name).ok())
    }
}

/// A problem found while expanding, at a 1-based line and column of the
/// original text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EnvProblem {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// The expanded text and the column shifts each replacement introduced.
#[derive(Debug, Clone, Default)]
pub(crate) struct Expanded {
    pub text: String,
    /// Per 1-based line, the replacements on it in column order.
    shifts: BTreeMap<usize, Vec<Shift>>,
}

/// One replacement on a line, in characters, 0-based.
#[derive(Debug, Clone, Copy)]
struct Shift {
    original_col: usize,
    original_len: usize,
    expanded_col: usize,
    expanded_len: usize,
}

impl Expanded {
    /// Maps a 1-based column of the expanded text back to the original text.
    /// A column inside a replaced value maps to the `$` that produced it.
    pub fn original_column(&self, line: usize, column: usize) -> usize {
        let Some(shifts) = self.shifts.get(&line) else {
            return column;
        };
        let col0 = column.saturating_sub(1);
        let mut delta: isize = 0;
        for s in shifts {
            if col0 < s.expanded_col {
                break;
            }
            if col0 < s.expanded_col + s.expanded_len {
                return s.original_col + 1;
            }
            delta += s.original_len as isize - s.expanded_len as isize;
        }
        (col0 as isize + delta).max(0) as usize + 1
    }
}

/// Replaces `${NAME}` with `lookup(NAME)` (or its fallback) and `$$` with
/// `$`, outside comments.
///
/// Every problem is reported, not only the first: an unset variable, an
/// unterminated `${`, a name that is not `[A-Za-z_][A-Za-z0-9_]*`, and a value
/// holding a line break.
pub(crate) fn expand(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Expanded, Vec<EnvProblem>> {
    let mut out = Expanded {
        text: String::with_capacity(text.len()),
        shifts: BTreeMap::new(),
    };
    let mut problems = Vec::new();
    let mut lexer = Lexer::default();

    for (i, line) in text.split_inclusive('\n').enumerate() {
        let line_no = i + 1;
        let comment_at = lexer.comment_start(line);
        let mut chars = line.char_indices().peekable();
        // Column counters in characters, 0-based.
        let (mut col, mut out_col) = (0usize, 0usize);
        while let Some((at, c)) = chars.next() {
            let in_comment = comment_at.is_some_and(|start| at >= start);
            if c != '$' || in_comment {
                out.text.push(c);
                col += 1;
                out_col += 1;
                continue;
            }
            match chars.peek().map(|&(_, n)| n) {
                Some('$') => {
                    chars.next();
                    out.text.push('$');
                    out.shifts.entry(line_no).or_default().push(Shift {
                        original_col: col,
                        original_len: 2,
                        expanded_col: out_col,
                        expanded_len: 1,
                    });
                    col += 2;
                    out_col += 1;
                }
                Some('{') => {
                    let rest = &line[at + 2..];
                    let end = rest
                        .find(['}', '\n'])
                        .filter(|&e| rest.as_bytes()[e] == b'}');
                    let Some(end) = end else {
                        problems.push(EnvProblem {
                            line: line_no,
                            column: col + 1,
                            message: "`${` without a closing `}` (write `$$` for a literal `$`)"
                                .to_owned(),
                        });
                        out.text.push(c);
                        col += 1;
                        out_col += 1;
                        continue;
                    };
                    let name = &rest[..end];
                    let original_len = name.chars().count() + 3;
                    // Skip `{`, the name and `}`.
                    for _ in 0..original_len - 1 {
                        chars.next();
                    }
                    let (name, fallback) = split_fallback(name);
                    let problem = |message: String| EnvProblem {
                        line: line_no,
                        column: col + 1,
                        message,
                    };
                    let found = lookup(name);
                    let value = if !valid_name(name) {
                        problems.push(problem(format!(
                            "`${{{name}}}`: a variable name is letters, digits and `_`, not starting with a digit"
                        )));
                        String::new()
                    } else {
                        match (found, fallback) {
                            (
                                Some(v),
                                Some(Fallback {
                                    when_empty: true, ..
                                }),
                            ) if v.is_empty() => fallback
                                .map(|f| f.resolve(name, &mut problems, &problem))
                                .unwrap_or_default(),
                            (None, Some(f)) => f.resolve(name, &mut problems, &problem),
                            (None, None) => {
                                problems.push(problem(format!(
                                    "environment variable {name} is not set (write `${{{name}:-default}}` to give it a default)"
                                )));
                                String::new()
                            }
                            (Some(v), _) if v.contains(['\n', '\r']) => {
                                problems.push(problem(format!(
                                    "environment variable {name} contains a line break, which a config value cannot hold"
                                )));
                                String::new()
                            }
                            (Some(v), _) => v,
                        }
                    };
                    let expanded_len = value.chars().count();
                    out.text.push_str(&value);
                    out.shifts.entry(line_no).or_default().push(Shift {
                        original_col: col,
                        original_len,
                        expanded_col: out_col,
                        expanded_len,
                    });
                    col += original_len;
                    out_col += expanded_len;
                }
                // A lone `$` is just a character, as in `pa$word`.
                _ => {
                    out.text.push(c);
                    col += 1;
                    out_col += 1;
                }
            }
        }
    }

    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

/// What `${NAME...}` says to do when NAME is unset (or empty): the forms
/// POSIX shells and Docker Compose accept.
#[derive(Debug, Clone, Copy)]
struct Fallback<'a> {
    /// `:-` and `:?` also apply to a variable set to the empty string.
    when_empty: bool,
    /// `?`: fail with this message instead of using a default.
    fail: bool,
    text: &'a str,
}

impl Fallback<'_> {
    fn resolve(
        self,
        name: &str,
        problems: &mut Vec<EnvProblem>,
        problem: &impl Fn(String) -> EnvProblem,
    ) -> String {
        if !self.fail {
            return self.text.to_owned();
        }
        let why = match self.text {
            "" => "is required".to_owned(),
            text => text.to_owned(),
        };
        let state = if self.when_empty {
            "not set or empty"
        } else {
            "not set"
        };
        problems.push(problem(format!(
            "environment variable {name} is {state}: {why}"
        )));
        String::new()
    }
}

/// Splits `NAME:-default`, `NAME-default`, `NAME:?message` and
/// `NAME?message` into the name and what to do without it.
fn split_fallback(inner: &str) -> (&str, Option<Fallback<'_>>) {
    let Some(at) = inner.find([':', '-', '?']) else {
        return (inner, None);
    };
    let (name, rest) = inner.split_at(at);
    let (when_empty, rest) = match rest.strip_prefix(':') {
        Some(r) => (true, r),
        None => (false, rest),
    };
    let (fail, text) = match (rest.strip_prefix('-'), rest.strip_prefix('?')) {
        (Some(text), _) => (false, text),
        (None, Some(text)) => (true, text),
        // `${A:B}`: not a form we know; the name check reports it whole.
        (None, None) => return (inner, None),
    };
    let fallback = Fallback {
        when_empty,
        fail,
        text,
    };
    (name, Some(fallback))
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Just enough YAML lexing to find where a line's comment starts.
#[derive(Debug, Default)]
struct Lexer {
    /// A quoted scalar left open at the end of the previous line.
    quote: Option<char>,
    /// Inside a block scalar whose parent line had this indentation.
    block_parent_indent: Option<usize>,
}

impl Lexer {
    /// The byte offset of the `#` that starts a comment on `line`, if any.
    fn comment_start(&mut self, line: &str) -> Option<usize> {
        let body = line.trim_end_matches(['\n', '\r']);
        let indent = body.len() - body.trim_start_matches(' ').len();
        if let Some(parent) = self.block_parent_indent {
            // Blank lines and deeper lines belong to the block scalar, which
            // has no comments at all.
            if body.trim().is_empty() || indent > parent {
                return None;
            }
            self.block_parent_indent = None;
        }

        let bytes = body.as_bytes();
        let mut comment = None;
        // A quote opens a quoted scalar only where a scalar can start.
        let mut scalar_may_start = true;
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            match self.quote {
                Some('"') => {
                    if b == b'\\' {
                        i += 1;
                    } else if b == b'"' {
                        self.quote = None;
                        scalar_may_start = false;
                    }
                }
                Some(_) => {
                    if b == b'\'' {
                        if bytes.get(i + 1) == Some(&b'\'') {
                            i += 1;
                        } else {
                            self.quote = None;
                            scalar_may_start = false;
                        }
                    }
                }
                None => match b {
                    b'#' if i == 0 || matches!(bytes[i - 1], b' ' | b'\t') => {
                        comment = Some(i);
                        break;
                    }
                    b'"' | b'\'' if scalar_may_start => self.quote = Some(b as char),
                    b' ' | b'\t' => {}
                    b'[' | b'{' | b',' => scalar_may_start = true,
                    b'-' | b':' | b'?' => {
                        scalar_may_start = matches!(bytes.get(i + 1), None | Some(b' ' | b'\t'))
                    }
                    _ => scalar_may_start = false,
                },
            }
            i += 1;
        }

        // A line whose content ends in a block indicator (`|`, `>-`, `|2`...)
        // opens a block scalar on the following lines.
        if self.quote.is_none() {
            let content = body[..comment.unwrap_or(body.len())].trim_end();
            let tail =
                content.trim_end_matches(|c: char| c == '+' || c == '-' || c.is_ascii_digit());
            let opens_block = (tail.ends_with('|') || tail.ends_with('>'))
                && tail[..tail.len() - 1].trim_end().ends_with([':', '-'])
                || tail == "|"
                || tail == ">";
            if opens_block {
                self.block_parent_indent = Some(indent);
            }
        }
        comment
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("10.0.0.1".to_owned()),
            "PORT" => Some("8080".to_owned()),
            "EMPTY" => Some(String::new()),
            "MULTI" => Some("a\nb".to_owned()),
            _ => None,
        }
    }

    fn ok(text: &str) -> String {
        expand(text, env).unwrap().text
    }

    fn errs(text: &str) -> Vec<(usize, usize, String)> {
        expand(text, env)
            .unwrap_err()
            .into_iter()
            .map(|p| (p.line, p.column, p.message))
            .collect()
    }

    #[test]
    fn expands_values() {
        let cases = [
            ("a: ${HOST}:${PORT}\n", "a: 10.0.0.1:8080\n"),
            ("a: { b: ${HOST} }", "a: { b: 10.0.0.1 }"),
            ("a: \"${PORT}\"", "a: \"8080\""),
            ("a: x${EMPTY}y", "a: xy"),
            ("a: $$HOME $${HOST} pa$word $", "a: $HOME ${HOST} pa$word $"),
            (
                "a: 1 # ${UNSET} in a comment",
                "a: 1 # ${UNSET} in a comment",
            ),
            ("# ${UNSET}\na: ${PORT}", "# ${UNSET}\na: 8080"),
            ("a: \"x # ${PORT}\"", "a: \"x # 8080\""),
            ("a: 'it''s # ${PORT}'", "a: 'it''s # 8080'"),
            (
                "a: |\n  # ${PORT}\n\n  x\nb: 1 # ${UNSET}",
                "a: |\n  # 8080\n\n  x\nb: 1 # ${UNSET}",
            ),
            ("a: don't # ${UNSET}", "a: don't # ${UNSET}"),
            ("a: \"multi\n  # ${PORT}\"", "a: \"multi\n  # 8080\""),
        ];
        for (text, want) in cases {
            assert_eq!(ok(text), want, "{text:?}");
        }
    }

    #[test]
    fn reports_every_problem_at_its_dollar() {
        let got = errs("a: ${NOPE}\nb:  x${OTHER} ${MULTI}\nc: ${1X} ${OPEN\n");
        let want = [
            (1, 4, "environment variable NOPE is not set"),
            (2, 6, "environment variable OTHER is not set"),
            (2, 15, "environment variable MULTI contains a line break"),
            (3, 4, "`${1X}`: a variable name is letters"),
            (3, 10, "`${` without a closing `}`"),
        ];
        assert_eq!(got.len(), want.len(), "{got:?}");
        for (g, w) in got.iter().zip(want) {
            assert_eq!((g.0, g.1), (w.0, w.1), "{g:?}");
            assert!(g.2.contains(w.2), "{g:?} should contain {:?}", w.2);
        }
    }

    #[test]
    fn defaults_and_required_variables() {
        let cases = [
            ("a: ${UNSET:-8080}", "a: 8080"),
            ("a: ${UNSET-8080}", "a: 8080"),
            ("a: ${EMPTY:-8080}", "a: 8080"),
            ("a: x${EMPTY-8080}y", "a: xy"),
            ("a: ${PORT:-1}", "a: 8080"),
            ("a: ${UNSET:-127.0.0.1:80}", "a: 127.0.0.1:80"),
            ("a: ${UNSET:-}", "a: "),
            ("a: ${PORT:?set PORT}", "a: 8080"),
        ];
        for (text, want) in cases {
            assert_eq!(ok(text), want, "{text:?}");
        }
        let got =
            errs("a: ${UNSET:?set it to the app's port}\nb: ${EMPTY:?}\nc: ${EMPTY?x}${UNSET}");
        let want = [
            (
                1,
                4,
                "environment variable UNSET is not set or empty: set it to the app's port",
            ),
            (
                2,
                4,
                "environment variable EMPTY is not set or empty: is required",
            ),
            (
                3,
                14,
                "environment variable UNSET is not set (write `${UNSET:-default}` to give it a default)",
            ),
        ];
        assert_eq!(got.len(), want.len(), "{got:?}");
        for (g, w) in got.iter().zip(want) {
            assert_eq!((g.0, g.1, g.2.as_str()), w);
        }
        // A default keeps column mapping honest like any value.
        let e = expand("k: ${UNSET:-ab} x", env).unwrap();
        assert_eq!(e.text, "k: ab x");
        assert_eq!(e.original_column(1, 7), 17);
    }

    #[test]
    fn maps_columns_back() {
        // `${HOST}` (7 chars) becomes `10.0.0.1` (8), `$$` (2) becomes `$` (1).
        let e = expand("k: ${HOST} $$ x\nnext: 1", env).unwrap();
        assert_eq!(e.text, "k: 10.0.0.1 $ x\nnext: 1");
        assert_eq!(e.original_column(1, 1), 1);
        assert_eq!(e.original_column(1, 4), 4); // start of the value
        assert_eq!(e.original_column(1, 9), 4); // inside the value
        assert_eq!(e.original_column(1, 13), 12); // the `$` of `$$`
        assert_eq!(e.original_column(1, 15), 15); // `x`
        assert_eq!(e.original_column(2, 7), 7);
    }
}
