use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
    thread::sleep,
    time::{Duration, Instant},
};

const NODES: usize = 6;
const BUS_OFFSET: u16 = 10_000;

/// Seed URLs of a cluster every test of this process may share.
pub fn shared_redis_urls() -> Vec<String> {
    if let Ok(urls) = std::env::var("PAPERSTREAM_TEST_REDIS_URLS")
        && !urls.trim().is_empty()
    {
        return urls.split(',').map(|u| u.trim().to_owned()).collect();
    }
    static SHARED: OnceLock<RedisCluster> = OnceLock::new();
    SHARED
        .get_or_init(|| RedisCluster::start().expect("start a Redis cluster for this test process"))
        .urls()
}

/// A Redis Cluster of 3 masters and 3 replicas owned by one test.
#[derive(Debug)]
pub struct RedisCluster {
    dir: PathBuf,
    ports: Vec<u16>,
    /// The default user's password, when the cluster runs with Redis users.
    admin_password: Option<String>,
}

impl RedisCluster {
    /// Start six nodes on free ports and join them into a cluster. Tries
    /// again on fresh ports if another process took one meanwhile.
    pub fn start() -> std::io::Result<Self> {
        Self::start_inner(None)
    }

    /// Like [`RedisCluster::start`], with the Redis users of `acl` (the
    /// contents of an `aclfile`) loaded on every node. `admin_password` is
    /// the default user's, which replicas and these helpers log in with.
    pub fn start_with_users(acl: &str, admin_password: &str) -> std::io::Result<Self> {
        Self::start_inner(Some((acl, admin_password)))
    }

    fn start_inner(users: Option<(&str, &str)>) -> std::io::Result<Self> {
        let mut last_error = None;
        for _ in 0..5 {
            match Self::try_start(users) {
                Ok(cluster) => return Ok(cluster),
                Err(err) => last_error = Some(err),
            }
        }
        Err(last_error.unwrap_or_else(|| std::io::Error::other("could not start a cluster")))
    }

    fn try_start(users: Option<(&str, &str)>) -> std::io::Result<Self> {
        let dir = std::env::temp_dir().join(crate::unique_name("paperstream-redis"));
        std::fs::create_dir_all(&dir)?;
        if let Some((acl, _)) = users {
            std::fs::write(dir.join("users.acl"), acl)?;
        }
        let mut ports: Vec<u16> = Vec::with_capacity(NODES);
        while ports.len() < NODES {
            let port = crate::free_port_pair(BUS_OFFSET);
            if !ports.contains(&port) {
                ports.push(port);
            }
        }
        let cleanup = format!(
            "for f in {dir}/*/redis.pid; do kill -9 $(cat \"$f\") 2>/dev/null; done; rm -rf {dir}",
            dir = dir.display()
        );
        crate::spawn_watchdog(&cleanup)?;
        let cluster = Self {
            dir,
            ports,
            admin_password: users.map(|(_, password)| password.to_owned()),
        };
        for port in &cluster.ports {
            cluster.start_node(*port)?;
        }
        let mut create = cluster.redis_cli();
        create.arg("--cluster").arg("create");
        for port in &cluster.ports {
            create.arg(format!("127.0.0.1:{port}"));
        }
        let out = create
            .arg("--cluster-replicas")
            .arg("1")
            .arg("--cluster-yes")
            .output()?;
        if !out.status.success() {
            return Err(std::io::Error::other(format!(
                "redis-cli --cluster create failed: {}",
                String::from_utf8_lossy(&out.stdout)
            )));
        }
        cluster.wait_until_healthy(Duration::from_secs(30))?;
        Ok(cluster)
    }

    fn node_dir(&self, port: u16) -> PathBuf {
        self.dir.join(port.to_string())
    }

    fn start_node(&self, port: u16) -> std::io::Result<()> {
        let dir = self.node_dir(port);
        std::fs::create_dir_all(&dir)?;
        let conf = dir.join("redis.conf");
        // The replication backlog counts as used memory and does not shrink
        // when streams are trimmed: Valkey's default of 10 MB would keep a
        // test node that was filled on purpose above its limit for good.
        let mut settings = format!(
            "port {port}\nbind 127.0.0.1\ndir {dir}\ncluster-enabled yes\n\
             cluster-config-file nodes.conf\ncluster-node-timeout 1000\n\
             cluster-require-full-coverage no\nsave \"\"\nappendonly no\n\
             maxmemory 256mb\nmaxmemory-policy noeviction\ndaemonize yes\n\
             repl-backlog-size 1mb\n\
             pidfile {dir}/redis.pid\nlogfile {dir}/redis.log\n",
            dir = dir.display()
        );
        if let Some(password) = &self.admin_password {
            settings.push_str(&format!(
                "aclfile {}\nmasterauth {password}\n",
                self.dir.join("users.acl").display()
            ));
        }
        std::fs::write(&conf, settings)?;
        let status = Command::new(redis_server()).arg(&conf).status()?;
        if !status.success() {
            return Err(std::io::Error::other(format!(
                "redis-server on {port} failed"
            )));
        }
        wait(Duration::from_secs(10), || {
            self.cli(port, &["PING"]).is_some_and(|r| r == "PONG")
        })
        .map_err(|_| std::io::Error::other(format!("redis on port {port} did not answer")))
    }

    /// Seed URLs, one per node, as the default user.
    pub fn urls(&self) -> Vec<String> {
        match &self.admin_password {
            Some(password) => self.urls_as("default", password),
            None => self
                .ports
                .iter()
                .map(|p| format!("redis://127.0.0.1:{p}"))
                .collect(),
        }
    }

    /// Seed URLs, one per node, as Redis user `user`.
    pub fn urls_as(&self, user: &str, password: &str) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("redis://{user}:{password}@127.0.0.1:{p}"))
            .collect()
    }

    pub fn ports(&self) -> &[u16] {
        &self.ports
    }

    /// The port of the master currently serving `slot`.
    pub fn master_of_slot(&self, slot: u16) -> Option<u16> {
        self.ports.iter().copied().find_map(|port| {
            let nodes = self.cli(port, &["CLUSTER", "NODES"])?;
            parse_slot_owner(&nodes, slot)
        })
    }

    /// `kill -9` the node on `port`.
    pub fn kill_node(&self, port: u16) -> std::io::Result<()> {
        let pid = std::fs::read_to_string(self.node_dir(port).join("redis.pid"))?;
        let status = Command::new("kill").arg("-9").arg(pid.trim()).status()?;
        if status.success() {
            Ok(())
        } else {
            Err(std::io::Error::other(format!("kill -9 {pid} failed")))
        }
    }

    /// Start a killed node again; it rejoins with its old identity.
    pub fn restart_node(&self, port: u16) -> std::io::Result<()> {
        self.start_node(port)
    }

    /// Wait until every live node reports `cluster_state:ok` and some node
    /// other than `dead` masters `slot`.
    pub fn wait_for_failover(
        &self,
        slot: u16,
        dead: u16,
        timeout: Duration,
    ) -> std::io::Result<u16> {
        let mut new_master = None;
        wait(timeout, || {
            new_master = self
                .ports
                .iter()
                .copied()
                .filter(|p| *p != dead)
                .find_map(|port| {
                    let slots = self.cli(port, &["CLUSTER", "NODES"])?;
                    parse_slot_owner(&slots, slot).filter(|owner| *owner != dead)
                });
            new_master.is_some()
        })
        .map_err(|_| {
            std::io::Error::other(format!("no failover of slot {slot} within {timeout:?}"))
        })?;
        new_master.ok_or_else(|| std::io::Error::other("failover vanished"))
    }

    fn wait_until_healthy(&self, timeout: Duration) -> std::io::Result<()> {
        wait(timeout, || {
            self.ports.iter().all(|port| {
                self.cli(*port, &["CLUSTER", "INFO"])
                    .is_some_and(|info| info.contains("cluster_state:ok"))
                    && self
                        .cli(*port, &["INFO", "replication"])
                        .is_some_and(|info| {
                            info.contains("role:master") || info.contains("master_link_status:up")
                        })
            })
        })
        .map_err(|_| {
            std::io::Error::other(format!("cluster in {} not healthy", self.dir.display()))
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `redis-cli`, logged in as the default user when there are users;
    /// the password goes through the environment, not the command line.
    fn redis_cli(&self) -> Command {
        let mut command = Command::new("redis-cli");
        command.arg("--no-auth-warning");
        if let Some(password) = &self.admin_password {
            command.env("REDISCLI_AUTH", password);
        }
        command
    }

    fn cli(&self, port: u16, args: &[&str]) -> Option<String> {
        let out = self
            .redis_cli()
            .arg("-p")
            .arg(port.to_string())
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for port in &self.ports {
            if let Ok(pid) = std::fs::read_to_string(self.node_dir(*port).join("redis.pid")) {
                let _ = Command::new("kill").arg("-9").arg(pid.trim()).status();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The parts of a `redis://[user:password@]host:port` URL.
fn url_parts(url: &str) -> (Option<(&str, &str)>, &str) {
    let rest = url.strip_prefix("redis://").unwrap_or(url);
    match rest.rsplit_once('@') {
        Some((credentials, address)) => (
            Some(
                credentials
                    .split_once(':')
                    .unwrap_or(("default", credentials)),
            ),
            address,
        ),
        None => (None, rest),
    }
}

/// The server binary private clusters run: `PAPERSTREAM_REDIS_SERVER` (as
/// for `scripts/infra`, e.g. Valkey's `valkey-server`), else `redis-server`.
fn redis_server() -> String {
    std::env::var("PAPERSTREAM_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into())
}

/// `redis-cli` for the node of a seed URL, logged in as the URL's user
/// (the password goes through the environment, not the command line).
pub fn redis_cli_for(url: &str) -> Command {
    let (credentials, address) = url_parts(url);
    let (host, port) = address.rsplit_once(':').unwrap_or((address, "6379"));
    let mut command = Command::new("redis-cli");
    command.args(["--no-auth-warning", "-h", host, "-p", port]);
    if let Some((user, password)) = credentials {
        command
            .args(["--user", user])
            .env("REDISCLI_AUTH", password);
    }
    command
}

/// A seed URL for the same node, as another user.
pub fn url_as(url: &str, user: &str, password: &str) -> String {
    format!("redis://{user}:{password}@{}", url_parts(url).1)
}

/// The port of the master serving `slot`, from `CLUSTER NODES` lines:
/// `<id> <ip:port@bus> <flags> <master> <ping> <pong> <epoch> <link> <slots>...`.
fn parse_slot_owner(nodes: &str, slot: u16) -> Option<u16> {
    nodes.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let flags = fields.get(2)?;
        if !flags.contains("master") || flags.contains("fail") {
            return None;
        }
        let serves = fields.iter().skip(8).any(|range| {
            let (start, end) = range.split_once('-').unwrap_or((range, range));
            matches!((start.parse::<u16>(), end.parse::<u16>()), (Ok(s), Ok(e)) if (s..=e).contains(&slot))
        });
        if !serves {
            return None;
        }
        let address = fields.get(1)?.split('@').next()?;
        address.rsplit_once(':')?.1.parse().ok()
    })
}

fn wait(timeout: Duration, mut ready: impl FnMut() -> bool) -> Result<(), ()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if ready() {
            return Ok(());
        }
        sleep(Duration::from_millis(100));
    }
    Err(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_keep_or_swap_their_credentials() {
        assert_eq!(
            url_as("redis://default:pw@127.0.0.1:7101", "flaky", "secret"),
            "redis://flaky:secret@127.0.0.1:7101"
        );
        assert_eq!(
            url_as("redis://127.0.0.1:7101", "u", "p"),
            "redis://u:p@127.0.0.1:7101"
        );
        assert_eq!(
            url_parts("redis://default:pw@127.0.0.1:7101"),
            (Some(("default", "pw")), "127.0.0.1:7101")
        );
    }

    #[test]
    fn slot_owner_from_cluster_nodes() {
        let nodes = "\
a1 127.0.0.1:7101@17101 myself,master - 0 0 1 connected 0-5460
b2 127.0.0.1:7102@17102 master - 0 0 2 connected 5461-10922
c3 127.0.0.1:7103@17103 master,fail - 0 0 3 connected
d4 127.0.0.1:7106@17106 master - 0 0 7 connected 10923-16383
e5 127.0.0.1:7104@17104 slave a1 0 0 1 connected";
        assert_eq!(parse_slot_owner(nodes, 0), Some(7101));
        assert_eq!(parse_slot_owner(nodes, 10922), Some(7102));
        assert_eq!(parse_slot_owner(nodes, 16000), Some(7106));
    }
}
