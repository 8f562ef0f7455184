//! The connection to the cluster: timeouts, retries through failovers,
//! server capabilities and the slot map.

use std::{collections::BTreeMap, future::Future, sync::Arc, time::Duration};

use backon::{ExponentialBuilder, Retryable};
use redis::{
    Script, ServerErrorKind, Value,
    cluster::ClusterClient,
    cluster_async::ClusterConnection,
    cluster_routing::{RoutingInfo, SingleNodeRoutingInfo},
};

use crate::{Error, Result, topic::TopicLayout};

/// How to reach the cluster and how long to wait for it.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Seed nodes, e.g. `redis://user:pass@127.0.0.1:7101`.
    pub nodes: Vec<String>,
    /// Bound on one attempt of one command.
    pub command_timeout: Duration,
    /// Bound on an operation including its retries through a failover.
    pub operation_timeout: Duration,
    pub connect_timeout: Duration,
    /// Use `XACKDEL` and `XTRIM ... ACKED` (Redis 8.2) where every master
    /// has them. Off by default: no 8.2 server could be had to test the
    /// runtime's paths through them, and everything works without them.
    pub newer_stream_commands: bool,
}

impl ClientConfig {
    pub fn new(nodes: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self {
            nodes: nodes.into_iter().map(Into::into).collect(),
            command_timeout: Duration::from_secs(2),
            // A replica takes over about two node timeouts after its master dies.
            operation_timeout: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(2),
            newer_stream_commands: false,
        }
    }
}

/// The servers, and the commands newer than Redis 7.0 that the runtime
/// uses. Each command is detected by asking every master what it has
/// (`COMMAND INFO`, `COMMAND DOCS`), never from a version number: Valkey
/// reports `redis_version:7.2.4` whatever it implements.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// `redis` or `valkey` (`server_name`), `mixed` when the masters differ.
    pub server_name: String,
    /// The lowest version among the masters, in their own numbering
    /// (`valkey_version` on Valkey).
    pub server_version: (u32, u32, u32),
    /// `XACKDEL` (Redis 8.2): acknowledge and delete in one command. Used
    /// only with [`ClientConfig::newer_stream_commands`].
    pub xackdel: bool,
    /// `XTRIM ... ACKED` (Redis 8.2): the server itself keeps
    /// unacknowledged entries. Used only with
    /// [`ClientConfig::newer_stream_commands`].
    pub acked_trim: bool,
    /// `XREADGROUP ... CLAIM` (8.4). Reported, not used: a partition's
    /// owner claims its pending entries once, at takeover, where
    /// `XAUTOCLAIM` also reports entries deleted while pending; reading with
    /// `CLAIM` afterwards would hand the owner back the entries it is
    /// deliberately holding behind a failed key.
    pub xreadgroup_claim: bool,
}

/// A master and the slots it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotRange {
    pub start: u16,
    pub end: u16,
    pub master: String,
    pub replicas: Vec<String>,
}

/// Where the partitions of a topic live.
#[derive(Debug, Clone)]
pub struct Placement {
    pub topic: String,
    /// `(partition, slot, master address)`.
    pub partitions: Vec<(u16, u16, String)>,
    /// Partitions per master, for every master of the cluster.
    pub per_master: BTreeMap<String, usize>,
}

impl Placement {
    /// True when no master holds more than one partition more than another.
    pub fn is_balanced(&self) -> bool {
        let counts = self.per_master.values();
        let (min, max) = (counts.clone().min(), counts.max());
        matches!((min, max), (Some(min), Some(max)) if max - min <= 1)
    }
}

/// A cheap-to-clone handle to the cluster, shared by producers, consumers
/// and inspection.
#[derive(Clone)]
pub struct StreamsClient {
    inner: Arc<Inner>,
}

struct Inner {
    config: ClientConfig,
    connection: ClusterConnection,
    capabilities: Capabilities,
}

impl std::fmt::Debug for StreamsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamsClient")
            .field("nodes", &self.inner.config.nodes)
            .field("capabilities", &self.inner.capabilities)
            .finish()
    }
}

impl StreamsClient {
    pub async fn connect(config: ClientConfig) -> Result<Self> {
        if config.nodes.is_empty() {
            return Err(Error::Config("no Redis cluster nodes configured".into()));
        }
        let client = cluster_client(&config, config.command_timeout, 4)?;
        let connection = connect(&client, config.connect_timeout).await?;
        let mut this = Self {
            inner: Arc::new(Inner {
                config,
                connection,
                capabilities: Capabilities::default(),
            }),
        };
        let capabilities = this.detect_capabilities().await?;
        tracing::info!(?capabilities, "connected to the Redis cluster");
        if let Some(inner) = Arc::get_mut(&mut this.inner) {
            inner.capabilities = capabilities;
        }
        Ok(this)
    }

    pub fn capabilities(&self) -> &Capabilities {
        &self.inner.capabilities
    }

    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// The shared multiplexed connection. Never use it for blocking commands.
    pub(crate) fn connection(&self) -> ClusterConnection {
        self.inner.connection.clone()
    }

    /// A connection of its own, for blocking reads: a blocked command holds
    /// its node connection, and on the shared one it would stall everyone.
    /// It never retries a command by itself: a read repeated after a lost
    /// reply would skip what the first attempt delivered.
    pub(crate) async fn dedicated_connection(&self, block: Duration) -> Result<ClusterConnection> {
        let response_timeout = self.inner.config.command_timeout + block;
        let client = cluster_client(&self.inner.config, response_timeout, 0)?;
        connect(&client, self.inner.config.connect_timeout).await
    }

    /// Run `op` with a per-attempt timeout, retrying transient failures
    /// (connection loss, MOVED/ASK, CLUSTERDOWN, failover) with exponential
    /// backoff until the operation timeout.
    pub(crate) async fn run<T, F, Fut>(&self, operation: &'static str, op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        retry(
            operation,
            self.inner.config.command_timeout,
            self.inner.config.operation_timeout,
            op,
        )
        .await
    }

    /// Send `cmd` on the shared connection, with timeouts and retries.
    pub(crate) async fn query<T: redis::FromRedisValue>(
        &self,
        operation: &'static str,
        cmd: &redis::Cmd,
    ) -> Result<T> {
        self.run(operation, || {
            let mut conn = self.connection();
            async move { Ok(cmd.query_async(&mut conn).await?) }
        })
        .await
    }

    /// Run `cmd`, an `EVALSHA` of `script` or a pipeline that starts with
    /// one, on the shared connection, with timeouts and retries. A node that
    /// does not know the script (a replica just promoted) gets it loaded.
    pub(crate) async fn eval<T: redis::FromRedisValue + Send>(
        &self,
        operation: &'static str,
        script: &Script,
        cmd: &(impl Query + Sync),
    ) -> Result<T> {
        self.eval_within(operation, self.inner.config.operation_timeout, script, cmd)
            .await
    }

    /// [`Self::eval`] with its own bound on the whole operation, for calls
    /// that must not outlive a deadline (a lease renewal is worthless after
    /// the lease expired).
    pub(crate) async fn eval_within<T: redis::FromRedisValue + Send>(
        &self,
        operation: &'static str,
        total: Duration,
        script: &Script,
        cmd: &(impl Query + Sync),
    ) -> Result<T> {
        let attempt_timeout = self.inner.config.command_timeout.min(total);
        self.eval_on(
            &self.inner.connection,
            operation,
            attempt_timeout,
            total,
            script,
            cmd,
        )
        .await
    }

    /// [`Self::eval_within`] on `connection`, each attempt allowed
    /// `attempt_timeout`: for a call that holds its connection on the
    /// server (`WAIT`), which must not stall the shared one.
    pub(crate) async fn eval_on<T: redis::FromRedisValue + Send>(
        &self,
        connection: &ClusterConnection,
        operation: &'static str,
        attempt_timeout: Duration,
        total: Duration,
        script: &Script,
        cmd: &(impl Query + Sync),
    ) -> Result<T> {
        retry(operation, attempt_timeout, total, || {
            let mut conn = connection.clone();
            async move {
                match cmd.query(&mut conn).await {
                    Err(err)
                        if err.kind() == redis::ErrorKind::Server(ServerErrorKind::NoScript) =>
                    {
                        script.load_async(&mut conn).await?;
                        Ok(cmd.query(&mut conn).await?)
                    }
                    other => Ok(other?),
                }
            }
        })
        .await
    }

    /// Send `cmd` to the node at `address` (`host:port`).
    pub(crate) async fn query_node<T: redis::FromRedisValue>(
        &self,
        operation: &'static str,
        address: &str,
        cmd: &redis::Cmd,
    ) -> Result<T> {
        let (host, port) = split_address(address)?;
        let routing = SingleNodeRoutingInfo::ByAddress {
            host: host.to_owned(),
            port,
        };
        self.query_routed(operation, routing, cmd).await
    }

    async fn query_routed<T: redis::FromRedisValue>(
        &self,
        operation: &'static str,
        routing: SingleNodeRoutingInfo,
        cmd: &redis::Cmd,
    ) -> Result<T> {
        self.run(operation, || {
            let mut conn = self.connection();
            let routing = RoutingInfo::SingleNode(routing.clone());
            async move {
                let value = conn.route_command(cmd.clone(), routing).await?;
                Ok(redis::from_redis_value(value).map_err(redis::RedisError::from)?)
            }
        })
        .await
    }

    /// The slot map, from `CLUSTER SLOTS`.
    pub async fn slot_ranges(&self) -> Result<Vec<SlotRange>> {
        let reply: Value = self
            .query_routed(
                "cluster slots",
                SingleNodeRoutingInfo::RandomPrimary,
                redis::cmd("CLUSTER").arg("SLOTS"),
            )
            .await?;
        parse_cluster_slots(reply)
    }

    /// Every reachable node and its role (`master` or `replica`), from
    /// `CLUSTER NODES`. Unlike the slot map, it lists a replica that is
    /// still syncing (Valkey leaves such replicas out of `CLUSTER SLOTS`).
    pub async fn nodes(&self) -> Result<Vec<(String, &'static str)>> {
        let reply: String = self
            .query_routed(
                "cluster nodes",
                SingleNodeRoutingInfo::RandomPrimary,
                redis::cmd("CLUSTER").arg("NODES"),
            )
            .await?;
        Ok(parse_cluster_nodes(&reply))
    }

    /// Whether the cluster answers, for readiness checks.
    pub async fn ping(self) -> std::result::Result<(), String> {
        self.slot_ranges()
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// The masters of the cluster, by address.
    pub async fn masters(&self) -> Result<Vec<String>> {
        let mut masters: Vec<String> = self
            .slot_ranges()
            .await?
            .into_iter()
            .map(|r| r.master)
            .collect();
        masters.sort();
        masters.dedup();
        Ok(masters)
    }

    /// Which master serves each partition of `topic`, checked against the
    /// live slot map.
    pub async fn placement(&self, topic: &TopicLayout) -> Result<Placement> {
        let ranges = self.slot_ranges().await?;
        let mut per_master: BTreeMap<String, usize> =
            ranges.iter().map(|r| (r.master.clone(), 0)).collect();
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for p in &topic.partitions {
            let master = ranges
                .iter()
                .find(|r| (r.start..=r.end).contains(&p.slot))
                .map(|r| r.master.clone())
                .ok_or_else(|| {
                    Error::protocol("cluster slots", format!("no master serves slot {}", p.slot))
                })?;
            *per_master.entry(master.clone()).or_default() += 1;
            partitions.push((p.index, p.slot, master));
        }
        let placement = Placement {
            topic: topic.config.name.clone(),
            partitions,
            per_master,
        };
        if !placement.is_balanced() {
            tracing::warn!(
                topic = %placement.topic,
                per_master = ?placement.per_master,
                "partitions are spread unevenly over the masters; rebalance the cluster's slots"
            );
        }
        Ok(placement)
    }

    async fn detect_capabilities(&self) -> Result<Capabilities> {
        let masters = self.masters().await?;
        let mut caps: Option<Capabilities> = None;
        for master in &masters {
            let info: String = self
                .query_node(
                    "info server",
                    master,
                    &redis::cmd("INFO").arg("server").to_owned(),
                )
                .await?;
            let (server_name, server_version) = parse_server(&info);
            let node = Capabilities {
                server_name,
                server_version,
                xackdel: self.has_command(master, "XACKDEL").await?,
                acked_trim: self.command_takes(master, "XTRIM", "ACKED").await?,
                xreadgroup_claim: self.command_takes(master, "XREADGROUP", "CLAIM").await?,
            };
            caps = Some(match caps {
                None => node,
                Some(c) => Capabilities {
                    server_name: if c.server_name == node.server_name {
                        c.server_name
                    } else {
                        "mixed".into()
                    },
                    server_version: c.server_version.min(node.server_version),
                    xackdel: c.xackdel && node.xackdel,
                    acked_trim: c.acked_trim && node.acked_trim,
                    xreadgroup_claim: c.xreadgroup_claim && node.xreadgroup_claim,
                },
            });
        }
        let mut caps =
            caps.ok_or_else(|| Error::protocol("cluster slots", "the cluster has no masters"))?;
        if !self.inner.config.newer_stream_commands && (caps.xackdel || caps.acked_trim) {
            tracing::info!(
                "the masters have XACKDEL / XTRIM ACKED; not using them (newer_stream_commands is off)"
            );
            caps.xackdel = false;
            caps.acked_trim = false;
        }
        Ok(caps)
    }

    async fn has_command(&self, node: &str, name: &str) -> Result<bool> {
        let reply: Value = self
            .query_node(
                "command info",
                node,
                &redis::cmd("COMMAND").arg("INFO").arg(name).to_owned(),
            )
            .await?;
        Ok(matches!(&reply, Value::Array(items) if items.iter().any(|v| *v != Value::Nil)))
    }

    /// Whether the node documents `token` among the arguments of `command`.
    async fn command_takes(&self, node: &str, command: &str, token: &str) -> Result<bool> {
        let reply: Value = self
            .query_node(
                "command docs",
                node,
                &redis::cmd("COMMAND").arg("DOCS").arg(command).to_owned(),
            )
            .await?;
        Ok(mentions(&reply, token))
    }
}

/// Whether `token` appears as a string anywhere in `value`.
fn mentions(value: &Value, token: &str) -> bool {
    match value {
        Value::BulkString(bytes) => bytes.eq_ignore_ascii_case(token.as_bytes()),
        Value::SimpleString(text) => text.eq_ignore_ascii_case(token),
        Value::Array(items) | Value::Set(items) => items.iter().any(|v| mentions(v, token)),
        Value::Map(pairs) => pairs
            .iter()
            .any(|(k, v)| mentions(k, token) || mentions(v, token)),
        _ => false,
    }
}

fn cluster_client(
    config: &ClientConfig,
    response_timeout: Duration,
    retries: u32,
) -> Result<ClusterClient> {
    Ok(ClusterClient::builder(config.nodes.clone())
        .connection_timeout(config.connect_timeout)
        .response_timeout(response_timeout)
        .retries(retries)
        .build()?)
}

async fn connect(client: &ClusterClient, timeout: Duration) -> Result<ClusterConnection> {
    // Connecting has no timeout of its own and can hang on a dead node.
    match tokio::time::timeout(timeout * 3, client.get_async_connection()).await {
        Ok(connection) => Ok(connection?),
        Err(_) => Err(Error::Timeout {
            operation: "connect to cluster",
            after: timeout * 3,
        }),
    }
}

pub(crate) async fn retry<T, F, Fut>(
    operation: &'static str,
    attempt_timeout: Duration,
    total: Duration,
    mut op: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let attempt = || {
        let fut = op();
        async move {
            match tokio::time::timeout(attempt_timeout, fut).await {
                Ok(result) => result,
                Err(_) => Err(Error::Timeout {
                    operation,
                    after: attempt_timeout,
                }),
            }
        }
    };
    let backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_secs(1))
        .with_jitter()
        .without_max_times();
    let retrying = attempt
        .retry(backoff)
        .when(Error::is_transient)
        .notify(|err, wait| tracing::debug!(operation, %err, ?wait, "retrying"));
    // backon bounds the sleeps, not the attempts: bound the whole.
    match tokio::time::timeout(total, retrying).await {
        Ok(result) => result,
        Err(_) => Err(Error::Timeout {
            operation,
            after: total,
        }),
    }
}

/// A command or a pipeline.
pub(crate) trait Query {
    fn query<T: redis::FromRedisValue + Send>(
        &self,
        conn: &mut ClusterConnection,
    ) -> impl Future<Output = redis::RedisResult<T>> + Send;
}

impl Query for redis::Cmd {
    fn query<T: redis::FromRedisValue + Send>(
        &self,
        conn: &mut ClusterConnection,
    ) -> impl Future<Output = redis::RedisResult<T>> + Send {
        self.query_async(conn)
    }
}

impl Query for redis::Pipeline {
    fn query<T: redis::FromRedisValue + Send>(
        &self,
        conn: &mut ClusterConnection,
    ) -> impl Future<Output = redis::RedisResult<T>> + Send {
        self.query_async(conn)
    }
}

/// `EVALSHA` of `script` over `keys` and `args`.
pub(crate) fn evalsha<K: redis::ToRedisArgs>(script: &Script, keys: &[K]) -> redis::Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(script.get_hash()).arg(keys.len()).arg(keys);
    cmd
}

fn split_address(address: &str) -> Result<(&str, u16)> {
    address
        .rsplit_once(':')
        .and_then(|(host, port)| Some((host, port.parse().ok()?)))
        .ok_or_else(|| Error::Config(format!("bad node address {address:?}")))
}

/// `(server_name, version)` from `INFO server`: Valkey names itself and
/// has its own version line; Redis has neither name line nor other version.
fn parse_server(info: &str) -> (String, (u32, u32, u32)) {
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
    };
    let name = field("server_name").unwrap_or("redis").to_owned();
    let version = field("valkey_version")
        .or_else(|| field("redis_version"))
        .unwrap_or("0.0.0");
    let mut parts = version.split('.').map(|p| p.parse().unwrap_or(0));
    (
        name,
        (
            parts.next().unwrap_or(0),
            parts.next().unwrap_or(0),
            parts.next().unwrap_or(0),
        ),
    )
}

/// `(address, role)` of every node of a `CLUSTER NODES` reply that is not
/// failed: `<id> <ip:port@bus[,hostname]> <flags> ...` per line.
fn parse_cluster_nodes(reply: &str) -> Vec<(String, &'static str)> {
    let mut nodes: Vec<(String, &'static str)> = reply
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let address = fields.nth(1)?.split(['@', ',']).next()?;
            let flags = fields.next()?;
            let flag = |name: &str| flags.split(',').any(|f| f == name);
            if address.starts_with(':') || flag("fail") || flag("noaddr") || flag("handshake") {
                return None;
            }
            let role = if flag("master") { "master" } else { "replica" };
            Some((address.to_owned(), role))
        })
        .collect();
    nodes.sort();
    nodes
}

fn parse_cluster_slots(reply: Value) -> Result<Vec<SlotRange>> {
    let bad = |detail: String| Error::protocol("cluster slots", detail);
    let Value::Array(ranges) = reply else {
        return Err(bad(format!("{reply:?}")));
    };
    let node = |v: &Value| -> Option<String> {
        let Value::Array(parts) = v else { return None };
        let host = match parts.first()? {
            Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
            Value::SimpleString(s) => s.clone(),
            _ => return None,
        };
        let Value::Int(port) = parts.get(1)? else {
            return None;
        };
        Some(format!("{host}:{port}"))
    };
    ranges
        .iter()
        .map(|range| {
            let Value::Array(parts) = range else {
                return Err(bad(format!("{range:?}")));
            };
            let slot = |i: usize| match parts.get(i) {
                Some(Value::Int(n)) => u16::try_from(*n).map_err(|e| bad(e.to_string())),
                other => Err(bad(format!("slot bound {other:?}"))),
            };
            let master = parts
                .get(2)
                .and_then(node)
                .ok_or_else(|| bad(format!("{range:?}")))?;
            Ok(SlotRange {
                start: slot(0)?,
                end: slot(1)?,
                master,
                replicas: parts.iter().skip(3).filter_map(node).collect(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_and_versions_parse_from_info() {
        assert_eq!(
            parse_server("# Server\r\nredis_version:7.0.15\r\n"),
            ("redis".into(), (7, 0, 15))
        );
        assert_eq!(
            parse_server("redis_version:7.2.4\r\nserver_name:valkey\r\nvalkey_version:9.1.2\r\n"),
            ("valkey".into(), (9, 1, 2))
        );
        assert_eq!(parse_server("nothing here"), ("redis".into(), (0, 0, 0)));
    }

    #[test]
    fn cluster_nodes_lists_every_live_node_with_its_role() {
        let reply = "\
a1 127.0.0.1:7101@17101 myself,master - 0 0 1 connected 0-5460
b2 127.0.0.1:7104@17104,host-b slave a1 0 1 1 connected
c3 127.0.0.1:7105@17105 slave,fail a1 0 1 1 connected
d4 :0@0 master,noaddr - 0 0 0 disconnected
";
        assert_eq!(
            parse_cluster_nodes(reply),
            [
                ("127.0.0.1:7101".to_owned(), "master"),
                ("127.0.0.1:7104".to_owned(), "replica")
            ]
        );
    }

    #[test]
    fn tokens_are_found_in_command_docs() {
        let docs = Value::Array(vec![
            Value::BulkString(b"xtrim".to_vec()),
            Value::Array(vec![
                Value::BulkString(b"token".to_vec()),
                Value::BulkString(b"ACKED".to_vec()),
            ]),
        ]);
        assert!(mentions(&docs, "acked"));
        assert!(!mentions(&docs, "claim"));
    }

    #[test]
    fn balance_allows_one_partition_of_difference() {
        let placement = |counts: &[usize]| Placement {
            topic: "t".into(),
            partitions: Vec::new(),
            per_master: counts
                .iter()
                .enumerate()
                .map(|(i, c)| (format!("m{i}"), *c))
                .collect(),
        };
        assert!(placement(&[2, 2, 2]).is_balanced());
        assert!(placement(&[3, 2, 2]).is_balanced());
        assert!(!placement(&[3, 3, 0]).is_balanced());
    }
}
