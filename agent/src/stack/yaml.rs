//! YAML (and JSON, its subset) into a small tree that remembers the line of every node, so
//! that an error can name the file, line and field.
use std::path::Path;

use yaml_rust2::{
    parser::{Event, MarkedEventReceiver, Parser},
    scanner::Marker,
};

use super::error::StackError;

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Scalar(String),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub value: Value,
    pub line: usize,
}

impl Node {
    pub fn as_map(&self) -> Option<&[(Node, Node)]> {
        match &self.value {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }
    pub fn as_scalar(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar(s) => Some(s),
            _ => None,
        }
    }
    /// The value of `key` in a map node.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.as_map()?.iter().find(|(k, _)| k.as_scalar() == Some(key)).map(|(_, v)| v)
    }
    pub fn kind(&self) -> &'static str {
        match self.value {
            Value::Null => "nothing",
            Value::Scalar(_) => "a scalar",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

/// Deepest nesting of lists and mappings a document may have. Stack files and job records
/// nest a few levels; a deeper tree would be dropped (and walked) recursively, and thousands
/// of levels (`- - - - ...`, found by fuzzing) overflow the stack.
pub const MAX_DEPTH: usize = 64;

#[derive(Default)]
struct Builder {
    stack: Vec<(Node, Option<Node>)>,
    root: Option<Node>,
    error: Option<(usize, String)>,
    /// Levels opened below `MAX_DEPTH`, skipped.
    too_deep: usize,
}

impl Builder {
    fn push(&mut self, node: Node) {
        match self.stack.last_mut() {
            None => {
                if self.root.is_none() {
                    self.root = Some(node);
                }
            }
            Some((parent, pending_key)) => match &mut parent.value {
                Value::Seq(items) => items.push(node),
                Value::Map(entries) => match pending_key.take() {
                    None => *pending_key = Some(node),
                    Some(k) => entries.push((k, node)),
                },
                _ => {}
            },
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let line = mark.line();
        if self.too_deep > 0 || self.stack.len() >= MAX_DEPTH {
            match ev {
                Event::SequenceStart(..) | Event::MappingStart(..) => {
                    if self.error.is_none() {
                        let msg = format!("nested deeper than {MAX_DEPTH} levels");
                        self.error = Some((line, msg));
                    }
                    self.too_deep += 1;
                    return;
                }
                Event::SequenceEnd | Event::MappingEnd if self.too_deep > 0 => {
                    self.too_deep -= 1;
                    return;
                }
                _ if self.too_deep > 0 => return,
                _ => {}
            }
        }
        match ev {
            Event::Scalar(s, style, _, _) => {
                let plain = matches!(style, yaml_rust2::scanner::TScalarStyle::Plain);
                let value = if plain && (s == "~" || s == "null" || s.is_empty()) {
                    Value::Null
                } else {
                    Value::Scalar(s)
                };
                self.push(Node { value, line });
            }
            Event::SequenceStart(..) => {
                self.stack.push((Node { value: Value::Seq(Vec::new()), line }, None))
            }
            Event::MappingStart(..) => {
                self.stack.push((Node { value: Value::Map(Vec::new()), line }, None))
            }
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some((node, _)) = self.stack.pop() {
                    self.push(node);
                }
            }
            Event::Alias(_) if self.error.is_none() => {
                self.error = Some((line, "YAML aliases are not supported in stack files".into()));
            }
            _ => {}
        }
    }
}

/// Stack files are often indented with tabs (seed 000's examples are), which YAML forbids:
/// each leading tab becomes two spaces. Tabs elsewhere are left alone.
pub fn detab(text: &str) -> String {
    text.lines()
        .map(|l| {
            let tabs = l.len() - l.trim_start_matches('\t').len();
            let rest = &l[tabs..];
            // NB: a mix like "\t  key" keeps its spaces after the expanded tabs.
            format!("{}{rest}", "  ".repeat(tabs))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Parses one document. Empty input is `Null`.
pub fn parse(file: &Path, text: &str) -> Result<Node, StackError> {
    let text = detab(text);
    let mut builder = Builder::default();
    let mut parser = Parser::new_from_str(&text);
    // NB: events one by one, not `Parser::load`: that recurses once per level of nesting, and
    // the builder stops at `MAX_DEPTH`.
    loop {
        let (ev, mark) = parser.next_token().map_err(|e| {
            StackError::new(file, e.marker().line(), "", format!("invalid YAML: {}", e.info()))
        })?;
        if matches!(ev, Event::DocumentEnd | Event::StreamEnd) || builder.error.is_some() {
            break;
        }
        builder.on_event(ev, mark);
    }
    if let Some((line, msg)) = builder.error {
        return Err(StackError::new(file, line, "", msg));
    }
    Ok(builder.root.unwrap_or(Node { value: Value::Null, line: 1 }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_lines_and_reads_tab_indented_files() {
        let n = parse(Path::new("t.yml"), "mongo:\n\ttype: job\n\tports:\n\t\t- 27017\n").unwrap();
        let mongo = n.get("mongo").unwrap();
        assert_eq!(mongo.get("type").unwrap().as_scalar(), Some("job"));
        let ports = mongo.get("ports").unwrap();
        assert_eq!(ports.line, 4);
        assert!(
            matches!(&ports.value, Value::Seq(v) if v[0].as_scalar() == Some("27017") && v[0].line == 4)
        );
    }

    #[test]
    fn deep_nesting_is_refused_not_a_stack_overflow() {
        for text in ["- ".repeat(30_000), "[".repeat(30_000), "{a: ".repeat(30_000)] {
            let e = parse(Path::new("deep.yml"), &text).unwrap_err();
            assert!(e.to_string().contains("deep") || e.to_string().contains("invalid"), "{e}");
        }
        let ok = format!("{}x", "- ".repeat(MAX_DEPTH));
        assert!(parse(Path::new("ok.yml"), &ok).is_ok());
    }

    #[test]
    fn invalid_yaml_names_the_line() {
        let e = parse(Path::new("bad.yml"), "a: 1\nb: [1, 2\n").unwrap_err();
        assert!(e.line >= 2, "{e}");
        assert!(e.to_string().starts_with("bad.yml:"), "{e}");
    }
}
