//! Prewarm orders: what the operator tells one node to fetch, signed with the operator's Ed25519
//! key, and how a node checks an order before it acts on it.
//!
//! An order travels as a [`SignedOrder`]: the order's JSON text exactly as signed, the signer's
//! public key, and the signature over a domain tag plus that text. Nothing is re-serialized
//! before verifying, so there is no canonical form to get wrong.
//!
//! Invariants: [`SignedOrder::verify`] accepts an order only when its key is one the node trusts,
//! the signature holds over the exact text, the order names this node, and the clock lies inside
//! its validity (a little skew allowed, at most [`MAX_VALIDITY`] long). Replays — the same order
//! id twice — are refused by the caller, which remembers ids until they expire
//! ([`SignedOrder::verify`] hands back the expiry to keep them by). Pure: the clock is a parameter.

use libp2p::identity::ed25519;
use serde::{Deserialize, Serialize};

/// What is signed: this tag, then the order's JSON text.
const DOMAIN: &[u8] = b"ferry prewarm order v1\n";
/// An order is valid for at most a day.
pub const MAX_VALIDITY: u64 = 24 * 3600;
/// Clocks may disagree this much (seconds) about when an order was issued.
pub const CLOCK_SKEW: u64 = 300;
/// The longest signed text a node reads.
pub const MAX_ORDER_BYTES: usize = 16 << 10;

/// One node's share of a prewarm plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Order {
    /// Unique per order: a node refuses an id it has seen.
    pub id: String,
    /// The node that is to carry it out (its `--node-name`, the Kubernetes node name).
    pub node: String,
    /// `HOST/REPO[:TAG|@DIGEST]`, HOST one of the node's upstreams.
    pub image: String,
    /// 0: a seed that fetches over the WAN; 1: fetches from the seeds.
    pub wave: u32,
    /// Unix seconds.
    pub issued_at: u64,
    pub expires_at: u64,
    /// Bytes per second the node may spend on it (`None`: the node's own cap).
    #[serde(default)]
    pub rate: Option<u64>,
}

/// An operator's public key, written `ed25519:<64 hex digits>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperatorKey(ed25519::PublicKey);

impl std::str::FromStr for OperatorKey {
    type Err = String;
    fn from_str(s: &str) -> Result<OperatorKey, String> {
        let hex_key = s.trim().strip_prefix("ed25519:").ok_or_else(|| format!("operator key {s:?}: expected ed25519:<64 hex digits>"))?;
        let bytes = hex::decode(hex_key).map_err(|e| format!("operator key {s:?}: {e}"))?;
        ed25519::PublicKey::try_from_bytes(&bytes).map(OperatorKey).map_err(|e| format!("operator key {s:?}: {e}"))
    }
}

impl std::fmt::Display for OperatorKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ed25519:{}", hex::encode(self.0.to_bytes()))
    }
}

/// The operator's secret key: signs orders.
pub struct SigningKey(ed25519::Keypair);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({})", self.public())
    }
}

impl SigningKey {
    pub fn generate() -> SigningKey {
        SigningKey(ed25519::Keypair::generate())
    }

    /// From its file form: the 32-byte secret as 64 hex digits.
    pub fn from_hex(text: &str) -> Result<SigningKey, String> {
        let bytes = hex::decode(text.trim()).map_err(|e| format!("not 64 hex digits: {e}"))?;
        let secret = ed25519::SecretKey::try_from_bytes(bytes).map_err(|e| e.to_string())?;
        Ok(SigningKey(secret.into()))
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0.secret().as_ref())
    }

    pub fn public(&self) -> OperatorKey {
        OperatorKey(self.0.public())
    }

    pub fn sign(&self, order: &Order) -> SignedOrder {
        let text = serde_json::to_string(order).unwrap_or_default();
        let signature = self.0.sign(&[DOMAIN, text.as_bytes()].concat());
        SignedOrder { order: text, key: self.public().to_string(), signature: hex::encode(signature) }
    }
}

/// An order as it travels: the exact signed text, who signed it, the signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedOrder {
    pub order: String,
    pub key: String,
    pub signature: String,
}

/// Why a node will not carry out an order.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("this node trusts no operator key (set prewarm.operator_keys)")]
    NoKeys,
    #[error("signed by {0}, which this node does not trust")]
    UnknownKey(String),
    #[error("the signature does not match the order")]
    BadSignature,
    #[error("malformed order: {0}")]
    Malformed(String),
    #[error("the order is for node {ordered:?}, this is {this:?}")]
    OtherNode { ordered: String, this: String },
    #[error("the order expired {0} s ago")]
    Expired(u64),
    #[error("the order is issued {0} s in the future (check the clocks)")]
    FromTheFuture(u64),
    #[error("the order is valid for {0} s, more than the {MAX_VALIDITY} s allowed")]
    TooLong(u64),
    #[error("order {0} was seen before (a replay)")]
    Replay(String),
    #[error("the node cannot take orders now: {0}")]
    Unavailable(String),
}

impl SignedOrder {
    /// The order, unverified: for routing it to its node, never for acting on it.
    pub fn peek(&self) -> Result<Order, Refusal> {
        if self.order.len() > MAX_ORDER_BYTES {
            return Err(Refusal::Malformed(format!("{} bytes, over {MAX_ORDER_BYTES}", self.order.len())));
        }
        serde_json::from_str(&self.order).map_err(|e| Refusal::Malformed(e.to_string()))
    }

    /// The order, if `trusted` holds its key, the signature is good, it names `node` and `now`
    /// (unix seconds) lies in its validity. The caller still refuses an id it has seen.
    pub fn verify(&self, trusted: &[OperatorKey], node: &str, now: u64) -> Result<Order, Refusal> {
        if trusted.is_empty() {
            return Err(Refusal::NoKeys);
        }
        let key: OperatorKey = self.key.parse().map_err(Refusal::Malformed)?;
        if !trusted.contains(&key) {
            return Err(Refusal::UnknownKey(self.key.clone()));
        }
        let signature = hex::decode(&self.signature).map_err(|_| Refusal::BadSignature)?;
        if self.order.len() > MAX_ORDER_BYTES || !key.0.verify(&[DOMAIN, self.order.as_bytes()].concat(), &signature) {
            return Err(Refusal::BadSignature);
        }
        let order = self.peek()?;
        if order.node != node {
            return Err(Refusal::OtherNode { ordered: order.node, this: node.to_string() });
        }
        if order.expires_at.saturating_sub(order.issued_at) > MAX_VALIDITY {
            return Err(Refusal::TooLong(order.expires_at.saturating_sub(order.issued_at)));
        }
        if order.issued_at > now + CLOCK_SKEW {
            return Err(Refusal::FromTheFuture(order.issued_at - now));
        }
        if now >= order.expires_at {
            return Err(Refusal::Expired(now - order.expires_at));
        }
        Ok(order)
    }
}

/// Where an order stands on its node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderState {
    Queued,
    /// Fetching the chunks the image marks for startup.
    Priority,
    /// Fetching whole layers.
    Layers,
    Done,
    Failed(String),
}

impl OrderState {
    pub fn is_final(&self) -> bool {
        matches!(self, OrderState::Done | OrderState::Failed(_))
    }
}

/// An order's progress, as its node reports it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OrderProgress {
    pub id: String,
    pub node: String,
    pub image: String,
    pub wave: u32,
    pub state: OrderState,
    /// Bytes of the image's blobs (known once its manifest is read).
    pub total_bytes: u64,
    /// Bytes of it now on the node.
    pub done_bytes: u64,
    /// Of those, fetched as prioritized chunks.
    pub priority_bytes: u64,
    pub seconds: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(node: &str) -> Order {
        Order {
            id: "0123".into(),
            node: node.into(),
            image: "registry.local/ml/llm:1".into(),
            wave: 0,
            issued_at: 1000,
            expires_at: 4600,
            rate: Some(50 << 20),
        }
    }

    #[test]
    fn a_signed_order_verifies_only_as_signed_for_its_node_in_time() {
        let operator = SigningKey::generate();
        let trusted = [operator.public()];
        let signed = operator.sign(&order("gpu-a1"));
        assert_eq!(signed.verify(&trusted, "gpu-a1", 1200), Ok(order("gpu-a1")));

        let other = SigningKey::generate();
        assert!(matches!(other.sign(&order("gpu-a1")).verify(&trusted, "gpu-a1", 1200), Err(Refusal::UnknownKey(_))));
        assert_eq!(signed.verify(&[], "gpu-a1", 1200), Err(Refusal::NoKeys));
        // A forged signature under the trusted key's name.
        let forged = SignedOrder { key: operator.public().to_string(), ..other.sign(&order("gpu-a1")) };
        assert_eq!(forged.verify(&trusted, "gpu-a1", 1200), Err(Refusal::BadSignature));
        let tampered = SignedOrder { order: signed.order.replace("llm:1", "llm:2"), ..signed.clone() };
        assert_eq!(tampered.verify(&trusted, "gpu-a1", 1200), Err(Refusal::BadSignature));
        let garbage = SignedOrder { signature: "zz".into(), ..signed.clone() };
        assert_eq!(garbage.verify(&trusted, "gpu-a1", 1200), Err(Refusal::BadSignature));

        assert!(matches!(signed.verify(&trusted, "gpu-b2", 1200), Err(Refusal::OtherNode { .. })));
        assert_eq!(signed.verify(&trusted, "gpu-a1", 4600), Err(Refusal::Expired(0)));
        assert_eq!(signed.verify(&trusted, "gpu-a1", 1000 - CLOCK_SKEW), Ok(order("gpu-a1")));
        assert_eq!(signed.verify(&trusted, "gpu-a1", 100), Err(Refusal::FromTheFuture(900)));
        let long = operator.sign(&Order { expires_at: 1000 + MAX_VALIDITY + 1, ..order("gpu-a1") });
        assert!(matches!(long.verify(&trusted, "gpu-a1", 1200), Err(Refusal::TooLong(_))));
    }

    #[test]
    fn keys_round_trip_through_their_text_forms() {
        let k = SigningKey::generate();
        let again = SigningKey::from_hex(&k.to_hex()).expect("secret parses");
        assert_eq!(again.public(), k.public());
        assert_eq!(k.public().to_string().parse::<OperatorKey>(), Ok(k.public()));
        for bad in ["", "ed25519:", "ed25519:zz", "rsa:00", &format!("ed25519:{}", "00".repeat(31))] {
            assert!(bad.parse::<OperatorKey>().is_err(), "{bad}");
        }
        assert!(SigningKey::from_hex("1234").is_err());
    }

    #[test]
    fn unknown_fields_and_oversized_orders_are_malformed() {
        let operator = SigningKey::generate();
        let mut signed = operator.sign(&order("n"));
        signed.order = signed.order.replace("\"wave\"", "\"extra\":1,\"wave\"");
        assert!(matches!(signed.peek(), Err(Refusal::Malformed(_))));
        let huge = SignedOrder { order: "x".repeat(MAX_ORDER_BYTES + 1), ..signed };
        assert!(matches!(huge.peek(), Err(Refusal::Malformed(_))));
    }
}
