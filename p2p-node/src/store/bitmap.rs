//! The piece bitmap of a partial blob, and its on-disk form.
//!
//! On disk: `FERRYMAP1\n`, the blob size (u64 LE), the piece size (u64 LE), the bits, then the
//! sha256 of everything before it. A file that fails any check is treated as absent: the pieces it
//! claimed are fetched again, nothing unproven is trusted.

use crate::digest::Digest;

const MAGIC: &[u8] = b"FERRYMAP1\n";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bitmap {
    bits: Vec<u64>,
    len: u32,
}

impl Bitmap {
    pub fn new(len: u32) -> Bitmap {
        Bitmap { bits: vec![0; (len as usize).div_ceil(64)], len }
    }

    pub fn len(&self) -> u32 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get(&self, i: u32) -> bool {
        self.bits[(i / 64) as usize] & (1 << (i % 64)) != 0
    }

    pub fn set(&mut self, i: u32, on: bool) {
        let word = &mut self.bits[(i / 64) as usize];
        if on {
            *word |= 1 << (i % 64);
        } else {
            *word &= !(1 << (i % 64));
        }
    }

    pub fn count(&self) -> u32 {
        self.bits.iter().map(|w| w.count_ones()).sum()
    }

    pub fn is_full(&self) -> bool {
        self.count() == self.len
    }

    /// Bytes of [`Bitmap::to_bytes`] for a map of this length.
    pub fn encoded_bits_len(&self) -> usize {
        (self.len as usize).div_ceil(8)
    }

    /// The bits, 8 to a byte, bit `i` in byte `i / 8` at position `i % 8`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = vec![0u8; self.encoded_bits_len()];
        for i in 0..self.len {
            if self.get(i) {
                out[(i / 8) as usize] |= 1 << (i % 8);
            }
        }
        out
    }

    /// Parses [`Bitmap::to_bytes`]; `None` unless it is exactly that for `len` bits.
    pub fn from_bytes(len: u32, bytes: &[u8]) -> Option<Bitmap> {
        let mut map = Bitmap::new(len);
        if bytes.len() != map.encoded_bits_len() {
            return None;
        }
        for (i, byte) in bytes.iter().enumerate() {
            for bit in 0..8u32 {
                if byte & (1 << bit) != 0 {
                    let idx = i as u32 * 8 + bit;
                    if idx >= len {
                        return None;
                    }
                    map.set(idx, true);
                }
            }
        }
        Some(map)
    }

    /// Serializes for a blob of `size` bytes in pieces of `piece_size`.
    pub fn encode(&self, size: u64, piece_size: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(MAGIC.len() + 16 + self.bits.len() * 8 + 32);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&size.to_le_bytes());
        out.extend_from_slice(&piece_size.to_le_bytes());
        for w in &self.bits {
            out.extend_from_slice(&w.to_le_bytes());
        }
        let sum = Digest::of(&out);
        out.extend_from_slice(sum.hex().as_bytes());
        out
    }

    /// Parses [`Bitmap::encode`]'s output; `None` for anything that is not exactly that.
    pub fn decode(data: &[u8], piece_size: u64) -> Option<(u64, Bitmap)> {
        let body_len = data.len().checked_sub(64)?;
        let (body, sum) = data.split_at(body_len);
        if Digest::of(body).hex().as_bytes() != sum {
            return None;
        }
        let rest = body.strip_prefix(MAGIC)?;
        let size = u64::from_le_bytes(rest.get(..8)?.try_into().ok()?);
        let stored_piece = u64::from_le_bytes(rest.get(8..16)?.try_into().ok()?);
        if stored_piece != piece_size {
            return None;
        }
        let len = u32::try_from(size.div_ceil(piece_size)).ok()?;
        let words = rest.get(16..)?;
        let mut map = Bitmap::new(len);
        if words.len() != map.bits.len() * 8 {
            return None;
        }
        for (w, chunk) in map.bits.iter_mut().zip(words.chunks_exact(8)) {
            *w = u64::from_le_bytes(chunk.try_into().ok()?);
        }
        // Bits past the end must be clear, or the file was not written by us.
        if (len..(map.bits.len() as u32 * 64)).any(|i| map.bits[(i / 64) as usize] & (1 << (i % 64)) != 0) {
            return None;
        }
        Some((size, map))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_and_rejects_any_damage() {
        let mut m = Bitmap::new(130);
        for i in [0, 1, 63, 64, 129] {
            m.set(i, true);
        }
        let enc = m.encode(130 * 1024 - 7, 1024);
        let (size, back) = Bitmap::decode(&enc, 1024).expect("decodes");
        assert_eq!((size, &back), (130 * 1024 - 7, &m));
        assert_eq!(back.count(), 5);
        assert!(Bitmap::decode(&enc, 2048).is_none(), "other piece size");
        for cut in [0, 1, 10, enc.len() - 1] {
            assert!(Bitmap::decode(&enc[..cut], 1024).is_none(), "truncated at {cut}");
        }
        for pos in [0, 12, 30, enc.len() - 70, enc.len() - 1] {
            let mut bad = enc.clone();
            bad[pos] ^= 0x01;
            assert!(Bitmap::decode(&bad, 1024).is_none(), "flipped byte {pos}");
        }
    }
}
