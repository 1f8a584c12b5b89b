//! A forward's credentials and TLS (issue 21, daemon/FORWARD.md): a
//! `[[forward]]` entry with `user` + `password`, `nkey_file`, `creds_file`
//! (operator mode: JWTs signed here, tests/src/nats_jwt.rs) or `tls_ca`
//! forwards into a 1-node JetStream server that requires them; wrong ones
//! are counted and said, and lose nothing: the messages wait in the spool
//! (the forward's lag) until the forward is set right.
//!
//! Needs `nats-server` (scripts/setup.sh installs it in target/pyenv):
//! without it each test says why it skips; with `CI=true` a skip fails.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, Context};
use async_nats::ConnectOptions;
use sluice_testkit::nats::{require_nats_server, Cluster};
use sluice_tests::daemon::{Daemon, DaemonSpec};
use sluice_tests::forward;
use sluice_tests::nats_jwt::Operator;
use sluice_tests::pki::Ca;
use sluice_tests::{runtime, sluiced_bin};

/// The sluice stream forwarded, and the JetStream stream it goes to.
const STREAM: &str = "orders";
const TARGET: &str = "AUTHED";
/// How long anything awaited may take (it takes well under a second when
/// all is right).
const WITHIN: Duration = Duration::from_secs(30);
/// How long a refused forward is watched holding its messages back.
const HOLDS_FOR: Duration = Duration::from_secs(2);

/// A sluiced with one forward, `js`, of [`STREAM`] into [`TARGET`]
/// (created when missing), its files in `dir`.
struct Forwarder {
    dir: PathBuf,
    servers: Vec<String>,
    spec: DaemonSpec,
}

impl Forwarder {
    /// `keys`: the entry's credentials and TLS lines.
    fn new(dir: &Path, servers: Vec<String>, keys: &str) -> Forwarder {
        let f = Forwarder {
            dir: dir.to_path_buf(),
            spec: forward::spec(
                sluiced_bin!(),
                dir,
                &dir.join("sluiced.toml").display().to_string(),
            ),
            servers,
        };
        f.set_keys(keys);
        f
    }

    /// Rewrites the config with other credentials (read at the next start).
    fn set_keys(&self, keys: &str) {
        forward::write_config(
            &self.dir,
            STREAM,
            &self.servers,
            TARGET,
            &format!("create = true\n{keys}"),
        );
    }

    fn start(&self) -> Daemon {
        self.spec.start()
    }

    /// What the forward's connection said: lines of sluiced's log from
    /// forward/connect.rs (not the rest, which names certificates and
    /// files of its own).
    fn connect_lines(&self) -> Vec<String> {
        forward::log_of(&self.dir)
            .lines()
            .filter(|l| l.contains("sluice_daemon::forward::connect") && l.contains("forward=js"))
            .map(str::to_owned)
            .collect()
    }

    /// Whether a line of [`Forwarder::connect_lines`] has every one of
    /// `words`.
    fn said(&self, words: &[&str]) -> bool {
        self.connect_lines()
            .iter()
            .any(|l| words.iter().all(|w| l.contains(w)))
    }

    /// Starts sluiced, sends it seqs `1..=n` of `producer` (if any) and
    /// waits until the target holds those of every one of `all`, once.
    fn forwards(&self, t: &Target, producer: Option<u64>, n: u64, all: &[u64]) -> Daemon {
        let d = self.start();
        if let Some(p) = producer {
            self.send(p, n);
        }
        t.assert_all_once(all, n);
        d
    }

    /// Starts sluiced with credentials (or TLS) that do not get through:
    /// sends it seqs `1..=n` of `producer` (if any), waits for an error of
    /// `kind`, checks that a line of the log has every one of `words`, and
    /// that the `waiting` messages stay in the spool while the target
    /// keeps its `target` messages.
    #[allow(clippy::too_many_arguments)]
    fn refused(
        &self,
        t: &Target,
        producer: Option<u64>,
        n: u64,
        kind: &str,
        words: &[&str],
        waiting: u64,
        target: u64,
    ) -> Daemon {
        let d = self.start();
        if let Some(p) = producer {
            self.send(p, n);
        }
        wait_metric(&d, "sluice_forward_errors_total", &[("kind", kind)], |v| {
            v >= 1.0
        });
        assert!(
            self.said(words),
            "sluiced says why it does not forward ({words:?}): {:#?}",
            self.connect_lines()
        );
        holds_back(&d, waiting, t, target);
        d
    }

    /// Publishes seqs `1..=n` of `producer` as one HTTP batch, again until
    /// sluiced has them in its spool (it may still be starting).
    fn send(&self, producer: u64, n: u64) {
        let body: String = (1..=n)
            .map(|s| format!("{{\"data\": \"m{s}\"}}\n"))
            .collect();
        let url = format!("{}/streams/{STREAM}/messages", self.spec.admin_url());
        let deadline = Instant::now() + WITHIN;
        loop {
            let r = ureq::post(&url)
                .timeout(Duration::from_secs(5))
                .set("content-type", "application/x-ndjson")
                .set("sluice-producer-id", &producer.to_string())
                .set("sluice-seq", "1")
                .send_string(&body);
            match r {
                Ok(_) => return,
                Err(e) => assert!(Instant::now() < deadline, "{url}: not taken: {e}"),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The value of a forward `js` metric with more labels (0 if absent).
fn metric(d: &Daemon, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut all = vec![("forward", "js")];
    all.extend_from_slice(labels);
    d.scrape().map(|s| s.value(name, &all)).unwrap_or(0.0)
}

fn wait_metric(d: &Daemon, name: &str, labels: &[(&str, &str)], want: impl Fn(f64) -> bool) {
    let deadline = Instant::now() + WITHIN;
    loop {
        let v = metric(d, name, labels);
        if want(v) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name}{labels:?} is {v} after {WITHIN:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn lag(d: &Daemon) -> f64 {
    metric(d, "sluice_forward_lag_messages", &[])
}

/// The test's own view of [`TARGET`]: a client with the test's
/// credentials, on a runtime that lives as long as it does.
struct Target {
    rt: tokio::runtime::Runtime,
    js: Context,
}

impl Target {
    fn connect(opts: ConnectOptions, url: &str) -> Target {
        let rt = runtime();
        let js = rt.block_on(async {
            let client = opts
                .connection_timeout(Duration::from_secs(5))
                .connect(url)
                .await
                .unwrap_or_else(|e| panic!("the test's own connection to {url}: {e}"));
            jetstream::new(client)
        });
        Target { rt, js }
    }

    /// How many messages [`TARGET`] holds (0 while it does not exist).
    fn count(&self) -> u64 {
        self.rt.block_on(async {
            match self.js.get_stream(TARGET).await {
                Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
                Err(_) => 0,
            }
        })
    }

    /// Waits until [`TARGET`] holds every message of `producers` (seqs
    /// `1..=n` each), each once: as many messages as that, no sequence
    /// taken by a duplicate, and their `Nats-Msg-Id`s exactly those.
    fn assert_all_once(&self, producers: &[u64], n: u64) {
        let want: BTreeSet<String> = producers
            .iter()
            .flat_map(|p| (1..=n).map(move |s| format!("{STREAM}/{p}/{s}")))
            .collect();
        let total = want.len() as u64;
        let deadline = Instant::now() + WITHIN;
        loop {
            let c = self.count();
            if c >= total {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{TARGET} holds {c} of {total} messages after {WITHIN:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let ids: BTreeSet<String> = self.rt.block_on(async {
            let mut stream = self.js.get_stream(TARGET).await.expect("the target stream");
            let state = stream.info().await.expect("its info").state.clone();
            assert_eq!(
                (state.messages, state.first_sequence, state.last_sequence),
                (total, 1, total),
                "{TARGET}: every message once"
            );
            let mut ids = BTreeSet::new();
            for seq in 1..=total {
                let m = stream
                    .get_raw_message(seq)
                    .await
                    .unwrap_or_else(|e| panic!("message {seq}: {e}"));
                let id = m
                    .headers
                    .get(async_nats::header::NATS_MESSAGE_ID)
                    .unwrap_or_else(|| panic!("message {seq} has no Nats-Msg-Id"))
                    .to_string();
                assert!(ids.insert(id.clone()), "{id} twice");
            }
            ids
        });
        assert_eq!(ids, want);
    }
}

/// A forward that cannot get through holds everything back for a while:
/// not connected, its lag all `n` messages, and [`TARGET`] still at
/// `target` messages.
fn holds_back(d: &Daemon, n: u64, t: &Target, target: u64) {
    wait_metric(d, "sluice_forward_lag_messages", &[], |v| v == n as f64);
    let until = Instant::now() + HOLDS_FOR;
    while Instant::now() < until {
        assert_eq!(metric(d, "sluice_forward_connected", &[]), 0.0);
        assert_eq!(lag(d), n as f64, "the lag is what waits in the spool");
        assert_eq!(t.count(), target, "nothing got through");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn stop(d: Daemon) {
    let status = d.terminate(Duration::from_secs(10));
    assert!(status.success(), "sluiced stopped with {status}");
}

#[test]
fn user_and_password_forward_and_a_wrong_password_is_said_and_loses_nothing() {
    if !require_nats_server(
        "user_and_password_forward_and_a_wrong_password_is_said_and_loses_nothing",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start_with(
        dir.path(),
        1,
        "authorization {\n  users = [ { user: \"fw\", password: \"right-pw\" } ]\n}\n",
    );
    let url = cluster.url(0);
    let js = Target::connect(
        ConnectOptions::with_user_and_password("fw".into(), "right-pw".into()),
        &url,
    );
    let right = "user = \"fw\"\npassword = \"right-pw\"\n";
    let wrong = "user = \"fw\"\npassword = \"wrong-pw\"\n";

    // The right password: everything forwarded, once.
    let a = Forwarder::new(&dir.path().join("a"), cluster.client_urls(), right);
    let d = a.forwards(&js, Some(1), 100, &[1]);
    wait_metric(&d, "sluice_forward_lag_messages", &[], |v| v == 0.0);
    assert_eq!(metric(&d, "sluice_forward_connected", &[]), 1.0);
    stop(d);

    // Another sluiced with a wrong password: refused, counted, said, and
    // what it was given stays in its spool.
    let b = Forwarder::new(&dir.path().join("b"), cluster.client_urls(), wrong);
    let words = ["refuse the forward's credentials", "user/password"];
    stop(b.refused(&js, Some(2), 100, "auth", &words, 100, 100));

    // The operator puts the right password: what waited is forwarded, and
    // nothing twice.
    b.set_keys(right);
    let d = b.forwards(&js, None, 100, &[1, 2]);
    wait_metric(&d, "sluice_forward_lag_messages", &[], |v| v == 0.0);
    stop(d);
}

#[test]
fn an_nkey_file_forwards_and_a_file_without_a_user_seed_is_said() {
    if !require_nats_server("an_nkey_file_forwards_and_a_file_without_a_user_seed_is_said") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let user = nkeys::KeyPair::new_user();
    let cluster = Cluster::start_with(
        dir.path(),
        1,
        &format!(
            "authorization {{\n  users = [ {{ nkey: \"{}\" }} ]\n}}\n",
            user.public_key()
        ),
    );
    let seed = user.seed().unwrap();
    assert!(seed.starts_with("SU"), "a user seed: {seed}");
    let js = Target::connect(ConnectOptions::with_nkey(seed.clone()), &cluster.url(0));

    // The seed in a file (with the newline an editor leaves).
    let seed_file = dir.path().join("fw.nk");
    std::fs::write(&seed_file, format!("{seed}\n")).unwrap();
    let a = Forwarder::new(
        &dir.path().join("a"),
        cluster.client_urls(),
        &format!("nkey_file = {:?}\n", seed_file.display().to_string()),
    );
    let d = a.forwards(&js, Some(1), 50, &[1]);
    assert_eq!(metric(&d, "sluice_forward_connected", &[]), 1.0);
    stop(d);

    // A file with the public key, not the seed: the forward says so,
    // counts a config error and holds its messages.
    let public_file = dir.path().join("fw.pub");
    std::fs::write(&public_file, user.public_key()).unwrap();
    let b = Forwarder::new(
        &dir.path().join("b"),
        cluster.client_urls(),
        &format!("nkey_file = {:?}\n", public_file.display().to_string()),
    );
    let words = ["not a user NKey seed", &public_file.display().to_string()];
    stop(b.refused(&js, Some(2), 50, "config", &words, 50, 50));

    // A user seed the servers do not list: refused as credentials.
    let stranger = nkeys::KeyPair::new_user().seed().unwrap();
    let stranger_file = dir.path().join("stranger.nk");
    std::fs::write(&stranger_file, stranger).unwrap();
    b.set_keys(&format!(
        "nkey_file = {:?}\n",
        stranger_file.display().to_string()
    ));
    let words = ["refuse the forward's credentials", "nkey_file"];
    stop(b.refused(&js, None, 50, "auth", &words, 50, 50));

    // The right seed at last: everything of both, once.
    b.set_keys(&format!(
        "nkey_file = {:?}\n",
        seed_file.display().to_string()
    ));
    stop(b.forwards(&js, None, 50, &[1, 2]));
}

#[test]
fn a_creds_file_forwards_in_operator_mode_and_an_unknown_accounts_user_is_refused() {
    if !require_nats_server(
        "a_creds_file_forwards_in_operator_mode_and_an_unknown_accounts_user_is_refused",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let operator = Operator::new();
    let cluster = Cluster::start_with(dir.path(), 1, &operator.server_conf());
    let mine = operator.user("test");
    let js = Target::connect(
        ConnectOptions::with_credentials(&mine).expect("the test's creds parse"),
        &cluster.url(0),
    );
    let creds = dir.path().join("forward.creds");
    std::fs::write(&creds, operator.user("sluiced")).unwrap();
    let a = Forwarder::new(
        &dir.path().join("a"),
        cluster.client_urls(),
        &format!("creds_file = {:?}\n", creds.display().to_string()),
    );
    let d = a.forwards(&js, Some(1), 50, &[1]);
    assert_eq!(metric(&d, "sluice_forward_connected", &[]), 1.0);
    stop(d);

    // A user of an account the servers do not know: refused as
    // credentials, said, and nothing lost.
    let stranger = dir.path().join("stranger.creds");
    std::fs::write(&stranger, operator.user_of_unknown_account("stranger")).unwrap();
    let b = Forwarder::new(
        &dir.path().join("b"),
        cluster.client_urls(),
        &format!("creds_file = {:?}\n", stranger.display().to_string()),
    );
    let words = ["refuse the forward's credentials", "creds_file"];
    stop(b.refused(&js, Some(2), 50, "auth", &words, 50, 50));

    // A file that is not a creds file: a config error naming it.
    let garbage = dir.path().join("garbage.creds");
    std::fs::write(&garbage, "not a creds file\n").unwrap();
    b.set_keys(&format!(
        "creds_file = {:?}\n",
        garbage.display().to_string()
    ));
    let words = [&garbage.display().to_string()[..]];
    stop(b.refused(&js, None, 50, "config", &words, 50, 50));

    // The right file at last: everything of both, once.
    b.set_keys(&format!("creds_file = {:?}\n", creds.display().to_string()));
    stop(b.forwards(&js, None, 50, &[1, 2]));
}

/// The TLS versions of the server's client connections named `name`.
fn tls_versions(cluster: &Cluster, name: &str) -> Vec<String> {
    let connz = cluster.monitor_json(0, "/connz").expect("/connz");
    connz["connections"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["name"] == name)
        .map(|c| c["tls_version"].as_str().unwrap_or("").to_owned())
        .collect()
}

#[test]
fn tls_ca_forwards_over_tls_and_another_ca_connects_not_and_loses_nothing() {
    if !require_nats_server(
        "tls_ca_forwards_over_tls_and_another_ca_connects_not_and_loses_nothing",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "nats");
    let server = ca.server(dir.path(), "nats-server", &["127.0.0.1", "localhost"]);
    let cluster = Cluster::start_with(
        dir.path(),
        1,
        &format!(
            "tls {{\n  cert_file: {:?}\n  key_file: {:?}\n}}\n",
            server.cert.display().to_string(),
            server.key.display().to_string()
        ),
    );
    let js = Target::connect(
        ConnectOptions::new()
            .add_root_certificates(ca.pem.clone())
            .require_tls(true),
        &cluster.url(0),
    );
    let tls_ca = |pem: &Path| format!("tls_ca = {:?}\n", pem.display().to_string());

    let a = Forwarder::new(
        &dir.path().join("a"),
        cluster.client_urls(),
        &tls_ca(&ca.pem),
    );
    let d = a.forwards(&js, Some(1), 50, &[1]);
    assert_eq!(metric(&d, "sluice_forward_connected", &[]), 1.0);
    // The server says the forward's connection is TLS.
    let versions = tls_versions(&cluster, "sluiced forward js");
    assert!(
        !versions.is_empty() && versions.iter().all(|v| v.starts_with("1.")),
        "the forward's connections and their TLS versions: {versions:?}"
    );
    stop(d);

    // A CA that did not sign the server's certificate: no connection,
    // counted, said, and nothing lost.
    let other = Ca::new(dir.path(), "other");
    let b = Forwarder::new(
        &dir.path().join("b"),
        cluster.client_urls(),
        &tls_ca(&other.pem),
    );
    // The client tells an untrusted certificate from a server that is
    // down no better than "IO error": counted as unreachable, and the
    // line names the CA file to check.
    let words = ["unreachable", "tls_ca", &other.pem.display().to_string()];
    let d = b.refused(&js, Some(2), 50, "unreachable", &words, 50, 50);
    assert!(tls_versions(&cluster, "sluiced forward js").is_empty());
    stop(d);

    // Given the right CA, what waited is forwarded, once.
    b.set_keys(&tls_ca(&ca.pem));
    stop(b.forwards(&js, None, 50, &[1, 2]));
}
