//! The Subscriber service: `StreamingPull` (not yet).

use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::proto::{self, StreamingPullRequest, StreamingPullResponse};
use super::Shared;

pub(super) struct Service {
    #[allow(dead_code)] // read by StreamingPull once it is served
    s: Arc<Shared>,
}

impl Service {
    pub fn new(s: Arc<Shared>) -> Service {
        Service { s }
    }
}

type Deliveries = Pin<Box<dyn Stream<Item = Result<StreamingPullResponse, Status>> + Send>>;

#[tonic::async_trait]
impl proto::subscriber_server::Subscriber for Service {
    type StreamingPullStream = Deliveries;

    async fn streaming_pull(
        &self,
        _req: Request<Streaming<StreamingPullRequest>>,
    ) -> Result<Response<Deliveries>, Status> {
        // Not built yet (issue 20, next step): it will check the caller
        // (Caller::of, Action::Consume on the first request's stream), join
        // the group through `self.s.consumers` as the QUIC subscriber does
        // (crate::quic::subscriber), and turn acks, nacks and deadline
        // changes into the group handle's ack / nack / extend.
        Err(Status::unimplemented(
            "StreamingPull is not served yet: consume over QUIC or HTTP",
        ))
    }
}
