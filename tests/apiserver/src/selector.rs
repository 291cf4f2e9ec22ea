//! Label and field selectors, parsed the way the apiserver parses them
//! (the subset documented in the crate docs).

use std::collections::BTreeSet;

use serde_json::Value;

#[derive(Clone, Debug, PartialEq, Eq)]
enum LabelReq {
    Eq(String, String),
    NotEq(String, String),
    In(String, BTreeSet<String>),
    NotIn(String, BTreeSet<String>),
    Exists(String),
    NotExists(String),
}

/// A conjunction of label requirements. Empty matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct LabelSelector(Vec<LabelReq>);

fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 317
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

fn valid_value(v: &str) -> bool {
    v.len() <= 63
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Split on commas that are not inside parentheses.
fn split_top_level(s: &str) -> Result<Vec<&str>, String> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return Err("unbalanced ')'".into());
                }
            }
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err("unbalanced '('".into());
    }
    parts.push(&s[start..]);
    Ok(parts)
}

fn parse_set(rest: &str) -> Result<BTreeSet<String>, String> {
    let rest = rest.trim();
    let inner = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| format!("expected '(' values ')', found {rest:?}"))?;
    let mut set = BTreeSet::new();
    for v in inner.split(',') {
        let v = v.trim();
        if !valid_value(v) {
            return Err(format!("invalid label value: {v:?}"));
        }
        set.insert(v.to_owned());
    }
    Ok(set)
}

/// Split `s` at the first whitespace-delimited word `word` (e.g. " in ").
fn split_word<'a>(s: &'a str, word: &str) -> Option<(&'a str, &'a str)> {
    let mut words = s.split_whitespace();
    let key = words.next()?;
    let after_key = s.trim_start()[key.len()..].trim_start();
    let rest = after_key.strip_prefix(word)?;
    if rest.starts_with(|c: char| c.is_whitespace() || c == '(') {
        Some((key, rest))
    } else {
        None
    }
}

impl LabelSelector {
    pub(crate) fn parse(s: &str) -> Result<Self, String> {
        let mut reqs = Vec::new();
        if s.trim().is_empty() {
            return Ok(LabelSelector(reqs));
        }
        for part in split_top_level(s)? {
            let part = part.trim();
            if part.is_empty() {
                return Err("found empty requirement".into());
            }
            let req = if let Some((k, rest)) = split_word(part, "notin") {
                LabelReq::NotIn(k.to_owned(), parse_set(rest)?)
            } else if let Some((k, rest)) = split_word(part, "in") {
                LabelReq::In(k.to_owned(), parse_set(rest)?)
            } else if let Some((k, v)) = part.split_once("!=") {
                LabelReq::NotEq(k.trim().to_owned(), v.trim().to_owned())
            } else if let Some((k, v)) = part.split_once("==") {
                LabelReq::Eq(k.trim().to_owned(), v.trim().to_owned())
            } else if let Some((k, v)) = part.split_once('=') {
                LabelReq::Eq(k.trim().to_owned(), v.trim().to_owned())
            } else if let Some(k) = part.strip_prefix('!') {
                LabelReq::NotExists(k.trim().to_owned())
            } else {
                LabelReq::Exists(part.to_owned())
            };
            let (key, value) = match &req {
                LabelReq::Eq(k, v) | LabelReq::NotEq(k, v) => (k, Some(v)),
                LabelReq::In(k, _)
                | LabelReq::NotIn(k, _)
                | LabelReq::Exists(k)
                | LabelReq::NotExists(k) => (k, None),
            };
            if !valid_key(key) {
                return Err(format!("invalid label key {key:?} in {part:?}"));
            }
            if let Some(v) = value
                && !valid_value(v)
            {
                return Err(format!("invalid label value {v:?} in {part:?}"));
            }
            reqs.push(req);
        }
        Ok(LabelSelector(reqs))
    }

    pub(crate) fn matches(&self, obj: &Value) -> bool {
        let labels = obj["metadata"]["labels"].as_object();
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            LabelReq::Eq(k, v) => get(k) == Some(v.as_str()),
            LabelReq::NotEq(k, v) => get(k) != Some(v.as_str()),
            LabelReq::In(k, set) => get(k).is_some_and(|x| set.contains(x)),
            LabelReq::NotIn(k, set) => !get(k).is_some_and(|x| set.contains(x)),
            LabelReq::Exists(k) => get(k).is_some(),
            LabelReq::NotExists(k) => get(k).is_none(),
        })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    Name,
    Namespace,
}

/// A conjunction of `metadata.name` / `metadata.namespace` requirements.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct FieldSelector(Vec<(Field, bool, String)>);

impl FieldSelector {
    pub(crate) fn parse(s: &str) -> Result<Self, String> {
        let mut reqs = Vec::new();
        if s.trim().is_empty() {
            return Ok(FieldSelector(reqs));
        }
        for part in s.split(',') {
            let part = part.trim();
            let (field, eq, value) = if let Some((f, v)) = part.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = part.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = part.split_once('=') {
                (f, true, v)
            } else {
                return Err(format!(
                    "invalid selector: '{part}'; can't understand '{part}'"
                ));
            };
            let field = match field.trim() {
                "metadata.name" => Field::Name,
                "metadata.namespace" => Field::Namespace,
                other => return Err(format!("field label not supported: {other}")),
            };
            reqs.push((field, eq, value.trim().to_owned()));
        }
        Ok(FieldSelector(reqs))
    }

    pub(crate) fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|(field, eq, value)| {
            let actual = match field {
                Field::Name => obj["metadata"]["name"].as_str().unwrap_or_default(),
                Field::Namespace => obj["metadata"]["namespace"].as_str().unwrap_or_default(),
            };
            (actual == value) == *eq
        })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(labels: Value) -> Value {
        json!({"metadata": {"name": "a", "namespace": "ns", "labels": labels}})
    }

    fn m(sel: &str, labels: Value) -> bool {
        LabelSelector::parse(sel)
            .expect("parse")
            .matches(&obj(labels))
    }

    #[test]
    fn label_operators() {
        let l = json!({"app": "web", "tier": "fe"});
        assert!(m("", l.clone()));
        assert!(m("app=web", l.clone()));
        assert!(m("app==web", l.clone()));
        assert!(!m("app=db", l.clone()));
        assert!(m("app!=db", l.clone()));
        assert!(m("missing!=db", l.clone()));
        assert!(!m("app!=web", l.clone()));
        assert!(m("app in (db, web)", l.clone()));
        assert!(!m("app in (db)", l.clone()));
        assert!(!m("missing in (db)", l.clone()));
        assert!(m("app notin (db)", l.clone()));
        assert!(m("missing notin (db)", l.clone()));
        assert!(!m("app notin (web,db)", l.clone()));
        assert!(m("app", l.clone()));
        assert!(!m("missing", l.clone()));
        assert!(m("!missing", l.clone()));
        assert!(!m("!app", l.clone()));
        assert!(m("app=web,tier in (fe,be),!missing", l.clone()));
        assert!(!m("app=web,tier notin (fe,be)", l.clone()));
        // A key literally named like an operator prefix is still a key.
        assert!(m("inx", json!({"inx": ""})));
        assert!(m("index in (a)", json!({"index": "a"})));
    }

    #[test]
    fn label_errors() {
        for bad in [
            "app in (a",
            "app in a",
            "=x",
            ",",
            "app=web,",
            "a b",
            "app>1",
            "app=(x)",
        ] {
            assert!(LabelSelector::parse(bad).is_err(), "{bad} should fail");
        }
    }

    #[test]
    fn fields() {
        let o = obj(json!({}));
        let f = |s: &str| FieldSelector::parse(s).expect("parse").matches(&o);
        assert!(f("metadata.name=a"));
        assert!(f("metadata.name==a,metadata.namespace=ns"));
        assert!(!f("metadata.name!=a"));
        assert!(f("metadata.namespace!=other"));
        assert!(FieldSelector::parse("spec.clusterIP=1.2.3.4").is_err());
        assert!(FieldSelector::parse("metadata.name").is_err());
    }
}
