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

/// How many segments a blob of `size` bytes has.
pub fn segments(size: u64) -> u32 {
    u32::try_from(size.div_ceil(PIECE_SIZE * u64::from(SEGMENT_PIECES))).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

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
