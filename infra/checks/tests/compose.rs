//! `docker-compose.yml` checked against the repository and the code, with
//! no Docker needed: every build context, Dockerfile and build target
//! exists, every mounted file exists, published ports are unique, services
//! depend only on services that exist, each of our services is given only
//! environment variables its configuration reads, Prometheus scrapes each
//! service where it listens, and images are pinned.

use std::collections::{BTreeMap, BTreeSet};

use serde_yaml_ng::Value;

fn load(path: &str) -> Value {
    let text = std::fs::read_to_string(infra_checks::repo_root().join(path)).expect(path);
    let mut value: Value = serde_yaml_ng::from_str(&text).expect(path);
    value.apply_merge().expect("merge keys");
    value
}

fn services(compose: &Value) -> BTreeMap<String, Value> {
    compose["services"]
        .as_mapping()
        .expect("services")
        .iter()
        .map(|(name, service)| {
            (
                name.as_str().expect("service name").to_owned(),
                service.clone(),
            )
        })
        .collect()
}

/// The environment a service is given, as names and values, from either
/// compose form (a mapping, or a list of `NAME=value`).
fn environment(service: &Value) -> BTreeMap<String, String> {
    match &service["environment"] {
        Value::Mapping(map) => map
            .iter()
            .map(|(k, v)| {
                let value = match v {
                    Value::String(s) => s.clone(),
                    Value::Null => String::new(),
                    other => serde_yaml_ng::to_string(other).expect("value"),
                };
                (k.as_str().expect("name").to_owned(), value)
            })
            .collect(),
        Value::Sequence(items) => items
            .iter()
            .filter_map(Value::as_str)
            .map(|item| {
                let (name, value) = item.split_once('=').unwrap_or((item, ""));
                (name.to_owned(), value.to_owned())
            })
            .collect(),
        _ => BTreeMap::new(),
    }
}

/// The variables each of our images reads, by Dockerfile target.
fn variables_read(target: &str) -> Option<Vec<String>> {
    Some(match target {
        "api" => {
            let mut names = api::config::Config::env_names();
            names.push(api::USER_PASSWORD_ENV.to_owned());
            names
        }
        "crawler" => crawler::config::Config::env_names(),
        "summarizer" => summarizer::config::Config::env_names(),
        "notifier" => notifier::config::Config::env_names(),
        "exporter" => exporter::config::Config::env_names(),
        _ => return None,
    })
}

/// Each `NAME` a built service is given that its image does not read.
fn unread_variables(compose: &Value) -> Vec<String> {
    let mut unread = Vec::new();
    for (name, service) in services(compose) {
        let Some(target) = service["build"]["target"].as_str() else {
            continue;
        };
        let Some(read) = variables_read(target) else {
            unread.push(format!("{name}: no known image for target {target}"));
            continue;
        };
        for variable in environment(&service).keys() {
            if !read.contains(variable) {
                unread.push(format!("{name}: {variable}"));
            }
        }
    }
    unread
}

#[test]
fn builds_point_at_real_contexts_dockerfiles_and_targets() {
    let root = infra_checks::repo_root();
    let compose = load("docker-compose.yml");
    let mut built = 0;
    for (name, service) in services(&compose) {
        let build = &service["build"];
        if build.is_null() {
            assert!(
                service["image"].as_str().is_some(),
                "{name} has neither build nor image"
            );
            continue;
        }
        built += 1;
        let context = root.join(build["context"].as_str().unwrap_or("."));
        assert!(context.is_dir(), "{name}: no build context {context:?}");
        let dockerfile = context.join(build["dockerfile"].as_str().unwrap_or("Dockerfile"));
        let text = std::fs::read_to_string(&dockerfile)
            .unwrap_or_else(|e| panic!("{name}: Dockerfile {dockerfile:?}: {e}"));
        if let Some(target) = build["target"].as_str() {
            let stage = format!(" AS {target}");
            assert!(
                text.lines()
                    .any(|line| line.starts_with("FROM ") && line.ends_with(&stage)),
                "{name}: {dockerfile:?} has no stage {target}"
            );
        }
    }
    assert!(built >= 5, "every service is built from this repository");
}

#[test]
fn mounted_files_and_scripts_exist() {
    let root = infra_checks::repo_root();
    let compose = load("docker-compose.yml");
    for (name, service) in services(&compose) {
        for volume in service["volumes"].as_sequence().into_iter().flatten() {
            let source = volume
                .as_str()
                .and_then(|v| v.split(':').next())
                .expect("short volume syntax");
            if let Some(path) = source.strip_prefix("./") {
                assert!(root.join(path).exists(), "{name}: mounts missing {source}");
            }
        }
    }
    for script in ["render-acl", "node.sh", "create-cluster.sh"] {
        let path = root.join("infra/redis").join(script);
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).expect("script").permissions(),
        );
        assert!(mode & 0o111 != 0, "{path:?} is not executable");
    }
}

/// Images are pinned to a release, so that `docker compose up` starts the
/// same system next month: no `latest`, no missing tag.
#[test]
fn images_are_pinned_to_a_release() {
    let compose = load("docker-compose.yml");
    for (name, service) in services(&compose) {
        let Some(image) = service["image"].as_str() else {
            continue;
        };
        let tag = image
            .rsplit_once('/')
            .map_or(image, |(_, last)| last)
            .split_once(':')
            .map(|(_, tag)| tag);
        assert!(
            tag.is_some_and(|t| !t.is_empty() && t != "latest"),
            "{name}: image {image} is not pinned to a release"
        );
    }
}

#[test]
fn published_ports_are_unique_and_dependencies_exist() {
    let compose = load("docker-compose.yml");
    let services = services(&compose);
    let mut published: BTreeMap<String, String> = BTreeMap::new();
    for (name, service) in &services {
        for port in service["ports"].as_sequence().into_iter().flatten() {
            let spec = port.as_str().expect("short port syntax");
            // [ip:]host:container
            let parts: Vec<&str> = spec.split(':').collect();
            let host = parts[..parts.len() - 1].join(":");
            if let Some(other) = published.insert(host.clone(), name.clone()) {
                panic!("{name} and {other} both publish {host}");
            }
        }
        let depends: Vec<String> = match &service["depends_on"] {
            Value::Mapping(map) => map
                .keys()
                .filter_map(|k| k.as_str().map(str::to_owned))
                .collect(),
            Value::Sequence(list) => list
                .iter()
                .filter_map(|k| k.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        };
        for dependency in depends {
            assert!(
                services.contains_key(&dependency),
                "{name} depends on unknown {dependency}"
            );
        }
    }
    for wanted in ["8080", "3000"] {
        assert!(
            published.contains_key(wanted),
            "port {wanted} is not published"
        );
    }
}

#[test]
fn every_variable_a_service_is_given_is_one_it_reads() {
    let unread = unread_variables(&load("docker-compose.yml"));
    assert!(unread.is_empty(), "variables nothing reads: {unread:?}");
}

#[test]
fn a_misspelled_variable_is_caught() {
    let compose: Value = serde_yaml_ng::from_str(
        "services:\n  crawler:\n    build: { context: ., target: crawler }\n    \
         environment:\n      PAPERSTREAM_REDIS_URL: redis://x\n      DATABASE_URL: postgres://x\n",
    )
    .expect("yaml");
    assert_eq!(
        unread_variables(&compose),
        ["crawler: PAPERSTREAM_REDIS_URL"]
    );
}

#[test]
fn prometheus_scrapes_each_service_where_it_listens() {
    let compose = load("docker-compose.yml");
    let services = services(&compose);
    let prometheus = load("infra/prometheus/prometheus.compose.yml");
    let mut scraped = BTreeSet::new();
    for job in prometheus["scrape_configs"].as_sequence().expect("jobs") {
        for static_config in job["static_configs"].as_sequence().expect("static") {
            for target in static_config["targets"].as_sequence().expect("targets") {
                let target = target.as_str().expect("target");
                let (host, port) = target.split_once(':').expect("host:port");
                let service = services
                    .get(host)
                    .unwrap_or_else(|| panic!("{target}: no service {host}"));
                let ops = environment(service)
                    .get("PAPERSTREAM_OPS_ADDR")
                    .cloned()
                    .unwrap_or_default();
                assert!(
                    ops.ends_with(&format!(":{port}")),
                    "{target}: {host} serves /metrics at {ops:?}"
                );
                scraped.insert(host.to_owned());
            }
        }
    }
    let built: BTreeSet<String> = services
        .iter()
        .filter(|(_, s)| {
            s["build"]["target"].as_str().is_some()
                && s["command"]
                    .as_sequence()
                    .is_none_or(|c| c.first().and_then(Value::as_str) != Some("create-user"))
        })
        .map(|(name, _)| name.clone())
        .collect();
    assert_eq!(scraped, built, "every long-running service is scraped");
}
