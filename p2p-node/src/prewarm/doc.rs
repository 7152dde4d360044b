//! Reading JSON/YAML input documents, with errors that name the object and the field.
//!
//! Every parser in `prewarm` walks `serde_json::Value`s through a [`Ctx`], which knows which
//! object it is in (`rollout.yaml document 3 (Deployment ml/llm-serve)`), so a bad field comes
//! back as `<object>: <field path>: <what is wrong>`. Absent and `null` fields read as "not set".

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Map, Value};

use super::quantity::Quantity;
use super::Resources;
use crate::Error;

/// The documents of one input file: one for JSON, one per `---` section for YAML (empty sections
/// dropped), each with its 1-based position in the file.
pub(crate) fn documents(source: &str, text: &str) -> Result<Vec<(usize, Value)>, Error> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        match serde_json::from_str::<Value>(text) {
            Ok(value) => return Ok(vec![(1, value)]),
            // YAML flow style also starts with a brace; only if that fails too is it bad JSON.
            Err(e) => return yaml_documents(source, text).map_err(|_| bad(source, format!("not valid JSON: {e}"))),
        }
    }
    yaml_documents(source, text)
}

fn bad(object: &str, why: String) -> Error {
    Error::BadDocument { object: object.to_string(), why }
}

fn yaml_documents(source: &str, text: &str) -> Result<Vec<(usize, Value)>, Error> {
    let mut docs = Vec::new();
    for (i, doc) in serde_norway::Deserializer::from_str(text).enumerate() {
        let value = Value::deserialize(doc).map_err(|e| bad(&format!("{source} document {}", i + 1), format!("not valid YAML: {e}")))?;
        if !value.is_null() {
            docs.push((i + 1, value));
        }
    }
    Ok(docs)
}

/// What a value is, for "expected X, got Y" messages.
pub(crate) fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// The object being read, for error messages.
#[derive(Debug, Clone)]
pub(crate) struct Ctx {
    pub object: String,
}

impl Ctx {
    pub fn new(object: impl Into<String>) -> Ctx {
        Ctx { object: object.into() }
    }

    pub fn err(&self, field: &str, why: impl Into<String>) -> Error {
        Error::BadField { object: self.object.clone(), field: field.to_string(), why: why.into() }
    }

    pub fn missing(&self, field: &str) -> Error {
        Error::MissingField { object: self.object.clone(), field: field.to_string() }
    }

    fn expected(&self, field: &str, what: &str, got: &Value) -> Error {
        self.err(field, format!("expected {what}, got {}", kind_of(got)))
    }

    /// A mapping, or `None` when absent or null.
    pub fn map<'v>(&self, v: Option<&'v Value>, field: &str) -> Result<Option<&'v Map<String, Value>>, Error> {
        match v {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Object(m)) => Ok(Some(m)),
            Some(other) => Err(self.expected(field, "a mapping", other)),
        }
    }

    /// A list, empty when absent or null.
    pub fn list<'v>(&self, v: Option<&'v Value>, field: &str) -> Result<&'v [Value], Error> {
        match v {
            None | Some(Value::Null) => Ok(&[]),
            Some(Value::Array(items)) => Ok(items),
            Some(other) => Err(self.expected(field, "a list", other)),
        }
    }

    pub fn str<'v>(&self, v: Option<&'v Value>, field: &str) -> Result<Option<&'v str>, Error> {
        match v {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(self.expected(field, "a string", other)),
        }
    }

    pub fn required_str<'v>(&self, v: Option<&'v Value>, field: &str) -> Result<&'v str, Error> {
        match self.str(v, field)? {
            Some(s) if !s.is_empty() => Ok(s),
            _ => Err(self.missing(field)),
        }
    }

    pub fn bool(&self, v: Option<&Value>, field: &str) -> Result<Option<bool>, Error> {
        match v {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(self.expected(field, "true or false", other)),
        }
    }

    pub fn int(&self, v: Option<&Value>, field: &str) -> Result<Option<i64>, Error> {
        match v {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => n.as_i64().map(Some).ok_or_else(|| self.err(field, format!("expected an integer, got {n}"))),
            Some(Value::String(s)) => Err(self.err(field, format!("expected an integer, got {s:?}"))),
            Some(other) => Err(self.expected(field, "an integer", other)),
        }
    }

    /// A string → string mapping (labels, nodeSelector).
    pub fn string_map(&self, v: Option<&Value>, field: &str) -> Result<BTreeMap<String, String>, Error> {
        let mut out = BTreeMap::new();
        for (k, v) in self.map(v, field)?.into_iter().flatten() {
            let value = match v {
                Value::String(s) => s.clone(),
                other => return Err(self.expected(&format!("{field}[{k:?}]"), "a string", other)),
            };
            out.insert(k.clone(), value);
        }
        Ok(out)
    }

    /// A resource name → quantity mapping (requests, limits, allocatable). YAML may give plain
    /// numbers (`nvidia.com/gpu: 1`); they read as their decimal text.
    pub fn quantities(&self, v: Option<&Value>, field: &str) -> Result<Resources, Error> {
        let mut out = Resources::new();
        for (name, v) in self.map(v, field)?.into_iter().flatten() {
            let text = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                other => other.to_string(),
            };
            let q: Quantity = text.parse().map_err(|_| self.err(&format!("{field}[{name:?}]"), format!("{v} is not a quantity")))?;
            if q.milli() < 0 {
                return Err(self.err(&format!("{field}[{name:?}]"), format!("{v} is negative")));
            }
            out.insert(name.clone(), q);
        }
        Ok(out)
    }
}

/// The items of a document: a `List` (any kind ending in `List`, or any object with `items`)
/// yields its items with their index, anything else is one item without an index.
pub(crate) fn items<'v>(ctx: &Ctx, doc: &'v Value) -> Result<Vec<(Option<usize>, &'v Value)>, Error> {
    let Value::Object(m) = doc else {
        return Err(Error::BadDocument { object: ctx.object.clone(), why: format!("expected a mapping, got {}", kind_of(doc)) });
    };
    let is_list = m.get("kind").and_then(Value::as_str).is_some_and(|k| k.ends_with("List")) || m.contains_key("items");
    if !is_list {
        return Ok(vec![(None, doc)]);
    }
    Ok(ctx.list(m.get("items"), "items")?.iter().enumerate().map(|(i, v)| (Some(i), v)).collect())
}
