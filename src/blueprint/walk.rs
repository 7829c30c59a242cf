//! A small validating walker over `serde_json::Value` that collects every error with its JSON path.

use serde_json::{Map, Value};

/// One problem in a configuration file, located by JSON pointer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathError {
    /// JSON pointer of the offending value (`""` is the whole document).
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for PathError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let path = if self.path.is_empty() {
            "/"
        } else {
            &self.path
        };
        write!(f, "{path}: {}", self.message)
    }
}

/// Collects errors while reading values.
#[derive(Debug, Default)]
pub(crate) struct Walker {
    pub errors: Vec<PathError>,
}

/// Appends a key to a JSON pointer, escaping `~` and `/`.
pub(crate) fn join(path: &str, key: &str) -> String {
    format!("{path}/{}", key.replace('~', "~0").replace('/', "~1"))
}

impl Walker {
    /// Records an error.
    pub fn err(&mut self, path: &str, message: impl Into<String>) {
        self.errors.push(PathError {
            path: path.to_string(),
            message: message.into(),
        });
    }

    /// The value as an object whose keys are all in `allowed`; unknown keys are errors.
    pub fn object<'v>(
        &mut self,
        v: &'v Value,
        path: &str,
        allowed: &[&str],
    ) -> Option<&'v Map<String, Value>> {
        match v.as_object() {
            Some(m) => {
                for k in m.keys() {
                    if !allowed.contains(&k.as_str()) {
                        self.err(
                            &join(path, k),
                            format!("unknown field (expected one of: {})", allowed.join(", ")),
                        );
                    }
                }
                Some(m)
            }
            None => {
                self.err(path, format!("expected an object, found {}", kind(v)));
                None
            }
        }
    }

    /// A present, non-null field.
    pub fn field<'v>(m: &'v Map<String, Value>, key: &str) -> Option<&'v Value> {
        m.get(key).filter(|v| !v.is_null())
    }

    /// An optional number within `[min, max]`.
    pub fn number(
        &mut self,
        m: &Map<String, Value>,
        key: &str,
        path: &str,
        min: f64,
        max: f64,
    ) -> Option<f64> {
        let v = Self::field(m, key)?;
        let p = join(path, key);
        match v.as_f64() {
            Some(x) if x.is_finite() && x >= min && x <= max => Some(x),
            Some(x) => {
                self.err(&p, format!("{x} is out of range {min}..={max}"));
                None
            }
            None => {
                self.err(&p, format!("expected a number, found {}", kind(v)));
                None
            }
        }
    }

    /// An optional integer within `[min, max]`.
    pub fn integer(
        &mut self,
        m: &Map<String, Value>,
        key: &str,
        path: &str,
        min: u64,
        max: u64,
    ) -> Option<u64> {
        let v = Self::field(m, key)?;
        let p = join(path, key);
        match v.as_u64().or_else(|| {
            v.as_f64()
                .filter(|f| f.fract() == 0.0 && *f >= 0.0)
                .map(|f| f as u64)
        }) {
            Some(x) if x >= min && x <= max => Some(x),
            Some(x) => {
                self.err(&p, format!("{x} is out of range {min}..={max}"));
                None
            }
            None => {
                self.err(
                    &p,
                    format!("expected a non-negative integer, found {}", kind(v)),
                );
                None
            }
        }
    }

    /// An optional string.
    pub fn string<'v>(
        &mut self,
        m: &'v Map<String, Value>,
        key: &str,
        path: &str,
    ) -> Option<&'v str> {
        let v = Self::field(m, key)?;
        match v.as_str() {
            Some(s) => Some(s),
            None => {
                self.err(
                    &join(path, key),
                    format!("expected a string, found {}", kind(v)),
                );
                None
            }
        }
    }

    /// An optional boolean.
    pub fn boolean(&mut self, m: &Map<String, Value>, key: &str, path: &str) -> Option<bool> {
        let v = Self::field(m, key)?;
        match v.as_bool() {
            Some(b) => Some(b),
            None => {
                self.err(
                    &join(path, key),
                    format!("expected true or false, found {}", kind(v)),
                );
                None
            }
        }
    }

    /// An optional array of strings.
    pub fn strings(
        &mut self,
        m: &Map<String, Value>,
        key: &str,
        path: &str,
    ) -> Option<Vec<String>> {
        let v = Self::field(m, key)?;
        let p = join(path, key);
        let Some(items) = v.as_array() else {
            self.err(
                &p,
                format!("expected an array of strings, found {}", kind(v)),
            );
            return None;
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            match item.as_str() {
                Some(s) => out.push(s.to_string()),
                None => self.err(
                    &format!("{p}/{i}"),
                    format!("expected a string, found {}", kind(item)),
                ),
            }
        }
        Some(out)
    }
}

/// A human name of a JSON value's type.
pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Every key given twice in its object, by JSON pointer: serde_json keeps the last value
/// silently, and other parsers the first, so a second `"auto_kill_threshold": 0` further down
/// a file would change the rule while a reader sees the first. Syntax errors are serde_json's.
pub fn duplicate_keys(text: &str) -> Result<Vec<PathError>, serde_json::Error> {
    use serde::de::DeserializeSeed;
    let mut found = Vec::new();
    let mut de = serde_json::Deserializer::from_str(text);
    Dups {
        path: String::new(),
        found: &mut found,
    }
    .deserialize(&mut de)?;
    de.end()?;
    Ok(found)
}

/// Walks one JSON value, noting the duplicate keys of its objects.
struct Dups<'f> {
    path: String,
    found: &'f mut Vec<PathError>,
}

impl<'de> serde::de::DeserializeSeed<'de> for Dups<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Dups<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0usize;
        loop {
            let path = format!("{}/{i}", self.path);
            let item = Dups {
                path,
                found: &mut *self.found,
            };
            if seq.next_element_seed(item)?.is_none() {
                return Ok(());
            }
            i += 1;
        }
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            let path = format!(
                "{}/{}",
                self.path,
                key.replace('~', "~0").replace('/', "~1")
            );
            if !seen.insert(key) {
                self.found.push(PathError {
                    path: path.clone(),
                    message: "duplicate key (parsers disagree on which value wins)".into(),
                });
            }
            map.next_value_seed(Dups {
                path,
                found: &mut *self.found,
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_given_twice_is_found_with_its_path_at_any_depth() {
        let text = r#"{"name": "T", "auto_kill_threshold": 3,
            "kill": {"budget": {"per_hour": 1, "per_hour": 100}},
            "anomaly": {"suspicious_sequences": [["a", "b"], {"x/y": 1, "x/y": 2}]},
            "auto_kill_threshold": 0}"#;
        let paths: Vec<String> = duplicate_keys(text)
            .map(|v| v.into_iter().map(|e| e.path).collect())
            .unwrap_or_default();
        assert_eq!(
            paths,
            vec![
                "/kill/budget/per_hour",
                "/anomaly/suspicious_sequences/1/x~1y",
                "/auto_kill_threshold"
            ]
        );
        assert_eq!(
            duplicate_keys(r#"{"a": {"k": 1}, "b": {"k": 1}}"#)
                .map(|v| v.len())
                .ok(),
            Some(0)
        );
        assert!(
            duplicate_keys(r#"{"a": 1,"#).is_err(),
            "syntax errors are serde_json's"
        );
    }
}
