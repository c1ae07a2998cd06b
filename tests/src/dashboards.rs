//! The shipped Grafana dashboards (`examples/grafana/*.json`), checked the
//! way Grafana would use them: structure, then every panel query with its
//! variables filled in, evaluated by a real Prometheus.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;

use anyhow::{Context, bail};
use serde_json::Value;

use crate::prometheus::Prometheus;

/// Where the dashboards live in the repository.
pub fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/grafana")
}

/// One dashboard file.
#[derive(Debug, Clone)]
pub struct Dashboard {
    pub file: String,
    pub json: Value,
}

/// Every `*.json` dashboard, by file name.
pub fn load_all() -> anyhow::Result<Vec<Dashboard>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir())?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.retain(|p| p.extension().is_some_and(|e| e == "json"));
    files.sort();
    let mut out = Vec::new();
    let mut uids = HashSet::new();
    for path in files {
        let file = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let json: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)
            .with_context(|| format!("{file} is not valid JSON"))?;
        let uid = json["uid"]
            .as_str()
            .with_context(|| format!("{file}: no uid"))?;
        if !uids.insert(uid.to_string()) {
            bail!("{file}: uid {uid} used twice");
        }
        out.push(Dashboard { file, json });
    }
    Ok(out)
}

/// A query variable: `label_values(selector, label)`.
#[derive(Debug, Clone)]
pub struct Variable {
    pub name: String,
    pub selector: String,
    pub label: String,
}

/// What evaluating a dashboard found.
#[derive(Debug, Default)]
pub struct Report {
    pub queries: usize,
    pub failures: Vec<String>,
}

const DATASOURCE: &str = "${datasource}";

impl Dashboard {
    pub fn named(dashboards: &[Dashboard], file: &str) -> anyhow::Result<Dashboard> {
        dashboards
            .iter()
            .find(|d| d.file == file)
            .cloned()
            .with_context(|| format!("no dashboard {file}"))
    }

    /// A datasource variable that every panel, query and variable uses;
    /// unique panel ids; every panel with at least one query.
    pub fn check_structure(&self) -> Result<(), String> {
        let name = &self.file;
        let list = self.json["templating"]["list"]
            .as_array()
            .ok_or(format!("{name}: no templating list"))?;
        if !list.iter().any(|v| {
            v["type"] == "datasource" && v["name"] == "datasource" && v["query"] == "prometheus"
        }) {
            return Err(format!("{name}: no Prometheus datasource variable"));
        }
        for v in list.iter().filter(|v| v["type"] == "query") {
            if v["datasource"]["uid"] != DATASOURCE {
                return Err(format!(
                    "{name}: variable {} ignores $datasource",
                    v["name"]
                ));
            }
        }
        let panels = self.panels();
        let ids: HashSet<i64> = panels.iter().filter_map(|p| p["id"].as_i64()).collect();
        if ids.len() != panels.len() {
            return Err(format!("{name}: panel ids are missing or repeat"));
        }
        for panel in panels.iter().filter(|p| p["type"] != "row") {
            let title = panel["title"].as_str().unwrap_or_default();
            if panel["datasource"]["uid"] != DATASOURCE {
                return Err(format!("{name}: {title} ignores $datasource"));
            }
            let targets = panel["targets"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            if targets.is_empty() {
                return Err(format!("{name}: {title} has no query"));
            }
            for t in targets {
                if t["datasource"]["uid"] != DATASOURCE
                    || t["expr"].as_str().is_none_or(str::is_empty)
                {
                    return Err(format!(
                        "{name}: {title} has a query without $datasource or expr"
                    ));
                }
            }
        }
        Ok(())
    }

    pub fn panels(&self) -> Vec<Value> {
        self.json["panels"].as_array().cloned().unwrap_or_default()
    }

    pub fn variables(&self) -> Result<Vec<Variable>, String> {
        let list = self.json["templating"]["list"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        list.iter()
            .filter(|v| v["type"] == "query")
            .map(|v| {
                let query = v["query"].as_str().unwrap_or_default();
                let (selector, label) = query
                    .strip_prefix("label_values(")
                    .and_then(|q| q.strip_suffix(')'))
                    .and_then(|q| q.rsplit_once(','))
                    .ok_or(format!("{}: unsupported variable query {query}", self.file))?;
                Ok(Variable {
                    name: v["name"].as_str().unwrap_or_default().to_string(),
                    selector: selector.trim().to_string(),
                    label: label.trim().to_string(),
                })
            })
            .collect()
    }

    /// Runs every panel query for every combination of variable values
    /// (each variable's values computed as Grafana does, from its query
    /// with the earlier variables filled in). `fixed` pins variables to a
    /// value instead. A query that errors or returns nothing is a failure.
    pub async fn evaluate(
        &self,
        prometheus: &Prometheus,
        fixed: &BTreeMap<String, String>,
    ) -> Result<Report, String> {
        let combos = self.combinations(prometheus, fixed).await?;
        let mut report = Report::default();
        for panel in self.panels().iter().filter(|p| p["type"] != "row") {
            let title = panel["title"].as_str().unwrap_or_default();
            for target in panel["targets"].as_array().cloned().unwrap_or_default() {
                let expr = target["expr"].as_str().unwrap_or_default();
                for combo in &combos {
                    let query = substitute(expr, combo);
                    report.queries += 1;
                    match prometheus.query(&query).await {
                        Ok(result) if !result.is_empty() => {}
                        Ok(_) => report
                            .failures
                            .push(format!("{}: {title}: no data for {query}", self.file)),
                        Err(e) => report
                            .failures
                            .push(format!("{}: {title}: {e:#}", self.file)),
                    }
                }
            }
        }
        Ok(report)
    }

    async fn combinations(
        &self,
        prometheus: &Prometheus,
        fixed: &BTreeMap<String, String>,
    ) -> Result<Vec<BTreeMap<String, String>>, String> {
        let mut combos = vec![BTreeMap::from([(
            "__rate_interval".to_string(),
            "1m".to_string(),
        )])];
        for var in self.variables()? {
            let mut next = Vec::new();
            for combo in &combos {
                let values = match fixed.get(&var.name) {
                    Some(value) => vec![value.clone()],
                    None => {
                        let selector = substitute(&var.selector, combo);
                        let query = format!("count by ({}) ({selector})", var.label);
                        let result = prometheus
                            .query(&query)
                            .await
                            .map_err(|e| format!("{}: variable {}: {e:#}", self.file, var.name))?;
                        let mut values: Vec<String> = result
                            .iter()
                            .filter_map(|v| v["metric"][&var.label].as_str().map(str::to_string))
                            .filter(|v| !v.is_empty())
                            .collect();
                        values.sort();
                        if values.is_empty() {
                            return Err(format!(
                                "{}: variable {} ({query}) has no values",
                                self.file, var.name
                            ));
                        }
                        values
                    }
                };
                for value in values {
                    let mut c = combo.clone();
                    c.insert(var.name.clone(), value);
                    next.push(c);
                }
            }
            combos = next;
        }
        Ok(combos)
    }
}

/// Grafana's interpolation of the given variables only, so that `$1` in a
/// regex replacement stays as it is.
pub fn substitute(text: &str, values: &BTreeMap<String, String>) -> String {
    let mut names: Vec<&String> = values.keys().collect();
    names.sort_by_key(|n| std::cmp::Reverse(n.len()));
    let mut out = text.to_string();
    for name in names {
        out = out.replace(&format!("${{{name}}}"), &values[name]);
        out = out.replace(&format!("${name}"), &values[name]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_dashboard_is_well_formed() {
        let dashboards = load_all().unwrap();
        assert_eq!(dashboards.len(), 7);
        for d in &dashboards {
            d.check_structure().unwrap();
            d.variables().unwrap();
        }
    }

    #[test]
    fn substitution_leaves_regex_groups_alone() {
        let values = BTreeMap::from([
            ("namespace".to_string(), "demo".to_string()),
            ("ns".to_string(), "x".to_string()),
        ]);
        assert_eq!(
            substitute(
                r#"label_replace(up{namespace="$namespace",n="${ns}"}, "a", "$1", "b", "(.*)")"#,
                &values
            ),
            r#"label_replace(up{namespace="demo",n="x"}, "a", "$1", "b", "(.*)")"#
        );
    }
}
