//! "The kernel's tables equal a fresh compile of the final state": both rulesets are listed by
//! `nft -j -s` (JSON, stateless) and reduced to a canonical form in which the order the kernel
//! happens to keep objects and set elements in does not matter, while the order of rules in a
//! chain still does.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::Path;
use std::process::Command;

use rudder_fake_apiserver::FakeApiServer;
use serde_json::Value;

use crate::daemon::TempDir;
use crate::netns::Netns;
use crate::nft;

/// `nft -j -s list ruleset` inside `ns`, canonicalized (see [`canonicalize`]; with
/// `equivalent`, [`canonicalize_equivalent`]).
pub fn kernel_ruleset(ns: &Netns, equivalent: bool) -> io::Result<Vec<String>> {
    let out = ns.exec(&["nft", "-j", "-s", "list", "ruleset"])?;
    canonical(&String::from_utf8_lossy(&out.stdout), equivalent).map_err(io::Error::other)
}

/// Writes every object the API server holds into a manifest file, runs `rudder compile` on it
/// with `args` (the daemon's node flags), loads the output into a fresh namespace and returns
/// that namespace's ruleset, canonicalized.
pub fn compiled_ruleset(
    rudder: &Path,
    api: &FakeApiServer,
    args: &[&str],
    equivalent: bool,
) -> io::Result<Vec<String>> {
    let dir = TempDir::new("soak-final")?;
    let mut docs = Vec::new();
    for v in api.services() {
        docs.push(serde_json::to_string(&v).map_err(io::Error::other)?);
    }
    for v in api.endpoint_slices() {
        docs.push(serde_json::to_string(&v).map_err(io::Error::other)?);
    }
    for v in api.nodes() {
        docs.push(serde_json::to_string(&v).map_err(io::Error::other)?);
    }
    for v in api.service_cidrs() {
        docs.push(serde_json::to_string(&v).map_err(io::Error::other)?);
    }
    let file = dir.write("final.yaml", &docs.join("\n---\n"))?;
    let out = Command::new(rudder)
        .arg("compile")
        .arg("--manifests")
        .arg(&file)
        .args(args)
        .output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "rudder compile failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let fresh = Netns::new("rdr-soak-compiled")?;
    nft::load(&fresh, &String::from_utf8_lossy(&out.stdout))?;
    kernel_ruleset(&fresh, equivalent)
}

/// Reduces `nft -j` output to sorted lines, one per table, chain, set or map (with its
/// elements sorted; the elements of dynamic sets, which traffic fills, left out) and rule
/// (with its position in its chain). Handles and nft's metainfo are dropped.
pub fn canonicalize(json: &str) -> Result<Vec<String>, String> {
    canonical(json, false)
}

/// Like [`canonicalize`], but up to what partial syncs leave different from a full compile on
/// purpose until the next full sync (docs/rules.md): endpoint classes nothing points to any
/// more (chains no base chain can reach, sets and maps no reachable rule uses are left out),
/// and the slots of endpoints (a partial sync keeps every endpoint in the slot it had, so
/// replacing one endpoint changes one element; a full compile numbers them in sorted order).
/// The slot number is dropped from the elements of endpoint maps (maps whose key ends with
/// the `numgen` integer); which endpoints each frontend has still counts.
pub fn canonicalize_equivalent(json: &str) -> Result<Vec<String>, String> {
    canonical(json, true)
}

fn canonical(json: &str, equivalent: bool) -> Result<Vec<String>, String> {
    let doc: Value = serde_json::from_str(json).map_err(|e| format!("nft -j output: {e}"))?;
    let raw = doc
        .get("nftables")
        .and_then(Value::as_array)
        .ok_or("nft -j output without an `nftables` array")?;
    let mut objects: Vec<(String, Value)> = Vec::new();
    for object in raw {
        let Some((kind, body)) = object.as_object().and_then(|o| o.iter().next()) else {
            continue;
        };
        if kind == "metainfo" {
            continue;
        }
        let mut body = body.clone();
        if let Some(map) = body.as_object_mut() {
            map.remove("handle");
            let dynamic = map
                .get("flags")
                .and_then(Value::as_array)
                .is_some_and(|f| f.iter().any(|x| x == "dynamic" || x == "timeout"));
            let slotted = kind == "map"
                && map
                    .get("type")
                    .and_then(Value::as_array)
                    .and_then(|t| t.last())
                    .is_some_and(|t| t == "integer");
            if dynamic {
                map.remove("elem");
            } else if let Some(Value::Array(elems)) = map.get_mut("elem") {
                if equivalent && slotted {
                    for elem in elems.iter_mut() {
                        drop_slot(elem);
                    }
                }
                elems.sort_by_key(Value::to_string);
            }
        }
        objects.push((kind.clone(), body));
    }
    if equivalent {
        let (chains, sets) = reachable(&objects);
        objects.retain(|(kind, body)| match kind.as_str() {
            "chain" => chains.contains(&key(body, "name")),
            "rule" => chains.contains(&key(body, "chain")),
            "set" | "map" => sets.contains(&key(body, "name")),
            _ => true,
        });
    }
    let mut lines = Vec::new();
    let mut positions: BTreeMap<String, usize> = BTreeMap::new();
    for (kind, body) in objects {
        if kind == "rule" {
            let chain = format!(
                "{} {} {}",
                str_field(&body, "family"),
                str_field(&body, "table"),
                str_field(&body, "chain")
            );
            let n = positions.entry(chain.clone()).or_default();
            lines.push(format!("rule {chain} #{n} {body}"));
            *n += 1;
        } else {
            lines.push(format!("{kind} {body}"));
        }
    }
    lines.sort();
    Ok(lines)
}

/// Replaces the slot (the last atom of the key) of an endpoint map element `[key, value]`.
fn drop_slot(elem: &mut Value) {
    if let Some(Value::Array(atoms)) = elem.get_mut(0).and_then(|k| k.get_mut("concat"))
        && let Some(last) = atoms.last_mut()
    {
        *last = Value::String("slot".into());
    }
}

/// `family table name`, naming a chain, set or map (`field` is `name`, or `chain` for rules).
fn key(body: &Value, field: &str) -> String {
    format!(
        "{} {} {}",
        str_field(body, "family"),
        str_field(body, "table"),
        str_field(body, field)
    )
}

/// The chains reachable from base chains (through jumps and gotos in rules and in the
/// verdicts of the maps they use) and the sets and maps those chains' rules use.
fn reachable(objects: &[(String, Value)]) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut rules: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    let mut elems: BTreeMap<String, &Value> = BTreeMap::new();
    let mut todo: Vec<String> = Vec::new();
    for (kind, body) in objects {
        match kind.as_str() {
            "chain" if body.get("hook").is_some() => todo.push(key(body, "name")),
            "rule" => rules.entry(key(body, "chain")).or_default().push(body),
            "set" | "map" => {
                if let Some(e) = body.get("elem") {
                    elems.insert(key(body, "name"), e);
                }
            }
            _ => {}
        }
    }
    let (mut chains, mut sets) = (BTreeSet::new(), BTreeSet::new());
    while let Some(chain) = todo.pop() {
        if !chains.insert(chain.clone()) {
            continue;
        }
        // Names are relative to the chain's table.
        let table = chain
            .rsplit_once(' ')
            .map(|(t, _)| t)
            .unwrap_or_default()
            .to_owned();
        let mut refs = References::default();
        for rule in rules.get(&chain).into_iter().flatten() {
            refs.scan(rule.get("expr").unwrap_or(&Value::Null));
        }
        let used: Vec<String> = refs.sets.drain().collect();
        for set in used {
            let set = format!("{table} {set}");
            if let Some(e) = elems.get(&set) {
                refs.scan(e);
            }
            sets.insert(set);
        }
        todo.extend(refs.chains.iter().map(|c| format!("{table} {c}")));
    }
    (chains, sets)
}

/// Chains (jump and goto targets) and sets (`@name`) a piece of nft JSON refers to.
#[derive(Default)]
struct References {
    chains: BTreeSet<String>,
    sets: std::collections::HashSet<String>,
}

impl References {
    fn scan(&mut self, v: &Value) {
        match v {
            Value::String(s) => {
                if let Some(name) = s.strip_prefix('@') {
                    self.sets.insert(name.to_owned());
                }
            }
            Value::Array(xs) => xs.iter().for_each(|x| self.scan(x)),
            Value::Object(map) => {
                for (k, x) in map {
                    if (k == "jump" || k == "goto")
                        && let Some(target) = x.get("target").and_then(Value::as_str)
                    {
                        self.chains.insert(target.to_owned());
                    }
                    self.scan(x);
                }
            }
            _ => {}
        }
    }
}

fn str_field<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("?")
}

/// `None` when equal; otherwise the lines only one side has (at most `limit` of each).
pub fn difference(kernel: &[String], compiled: &[String], limit: usize) -> Option<String> {
    if kernel == compiled {
        return None;
    }
    let only = |a: &[String], b: &[String]| -> Vec<String> {
        let mut b: Vec<&String> = b.iter().collect();
        let mut out = Vec::new();
        for line in a {
            match b.iter().position(|x| *x == line) {
                Some(i) => {
                    b.swap_remove(i);
                }
                None => out.push(line.clone()),
            }
        }
        out
    };
    let k = only(kernel, compiled);
    let c = only(compiled, kernel);
    let show = |v: &[String]| {
        v.iter()
            .take(limit)
            .map(|l| format!("  {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    Some(format!(
        "only in the kernel ({}):\n{}\nonly in the fresh compile ({}):\n{}",
        k.len(),
        show(&k),
        c.len(),
        show(&c)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_of_objects_and_elements_does_not_matter_rule_order_does() {
        let a = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
            {"table": {"family": "ip", "name": "t", "handle": 1}},
            {"set": {"family": "ip", "name": "s", "table": "t", "handle": 2, "elem": ["b", "a"]}},
            {"set": {"family": "ip", "name": "d", "table": "t", "handle": 3, "flags": ["dynamic", "timeout"], "elem": ["x"]}},
            {"rule": {"family": "ip", "table": "t", "chain": "c", "handle": 4, "expr": [1]}},
            {"rule": {"family": "ip", "table": "t", "chain": "c", "handle": 5, "expr": [2]}}]}"#;
        let b = r#"{"nftables": [
            {"set": {"family": "ip", "name": "d", "table": "t", "handle": 9, "flags": ["dynamic", "timeout"]}},
            {"rule": {"family": "ip", "table": "t", "chain": "c", "handle": 7, "expr": [1]}},
            {"set": {"family": "ip", "name": "s", "table": "t", "handle": 8, "elem": ["a", "b"]}},
            {"rule": {"family": "ip", "table": "t", "chain": "c", "handle": 6, "expr": [2]}},
            {"table": {"family": "ip", "name": "t", "handle": 1}}]}"#;
        let (ca, cb) = (canonicalize(a).expect("a"), canonicalize(b).expect("b"));
        assert_eq!(difference(&ca, &cb, 5), None);
        let swapped = b
            .replace("[1]", "[0]")
            .replace("[2]", "[1]")
            .replace("[0]", "[2]");
        let cs = canonicalize(&swapped).expect("swapped");
        let diff = difference(&ca, &cs, 5).expect("rule order matters");
        assert!(diff.contains("only in the kernel (2)"), "{diff}");
    }

    #[test]
    fn unreachable_chains_and_unused_maps_can_be_left_out() {
        let json = r#"{"nftables": [
            {"chain": {"family": "ip", "table": "t", "name": "base", "hook": "prerouting"}},
            {"chain": {"family": "ip", "table": "t", "name": "used"}},
            {"chain": {"family": "ip", "table": "t", "name": "via-map"}},
            {"chain": {"family": "ip", "table": "t", "name": "orphan"}},
            {"map": {"family": "ip", "table": "t", "name": "vm", "elem": [[1, {"goto": {"target": "via-map"}}]]}},
            {"map": {"family": "ip", "table": "t", "name": "unused"}},
            {"map": {"family": "ip", "table": "t", "name": "m2"}},
            {"rule": {"family": "ip", "table": "t", "chain": "base", "expr": [{"jump": {"target": "used"}}, {"vmap": {"data": "@vm"}}]}},
            {"rule": {"family": "ip", "table": "t", "chain": "via-map", "expr": [{"dnat": {"addr": {"map": {"data": "@m2"}}}}]}},
            {"rule": {"family": "ip", "table": "t", "chain": "orphan", "expr": [{"vmap": {"data": "@unused"}}]}}]}"#;
        let all = canonicalize(json).expect("all");
        let kept = canonicalize_equivalent(json).expect("reachable");
        assert_eq!(all.len(), 10);
        let text = kept.join("\n");
        assert_eq!(kept.len(), 7, "{text}");
        assert!(
            !text.contains("orphan") && !text.contains("unused"),
            "{text}"
        );
    }

    #[test]
    fn endpoint_slots_do_not_matter_when_equivalent() {
        let map = |elems: &str| {
            format!(
                r#"{{"nftables": [
                {{"chain": {{"family": "ip", "table": "t", "name": "base", "hook": "prerouting"}}}},
                {{"rule": {{"family": "ip", "table": "t", "chain": "base", "expr": [{{"dnat": {{"addr": {{"map": {{"data": "@eps"}}}}}}}}]}}}},
                {{"map": {{"family": "ip", "table": "t", "name": "eps", "type": ["inet_proto", "inet_service", "integer"], "elem": {elems}}}}}]}}"#
            )
        };
        let a = map(r#"[[{"concat": ["tcp", 80, 0]}, "A"], [{"concat": ["tcp", 80, 1]}, "B"]]"#);
        let b = map(r#"[[{"concat": ["tcp", 80, 0]}, "B"], [{"concat": ["tcp", 80, 1]}, "A"]]"#);
        let c = map(r#"[[{"concat": ["tcp", 80, 0]}, "B"], [{"concat": ["tcp", 80, 1]}, "B"]]"#);
        let eq = |x: &str| canonicalize_equivalent(x).expect("json");
        assert_eq!(eq(&a), eq(&b));
        assert_ne!(eq(&a), eq(&c));
        assert_ne!(canonicalize(&a).expect("a"), canonicalize(&b).expect("b"));
    }
}
