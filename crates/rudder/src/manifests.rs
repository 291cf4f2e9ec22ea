//! Loading Kubernetes objects from YAML and JSON files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::Deserialize;

/// Objects read from manifest files.
#[derive(Debug, Clone, Default)]
pub struct Objects {
    pub services: Vec<Service>,
    pub slices: Vec<EndpointSlice>,
    pub nodes: Vec<Node>,
    pub service_cidrs: Vec<k8s_openapi::api::networking::v1::ServiceCIDR>,
}

/// A document that could not be used, with where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    pub file: PathBuf,
    /// 1-based document index within the file (0 when the file itself failed).
    pub document: usize,
    pub message: String,
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.document == 0 {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(
                f,
                "{} (document {}): {}",
                self.file.display(),
                self.document,
                self.message
            )
        }
    }
}

/// Largest manifest file Rudder reads (a guard against reading something huge by mistake).
const MAX_FILE_BYTES: u64 = 64 << 20;

fn is_manifest(p: &Path) -> bool {
    matches!(
        p.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

/// Every manifest file under `paths` (files are taken as given; directories are walked
/// recursively for `*.yaml`, `*.yml`, `*.json`), sorted, with their modification time and size.
pub fn scan(paths: &[PathBuf]) -> Result<BTreeMap<PathBuf, (SystemTime, u64)>, LoadError> {
    let mut out = BTreeMap::new();
    let mut stack: Vec<(PathBuf, bool)> = paths.iter().map(|p| (p.clone(), true)).collect();
    while let Some((p, explicit)) = stack.pop() {
        let meta = std::fs::metadata(&p).map_err(|e| LoadError {
            file: p.clone(),
            document: 0,
            message: e.to_string(),
        })?;
        if meta.is_dir() {
            let rd = std::fs::read_dir(&p).map_err(|e| LoadError {
                file: p.clone(),
                document: 0,
                message: e.to_string(),
            })?;
            for entry in rd.flatten() {
                stack.push((entry.path(), false));
            }
        } else if explicit || is_manifest(&p) {
            out.insert(
                p,
                (
                    meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    meta.len(),
                ),
            );
        }
    }
    Ok(out)
}

fn err(file: &Path, document: usize, message: impl Into<String>) -> LoadError {
    LoadError {
        file: file.to_owned(),
        document,
        message: message.into(),
    }
}

/// Parses one file. A file that is not valid YAML at all is an error as a whole (`Err`);
/// documents that are valid YAML but not valid objects are reported one by one.
pub fn parse_file(file: &Path) -> Result<(Objects, Vec<LoadError>), LoadError> {
    let meta = std::fs::metadata(file).map_err(|e| err(file, 0, e.to_string()))?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(err(
            file,
            0,
            format!(
                "file is {} bytes, the limit is {MAX_FILE_BYTES}",
                meta.len()
            ),
        ));
    }
    let text = std::fs::read_to_string(file).map_err(|e| err(file, 0, e.to_string()))?;
    parse_str(file, &text)
}

/// Parses manifest text: JSON (one document) for `.json` files, multi-document YAML otherwise.
pub fn parse_str(file: &Path, text: &str) -> Result<(Objects, Vec<LoadError>), LoadError> {
    let mut docs: Vec<serde_json::Value> = Vec::new();
    if file.extension().and_then(|e| e.to_str()) == Some("json") {
        docs.push(
            serde_json::from_str(text).map_err(|e| err(file, 1, format!("invalid JSON: {e}")))?,
        );
    } else {
        for (i, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let v = serde_json::Value::deserialize(de)
                .map_err(|e| err(file, i + 1, format!("invalid YAML: {e}")))?;
            docs.push(v);
        }
    }
    let mut objs = Objects::default();
    let mut errors = Vec::new();
    for (i, doc) in docs.into_iter().enumerate() {
        add_document(file, i + 1, doc, &mut objs, &mut errors);
    }
    Ok((objs, errors))
}

fn add_document(
    file: &Path,
    index: usize,
    doc: serde_json::Value,
    objs: &mut Objects,
    errors: &mut Vec<LoadError>,
) {
    if doc.is_null() {
        return;
    }
    let kind = doc
        .get("kind")
        .and_then(|k| k.as_str())
        .unwrap_or("")
        .to_owned();
    let api = doc
        .get("apiVersion")
        .and_then(|k| k.as_str())
        .unwrap_or("")
        .to_owned();
    let bad = |e: serde_json::Error| err(file, index, format!("invalid {kind}: {e}"));
    match (api.as_str(), kind.as_str()) {
        ("v1", "Service") => match serde_json::from_value(doc) {
            Ok(s) => objs.services.push(s),
            Err(e) => errors.push(bad(e)),
        },
        ("discovery.k8s.io/v1", "EndpointSlice") => match serde_json::from_value(doc) {
            Ok(s) => objs.slices.push(s),
            Err(e) => errors.push(bad(e)),
        },
        ("v1", "Node") => match serde_json::from_value(doc) {
            Ok(s) => objs.nodes.push(s),
            Err(e) => errors.push(bad(e)),
        },
        ("networking.k8s.io/v1", "ServiceCIDR") => match serde_json::from_value(doc) {
            Ok(s) => objs.service_cidrs.push(s),
            Err(e) => errors.push(bad(e)),
        },
        (_, "List")
        | (_, "ServiceList")
        | (_, "EndpointSliceList")
        | (_, "NodeList")
        | (_, "ServiceCIDRList") => {
            let items = match doc {
                serde_json::Value::Object(mut m) => match m.remove("items") {
                    Some(serde_json::Value::Array(items)) => items,
                    _ => Vec::new(),
                },
                _ => Vec::new(),
            };
            for mut item in items {
                // Typed lists omit kind/apiVersion on their items.
                if let Some(m) = item.as_object_mut() {
                    let list_kind = kind.trim_end_matches("List");
                    if !list_kind.is_empty() && !m.contains_key("kind") {
                        m.insert("kind".into(), list_kind.into());
                        m.insert("apiVersion".into(), api.clone().into());
                    }
                }
                add_document(file, index, item, objs, errors);
            }
        }
        ("", _) | (_, "") => errors.push(err(file, index, "document has no apiVersion or kind")),
        // Other kinds (Deployments, Pods, ...) are legitimately mixed into manifests.
        _ => {}
    }
}

/// Reads every manifest under `paths`. Files that fail as a whole keep the objects of their
/// previous successful read (`previous`), so a file caught mid-write never removes rules.
pub fn load(
    paths: &[PathBuf],
    previous: &BTreeMap<PathBuf, Objects>,
) -> Result<(BTreeMap<PathBuf, Objects>, Vec<LoadError>), LoadError> {
    let files = scan(paths)?;
    let mut out = BTreeMap::new();
    let mut errors = Vec::new();
    for file in files.keys() {
        match parse_file(file) {
            Ok((objs, errs)) => {
                errors.extend(errs);
                out.insert(file.clone(), objs);
            }
            Err(e) => {
                errors.push(e);
                if let Some(prev) = previous.get(file) {
                    out.insert(file.clone(), prev.clone());
                }
            }
        }
    }
    Ok((out, errors))
}

/// All objects of all files, in file order.
pub fn merge(files: &BTreeMap<PathBuf, Objects>) -> Objects {
    let mut all = Objects::default();
    for o in files.values() {
        all.services.extend(o.services.iter().cloned());
        all.slices.extend(o.slices.iter().cloned());
        all.nodes.extend(o.nodes.iter().cloned());
        all.service_cidrs.extend(o.service_cidrs.iter().cloned());
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_multi_document_yaml_lists_and_reports_bad_documents() {
        let text = r#"
apiVersion: v1
kind: Service
metadata: {name: a, namespace: default}
spec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: ignored}
---
apiVersion: v1
kind: Service
metadata: {name: broken}
spec: {ports: "not a list"}
---
---
apiVersion: v1
kind: List
items:
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: a-1, namespace: default, labels: {kubernetes.io/service-name: a}}
  addressType: IPv4
  endpoints: [{addresses: [10.0.0.1]}]
---
kind: Nothing
"#;
        let (objs, errors) = parse_str(Path::new("x.yaml"), text).unwrap();
        assert_eq!(objs.services.len(), 1);
        assert_eq!(objs.slices.len(), 1);
        assert_eq!(errors.len(), 2);
        assert_eq!(errors[0].document, 3);
        assert!(
            errors[0]
                .to_string()
                .starts_with("x.yaml (document 3): invalid Service"),
            "{}",
            errors[0]
        );
        assert!(errors[1].message.contains("no apiVersion"));
        let json = r#"{"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}}"#;
        assert_eq!(
            parse_str(Path::new("n.json"), json).unwrap().0.nodes.len(),
            1
        );
        assert!(parse_str(Path::new("bad.yaml"), "a: [unclosed").is_err());
    }
}
