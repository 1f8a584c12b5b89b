//! NATS decentralised auth for tests (operator mode, as `nsc` sets it up):
//! an operator, a system account, an account with JetStream, a user of it
//! and the user's `.creds` file, all signed here. No crate signs operator
//! JWTs, and the format is small: a JWT whose algorithm is `ed25519-nkey`,
//! signed by the issuer's NKey.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use nkeys::KeyPair;
use serde_json::{json, Value};

/// A NATS JWT: `subject`'s claims of `kind` (`nats` holds the rest of the
/// claims' `nats` object), issued and signed by `issuer`.
fn jwt(issuer: &KeyPair, subject: &str, name: &str, kind: &str, mut nats: Value) -> String {
    static IDS: AtomicU64 = AtomicU64::new(0);
    nats["type"] = json!(kind);
    nats["version"] = json!(2);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let claims = json!({
        // Unique per token (nsc uses a hash of the claims).
        "jti": format!("sluice-test-{}-{}", now.as_nanos(), IDS.fetch_add(1, Relaxed)),
        "iat": now.as_secs(),
        "iss": issuer.public_key(),
        "name": name,
        "sub": subject,
        "nats": nats,
    });
    let header = json!({"typ": "JWT", "alg": "ed25519-nkey"});
    let signed = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = issuer
        .sign(signed.as_bytes())
        .expect("an NKey with its seed signs");
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature))
}

/// An account's JWT: everything unlimited, JetStream too if `jetstream`
/// (the system account must not have it).
fn account_jwt(operator: &KeyPair, account: &KeyPair, name: &str, jetstream: bool) -> String {
    let js = if jetstream { -1 } else { 0 };
    let limits = json!({
        "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
        "wildcards": true, "conn": -1, "leaf": -1,
        "mem_storage": js, "disk_storage": js, "streams": js, "consumer": js,
    });
    jwt(
        operator,
        &account.public_key(),
        name,
        "account",
        json!({ "limits": limits }),
    )
}

/// A user of `account` and its `.creds` file (the JWT and the seed, in
/// the blocks `nsc` writes).
fn user_creds(account: &KeyPair, name: &str) -> String {
    let user = KeyPair::new_user();
    let token = jwt(
        account,
        &user.public_key(),
        name,
        "user",
        json!({ "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1 }),
    );
    format!(
        "-----BEGIN NATS USER JWT-----\n{token}\n------END NATS USER JWT------\n\n\
         -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
        user.seed().expect("a new key has its seed")
    )
}

/// An operator that the test servers trust, with one account (`APP`,
/// JetStream enabled) whose users may connect.
pub struct Operator {
    operator: KeyPair,
    system: KeyPair,
    app: KeyPair,
}

impl Operator {
    pub fn new() -> Operator {
        Operator {
            operator: KeyPair::new_operator(),
            system: KeyPair::new_account(),
            app: KeyPair::new_account(),
        }
    }

    /// The lines a server's configuration needs to trust the operator and
    /// know its accounts (a memory resolver, preloaded).
    pub fn server_conf(&self) -> String {
        let op = jwt(
            &self.operator,
            &self.operator.public_key(),
            "sluice-test-operator",
            "operator",
            json!({}),
        );
        let (sys, app) = (self.system.public_key(), self.app.public_key());
        format!(
            "operator: \"{op}\"\nsystem_account: \"{sys}\"\nresolver: MEMORY\n\
             resolver_preload: {{\n  {sys}: \"{}\"\n  {app}: \"{}\"\n}}\n",
            account_jwt(&self.operator, &self.system, "SYS", false),
            account_jwt(&self.operator, &self.app, "APP", true),
        )
    }

    /// A new user of the `APP` account: its `.creds` file's text.
    pub fn user(&self, name: &str) -> String {
        user_creds(&self.app, name)
    }

    /// A user of an account signed by this operator but unknown to the
    /// servers (not preloaded): refused when it connects.
    pub fn user_of_unknown_account(&self, name: &str) -> String {
        user_creds(&KeyPair::new_account(), name)
    }
}

impl Default for Operator {
    fn default() -> Self {
        Operator::new()
    }
}
