//! Who fetches which piece from the origin: rendezvous (highest-random-weight) hashing of a blob's
//! segments over the members of a site.
//!
//! Every node of a site computes the same owner for a segment from the same member list, without
//! talking: the owner fetches the segment from the origin and the others get it from the owner.
//! When a member leaves, only its segments move (each to the member with the next-highest weight);
//! when one joins, it takes about `1/n` of the segments from the others. Members that disagree
//! about the list (a peer not yet seen) cost at most some duplicate origin fetches, never
//! correctness: every byte is verified against the blob digest anyway.
//!
//! Pure: no I/O, same input, same owner.

use libp2p::PeerId;
use sha2::{Digest as _, Sha256};

use super::{PeerTraffic, SitePeer};

use crate::store::PIECE_SIZE;
use crate::Digest;

/// Pieces per segment: the unit of ownership, and of one origin range request (4 MiB).
pub const SEGMENT_PIECES: u32 = 4;

/// The segment a piece belongs to.
pub fn segment_of(piece: u32) -> u32 {
    piece / SEGMENT_PIECES
}

/// The weight of `member` for `segment` of `blob`: the first 8 bytes of
/// sha256(blob digest ‖ segment ‖ member's peer id).
fn weight(blob: &Digest, segment: u32, member: &PeerId) -> u64 {
    let mut h = Sha256::new();
    h.update(blob.as_bytes());
    h.update(segment.to_be_bytes());
    h.update(member.to_bytes());
    let out = h.finalize();
    u64::from_be_bytes(out[..8].try_into().unwrap_or_default())
}

/// The member that fetches `segment` of `blob` from the origin (`None` for no members).
pub fn owner<'a>(blob: &Digest, segment: u32, members: impl IntoIterator<Item = &'a PeerId>) -> Option<&'a PeerId> {
    members.into_iter().max_by_key(|m| (weight(blob, segment, m), m.to_bytes()))
}

/// Peers as sources of a piece, best first: those of this node's `region`, then of its `zone`
/// (when it has one), then the fastest measured, then the fewest failures.
pub fn rank<'a>(
    peers: impl IntoIterator<Item = &'a SitePeer>,
    region: &str,
    zone: &str,
    traffic: impl Fn(&PeerId) -> PeerTraffic,
) -> Vec<&'a SitePeer> {
    let near = |p: &SitePeer| {
        let same_region = p.region.as_deref() == Some(region);
        (same_region, same_region && !zone.is_empty() && p.zone.as_deref() == Some(zone))
    };
    let mut ranked: Vec<(&SitePeer, PeerTraffic)> = peers.into_iter().map(|p| (p, traffic(&p.id))).collect();
    ranked.sort_by(|(a, ta), (b, tb)| near(b).cmp(&near(a)).then(tb.rate.total_cmp(&ta.rate)).then(ta.failures.cmp(&tb.failures)));
    ranked.into_iter().map(|(p, _)| p).collect()
}

/// How many segments a blob of `size` bytes has.
pub fn segments(size: u64) -> u32 {
    u32::try_from(size.div_ceil(PIECE_SIZE * u64::from(SEGMENT_PIECES))).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_rank_by_region_then_zone_then_speed_then_failures() {
        let peer = |region: &str, zone: &str| SitePeer {
            id: PeerId::random(),
            region: Some(region.to_string()).filter(|r| !r.is_empty()),
            zone: Some(zone.to_string()).filter(|z| !z.is_empty()),
            name: None,
        };
        let peers = [peer("b", "rack-1"), peer("a", "rack-2"), peer("a", "rack-1"), peer("a", ""), peer("", ""), peer("a", "rack-1")];
        let speed: std::collections::HashMap<PeerId, (f64, u64)> =
            [(0, (90.0, 0)), (1, (50.0, 0)), (2, (10.0, 3)), (3, (70.0, 0)), (4, (99.0, 0)), (5, (10.0, 0))]
                .into_iter()
                .map(|(i, (rate, failures))| (peers[i].id, (rate, failures)))
                .collect();
        let traffic = |id: &PeerId| PeerTraffic { rate: speed[id].0, failures: speed[id].1, ..PeerTraffic::default() };
        let order = |zone: &str| -> Vec<usize> {
            rank(&peers, "a", zone, traffic).iter().map(|p| peers.iter().position(|q| q.id == p.id).expect("one of them")).collect()
        };
        // Same zone (equal speed: fewer failures first), then the rest of the region by speed,
        // then other regions and peers that said nothing, by speed.
        assert_eq!(order("rack-1"), [5, 2, 3, 1, 4, 0]);
        // A node without a zone ranks its region's peers by speed alone.
        assert_eq!(order(""), [3, 1, 5, 2, 4, 0]);
    }

    #[test]
    fn segments_spread_evenly_and_only_a_leavers_segments_move() {
        let members: Vec<PeerId> = (0..8).map(|_| PeerId::random()).collect();
        let blob = Digest::of(b"a 4 GiB layer");
        let n = 1024;
        let before: Vec<PeerId> = (0..n).map(|s| *owner(&blob, s, &members).expect("owner")).collect();
        for m in &members {
            let share = before.iter().filter(|o| *o == m).count();
            assert!((80..=176).contains(&share), "member owns {share} of {n} segments (expected about 128)");
        }
        let gone = members[3];
        let rest: Vec<PeerId> = members.iter().copied().filter(|m| *m != gone).collect();
        for (s, was) in before.iter().enumerate() {
            let now = *owner(&blob, s as u32, &rest).expect("owner");
            if *was != gone {
                assert_eq!(now, *was, "segment {s} moved although its owner stayed");
            }
        }
        // The member order does not matter: every node computes the same owner.
        let mut shuffled = members.clone();
        shuffled.reverse();
        assert!((0..n).all(|s| owner(&blob, s, &members) == owner(&blob, s, &shuffled)));
        assert_eq!(owner(&blob, 0, &[]), None);
        assert_eq!(segments(0), 0);
        assert_eq!(segments(PIECE_SIZE * 4 + 1), 2);
    }
}
