//! The producers of a durable run, closed loop, in namespace a.

use std::net::{IpAddr, SocketAddr};
use std::sync::{mpsc, Arc};
use std::time::Instant;

use sluice_testkit::testnet::End;
use sluice_transport::client::{Producer, ProducerOptions, Transport};
use sluice_xdp::producer::{tx_provider, TxSetup};

use super::{BATCH, IN_FLIGHT, STREAM};
use crate::load::{self, Shape, Shared};
use crate::sizes::Payloads;

/// The producers, on a thread that enters namespace a (a tokio runtime
/// made there: its threads and every socket stay in a). Reports on
/// `connected` once every producer has its session.
#[allow(clippy::too_many_arguments)]
pub(super) fn produce(
    a: &End,
    quic: SocketAddr,
    transport: Transport,
    tx_ring: bool,
    producers: usize,
    size: usize,
    shared: Arc<Shared>,
    connected: mpsc::Sender<Result<(), String>>,
) -> Result<(), String> {
    a.ns.enter_this_thread();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let e = format!("a tokio runtime: {e}");
            let _ = connected.send(Err(e.clone()));
            return Err(e);
        }
    };
    rt.block_on(async {
        let setup = async {
            let tx = if tx_ring {
                Some(
                    tx_provider(TxSetup::new(a.iface.clone(), 0))
                        .map_err(|e| format!("the producers' AF_XDP TX ring: {e}"))?,
                )
            } else {
                None
            };
            let ip: IpAddr = a.ip.parse().map_err(|e| format!("address {}: {e}", a.ip))?;
            let options = ProducerOptions {
                transport,
                // A bound source address: the TX ring writes it into the
                // frames' headers (it leaves an unbound socket's datagrams
                // to the kernel).
                bind: Some(SocketAddr::new(ip, 0)),
                tx,
                ..ProducerOptions::default()
            };
            let mut all = Vec::with_capacity(producers);
            for k in 0..producers {
                let p = Producer::connect(quic, STREAM, k as u64 + 1, options.clone())
                    .await
                    .map_err(|e| format!("producer {}: connect to {quic}: {e}", k + 1))?;
                all.push(p);
            }
            Ok::<_, String>(all)
        };
        let all = match setup.await {
            Ok(all) => all,
            Err(e) => {
                let _ = connected.send(Err(e.clone()));
                return Err(e);
            }
        };
        let _ = connected.send(Ok(()));
        let shape = Shape {
            batch: BATCH,
            in_flight: IN_FLIGHT,
            count: None,
            rate: 0.0,
            stamp: None,
        };
        let (work, _) = load::start(
            shape,
            &all,
            Payloads::fixed(size),
            0,
            &shared,
            Instant::now(),
        )
        .map_err(|e| e.to_string())?;
        let _ = work.await;
        for p in all {
            if let Err(e) = p.close().await {
                shared.fail(0, format!("close: {e}"));
            }
        }
        Ok(())
    })
}
