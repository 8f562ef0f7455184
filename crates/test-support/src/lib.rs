//! Real dependencies for integration tests: a Redis Cluster (3 masters,
//! 3 replicas) and Postgres, on loopback and free ports.
//!
//! Tests that only need *a* cluster share one: the one `scripts/infra`
//! started when `PAPERSTREAM_TEST_REDIS_URLS` is set (what `scripts/test`
//! does), otherwise one started for this test process. Tests that break
//! things (kill a master) start a [`RedisCluster`] of their own.
//!
//! Everything started here is stopped when its handle drops, and also by a
//! watchdog process when the test process dies without dropping it (a
//! panic in a static, `kill -9`), so no test leaves servers behind.

mod postgres;
mod redis_cluster;

pub use postgres::{PostgresServer, TestDatabase, postgres_admin_url};
pub use redis_cluster::{RedisCluster, redis_cli_for, shared_redis_urls, url_as};

/// A name no other test uses, for topics, groups and databases.
pub fn unique_name(prefix: &str) -> String {
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}-{}", &suffix[..12])
}

/// Log to the test output; honours `RUST_LOG` (default: warnings).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// Start a shell loop that waits for this process to exit, then runs
/// `cleanup`. Returns the watchdog's pid.
fn spawn_watchdog(cleanup: &str) -> std::io::Result<u32> {
    let script = format!(
        "while kill -0 {parent} 2>/dev/null; do sleep 0.5; done; {cleanup}",
        parent = std::process::id()
    );
    let child = std::process::Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    Ok(child.id())
}

/// A free TCP port on loopback such that `port + offset` is free too.
fn free_port_pair(offset: u16) -> u16 {
    use std::net::TcpListener;
    loop {
        let Ok(listener) = TcpListener::bind(("127.0.0.1", 0)) else {
            continue;
        };
        let Ok(addr) = listener.local_addr() else {
            continue;
        };
        let port = addr.port();
        if offset == 0 {
            return port;
        }
        if port
            .checked_add(offset)
            .is_some_and(|p| TcpListener::bind(("127.0.0.1", p)).is_ok())
        {
            return port;
        }
    }
}
