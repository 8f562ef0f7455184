//! Configuration: the service's defaults, then an optional TOML file, then
//! the environment: `PAPERSTREAM_*` with nested keys joined by `__` (e.g.
//! `PAPERSTREAM_ARXIV__PACE_INTERVAL_MS`), plus a few well-known plain
//! names (`DATABASE_URL`) given as aliases.

use std::path::Path;

use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
};
use serde::{Deserialize, Deserializer, Serialize, de::DeserializeOwned};

/// Why configuration did not load: which key, from which source.
pub type Error = figment::Error;

/// Load a service's configuration. `aliases` maps plain environment
/// variables to keys, e.g. `("DATABASE_URL", "database_url")`.
pub fn load<T: Serialize + DeserializeOwned>(
    defaults: T,
    file: Option<&Path>,
    aliases: &[(&'static str, &'static str)],
) -> Result<T, Box<figment::Error>> {
    let mut figment = Figment::from(Serialized::defaults(defaults));
    if let Some(file) = file {
        figment = figment.merge(Toml::file_exact(file));
    }
    for (variable, key) in aliases {
        let key = *key;
        figment = figment.merge(Env::raw().only(&[variable]).map(move |_| key.into()));
    }
    figment
        .merge(Env::prefixed("PAPERSTREAM_").split("__"))
        .extract()
        .map_err(Box::new)
}

/// A list given as a list (TOML) or as one comma-separated string
/// (environment). Use with `#[serde(deserialize_with = "ops::config::list")]`.
pub fn list<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        Text(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(deserializer)? {
        OneOrMany::Text(text) => text
            .split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect(),
        OneOrMany::Many(list) => list,
    })
}

/// Every environment variable a service's configuration reads: one
/// `PAPERSTREAM_*` name per setting of `defaults` (nested keys joined by
/// `__`), the `aliases`, the configuration file's `PAPERSTREAM_CONFIG` and
/// the log filter's `RUST_LOG`. Deployment files are checked against it.
pub fn env_names<T: Serialize>(defaults: &T, aliases: &[(&str, &str)]) -> Vec<String> {
    fn walk(prefix: &str, value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(fields) => {
                for (key, value) in fields {
                    walk(&format!("{prefix}{}__", key.to_uppercase()), value, out);
                }
            }
            _ => out.push(prefix.trim_end_matches("__").to_owned()),
        }
    }
    let mut names = vec!["PAPERSTREAM_CONFIG".to_owned(), "RUST_LOG".to_owned()];
    names.extend(aliases.iter().map(|(variable, _)| (*variable).to_owned()));
    if let Ok(tree) = serde_json::to_value(defaults) {
        walk("PAPERSTREAM_", &tree, &mut names);
    }
    names.sort();
    names.dedup();
    names
}

/// `url` with the password of its user info replaced by `***`, for logs:
/// `redis://api:secret@redis-1:6379` becomes `redis://api:***@redis-1:6379`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let Some((user_info, host)) = authority.rsplit_once('@') else {
        return url.to_owned();
    };
    match user_info.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***@{host}{path}"),
        None => url.to_owned(),
    }
}

/// Connection URLs as configuration `Debug` output shows them: passwords
/// replaced (see [`redact_url`]).
pub struct RedactedUrls<'a>(pub &'a [String]);

impl std::fmt::Debug for RedactedUrls<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|url| redact_url(url)))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Settings {
        database_url: String,
        token: Option<String>,
        limits: Limits,
    }

    #[derive(Serialize)]
    struct Limits {
        max_batch: u32,
    }

    #[test]
    fn env_names_follow_the_nesting_and_keep_unset_options() {
        let defaults = Settings {
            database_url: String::new(),
            token: None,
            limits: Limits { max_batch: 1 },
        };
        assert_eq!(
            env_names(&defaults, &[("DATABASE_URL", "database_url")]),
            [
                "DATABASE_URL",
                "PAPERSTREAM_CONFIG",
                "PAPERSTREAM_DATABASE_URL",
                "PAPERSTREAM_LIMITS__MAX_BATCH",
                "PAPERSTREAM_TOKEN",
                "RUST_LOG",
            ]
        );
    }

    #[test]
    fn passwords_are_redacted_from_urls() {
        assert_eq!(
            redact_url("redis://api:s3cr%40t@redis-1:6379"),
            "redis://api:***@redis-1:6379"
        );
        assert_eq!(
            redact_url("redis://:only-password@127.0.0.1:7101/"),
            "redis://:***@127.0.0.1:7101/"
        );
        assert_eq!(
            redact_url("postgres://paperstream:pw@db/paperstream?sslmode=disable"),
            "postgres://paperstream:***@db/paperstream?sslmode=disable"
        );
        assert_eq!(
            redact_url("postgres://postgres@127.0.0.1:55432/paperstream"),
            "postgres://postgres@127.0.0.1:55432/paperstream"
        );
        assert_eq!(
            redact_url("redis://127.0.0.1:7101"),
            "redis://127.0.0.1:7101"
        );
        assert_eq!(redact_url("not a url"), "not a url");
        let urls = vec!["redis://u:p@h:1".to_owned(), "redis://h:2".to_owned()];
        assert_eq!(
            format!("{:?}", RedactedUrls(&urls)),
            r#"["redis://u:***@h:1", "redis://h:2"]"#
        );
    }
}
