//! Kubernetes objects from YAML and JSON manifest text (reading the files: `crate::files`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::Deserialize;

/// Objects read from manifest files.
#[derive(Debug, Clone, Default)]
pub struct Objects {
    /// Services.
    pub services: Vec<Service>,
    /// EndpointSlices.
    pub slices: Vec<EndpointSlice>,
    /// Nodes.
    pub nodes: Vec<Node>,
    /// ServiceCIDRs.
    pub service_cidrs: Vec<k8s_openapi::api::networking::v1::ServiceCIDR>,
}

/// A document that could not be used, with where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    /// The file.
    pub file: PathBuf,
    /// 1-based document index within the file (0 when the file itself failed).
    pub document: usize,
    /// What is wrong.
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

fn err(file: &Path, document: usize, message: impl Into<String>) -> LoadError {
    LoadError {
        file: file.to_owned(),
        document,
        message: message.into(),
    }
}

/// Parses manifest text: JSON (one document) for `.json` files, multi-document YAML otherwise.
pub fn parse_str(file: &Path, text: &str) -> Result<(Objects, Vec<LoadError>), LoadError> {
    // Documents, numbered from 1.
    let mut docs: Vec<(usize, serde_json::Value)> = Vec::new();
    let mut errors = Vec::new();
    if file.extension().and_then(|e| e.to_str()) == Some("json") {
        docs.push((
            1,
            serde_json::from_str(text).map_err(|e| err(file, 1, format!("invalid JSON: {e}")))?,
        ));
    } else {
        // The common case: every document reads. The iterator must not be used after an
        // error: it resumes inside the failed document (and serde_norway, like the
        // serde_yaml it forks, can then panic).
        let mut failed = false;
        for (i, de) in serde_norway::Deserializer::from_str(text).enumerate() {
            match serde_json::Value::deserialize(de) {
                Ok(v) => docs.push((i + 1, v)),
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        if failed {
            // Read each document on its own: a document that is YAML but not an object we
            // can represent (a number out of range) is skipped alone; text that is not YAML
            // (bad syntax, an unknown anchor, too many aliases) refuses the whole file.
            docs.clear();
            for (i, chunk) in split_documents(text).into_iter().enumerate() {
                let mut one = serde_norway::Deserializer::from_str(chunk);
                let Some(de) = one.next() else {
                    continue;
                };
                match serde_json::Value::deserialize(de) {
                    Ok(v) => docs.push((i + 1, v)),
                    Err(e) => {
                        if let Err(syntax) = serde_norway::from_str::<serde::de::IgnoredAny>(chunk)
                        {
                            return Err(err(file, i + 1, format!("invalid YAML: {syntax}")));
                        }
                        errors.push(err(file, i + 1, format!("invalid YAML: {e}")));
                    }
                }
            }
        }
    }
    let mut objs = Objects::default();
    for (i, doc) in docs {
        add_document(file, i, doc, &mut objs, &mut errors);
    }
    Ok((objs, errors))
}

/// `text` cut at its YAML document markers: a line starting with `---` (followed by nothing
/// or white space) starts a document and a line `...` ends one. YAML forbids such lines
/// inside any scalar, so the cut never splits a value.
fn split_documents(text: &str) -> Vec<&str> {
    let marker = |l: &str, m: &str| {
        l.strip_prefix(m)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\r', '\n']))
    };
    let mut out = Vec::new();
    let mut start = 0;
    let mut seen_content = false;
    let mut at = 0;
    for line in text.split_inclusive('\n') {
        if marker(line, "---") {
            if seen_content {
                out.push(&text[start..at]);
            }
            // The rest of the marker line belongs to the new document (`--- {a: 1}`).
            start = at + 3;
            seen_content = true;
        } else if marker(line, "...") {
            out.push(&text[start..at]);
            start = at + line.len();
            seen_content = false;
        } else if !line.trim().is_empty() && !line.trim_start().starts_with('#') {
            seen_content = true;
        }
        at += line.len();
    }
    if seen_content {
        out.push(&text[start..]);
    }
    out
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
    fn a_document_with_an_unrepresentable_number_is_skipped_alone() {
        let svc = |name: &str, port: &str| {
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec: {{clusterIP: 10.96.0.1, ports: [{{port: {port}}}]}}\n"
            )
        };
        let text = [
            svc("a", "80"),
            svc("b", "99999999999999999999999"),
            svc("c", "81"),
        ]
        .join("---\n");
        let (objs, errors) = parse_str(Path::new("m.yaml"), &text).expect("the file is usable");
        let names: Vec<_> = objs
            .services
            .iter()
            .filter_map(|s| s.metadata.name.clone())
            .collect();
        assert_eq!(names, ["a", "c"]);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].document, 2);
    }

    #[test]
    fn documents_are_cut_at_their_markers_only() {
        let text =
            "# c\n---\na: 1\n--- {b: 2}\nc: |\n  ---\n  x\n...\n# only a comment\n---\nd: 4\n";
        assert_eq!(
            split_documents(text),
            ["\na: 1\n", " {b: 2}\nc: |\n  ---\n  x\n", "\nd: 4\n"]
        );
        assert_eq!(split_documents("a: 1\n"), ["a: 1\n"]);
        assert_eq!(split_documents("a: ---x\n----\n"), ["a: ---x\n----\n"]);
    }

    #[test]
    fn a_syntax_error_refuses_the_whole_file_without_looping() {
        for text in [
            "a: 1\n---\nb: [[[}}}\n---\nc: 3\n",
            "a: 1\n---\nb: {x: 1\n",
            "kind: [\n",
            // Once made serde_yaml panic ("unexpected end of sequence") when its document
            // iterator was used after the first error (found by the fuzzer).
            include_str!("../../../tests/fuzz/manifest/serde-yaml-panic-unknown-anchor.yaml"),
        ] {
            let e = parse_str(Path::new("m.yaml"), text).expect_err(text);
            assert!(e.message.starts_with("invalid YAML"), "{e}");
        }
    }

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
