//! Just enough SQL lexing to find a query's `$n` placeholders, without I/O.
//!
//! # Contract
//! [`placeholders`] lists every `$n` that PostgreSQL itself would read as a parameter: those
//! inside string literals (`'...'`, `E'...'`), quoted identifiers (`"..."`), dollar-quoted
//! strings (`$tag$...$tag$`), line comments (`--`) and block comments (`/* */`, nested) are text,
//! not parameters, and `$` inside an identifier (`a$1`) is part of the identifier.
//! [`substitute`] rewrites each placeholder with another expression, leaving everything else byte
//! for byte as written; the batch statement is built with it (see the crate docs).
//!
//! # Failure
//! An unterminated literal, identifier or comment is an error naming what was left open, so a
//! query that PostgreSQL would reject is reported by `validate`, before any connection.

use std::ops::Range;

/// A `$n` placeholder found in a query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placeholder {
    /// Its number (`$2` -> 2).
    pub number: usize,
    /// Where it is in the query text, `$` included.
    pub span: Range<usize>,
}

/// Every placeholder of `sql`, in text order.
pub fn placeholders(sql: &str) -> Result<Vec<Placeholder>, String> {
    let bytes = sql.as_bytes();
    let mut found = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        match c {
            b'\'' => {
                // E'...' strings (the E was consumed as an identifier char) honour backslash
                // escapes; standard strings only the doubled quote.
                let escapes =
                    i > 0 && matches!(bytes[i - 1], b'e' | b'E') && !is_ident(bytes, i - 1);
                i = skip_quoted(bytes, i, b'\'', escapes).ok_or("unterminated string literal")?;
            }
            b'"' => {
                i = skip_quoted(bytes, i, b'"', false).ok_or("unterminated quoted identifier")?;
            }
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                i = sql[i..].find('\n').map_or(bytes.len(), |n| i + n + 1);
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i = skip_block_comment(bytes, i).ok_or("unterminated /* comment")?;
            }
            b'$' => {
                if bytes.get(i + 1).is_some_and(u8::is_ascii_digit) {
                    let end = i
                        + 1
                        + bytes[i + 1..]
                            .iter()
                            .take_while(|b| b.is_ascii_digit())
                            .count();
                    let number = sql[i + 1..end]
                        .parse()
                        .map_err(|_| format!("placeholder `{}` is out of range", &sql[i..end]))?;
                    found.push(Placeholder {
                        number,
                        span: i..end,
                    });
                    i = end;
                } else if let Some(tag_end) = dollar_tag(bytes, i) {
                    // $tag$ ... $tag$ (the tag may be empty: $$ ... $$).
                    let tag = &sql[i..=tag_end];
                    let body = tag_end + 1;
                    i = sql[body..]
                        .find(tag)
                        .map(|n| body + n + tag.len())
                        .ok_or_else(|| format!("unterminated dollar-quoted string {tag}"))?;
                } else {
                    i += 1;
                }
            }
            _ if is_ident_start(c) => {
                // Skip the whole identifier so a `$` inside it (`a$1`) is not a placeholder.
                i += 1;
                while i < bytes.len() && (is_ident_char(bytes[i])) {
                    i += 1;
                }
            }
            _ => i += 1,
        }
    }
    Ok(found)
}

/// Checks that the placeholders of `sql` are exactly `$1..=$keys`, each used at least once.
pub fn check_placeholders(sql: &str, keys: usize) -> Result<Vec<Placeholder>, String> {
    let found = placeholders(sql)?;
    let mut used = vec![false; keys];
    for p in &found {
        match p.number.checked_sub(1).and_then(|i| used.get_mut(i)) {
            Some(slot) => *slot = true,
            None => {
                return Err(format!(
                    "placeholder `${}` has no entity key: the view has {keys} (bound in order to $1..${keys})",
                    p.number
                ));
            }
        }
    }
    if let Some(missing) = used.iter().position(|u| !u) {
        return Err(format!(
            "the query has no placeholder `${}`: the view has {keys} entity keys and each must be bound ({} found)",
            missing + 1,
            distinct(&found)
        ));
    }
    Ok(found)
}

fn distinct(found: &[Placeholder]) -> usize {
    let mut numbers: Vec<usize> = found.iter().map(|p| p.number).collect();
    numbers.sort_unstable();
    numbers.dedup();
    numbers.len()
}

/// `sql` with each placeholder replaced by `replacement(number)`.
pub fn substitute(
    sql: &str,
    found: &[Placeholder],
    replacement: impl Fn(usize) -> String,
) -> String {
    let mut out = String::with_capacity(sql.len() + found.len() * 16);
    let mut at = 0;
    for p in found {
        out.push_str(&sql[at..p.span.start]);
        out.push_str(&replacement(p.number));
        at = p.span.end;
    }
    out.push_str(&sql[at..]);
    out
}

/// The query without trailing whitespace and semicolons, so it can be nested in another statement.
pub fn trim_statement(sql: &str) -> &str {
    sql.trim_end_matches(|c: char| c.is_whitespace() || c == ';')
}

fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

fn is_ident_char(c: u8) -> bool {
    is_ident_start(c) || c.is_ascii_digit() || c == b'$'
}

/// Whether the byte at `i` continues an identifier that started before it.
fn is_ident(bytes: &[u8], i: usize) -> bool {
    i > 0 && is_ident_char(bytes[i - 1])
}

/// The index just past the closing quote of the quoted text opening at `start`.
fn skip_quoted(bytes: &[u8], start: usize, quote: u8, escapes: bool) -> Option<usize> {
    let mut i = start + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if escapes => i += 2,
            c if c == quote => {
                if bytes.get(i + 1) == Some(&quote) {
                    i += 2;
                } else {
                    return Some(i + 1);
                }
            }
            _ => i += 1,
        }
    }
    None
}

fn skip_block_comment(bytes: &[u8], start: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = start;
    while i + 1 < bytes.len() {
        match (bytes[i], bytes[i + 1]) {
            (b'/', b'*') => {
                depth += 1;
                i += 2;
            }
            (b'*', b'/') => {
                depth -= 1;
                i += 2;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => i += 1,
        }
    }
    None
}

/// The index of the closing `$` of a dollar-quote tag opening at `start`, if it is one.
fn dollar_tag(bytes: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'$' => return Some(i),
            c if c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80 => i += 1,
            _ => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numbers(sql: &str) -> Vec<usize> {
        placeholders(sql)
            .unwrap()
            .into_iter()
            .map(|p| p.number)
            .collect()
    }

    #[test]
    fn finds_placeholders_outside_literals_and_comments() {
        assert_eq!(numbers("SELECT a FROM t WHERE id = $1"), [1]);
        assert_eq!(numbers("SELECT $2::int, $1, $12"), [2, 1, 12]);
        assert_eq!(
            numbers(
                "SELECT '$1', E'\\'$2', \"$3\", $$ $4 $$, $x$ $5 $x$ -- $6\n, /* $7 /* $8 */ */ $9"
            ),
            [9]
        );
        assert_eq!(numbers("SELECT a$1, $1"), [1]);
        assert_eq!(numbers("SELECT 'it''s $1' || $2"), [2]);
        // A standard string does not honour backslash escapes.
        assert_eq!(numbers("SELECT 'a\\' , $1"), [1]);
    }

    #[test]
    fn unterminated_text_is_an_error() {
        assert_eq!(
            placeholders("SELECT 'x").unwrap_err(),
            "unterminated string literal"
        );
        assert!(placeholders("SELECT $a$ x").unwrap_err().contains("$a$"));
        assert!(placeholders("SELECT /* x").is_err());
        assert!(placeholders("SELECT \"x").is_err());
    }

    #[test]
    fn placeholder_count_must_match_the_keys() {
        assert!(check_placeholders("SELECT $1, $2, $1", 2).is_ok());
        let err = check_placeholders("SELECT $1", 2).unwrap_err();
        assert!(err.contains("no placeholder `$2`"), "{err}");
        let err = check_placeholders("SELECT $1, $3", 2).unwrap_err();
        assert!(err.contains("`$3` has no entity key"), "{err}");
        let err = check_placeholders("SELECT '$1'", 1).unwrap_err();
        assert!(err.contains("no placeholder `$1`"), "{err}");
    }

    #[test]
    fn substitutes_only_placeholders() {
        let sql = "SELECT '$1', a FROM t WHERE id = $1 AND b = $2 OR id = $1;";
        let found = placeholders(sql).unwrap();
        assert_eq!(
            trim_statement(&substitute(sql, &found, |n| format!("k.k{n}"))),
            "SELECT '$1', a FROM t WHERE id = k.k1 AND b = k.k2 OR id = k.k1"
        );
    }
}
