use std::{
    path::PathBuf,
    process::Command,
    sync::OnceLock,
    time::{Duration, Instant},
};

use sqlx::{Connection, Executor, PgConnection, PgPool, postgres::PgPoolOptions};

/// URL of a Postgres superuser connection that may create databases: the
/// instance of `scripts/infra` when `PAPERSTREAM_TEST_DATABASE_URL` is set,
/// otherwise one started for this test process.
pub fn postgres_admin_url() -> String {
    if let Ok(url) = std::env::var("PAPERSTREAM_TEST_DATABASE_URL")
        && !url.trim().is_empty()
    {
        return url;
    }
    static SHARED: OnceLock<PostgresServer> = OnceLock::new();
    SHARED
        .get_or_init(|| PostgresServer::start().expect("start Postgres for this test process"))
        .admin_url()
}

/// A throwaway Postgres instance (initdb + pg_ctl) in a temporary
/// directory. Postgres refuses to run as root, so as root it runs as the
/// `postgres` OS user.
#[derive(Debug)]
pub struct PostgresServer {
    dir: PathBuf,
    port: u16,
}

impl PostgresServer {
    pub fn start() -> std::io::Result<Self> {
        let bin = pg_bin_dir()?;
        let dir = std::env::temp_dir().join(crate::unique_name("paperstream-pg"));
        std::fs::create_dir_all(&dir)?;
        let as_root = is_root();
        if as_root {
            run(Command::new("chown").arg("postgres:postgres").arg(&dir))?;
        }
        let data = dir.join("data");
        let user_cmd = |program: &str| {
            let mut cmd = if as_root {
                let mut c = Command::new("runuser");
                c.arg("-u").arg("postgres").arg("--").arg(bin.join(program));
                c
            } else {
                Command::new(bin.join(program))
            };
            cmd.current_dir(&dir);
            cmd
        };
        run(user_cmd("initdb")
            .arg("-D")
            .arg(&data)
            .arg("-U")
            .arg("postgres")
            .arg("-A")
            .arg("trust")
            .arg("--no-sync"))?;
        let port = crate::free_port_pair(0);
        let server = Self {
            dir: dir.clone(),
            port,
        };
        crate::spawn_watchdog(&format!(
            "kill -9 $(head -1 {data}/postmaster.pid) 2>/dev/null; rm -rf {dir}",
            data = data.display(),
            dir = dir.display()
        ))?;
        run(user_cmd("pg_ctl")
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(dir.join("postgres.log"))
            .arg("-o")
            .arg(format!(
                "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
                dir.display()
            ))
            .arg("-w")
            .arg("start"))?;
        Ok(server)
    }

    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("data/postmaster.pid"))
            && let Some(pid) = pid.lines().next()
        {
            let _ = Command::new("kill").arg("-9").arg(pid).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A fresh database, dropped when the handle drops.
#[derive(Debug)]
pub struct TestDatabase {
    pub name: String,
    pub url: String,
    pub pool: PgPool,
    admin_url: String,
}

impl TestDatabase {
    pub async fn create() -> Result<Self, sqlx::Error> {
        let admin_url = postgres_admin_url();
        let name = crate::unique_name("test").replace('-', "_");
        let mut admin = connect_with_retry(&admin_url).await?;
        admin
            .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .await?;
        admin.close().await?;
        let url = match admin_url.rsplit_once('/') {
            Some((base, _)) => format!("{base}/{name}"),
            None => {
                return Err(sqlx::Error::Configuration(
                    "admin URL has no database".into(),
                ));
            }
        };
        let pool = PgPoolOptions::new()
            .max_connections(10)
            .connect(&url)
            .await?;
        Ok(Self {
            name,
            url,
            pool,
            admin_url,
        })
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // Drop may run on a runtime that is blocked right here, so the work
        // happens on a thread with a runtime of its own. The pool is left
        // alone (closing it would need the blocked runtime); FORCE ends its
        // connections.
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                if let Ok(mut admin) = PgConnection::connect(&admin_url).await {
                    let _ = admin
                        .execute(sqlx::AssertSqlSafe(format!(
                            "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                        )))
                        .await;
                }
            });
        })
        .join();
    }
}

async fn connect_with_retry(url: &str) -> Result<PgConnection, sqlx::Error> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match PgConnection::connect(url).await {
            Ok(conn) => return Ok(conn),
            Err(err) if Instant::now() > deadline => return Err(err),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

fn pg_bin_dir() -> std::io::Result<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop().ok_or_else(|| {
        std::io::Error::other("no Postgres under /usr/lib/postgresql (run scripts/infra up)")
    })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn run(cmd: &mut Command) -> std::io::Result<()> {
    let out = cmd.output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}
