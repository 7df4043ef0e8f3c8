//! Turning the text of a file into documents, and reading fields of a document with paths
//! so that every error names the field it is about.

use std::collections::BTreeMap;

use serde::Deserialize as _;
use serde_json::Value;

use crate::error::ResourcesError;

/// One Kubernetes-shaped document of a file.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// How errors name it: `document 2`, or `document 1 items[3]` inside a `kind: List`.
    pub label: String,
    /// 1-based position in the file.
    pub index: usize,
    /// `apiVersion`, empty when absent.
    pub api_version: String,
    /// `kind`, empty when absent.
    pub kind: String,
    /// `metadata.name`, empty when absent.
    pub name: String,
    /// `metadata.namespace` as written; the registry resolves the default.
    pub namespace: Option<String>,
    /// The whole document.
    pub value: Value,
}

impl Document {
    fn new(label: String, index: usize, value: Value) -> Self {
        let s = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or_default().to_string();
        let meta = value.get("metadata");
        Self {
            label,
            index,
            api_version: s(value.get("apiVersion")),
            kind: s(value.get("kind")),
            name: s(meta.and_then(|m| m.get("name"))),
            namespace: meta
                .and_then(|m| m.get("namespace"))
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
                .map(str::to_string),
            value,
        }
    }

    /// The `metadata` object (null when absent).
    pub fn metadata(&self) -> &Value {
        self.value.get("metadata").unwrap_or(&Value::Null)
    }
}

/// Split `text` into documents: multi-document YAML (`---`), a JSON object, a JSON array, or
/// a `kind: List` whose `items` become documents. Empty documents are skipped.
pub fn parse_documents(text: &str) -> Result<Vec<Document>, ResourcesError> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('{')
        && let Some(docs) = parse_large_json_list(text)
    {
        return Ok(docs);
    }
    let mut raw: Vec<Value> = Vec::new();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        let v: Value = serde_json::from_str(text).map_err(|e| ResourcesError::Syntax {
            document: 1,
            reason: format!("invalid JSON: {e}"),
        })?;
        match v {
            Value::Array(items) => raw.extend(items),
            v => raw.push(v),
        }
    } else {
        for (i, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let v = Value::deserialize(de).map_err(|e| ResourcesError::Syntax {
                document: i + 1,
                reason: format!("invalid YAML: {e}"),
            })?;
            if !v.is_null() {
                raw.push(v);
            }
        }
    }
    let mut docs = Vec::new();
    for (i, v) in raw.into_iter().enumerate() {
        let index = i + 1;
        let is_list = v.get("kind").and_then(Value::as_str) == Some("List");
        match v {
            Value::Object(mut map) if is_list => {
                let items = match map.remove("items") {
                    Some(Value::Array(items)) => items,
                    None | Some(Value::Null) => Vec::new(),
                    Some(other) => {
                        return Err(ResourcesError::Syntax {
                            document: index,
                            reason: format!("items: must be a list, got {}", type_name(&other)),
                        });
                    }
                };
                for (j, item) in items.into_iter().enumerate() {
                    docs.push(Document::new(
                        format!("document {index} items[{j}]"),
                        index,
                        item,
                    ));
                }
            }
            v => docs.push(Document::new(format!("document {index}"), index, v)),
        }
    }
    Ok(docs)
}

/// The top level of a JSON `kind: List`, its items left as text.
#[derive(serde::Deserialize)]
struct RawList<'a> {
    #[serde(borrow, default)]
    kind: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    items: Option<Vec<&'a serde_json::value::RawValue>>,
}

/// A JSON `kind: List` of at least [`crate::store::PARALLEL_PARSE_MIN`] items, its items
/// parsed on every CPU (the top level is only scanned here). `None` for anything else, and
/// for a file with an error, so that the one-thread path reports it in its own words.
fn parse_large_json_list(text: &str) -> Option<Vec<Document>> {
    let list: RawList<'_> = serde_json::from_str(text).ok()?;
    let items = list.items?;
    if list.kind.as_deref() != Some("List") || items.len() < crate::store::PARALLEL_PARSE_MIN {
        return None;
    }
    let values = crate::par::par_map(&items, crate::store::PARALLEL_PARSE_MIN, |raw| {
        serde_json::from_str::<Value>(raw.get()).ok()
    });
    values
        .into_iter()
        .enumerate()
        .map(|(j, v)| Some(Document::new(format!("document 1 items[{j}]"), 1, v?)))
        .collect()
}

/// A problem with one field of a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the field, like `spec.containers[0].ports[1].containerPort`.
    pub field: String,
    /// Why it is wrong.
    pub reason: String,
}

impl FieldError {
    /// An error on `field`.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// The JSON type name of a value, for messages.
pub fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Reads fields of a document, collecting errors instead of stopping at the first.
#[derive(Debug, Default)]
pub struct Fields {
    /// Errors found so far.
    pub errors: Vec<FieldError>,
}

impl Fields {
    /// Record an error.
    pub fn error(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.errors.push(FieldError::new(field, reason));
    }

    /// Field `key` of `obj` when present and not null.
    pub fn get<'a>(obj: &'a Value, key: &str) -> Option<&'a Value> {
        obj.get(key).filter(|v| !v.is_null())
    }

    /// An optional string.
    pub fn string(&mut self, v: Option<&Value>, path: &str) -> Option<String> {
        match v {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => {
                self.error(path, format!("must be a string, got {}", type_name(other)));
                None
            }
        }
    }

    /// An optional object.
    pub fn object<'a>(
        &mut self,
        v: Option<&'a Value>,
        path: &str,
    ) -> Option<&'a serde_json::Map<String, Value>> {
        match v {
            None | Some(Value::Null) => None,
            Some(Value::Object(m)) => Some(m),
            Some(other) => {
                self.error(path, format!("must be an object, got {}", type_name(other)));
                None
            }
        }
    }

    /// An optional list (absent = empty).
    pub fn list<'a>(&mut self, v: Option<&'a Value>, path: &str) -> &'a [Value] {
        match v {
            None | Some(Value::Null) => &[],
            Some(Value::Array(a)) => a,
            Some(other) => {
                self.error(path, format!("must be a list, got {}", type_name(other)));
                &[]
            }
        }
    }

    /// An optional integer within `min..=max`.
    pub fn int(&mut self, v: Option<&Value>, path: &str, min: i64, max: i64) -> Option<i64> {
        match v {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => match n.as_i64() {
                Some(i) if (min..=max).contains(&i) => Some(i),
                _ => {
                    self.error(path, format!("must be {min}-{max}, got {n}"));
                    None
                }
            },
            Some(other) => {
                self.error(
                    path,
                    format!("must be an integer, got {}", type_name(other)),
                );
                None
            }
        }
    }

    /// A map of labels (`metadata.labels`), each key and value validated.
    pub fn labels(&mut self, v: Option<&Value>, path: &str) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let Some(map) = self.object(v, path) else {
            return out;
        };
        for (k, v) in map {
            let p = format!("{path}[{k}]");
            if let Err(reason) = validate_label_key(k) {
                self.error(&p, reason);
                continue;
            }
            let value = match v {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                other => {
                    self.error(
                        &p,
                        format!(
                            "must be a string, got {} (quote it: \"{other}\")",
                            type_name(other)
                        ),
                    );
                    continue;
                }
            };
            if let Err(reason) = validate_label_value(&value) {
                self.error(&p, reason);
                continue;
            }
            out.insert(k.clone(), value);
        }
        out
    }
}

fn is_alnum(c: char) -> bool {
    c.is_ascii_alphanumeric()
}

/// A DNS-1123 label: at most 63 lowercase letters, digits and `-`, starting and ending with
/// a letter or digit (namespace names).
pub fn validate_dns_label(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 63 {
        return Err(format!("must be 1-63 characters, got {:?}", s));
    }
    let ok_chars = s
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    let ok_ends = s.starts_with(is_alnum) && s.ends_with(is_alnum);
    if !ok_chars || !ok_ends {
        return Err(format!(
            "must be lowercase letters, digits and '-', starting and ending with a letter or digit, got {s:?}"
        ));
    }
    Ok(())
}

/// A DNS-1123 subdomain: at most 253 characters of dot-separated labels (pod names).
pub fn validate_dns_subdomain(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 253 {
        return Err(format!("must be 1-253 characters, got {:?}", s));
    }
    let ok_chars = s
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
    let ok_ends = s.starts_with(is_alnum) && s.ends_with(is_alnum);
    if !ok_chars || !ok_ends {
        return Err(format!(
            "must be lowercase letters, digits, '-' and '.', starting and ending with a letter or digit, got {s:?}"
        ));
    }
    Ok(())
}

fn validate_label_name(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 63 {
        return Err(format!("name part must be 1-63 characters, got {s:?}"));
    }
    let ok_chars = s
        .chars()
        .all(|c| is_alnum(c) || c == '-' || c == '_' || c == '.');
    if !ok_chars || !s.starts_with(is_alnum) || !s.ends_with(is_alnum) {
        return Err(format!(
            "must be letters, digits, '-', '_' and '.', starting and ending with a letter or digit, got {s:?}"
        ));
    }
    Ok(())
}

/// A label key: `[prefix/]name`, prefix a DNS subdomain, name at most 63 characters.
pub fn validate_label_key(k: &str) -> Result<(), String> {
    let name = match k.split_once('/') {
        Some((prefix, name)) => {
            validate_dns_subdomain(prefix).map_err(|r| format!("key prefix {r}"))?;
            name
        }
        None => k,
    };
    validate_label_name(name).map_err(|r| format!("key {r}"))
}

/// A label value: empty, or at most 63 characters like a label name.
pub fn validate_label_value(v: &str) -> Result<(), String> {
    if v.is_empty() {
        return Ok(());
    }
    validate_label_name(v).map_err(|r| format!("value {r}"))
}

/// A port name (IANA service name): 1-15 lowercase letters, digits and `-`, with a letter,
/// no leading, trailing or double `-`.
pub fn validate_port_name(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 15
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && s.chars().any(|c| c.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--");
    if ok {
        Ok(())
    } else {
        Err(format!(
            "must be 1-15 lowercase letters, digits and '-' with at least one letter, got {s:?}"
        ))
    }
}
