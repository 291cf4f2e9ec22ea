//! Parsing `nft --json list table` output.

use std::collections::BTreeMap;

use serde_json::Value as Json;

use crate::Error;

/// A chain as listed by the kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListedChain {
    /// Hook of a base chain (`prerouting`, ...), if any.
    pub hook: Option<String>,
    /// Number of rules.
    pub rules: usize,
}

/// A set or map as listed by the kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListedSet {
    /// Whether it is a map.
    pub is_map: bool,
    /// Elements, rendered in the same text form as [`rudder_nft::Key`] (`a . b : c`), sorted.
    pub elements: Vec<String>,
}

/// The content of one table, as the kernel reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableListing {
    /// Chains by name.
    pub chains: BTreeMap<String, ListedChain>,
    /// Sets and maps by name.
    pub sets: BTreeMap<String, ListedSet>,
}

fn atom(v: &Json) -> Result<String, Error> {
    match v {
        Json::String(s) => Ok(s.clone()),
        Json::Number(n) => Ok(n.to_string()),
        Json::Object(o) => {
            if let Some(Json::Array(parts)) = o.get("concat") {
                let p: Result<Vec<String>, Error> = parts.iter().map(atom).collect();
                return Ok(p?.join(" . "));
            }
            for verdict in ["goto", "jump"] {
                if let Some(t) = o
                    .get(verdict)
                    .and_then(|g| g.get("target"))
                    .and_then(Json::as_str)
                {
                    return Ok(format!("{verdict} {t}"));
                }
            }
            for verdict in ["accept", "drop", "return"] {
                if o.contains_key(verdict) {
                    return Ok(verdict.to_owned());
                }
            }
            if let Some(inner) = o.get("elem").and_then(|e| e.get("val")) {
                return atom(inner);
            }
            if let Some(p) = o.get("prefix") {
                let addr = p.get("addr").map(atom).transpose()?.unwrap_or_default();
                let len = p.get("len").map(atom).transpose()?.unwrap_or_default();
                return Ok(format!("{addr}/{len}"));
            }
            Err(Error::Json(format!("unexpected element value {v}")))
        }
        other => Err(Error::Json(format!("unexpected element value {other}"))),
    }
}

impl TableListing {
    /// Parses the output of `nft --json list table FAMILY NAME`.
    pub fn parse(json: &str) -> Result<TableListing, Error> {
        let doc: Json = serde_json::from_str(json).map_err(|e| Error::Json(e.to_string()))?;
        let items = doc
            .get("nftables")
            .and_then(Json::as_array)
            .ok_or_else(|| Error::Json("missing \"nftables\" array".into()))?;
        let mut out = TableListing::default();
        for item in items {
            if let Some(c) = item.get("chain") {
                let name = c
                    .get("name")
                    .and_then(Json::as_str)
                    .unwrap_or_default()
                    .to_owned();
                let hook = c.get("hook").and_then(Json::as_str).map(str::to_owned);
                out.chains.entry(name).or_default().hook = hook;
            } else if let Some(r) = item.get("rule") {
                let chain = r
                    .get("chain")
                    .and_then(Json::as_str)
                    .unwrap_or_default()
                    .to_owned();
                out.chains.entry(chain).or_default().rules += 1;
            } else if let Some((s, is_map)) = item
                .get("set")
                .map(|s| (s, false))
                .or_else(|| item.get("map").map(|m| (m, true)))
            {
                let name = s
                    .get("name")
                    .and_then(Json::as_str)
                    .unwrap_or_default()
                    .to_owned();
                let mut elements = Vec::new();
                for e in s.get("elem").and_then(Json::as_array).into_iter().flatten() {
                    let text = match e {
                        Json::Array(kv) if kv.len() == 2 => {
                            format!("{} : {}", atom(&kv[0])?, atom(&kv[1])?)
                        }
                        other => atom(other)?,
                    };
                    elements.push(text);
                }
                elements.sort();
                out.sets.insert(name, ListedSet { is_map, elements });
            }
        }
        Ok(out)
    }

    /// Every element of every set, as `set: element` lines (sorted), for comparisons.
    pub fn element_lines(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .sets
            .iter()
            .flat_map(|(n, s)| s.elements.iter().map(move |e| format!("{n}: {e}")))
            .collect();
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_listing() {
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
          {"table": {"family": "ip", "name": "t", "handle": 1}},
          {"map": {"family": "ip", "name": "eps", "table": "t", "type": ["ipv4_addr", "inet_proto", "inet_service", "integer"], "map": "ipv4_addr . inet_service",
            "elem": [[{"concat": ["10.96.0.1", "tcp", 80, 0]}, {"concat": ["10.0.0.1", 8080]}]]}},
          {"map": {"family": "ip", "name": "v", "table": "t", "type": "ipv4_addr", "map": "verdict",
            "elem": [["10.0.0.2", {"goto": {"target": "c"}}], ["10.0.0.1", {"drop": null}]]}},
          {"set": {"family": "ip", "name": "s", "table": "t", "type": "ipv4_addr", "elem": ["10.0.0.9"]}},
          {"chain": {"family": "ip", "table": "t", "name": "svc", "handle": 2, "type": "nat", "hook": "output", "prio": -100, "policy": "accept"}},
          {"rule": {"family": "ip", "table": "t", "chain": "svc", "handle": 6, "expr": []}}]}"#;
        let l = TableListing::parse(json).unwrap();
        assert_eq!(
            l.sets["eps"].elements,
            vec!["10.96.0.1 . tcp . 80 . 0 : 10.0.0.1 . 8080"]
        );
        assert_eq!(
            l.sets["v"].elements,
            vec!["10.0.0.1 : drop", "10.0.0.2 : goto c"]
        );
        assert!(!l.sets["s"].is_map);
        assert_eq!(
            l.chains["svc"],
            ListedChain {
                hook: Some("output".into()),
                rules: 1
            }
        );
        assert_eq!(l.element_lines().len(), 4);
        assert!(TableListing::parse("{}").is_err());
        assert!(TableListing::parse("not json").is_err());
    }
}
