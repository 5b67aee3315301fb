//! Loading a component's TOML config file so that every error names the file, the line and the
//! field, the way HAProxy and nginx report config errors.
//!
//! Every webstack component (and the topology) reads its config through [`Source`]: parse with
//! serde (`deny_unknown_fields` on every struct), then validate the parsed values and report
//! each problem with [`Source::error_at`], which finds the line of a field from its dotted path
//! (`pools.web.servers[1].address`). The component then works only on validated types.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based line, when the problem can be placed in the file.
    pub line: Option<usize>,
    /// Dotted path of the field (`hosts[2].address`); empty for whole-file problems.
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Every problem found in one config file; a config is rejected as a whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> Self {
        ConfigErrors(vec![e])
    }
}

/// The text of one config file, kept to place errors found after parsing.
#[derive(Debug, Clone)]
pub struct Source {
    path: PathBuf,
    text: String,
}

impl Source {
    /// Reads `path`; an unreadable file is a [`ConfigError`] naming it.
    pub fn read(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref().to_path_buf();
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Source { path, text }),
            Err(e) => Err(ConfigError {
                file: path,
                line: None,
                field: String::new(),
                message: format!("cannot read config file: {e}"),
            }),
        }
    }

    /// A source from text already in memory (tests, rendered configs).
    pub fn from_text(path: impl AsRef<Path>, text: impl Into<String>) -> Self {
        Source { path: path.as_ref().to_path_buf(), text: text.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// Deserializes the whole file; a syntax error, an unknown field or a wrong type is
    /// reported with its line and the path of the field it sits in.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, ConfigError> {
        toml::from_str(&self.text).map_err(|e| {
            let span = e.span();
            let field = span.as_ref().map(|s| self.field_containing(s)).unwrap_or_default();
            ConfigError {
                file: self.path.clone(),
                line: span.map(|s| self.line_of(s.start)),
                field,
                message: e.message().trim().to_string(),
            }
        })
    }

    /// An error about the field at `field` (dotted path, `[i]` for array items), placed on the
    /// line where that field, or its nearest enclosing table, is written.
    pub fn error_at(&self, field: &str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.path.clone(),
            line: self.locate(field).map(|span| self.line_of(span.start)),
            field: field.to_string(),
            message: message.into(),
        }
    }

    /// The byte span of the value at `field`, or of the deepest enclosing part that exists.
    pub fn locate(&self, field: &str) -> Option<Range<usize>> {
        let root = DeTable::parse(&self.text).ok()?;
        let mut best: Option<Range<usize>> = None;
        let mut current: Option<&Spanned<DeValue<'_>>> = None;
        for step in parse_path(field) {
            let next = match (&step, current) {
                (PathStep::Key(k), None) => lookup_key(root.get_ref(), k),
                (PathStep::Key(k), Some(v)) => v.get_ref().as_table().and_then(|t| lookup_key(t, k)),
                (PathStep::Index(i), Some(v)) => v.get_ref().get(*i),
                (PathStep::Index(_), None) => None,
            };
            match next {
                Some(v) => {
                    best = Some(v.span());
                    current = Some(v);
                }
                None => break,
            }
        }
        best
    }

    fn line_of(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end].iter().filter(|&&b| b == b'\n').count() + 1
    }

    /// The dotted path of the deepest value whose span holds `span`.
    fn field_containing(&self, span: &Range<usize>) -> String {
        let Ok(root) = DeTable::parse(&self.text) else {
            return String::new();
        };
        let mut path = String::new();
        descend_table(root.get_ref(), span, &mut path);
        path
    }
}

enum PathStep<'a> {
    Key(&'a str),
    Index(usize),
}

fn parse_path(field: &str) -> Vec<PathStep<'_>> {
    let mut steps = Vec::new();
    for part in field.split('.') {
        let (key, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            steps.push(PathStep::Key(key));
        }
        // `[i]` suffixes; anything else after the key is not a path and ends the part.
        while let Some((index, after)) = rest.strip_prefix('[').and_then(|r| r.split_once(']')) {
            match index.parse() {
                Ok(i) => steps.push(PathStep::Index(i)),
                Err(_) => break,
            }
            rest = after;
        }
    }
    steps
}

fn lookup_key<'r, 'i>(table: &'r DeTable<'i>, key: &str) -> Option<&'r Spanned<DeValue<'i>>> {
    table.iter().find(|(k, _)| k.get_ref().as_ref() == key).map(|(_, v)| v)
}

fn contains(outer: &Range<usize>, inner: &Range<usize>) -> bool {
    outer.start <= inner.start && inner.end <= outer.end.max(outer.start + 1)
}

/// The bytes a value covers, children included: the span of an `[[array]]` table holds only
/// its header line, its fields come after it.
fn extent(value: &Spanned<DeValue<'_>>) -> Range<usize> {
    let mut range = value.span();
    let mut widen = |r: Range<usize>| {
        range.start = range.start.min(r.start);
        range.end = range.end.max(r.end);
    };
    match value.get_ref() {
        DeValue::Table(t) => t.iter().for_each(|(k, v)| {
            widen(k.span());
            widen(extent(v));
        }),
        DeValue::Array(items) => items.iter().for_each(|v| widen(extent(v))),
        _ => {}
    }
    range
}

fn descend_table(table: &DeTable<'_>, span: &Range<usize>, path: &mut String) {
    for (k, v) in table.iter() {
        // A key's own span counts too: "unknown field" errors point at the key.
        if contains(&extent(v), span) || contains(&k.span(), span) {
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(k.get_ref());
            descend_value(v.get_ref(), span, path);
            return;
        }
    }
}

fn descend_value(value: &DeValue<'_>, span: &Range<usize>, path: &mut String) {
    match value {
        DeValue::Table(t) => descend_table(t, span, path),
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                if contains(&extent(item), span) {
                    path.push_str(&format!("[{i}]"));
                    descend_value(item.get_ref(), span, path);
                    return;
                }
            }
        }
        _ => {}
    }
}

/// The file of an embedded SQLite database's URL, written as sqlx writes them: `sqlite://PATH`,
/// an absolute path as `sqlite:///var/lib/shop.db`, a relative one as `sqlite://shop.db`
/// (relative to what the caller says: the config file's directory, the state dir).
pub fn sqlite_file(url: &str) -> Result<PathBuf, String> {
    if url.starts_with("sqlite::memory:") || url.contains(":memory:") || url.contains("mode=memory") {
        return Err(format!("`{url}` is in memory: the shop would be forgotten at every restart; give a file"));
    }
    let Some(path) = url.strip_prefix("sqlite://") else {
        return Err(format!("`{url}` is not a database URL; expected sqlite://PATH (an embedded SQLite file)"));
    };
    if path.contains('?') || path.contains('#') {
        return Err(format!("`{url}`: options in the URL are not supported; give only the file"));
    }
    if path.is_empty() || path.ends_with('/') {
        return Err(format!("`{url}` names no file; expected sqlite://PATH"));
    }
    Ok(PathBuf::from(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Conf {
        name: String,
        #[serde(default)]
        servers: Vec<Server>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Server {
        address: String,
        weight: u32,
    }

    const TEXT: &str =
        "name = \"web\"\n\n[[servers]]\naddress = \"a\"\nweight = 1\n\n[[servers]]\naddress = \"b\"\nweight = 2\n";

    #[test]
    fn error_at_finds_the_line_of_an_array_item_field() {
        let src = Source::from_text("t.toml", TEXT);
        let e = src.error_at("servers[1].address", "bad");
        assert_eq!(e.line, Some(8));
        assert_eq!(e.to_string(), "t.toml:8: servers[1].address: bad");
    }

    #[test]
    fn error_at_a_missing_field_falls_back_to_its_table() {
        let src = Source::from_text("t.toml", TEXT);
        assert_eq!(src.error_at("servers[0].port", "missing").line, Some(3));
        assert_eq!(src.error_at("nothing", "missing").line, None);
    }

    #[test]
    fn parse_error_names_line_and_field_of_a_wrong_type() {
        let src = Source::from_text("t.toml", TEXT.replace("weight = 2", "weight = \"x\""));
        let e = src.parse::<Conf>().unwrap_err();
        assert_eq!(e.line, Some(9), "{e}");
        assert_eq!(e.field, "servers[1].weight", "{e}");
    }

    #[test]
    fn parse_error_names_an_unknown_field() {
        let src = Source::from_text("t.toml", TEXT.replace("weight = 1", "weight = 1\nwieght = 3"));
        let e = src.parse::<Conf>().unwrap_err();
        assert_eq!(e.line, Some(6), "{e}");
        assert!(e.message.contains("unknown field `wieght`"), "{e}");
        assert_eq!(e.field, "servers[0].wieght", "{e}");
    }

    #[test]
    fn odd_field_paths_do_not_panic() {
        let src = Source::from_text("t.toml", TEXT);
        for path in ["[[IIIII]]", "]]", "servers[", "servers[x].address", "servers[0]]", "..", ""] {
            let _ = src.error_at(path, "x");
        }
        assert_eq!(src.locate("servers[1]").map(|s| src.line_of(s.start)), Some(7));
    }

    #[test]
    fn syntax_error_has_a_line() {
        let src = Source::from_text("t.toml", "name = \"web\"\nservers = [\n");
        let e = src.parse::<Conf>().unwrap_err();
        assert!(e.line.is_some(), "{e}");
    }

    #[test]
    fn sqlite_urls_name_a_file() {
        assert_eq!(sqlite_file("sqlite:///var/lib/shop.db"), Ok(PathBuf::from("/var/lib/shop.db")));
        assert_eq!(sqlite_file("sqlite://shop.db"), Ok(PathBuf::from("shop.db")));
        assert!(sqlite_file("sqlite::memory:").unwrap_err().contains("in memory"));
        assert!(sqlite_file("mysql://db/shop").unwrap_err().contains("expected sqlite://PATH"));
        assert!(sqlite_file("sqlite://").unwrap_err().contains("names no file"));
        assert!(sqlite_file("sqlite://shop.db?mode=ro").unwrap_err().contains("options"));
    }
}
