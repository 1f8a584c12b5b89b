//! The Admin service: read-only views, the same figures as HTTP's
//! `GET /streams` and `GET /groups`.

use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};

use super::caller::Caller;
use super::proto::{
    self, DescribeGroupRequest, DescribeGroupResponse, GroupInfo, ListStreamsRequest,
    ListStreamsResponse, StreamInfo,
};
use super::Shared;
use crate::auth::Action;

pub(super) struct Service {
    s: Arc<Shared>,
}

impl Service {
    pub fn new(s: Arc<Shared>) -> Service {
        Service { s }
    }
}

#[tonic::async_trait]
impl proto::admin_server::Admin for Service {
    async fn list_streams(
        &self,
        req: Request<ListStreamsRequest>,
    ) -> Result<Response<ListStreamsResponse>, Status> {
        let who = Caller::of(&self.s.gate, &req)?.principal;
        let spool = &self.s.spool;
        let open = spool.open_streams();
        let mut names = spool.stream_names();
        names.sort();
        // As /streams: the streams the caller may consume, no others.
        let streams = names
            .into_iter()
            .filter(|n| who.may(Action::Consume, n))
            .map(|name| {
                let st = open.iter().find(|st| st.name() == name);
                StreamInfo {
                    durable_end: st.map(|st| st.durable_end()),
                    first_offset: st.map(|st| st.first_offset()),
                    lost_offsets: st.map_or(0, |st| st.lost_offsets()),
                    damage: st
                        .map(|st| st.damage().iter().map(|d| format!("{d}")).collect())
                        .unwrap_or_default(),
                    name,
                }
            })
            .collect();
        Ok(Response::new(ListStreamsResponse { streams }))
    }

    async fn describe_group(
        &self,
        req: Request<DescribeGroupRequest>,
    ) -> Result<Response<DescribeGroupResponse>, Status> {
        let caller = Caller::of(&self.s.gate, &req)?;
        let r = req.into_inner();
        caller.may(&self.s.gate, Action::Consume, &r.stream)?;
        let g = self
            .s
            .consumers
            .stats()
            .into_iter()
            .find(|g| g.stream == r.stream && g.group == r.group)
            .ok_or_else(|| {
                Status::not_found(format!(
                    "no consumer group {:?} on stream {:?}",
                    r.group, r.stream
                ))
            })?;
        let c = &g.counters;
        let group = GroupInfo {
            backlog_messages: g.backlog_messages,
            backlog_bytes: g.backlog_bytes,
            oldest_unacked: Duration::try_from_secs_f64(g.oldest_unacked_seconds)
                .ok()
                .and_then(|d| prost_types::Duration::try_from(d).ok()),
            members: g.members,
            credit: g.credit,
            outstanding: g.out,
            ack_floor: g.floor,
            retain_until_acked: g.retain_until_acked,
            delivered: c.delivered,
            redelivered: c.redelivered,
            acked: c.acked,
            nacked: c.nacked,
            expired: c.expired,
            dead_lettered: c.dead_lettered,
            conflated: c.conflated,
            lost_to_retention: c.lost_to_retention,
            dropped: c.dropped,
            stopped_at_damage: g.stopped_at_damage,
            stream: g.stream,
            group: g.group,
        };
        Ok(Response::new(DescribeGroupResponse { group: Some(group) }))
    }
}
