//! # infra-checks: the deployment files agree with the code
//!
//! `infra/` and `docker-compose.yml` describe how paperstream runs; nothing
//! compiles them, so they drift from the code silently. This crate's tests
//! hold them to it on real servers: the Redis users of
//! `infra/redis/users.acl` let each service do its work and nothing else,
//! the compose file builds, exposes and configures what really exists, and
//! the Grafana dashboards query valid PromQL through the provisioned
//! datasource.

use std::path::{Path, PathBuf};

/// The repository's root directory.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Render `infra/redis/users.acl` with `infra/redis/render-acl`, the way
/// `scripts/infra` and the Redis containers do. `passwords` maps each
/// placeholder name (`ADMIN`, `CRAWLER`, ...) to its password.
pub fn render_acl(passwords: &[(&str, &str)]) -> std::io::Result<String> {
    let script = repo_root().join("infra/redis/render-acl");
    let mut command = std::process::Command::new(script);
    for (name, password) in passwords {
        command.env(format!("PAPERSTREAM_REDIS_PASSWORD_{name}"), password);
    }
    let out = command.output()?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!(
            "render-acl failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    String::from_utf8(out.stdout).map_err(std::io::Error::other)
}
