//! Who may publish: API tokens, client certificates, per-stream
//! permissions, and the client's trust in the daemon. Each failure reaches
//! the client as its own typed error, and the daemon counts it.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use sluice_daemon::auth::{hash_token, new_token};
use sluice_tests::daemon::{Daemon, DaemonSpec};
use sluice_tests::load;
use sluice_tests::pki::{Ca, Issued};
use sluice_tests::sluiced_bin;
use sluice_transport::client::{Producer, ProducerError, QuicOptions, Transport};
use sluice_transport::quic::tls::{ClientTls, ServerTrust};

struct Setup {
    _dir: tempfile::TempDir,
    spec: DaemonSpec,
    daemon: Daemon,
    token: String,
    ca: Ca,
    other_ca: Ca,
    mapped: Issued,
    unmapped: Issued,
    stranger: Issued,
}

/// A daemon with a CA-issued certificate, a token that may publish to
/// `orders`, and client certificates of its CA (one mapped to a principal,
/// one not) and of another CA.
fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let ca = Ca::new(p, "sluice");
    let other_ca = Ca::new(p, "other");
    let server = ca.server(p, "server", &["127.0.0.1", "sluiced.test"]);
    let mapped = ca.client(p, "producer-7", "producer-7");
    let unmapped = ca.client(p, "nobody", "nobody");
    let stranger = other_ca.client(p, "stranger", "producer-7");
    let token = new_token();
    let config = p.join("sluiced.toml");
    std::fs::write(
        &config,
        format!(
            "[quic]\ncert = {:?}\nkey = {:?}\nclient_ca = {:?}\n\n\
             [[auth.tokens]]\nname = \"ingest\"\nhash = \"{}\"\npublish = [\"orders\"]\n\n\
             [[auth.clients]]\ncommon_name = \"producer-7\"\npublish = [\"*\"]\n",
            server.cert,
            server.key,
            ca.pem,
            hash_token(&token)
        ),
    )
    .unwrap();
    let spec = DaemonSpec::new(sluiced_bin!(), &p.join("data"))
        .arg("--config")
        .arg(config.display().to_string());
    let daemon = spec.start();
    Setup {
        _dir: dir,
        spec,
        daemon,
        token,
        ca,
        other_ca,
        mapped,
        unmapped,
        stranger,
    }
}

impl Setup {
    fn options(
        &self,
        trust: ServerTrust,
        token: Option<&str>,
        cert: Option<&Issued>,
    ) -> QuicOptions {
        QuicOptions {
            tls: ClientTls {
                trust,
                client_cert: cert.map(|c| (c.cert.clone(), c.key.clone())),
                server_name: None,
            },
            token: token.map(str::to_owned),
        }
    }

    fn ca_trust(&self) -> ServerTrust {
        ServerTrust::CaFile(self.ca.pem.clone())
    }

    /// Connects over the fast path to `stream` and publishes one message.
    async fn publish(&self, stream: &str, q: QuicOptions) -> Result<u64, ProducerError> {
        let mut options = load::patient(Transport::FastPath(q));
        options.max_reconnects = 0;
        let p = Producer::connect(self.spec.quic, stream, 1, options).await?;
        let seq = p.send(Bytes::from_static(b"hello")).await?;
        p.close().await?;
        Ok(seq)
    }
}

fn denied(s: &Setup, reason: &str) -> f64 {
    s.daemon
        .metrics()
        .value("sluice_auth_denied_total", &[("reason", reason)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_certificates_and_trust_each_fail_with_their_own_error() {
    let s = setup();
    let t = s.token.as_str();

    // The right token publishes where it may, verifying the daemon by CA.
    let ok = s.options(s.ca_trust(), Some(t), None);
    assert_eq!(s.publish("orders", ok.clone()).await.unwrap(), 1);
    // ... and over QUIC too.
    let mut options = load::patient(Transport::Quic(ok));
    options.max_reconnects = 0;
    let p = Producer::connect(s.spec.quic, "orders", 2, options)
        .await
        .unwrap();
    assert_eq!(p.send(Bytes::from_static(b"q")).await.unwrap(), 1);
    p.close().await.unwrap();

    // Wrong token, no token.
    let e = s
        .publish("orders", s.options(s.ca_trust(), Some("slc_wrong"), None))
        .await;
    assert_eq!(e, Err(ProducerError::AuthFailed("invalid token".into())));
    let e = s
        .publish("orders", s.options(s.ca_trust(), None, None))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ProducerError::AuthFailed(r) if r.contains("no credentials")),
        "{e:?}"
    );

    // A stream the token may not publish to.
    let e = s
        .publish("audit", s.options(s.ca_trust(), Some(t), None))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ProducerError::Forbidden(r) if r.contains("ingest") && r.contains("audit")),
        "{e:?}"
    );

    // Client certificates: mapped (may publish anywhere), unmapped, and
    // from a CA the daemon does not trust.
    let mapped = s.options(s.ca_trust(), None, Some(&s.mapped));
    assert_eq!(s.publish("audit", mapped).await.unwrap(), 1);
    let e = s
        .publish("audit", s.options(s.ca_trust(), None, Some(&s.unmapped)))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ProducerError::AuthFailed(r) if r.contains("not mapped")),
        "{e:?}"
    );
    let e = s
        .publish("audit", s.options(s.ca_trust(), None, Some(&s.stranger)))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ProducerError::Tls(r) if r.contains("refused")),
        "{e:?}"
    );

    // The daemon's certificate: another CA, a wrong pin.
    let other = ServerTrust::CaFile(s.other_ca.pem.clone());
    let e = s
        .publish("orders", s.options(other, Some(t), None))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ProducerError::Tls(r) if r.contains("not trusted")),
        "{e:?}"
    );
    let pinned = ServerTrust::Fingerprint([7; 32]);
    let e = s
        .publish("orders", s.options(pinned, Some(t), None))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ProducerError::Tls(r) if r.contains("not the pinned")),
        "{e:?}"
    );

    // Counted by reason.
    for reason in [
        "bad_token",
        "no_credentials",
        "forbidden",
        "unknown_certificate",
    ] {
        assert!(denied(&s, reason) >= 1.0, "no {reason} counted");
    }
    assert!(
        s.daemon
            .metrics()
            .value("sluice_quic_handshake_failures_total", &[])
            >= 1.0,
        "the stranger's handshake failure was not counted"
    );
    let Setup { daemon, spec, .. } = s;
    assert!(daemon.terminate(Duration::from_secs(15)).success());
    let stored = sluice_tests::check::stored(&spec.dir, "orders");
    assert_eq!(stored, vec![(1, 1), (2, 1)], "only the authorized messages");
    assert_eq!(
        sluice_tests::check::stored(&spec.dir, "audit"),
        vec![(1, 1)]
    );
}

#[test]
fn beyond_loopback_sluiced_refuses_to_run_without_principals() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(sluiced_bin!())
        .args(["--spool-dir", &dir.path().display().to_string()])
        .args(["--data-listen", "0.0.0.0:0", "--print-config"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`auth`") && err.contains("sluice token new"),
        "{err}"
    );
    assert!(
        Path::new(dir.path()).read_dir().unwrap().next().is_none(),
        "it wrote nothing"
    );
}
