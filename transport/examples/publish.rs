//! Publish a few messages to a running `sluiced` and wait until each is
//! durable, over the fast path (authenticated over QUIC, sealed raw UDP).
//!
//!     cargo run -p sluice-daemon --bin sluiced          # in one terminal
//!     cargo run -p sluice-transport --example publish   # in another, same folder
//!
//! Arguments: [QUIC_ADDR] [STREAM] [PRODUCER_ID] (defaults 127.0.0.1:7400,
//! "example", 1). The daemon's self-signed certificate is pinned from
//! ./sluice-data/tls/server.crt (where the embedded defaults keep it); a
//! token, if the daemon wants one, comes from SLUICE_TOKEN. Run it twice
//! with the same producer id: the sequence numbers continue where the
//! daemon says this producer stands.

use bytes::Bytes;
use sluice_transport::client::{Producer, ProducerError, ProducerOptions, QuicOptions, Transport};
use sluice_transport::quic::tls::{self, ClientTls, ServerTrust};

#[tokio::main]
async fn main() -> Result<(), ProducerError> {
    let mut args = std::env::args().skip(1);
    let addr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:7400".into())
        .parse()
        .expect("QUIC_ADDR is host:port");
    let stream = args.next().unwrap_or_else(|| "example".into());
    let producer_id: u64 = args
        .next()
        .map_or(1, |s| s.parse().expect("PRODUCER_ID is a number"));

    // Trust exactly the daemon's certificate.
    let cert = tls::load_certs("./sluice-data/tls/server.crt".as_ref())
        .map_err(|e| ProducerError::Config(e.to_string()))?;
    let quic = QuicOptions {
        tls: ClientTls {
            trust: ServerTrust::Fingerprint(tls::fingerprint(&cert[0])),
            client_cert: None,
            server_name: None,
        },
        token: std::env::var("SLUICE_TOKEN").ok(),
    };
    let options = ProducerOptions::with_transport(Transport::FastPath(quic));

    // One producer per stream and stable id; cheap to clone and share.
    let producer = Producer::connect(addr, &stream, producer_id, options).await?;

    // `send` resolves once the message is on stable storage.
    let seq = producer.send(Bytes::from("hello, sluice")).await?;
    println!("durable as seq {seq}");

    // Batches keep order and resolve with their range of seqs.
    let batch = (0..100)
        .map(|i| Bytes::from(format!("event {i}")))
        .collect();
    let seqs = producer.send_batch(batch).await?;
    println!("batch durable as seqs {seqs:?}");

    // Many sends can be in flight at once, from many tasks.
    let sends: Vec<_> = (0..1000)
        .map(|i| {
            let p = producer.clone();
            tokio::spawn(async move { p.send(Bytes::from(format!("event {i} of many"))).await })
        })
        .collect();
    for s in sends {
        s.await.expect("send task")?;
    }
    println!("1000 concurrent sends durable");

    producer.close().await
}
