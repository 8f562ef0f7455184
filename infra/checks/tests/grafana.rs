//! `grafana/` checked without a Grafana server (none can be installed on
//! the development machines): the dashboards are well-formed, name only the
//! provisioned datasource and variables they define, every query is PromQL
//! that Prometheus's own parser accepts (`promtool check rules`, from
//! Debian's `prometheus` package, which `scripts/test` installs), and
//! compose mounts the files where the provisioning expects them. Whether
//! the metrics the queries use are exported is checked against running
//! services by `services/api/tests/browser.rs`.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    process::Command,
};

use serde_json::Value;

fn dashboards() -> BTreeMap<String, Value> {
    let dir = infra_checks::repo_root().join("grafana/dashboards");
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).expect("grafana/dashboards") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path).expect("dashboard");
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .expect("file name");
            let dashboard = serde_json::from_str(&text)
                .unwrap_or_else(|err| panic!("{name} is not JSON: {err}"));
            out.insert(name, dashboard);
        }
    }
    assert!(!out.is_empty(), "no dashboards in {}", dir.display());
    out
}

fn yaml(path: &str) -> serde_yaml_ng::Value {
    let text = std::fs::read_to_string(infra_checks::repo_root().join(path)).expect(path);
    serde_yaml_ng::from_str(&text).expect(path)
}

/// Every panel, including those inside collapsed rows.
fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(panels: &'a Value, out: &mut Vec<&'a Value>) {
        for panel in panels.as_array().into_iter().flatten() {
            out.push(panel);
            walk(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// The variables a dashboard defines, as Grafana writes them in queries.
fn variables(dashboard: &Value) -> BTreeSet<String> {
    dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["name"].as_str())
        .map(|name| format!("${name}"))
        .collect()
}

/// `$name` and `${name}` references in a query.
fn references(query: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = query;
    while let Some(at) = rest.find('$') {
        let after = &rest[at + 1..];
        let braced = after.strip_prefix('{');
        let name: String = braced
            .unwrap_or(after)
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            out.push(format!("${name}"));
        }
        rest = after;
    }
    out
}

/// A dashboard query as Prometheus will receive it: Grafana replaces the
/// variables first (with a regex alternation for multi-value ones) and
/// its own interval macros.
fn as_promql(query: &str, variables: &BTreeSet<String>) -> String {
    let mut promql = query
        .replace("$__rate_interval", "1m")
        .replace("$__interval", "1m")
        .replace("$__range", "1h");
    for variable in variables {
        let name = &variable[1..];
        promql = promql
            .replace(&format!("${{{name}}}"), "sample")
            .replace(variable.as_str(), "sample");
    }
    promql
}

/// Each target's query, with the dashboard file and panel title.
fn queries() -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for (name, dashboard) in dashboards() {
        let defined = variables(&dashboard);
        for panel in panels(&dashboard) {
            let title = panel["title"].as_str().unwrap_or("").to_owned();
            for target in panel["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = target["expr"].as_str() {
                    out.push((name.clone(), title.clone(), as_promql(expr, &defined)));
                }
            }
        }
        // A query variable's `label_values(metric, label)` is Grafana's;
        // the series selector inside it is PromQL.
        for variable in dashboard["templating"]["list"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let query = match &variable["query"] {
                Value::String(q) => q.clone(),
                other => other["query"].as_str().unwrap_or("").to_owned(),
            };
            if let Some(inner) = query
                .strip_prefix("label_values(")
                .and_then(|q| q.strip_suffix(')'))
            {
                let selector = inner.rsplit_once(',').map_or(inner, |(s, _)| s).trim();
                out.push((
                    name.clone(),
                    format!("variable {}", variable["name"]),
                    as_promql(selector, &defined),
                ));
            }
        }
    }
    out
}

#[test]
fn dashboards_have_unique_uids_and_well_formed_panels() {
    let mut uids = BTreeMap::new();
    for (name, dashboard) in dashboards() {
        let uid = dashboard["uid"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: no uid"));
        assert!(
            uid.len() <= 40,
            "{name}: uid {uid:?} is longer than Grafana allows"
        );
        if let Some(other) = uids.insert(uid.to_owned(), name.clone()) {
            panic!("{name} and {other} share the uid {uid:?}");
        }
        assert!(
            dashboard["title"].as_str().is_some_and(|t| !t.is_empty()),
            "{name}: no title"
        );
        let mut ids = BTreeSet::new();
        for panel in panels(&dashboard) {
            let title = panel["title"].as_str().unwrap_or("");
            let id = panel["id"]
                .as_u64()
                .unwrap_or_else(|| panic!("{name}: panel {title:?} has no id"));
            assert!(ids.insert(id), "{name}: panel id {id} is used twice");
            for field in ["x", "y", "w", "h"] {
                assert!(
                    panel["gridPos"][field].is_u64(),
                    "{name}: panel {title:?} has no gridPos.{field}"
                );
            }
            let width = panel["gridPos"]["x"].as_u64().unwrap_or(0)
                + panel["gridPos"]["w"].as_u64().unwrap_or(0);
            assert!(
                width <= 24,
                "{name}: panel {title:?} is wider than the grid"
            );
            if panel["type"] != "row" {
                let targets = panel["targets"].as_array().map_or(0, Vec::len);
                assert!(targets > 0, "{name}: panel {title:?} queries nothing");
            }
        }
    }
}

#[test]
fn panels_use_the_provisioned_datasource_and_defined_variables() {
    let provisioned: BTreeSet<String> =
        yaml("grafana/provisioning/datasources/prometheus.yml")["datasources"]
            .as_sequence()
            .expect("datasources")
            .iter()
            .filter_map(|d| d["uid"].as_str().map(str::to_owned))
            .collect();
    let check = |name: &str, what: &str, source: &Value| {
        let uid = source["uid"].as_str().unwrap_or("");
        assert!(
            provisioned.contains(uid),
            "{name}: {what} uses datasource {source}, not one of {provisioned:?}"
        );
    };
    for (name, dashboard) in dashboards() {
        let defined = variables(&dashboard);
        for variable in dashboard["templating"]["list"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|v| !v["datasource"].is_null())
        {
            check(
                &name,
                &format!("variable {}", variable["name"]),
                &variable["datasource"],
            );
        }
        for panel in panels(&dashboard) {
            let title = panel["title"].as_str().unwrap_or("");
            let sources = std::iter::once(&panel["datasource"]).chain(
                panel["targets"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|t| &t["datasource"]),
            );
            for source in sources.filter(|s| !s.is_null()) {
                check(&name, &format!("panel {title:?}"), source);
            }
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = target["expr"].as_str().unwrap_or("");
                for reference in references(expr) {
                    assert!(
                        reference.starts_with("$__") || defined.contains(&reference),
                        "{name}: panel {title:?} uses {reference}, which the dashboard does not define"
                    );
                }
            }
        }
    }
}

/// All queries go into one rules file, so `promtool` parses each with
/// Prometheus's own parser; an error names the rule, which names the
/// dashboard and panel.
fn promtool_check(queries: &[(String, String, String)]) -> Result<(), String> {
    let rules: Vec<serde_json::Value> = queries
        .iter()
        .enumerate()
        .map(|(i, (dashboard, panel, expr))| {
            serde_json::json!({
                "record": format!("dashboard:query_{i}"),
                "expr": expr,
                "labels": { "dashboard": dashboard, "panel": panel },
            })
        })
        .collect();
    let file = serde_json::json!({ "groups": [{ "name": "dashboards", "rules": rules }] });
    let path: PathBuf = std::env::temp_dir().join(format!(
        "paperstream-dashboard-queries-{}.yml",
        uuid::Uuid::new_v4().simple()
    ));
    // JSON is YAML, and promtool reads YAML.
    std::fs::write(&path, file.to_string()).expect("write rules");
    let out = Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(&path)
        .output();
    let _ = std::fs::remove_file(&path);
    let out = out.expect("promtool (Debian's prometheus package; scripts/test installs it)");
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

#[test]
fn every_dashboard_query_is_valid_promql() {
    let queries = queries();
    assert!(queries.len() >= 40, "only {} queries found", queries.len());
    if let Err(errors) = promtool_check(&queries) {
        let named: Vec<String> = queries
            .iter()
            .enumerate()
            .filter(|(i, _)| errors.contains(&format!("\"dashboard:query_{i}\"")))
            .map(|(i, (dashboard, panel, expr))| {
                format!("query_{i}: {dashboard}, panel {panel:?}: {expr}")
            })
            .collect();
        panic!(
            "promtool refused dashboard queries:\n{}\n{errors}",
            named.join("\n")
        );
    }
}

#[test]
fn a_broken_query_is_caught() {
    let broken = vec![(
        "example.json".to_owned(),
        "broken".to_owned(),
        "sum by (topic) (rate(streams_produced_total[5m])".to_owned(),
    )];
    let errors = promtool_check(&broken).expect_err("an unclosed parenthesis must be refused");
    assert!(errors.contains("dashboard:query_0"), "{errors}");
}

#[test]
fn compose_mounts_the_provisioning_where_grafana_looks() {
    let compose = yaml("docker-compose.yml");
    let grafana = &compose["services"]["grafana"];
    let mounts: BTreeMap<String, String> = grafana["volumes"]
        .as_sequence()
        .expect("grafana volumes")
        .iter()
        .filter_map(|v| v.as_str())
        .filter_map(|v| {
            let mut parts = v.split(':');
            Some((parts.next()?.to_owned(), parts.next()?.to_owned()))
        })
        .collect();
    assert_eq!(
        mounts.get("./grafana/provisioning").map(String::as_str),
        Some("/etc/grafana/provisioning"),
        "{mounts:?}"
    );
    let providers = yaml("grafana/provisioning/dashboards/paperstream.yml");
    let path = providers["providers"][0]["options"]["path"]
        .as_str()
        .expect("dashboard provider path");
    assert_eq!(
        mounts.get("./grafana/dashboards").map(String::as_str),
        Some(path),
        "the dashboards must be mounted where the provider reads them"
    );
    // The provisioning files read these from Grafana's environment.
    let environment = &grafana["environment"];
    for variable in ["PROMETHEUS_URL", "GRAFANA_SLACK_WEBHOOK_URL"] {
        assert!(
            !environment[variable].is_null(),
            "compose does not give Grafana {variable}"
        );
    }
}
