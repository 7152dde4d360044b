//! `/ferry/prewarm/1`: prewarm orders between nodes, JSON in size-limited messages.
//!
//! A node that an operator's `ferry prewarm apply` talks to delivers each signed order to the
//! node it names, and later asks that node how its orders are going. The swarm only carries the
//! messages: the receiving node verifies an order itself (`prewarm::order`) before acting on it,
//! and a malformed or oversized message is a failed request, never an allocation.

use libp2p::request_response::json;
use libp2p::{PeerId, StreamProtocol};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::prewarm::order::{OrderProgress, SignedOrder};

pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/ferry/prewarm/1");
/// A request holds one signed order (16 KiB at most) or a list of order ids.
const MAX_REQUEST: u64 = 64 << 10;
/// A progress report on a node's orders.
const MAX_RESPONSE: u64 = 4 << 20;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderRequest {
    /// Carry out this order.
    Deliver(SignedOrder),
    /// How are these orders going? No ids: every order the node remembers.
    Progress { ids: Vec<String> },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderResponse {
    Accepted,
    Refused(String),
    Progress(Vec<OrderProgress>),
}

/// A request from a peer, for the node to answer through `reply`.
#[derive(Debug)]
pub struct InboundOrder {
    pub peer: PeerId,
    pub request: OrderRequest,
    pub reply: oneshot::Sender<OrderResponse>,
}

pub(crate) type Codec = json::codec::Codec<OrderRequest, OrderResponse>;

pub(crate) fn codec() -> Codec {
    Codec::default().set_request_size_maximum(MAX_REQUEST).set_response_size_maximum(MAX_RESPONSE)
}
