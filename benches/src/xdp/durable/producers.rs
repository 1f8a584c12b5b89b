//! The producers of a durable run, closed loop, in namespace a.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{mpsc, Arc, Mutex};

use bytes::Bytes;
use sluice_transport::client::{Producer, ProducerError, ProducerOptions, Transport};
use sluice_xdp::producer::{tx_provider, TxSetup};
use sluice_xdp::testnet::End;

use super::{BATCH, IN_FLIGHT, STREAM};

/// Counters the producers and the coordinator share.
#[derive(Default)]
pub(super) struct Shared {
    pub(super) sent: AtomicU64,
    pub(super) acked: AtomicU64,
    pub(super) errors: AtomicU64,
    pub(super) first_error: Mutex<Option<String>>,
    pub(super) stop: AtomicBool,
}

impl Shared {
    pub(super) fn fail(&self, n: u64, e: String) {
        self.errors.fetch_add(n, Relaxed);
        let mut first = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
        if first.is_none() {
            *first = Some(e);
        }
    }
}

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
        let payload = Bytes::from(vec![0x42u8; size]);
        let tasks: Vec<_> = all
            .iter()
            .map(|p| tokio::spawn(closed_loop(p.clone(), payload.clone(), shared.clone())))
            .collect();
        for t in tasks {
            let _ = t.await;
        }
        for p in all {
            if let Err(e) = p.close().await {
                shared.fail(0, format!("close: {e}"));
            }
        }
        Ok(())
    })
}

type Call = tokio::task::JoinHandle<Result<std::ops::Range<u64>, ProducerError>>;

/// One producer: `IN_FLIGHT` calls of `BATCH` messages outstanding, awaited
/// in order, a new one started as each is acked, until told to stop.
async fn closed_loop(p: Producer, payload: Bytes, shared: Arc<Shared>) {
    let mut pending: VecDeque<(u64, Call)> = VecDeque::with_capacity(IN_FLIGHT);
    let mut broken = false;
    loop {
        while pending.len() < IN_FLIGHT && !broken && !shared.stop.load(Relaxed) {
            let msgs = vec![payload.clone(); BATCH];
            shared.sent.fetch_add(BATCH as u64, Relaxed);
            let p = p.clone();
            pending.push_back((
                BATCH as u64,
                tokio::spawn(async move { p.send_batch(msgs).await }),
            ));
        }
        let Some((n, call)) = pending.pop_front() else {
            break;
        };
        match call.await {
            Ok(Ok(_)) => {
                shared.acked.fetch_add(n, Relaxed);
            }
            Ok(Err(e)) => {
                shared.fail(n, e.to_string());
                broken = true;
            }
            Err(e) => {
                shared.fail(n, e.to_string());
                broken = true;
            }
        }
    }
}
