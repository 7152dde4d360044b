//! A renderer for the part of Helm's Go templates that `deploy/helm/ferry` uses, so the chart can
//! be checked where `helm` is not installed. It is not Helm: it knows only what the chart needs,
//! and refuses anything else loudly rather than guessing.
//!
//! Supported: text with `{{ }}` actions and their `{{-`/`-}}` whitespace trimming; comments
//! `{{/* */}}`; `if`/`else`/`end`, `range` over a list (dot is the element), `define` and
//! `include`; pipelines (`a | f x`, the piped value last); operands `.`, `.A.B`, `$`, `$.A.B`,
//! strings and integers; the functions `include`, `toYaml`, `toJson`, `nindent`, `indent`,
//! `quote` and `default`.
//!
//! Stricter than Helm on purpose: printing a missing value is an error (Helm prints nothing), and
//! so is a path through a missing map (`.Values.typo.enabled`), even in an `if`.

use std::collections::BTreeMap;

use serde_json::Value;

/// Parsed templates: the named ones (`define`) of every file, and each file's body.
#[derive(Default)]
pub struct Templates {
    defines: BTreeMap<String, Vec<Node>>,
}

#[derive(Debug, Clone)]
enum Node {
    Text(String),
    Print(Pipeline),
    If(Pipeline, Vec<Node>, Vec<Node>),
    Range(Pipeline, Vec<Node>),
}

type Pipeline = Vec<Command>;
type Command = Vec<Operand>;

#[derive(Debug, Clone)]
enum Operand {
    /// `.A.B` (from dot) or `$.A.B` (from the root); empty path: dot or root itself.
    Field {
        root: bool,
        path: Vec<String>,
    },
    Str(String),
    Int(i64),
    Func(String),
}

/// One piece of a template file after lexing: text, or the inside of an action.
enum Token {
    Text(String),
    Action(String),
}

impl Templates {
    /// Adds a file: its `define`s become includable; its body is returned for `render`.
    pub fn add(&mut self, name: &str, text: &str) -> Result<NodeList, String> {
        let tokens = lex(text).map_err(|e| format!("{name}: {e}"))?;
        let mut pos = 0;
        let (nodes, end) = parse(&tokens, &mut pos, &mut self.defines).map_err(|e| format!("{name}: {e}"))?;
        if let Some(end) = end {
            return Err(format!("{name}: unexpected {{{{{end}}}}}"));
        }
        Ok(NodeList(nodes))
    }

    /// Renders a file's body with `data` as both dot and `$`.
    pub fn render(&self, body: &NodeList, data: &Value) -> Result<String, String> {
        let mut out = String::new();
        self.exec(&body.0, data, data, &mut out)?;
        Ok(out)
    }

    fn exec(&self, nodes: &[Node], dot: &Value, root: &Value, out: &mut String) -> Result<(), String> {
        for node in nodes {
            match node {
                Node::Text(t) => out.push_str(t),
                Node::Print(p) => match self.pipeline(p, dot, root)? {
                    Some(v) => out.push_str(&print(&v)?),
                    None => return Err(format!("{p:?} has no value")),
                },
                Node::If(p, then, otherwise) => {
                    let branch = if truthy(self.pipeline(p, dot, root)?.as_ref()) { then } else { otherwise };
                    self.exec(branch, dot, root, out)?;
                }
                Node::Range(p, body) => match self.pipeline(p, dot, root)? {
                    None | Some(Value::Null) => {}
                    Some(Value::Array(items)) => {
                        for item in &items {
                            self.exec(body, item, root, out)?;
                        }
                    }
                    Some(v) => return Err(format!("range over {v} is not supported (lists only)")),
                },
            }
        }
        Ok(())
    }

    /// A pipeline's value; `None` when its last field is missing from an existing map.
    fn pipeline(&self, p: &Pipeline, dot: &Value, root: &Value) -> Result<Option<Value>, String> {
        let mut piped: Option<Option<Value>> = None;
        for cmd in p {
            piped = Some(self.command(cmd, piped, dot, root)?);
        }
        piped.ok_or_else(|| "empty pipeline".to_string())
    }

    fn command(&self, cmd: &[Operand], piped: Option<Option<Value>>, dot: &Value, root: &Value) -> Result<Option<Value>, String> {
        let mut args = Vec::new();
        for op in &cmd[1..] {
            args.push(self.operand(op, dot, root)?);
        }
        args.extend(piped);
        let func = match &cmd[0] {
            Operand::Func(f) => f.as_str(),
            op if args.is_empty() => return self.operand(op, dot, root),
            op => return Err(format!("{op:?} is not a function but has arguments")),
        };
        let want = |n: usize| if args.len() == n { Ok(()) } else { Err(format!("{func} takes {n} arguments, got {}", args.len())) };
        let string = |v: &Option<Value>| match v {
            Some(v) => print(v),
            None => Err(format!("{func} of a missing value")),
        };
        let int = |v: &Option<Value>| v.as_ref().and_then(Value::as_u64).map(|n| n as usize).ok_or_else(|| format!("{func} wants a count"));
        Ok(Some(match func {
            "include" => {
                want(2)?;
                let name = string(&args[0])?;
                let body = self.defines.get(&name).ok_or_else(|| format!("include of undefined template {name:?}"))?;
                let data = args[1].clone().unwrap_or(Value::Null);
                let mut out = String::new();
                self.exec(body, &data, &data, &mut out)?;
                Value::String(out)
            }
            "toYaml" => {
                want(1)?;
                let v = args[0].clone().ok_or("toYaml of a missing value")?;
                let yaml = serde_norway::to_string(&v).map_err(|e| format!("toYaml: {e}"))?;
                Value::String(yaml.trim_end_matches('\n').to_string())
            }
            "toJson" => {
                want(1)?;
                let v = args[0].clone().ok_or("toJson of a missing value")?;
                Value::String(serde_json::to_string(&v).map_err(|e| format!("toJson: {e}"))?)
            }
            "indent" | "nindent" => {
                want(2)?;
                let pad = " ".repeat(int(&args[0])?);
                let text = format!("{pad}{}", string(&args[1])?.replace('\n', &format!("\n{pad}")));
                Value::String(if func == "nindent" { format!("\n{text}") } else { text })
            }
            "quote" => {
                want(1)?;
                Value::String(serde_json::to_string(&string(&args[0])?).map_err(|e| e.to_string())?)
            }
            "default" => {
                want(2)?;
                if truthy(args[1].as_ref()) {
                    return Ok(args[1].clone());
                }
                return Ok(args[0].clone());
            }
            other => return Err(format!("function {other:?} is not supported by this renderer")),
        }))
    }

    fn operand(&self, op: &Operand, dot: &Value, root: &Value) -> Result<Option<Value>, String> {
        match op {
            Operand::Str(s) => Ok(Some(Value::String(s.clone()))),
            Operand::Int(n) => Ok(Some(Value::from(*n))),
            Operand::Func(f) => self.command(&[Operand::Func(f.clone())], None, dot, root),
            Operand::Field { root: from_root, path } => {
                let mut v = if *from_root { root } else { dot };
                for (i, key) in path.iter().enumerate() {
                    match v.get(key) {
                        Some(next) => v = next,
                        None if i + 1 == path.len() && v.is_object() => return Ok(None),
                        None => return Err(format!("no field {key:?} in .{}", path[..i].join("."))),
                    }
                }
                Ok(Some(v.clone()))
            }
        }
    }
}

/// A file's parsed body.
pub struct NodeList(Vec<Node>);

/// Go's truth: false, 0, null, and empty strings, lists and maps are false.
fn truthy(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(Value::Number(n)) => n.as_f64() != Some(0.0),
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Object(o)) => !o.is_empty(),
        Some(Value::Bool(true)) => true,
    }
}

/// How an action prints a value: scalars as Go prints them; lists and maps need toYaml/toJson.
fn print(v: &Value) -> Result<String, String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Bool(b) => Ok(b.to_string()),
        Value::Number(n) if n.is_i64() || n.is_u64() => Ok(n.to_string()),
        other => Err(format!("cannot print {other} (Helm would print it Go's way): use toYaml or toJson")),
    }
}

/// Splits text into text and actions, applying the trim markers and dropping comments.
fn lex(text: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let mut rest = text;
    let mut trim_next = false;
    while let Some(start) = rest.find("{{") {
        let mut before = &rest[..start];
        if trim_next {
            before = before.trim_start_matches(is_space);
        }
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or("an action without }}")?;
        let mut inner = &after[..end];
        if let Some(i) = inner.strip_prefix("- ") {
            before = before.trim_end_matches(is_space);
            inner = i;
        }
        trim_next = false;
        if let Some(i) = inner.strip_suffix(" -") {
            trim_next = true;
            inner = i;
        }
        tokens.push(Token::Text(before.to_string()));
        let inner = inner.trim();
        if inner.starts_with("/*") {
            if !inner.ends_with("*/") {
                return Err(format!("a comment must end with */ right before the delimiter: {{{{{inner}}}}}"));
            }
        } else {
            tokens.push(Token::Action(inner.to_string()));
        }
        rest = &after[end + 2..];
    }
    tokens.push(Token::Text(if trim_next { rest.trim_start_matches(is_space) } else { rest }.to_string()));
    Ok(tokens)
}

fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

/// Parses tokens up to an `else` or `end`, which is returned (or `None` at the end of input).
fn parse(tokens: &[Token], pos: &mut usize, defines: &mut BTreeMap<String, Vec<Node>>) -> Result<(Vec<Node>, Option<String>), String> {
    let mut nodes = Vec::new();
    while *pos < tokens.len() {
        let token = &tokens[*pos];
        *pos += 1;
        let action = match token {
            Token::Text(t) => {
                if !t.is_empty() {
                    nodes.push(Node::Text(t.clone()));
                }
                continue;
            }
            Token::Action(a) => a.as_str(),
        };
        let (keyword, rest) = action.split_once(' ').unwrap_or((action, ""));
        match keyword {
            "end" | "else" if rest.is_empty() => return Ok((nodes, Some(keyword.to_string()))),
            "if" => {
                let cond = pipeline(rest)?;
                let (then, end) = parse(tokens, pos, defines)?;
                let otherwise = match end.as_deref() {
                    Some("end") => Vec::new(),
                    Some("else") => match parse(tokens, pos, defines)? {
                        (otherwise, Some(e)) if e == "end" => otherwise,
                        _ => return Err(format!("{{{{if {rest}}}}}...{{{{else}}}} without {{{{end}}}}")),
                    },
                    _ => return Err(format!("{{{{if {rest}}}}} without {{{{end}}}}")),
                };
                nodes.push(Node::If(cond, then, otherwise));
            }
            "range" => {
                let over = pipeline(rest)?;
                match parse(tokens, pos, defines)? {
                    (body, Some(e)) if e == "end" => nodes.push(Node::Range(over, body)),
                    _ => return Err(format!("{{{{range {rest}}}}} without {{{{end}}}} (range's else is not supported)")),
                }
            }
            "define" => {
                let name = match &pipeline(rest)?[..] {
                    [cmd] => match &cmd[..] {
                        [Operand::Str(name)] => name.clone(),
                        _ => return Err(format!("define wants a name: {rest}")),
                    },
                    _ => return Err(format!("define wants a name: {rest}")),
                };
                match parse(tokens, pos, defines)? {
                    (body, Some(e)) if e == "end" => defines.insert(name, body),
                    _ => return Err(format!("define {name:?} without {{{{end}}}}")),
                };
            }
            "with" | "template" | "block" | "break" | "continue" | "else" | "end" => {
                return Err(format!("{{{{{action}}}}} is not supported by this renderer"));
            }
            _ => nodes.push(Node::Print(pipeline(action)?)),
        }
    }
    Ok((nodes, None))
}

/// `cmd | cmd ...`, each command a list of operands separated by spaces.
fn pipeline(text: &str) -> Result<Pipeline, String> {
    let mut commands = vec![Vec::new()];
    let mut chars = text.trim().chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            ' ' | '\t' => {
                chars.next();
            }
            '|' => {
                chars.next();
                commands.push(Vec::new());
            }
            '"' => {
                chars.next();
                let mut s = String::new();
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some('n') => s.push('\n'),
                            Some(e @ ('"' | '\\')) => s.push(e),
                            other => return Err(format!("unsupported escape \\{other:?} in {text}")),
                        },
                        Some(ch) => s.push(ch),
                        None => return Err(format!("unterminated string in {text}")),
                    }
                }
                commands.last_mut().expect("a command").push(Operand::Str(s));
            }
            _ => {
                let mut word = String::new();
                while let Some(&ch) = chars.peek() {
                    if matches!(ch, ' ' | '\t' | '|') {
                        break;
                    }
                    word.push(ch);
                    chars.next();
                }
                commands.last_mut().expect("a command").push(operand(&word)?);
            }
        }
    }
    if commands.iter().any(Vec::is_empty) {
        return Err(format!("empty command in {{{{{text}}}}}"));
    }
    Ok(commands)
}

fn operand(word: &str) -> Result<Operand, String> {
    let field = |root: bool, rest: &str| -> Result<Operand, String> {
        let path: Vec<String> = if rest.is_empty() { Vec::new() } else { rest.split('.').map(str::to_string).collect() };
        if path.iter().any(|p| p.is_empty() || !p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')) {
            return Err(format!("unsupported field {word:?}"));
        }
        Ok(Operand::Field { root, path })
    };
    if word == "." {
        return field(false, "");
    }
    if word == "$" {
        return field(true, "");
    }
    if let Some(rest) = word.strip_prefix("$.") {
        return field(true, rest);
    }
    if let Some(rest) = word.strip_prefix('.') {
        return field(false, rest);
    }
    if let Ok(n) = word.parse::<i64>() {
        return Ok(Operand::Int(n));
    }
    if word.chars().all(|c| c.is_ascii_alphanumeric()) && word.chars().next().is_some_and(|c| c.is_ascii_alphabetic()) {
        return Ok(Operand::Func(word.to_string()));
    }
    Err(format!("unsupported operand {word:?} (variables, parentheses and other syntax are not handled)"))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn render(text: &str, data: Value) -> Result<String, String> {
        let mut t = Templates::default();
        let body = t.add("t", text)?;
        t.render(&body, &data)
    }

    #[test]
    fn trims_whitespace_as_go_does() {
        let data = json!({"a": "x"});
        assert_eq!(render("k:\n  {{- .a }}\n", data.clone()).expect("render"), "k:x\n");
        assert_eq!(render("k: {{ .a -}}  \n\n v", data.clone()).expect("render"), "k: xv");
        assert_eq!(render("a\n{{/* note */}}\nb", data).expect("render"), "a\n\nb");
    }

    #[test]
    fn if_else_range_and_include() {
        let mut t = Templates::default();
        t.add("_h.tpl", "{{- define \"n\" -}}\nname: {{ .n }}\n{{- end }}").expect("helpers");
        let body = t
            .add(
                "t",
                "list:\n{{- range .items }}\n  - {{ .n | quote }}{{ if .x }} x{{ else }} y{{ end }}\n{{- end }}\n{{ include \"n\" $.first }}",
            )
            .expect("parse");
        let data = json!({"items": [{"n": "a", "x": true}, {"n": "b"}], "first": {"n": 1}});
        assert_eq!(t.render(&body, &data).expect("render"), "list:\n  - \"a\" x\n  - \"b\" y\nname: 1");
    }

    #[test]
    fn functions_behave_like_sprig() {
        let data = json!({"m": {"b": 1, "a": [1, 2]}, "e": "", "s": "v"});
        assert_eq!(render("x:{{ toYaml .m | nindent 2 }}", data.clone()).expect("render"), "x:\n  a:\n  - 1\n  - 2\n  b: 1");
        assert_eq!(
            render("{{ toJson .m.a }} {{ .e | default \"d\" }} {{ .s | default \"d\" }}", data.clone()).expect("render"),
            "[1,2] d v"
        );
        assert_eq!(render("{{ .s | indent 3 }}", data).expect("render"), "   v");
    }

    #[test]
    fn refuses_what_it_does_not_know() {
        let data = json!({"Values": {"a": {"b": 1}}});
        assert!(render("{{ .Values.a.c }}", data.clone()).expect_err("missing value").contains("has no value"));
        assert!(render("{{ if .Values.typo.b }}{{ end }}", data.clone()).expect_err("missing map").contains("no field"));
        assert!(render("{{ .Values.a.b | upper }}", data.clone()).expect_err("function").contains("not supported"));
        assert!(render("{{ with .Values.a }}{{ end }}", data.clone()).expect_err("with").contains("not supported"));
        assert!(render("{{ $x := 1 }}", data.clone()).is_err());
        assert!(render("{{ if .Values.a }}", data).expect_err("no end").contains("without"));
    }
}
