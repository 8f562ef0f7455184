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
