//! `/ferry/pieces/1`: what a peer holds of a blob, and the bytes of one piece.
//!
//! Wire format (all integers big-endian), one message per stream:
//! - request: `0x01 digest[32]` (have-map), `0x02 digest[32] index:u32` (piece), or
//!   `0x03 digest[32] index:u32 size:u64 registry_len:u8 registry repo_len:u16 repo` (piece, and
//!   where the origin has it: the asked node owns that piece's segment and fetches it if it must);
//! - response: `0x00` (not here), `0x01 size:u64 bitmap_len:u32 bitmap` (have-map),
//!   `0x02 len:u32 bytes` (piece) or `0x03` (not yet: the peer is fetching that piece; ask again).
//!
//! A have-map names only pieces the peer may hand on (fetched from the origin, or of a verified
//! blob); a peer asked for a piece it is fetching waits a few seconds for it before `NotYet`.
//!
//! Every length is checked against a limit before anything is allocated: a peer can make a
//! request fail, never make this node allocate more than a piece.

use std::io;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;

use crate::store::{Bitmap, PIECE_SIZE};
use crate::Digest;

pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/ferry/pieces/1");
/// A have-map covers at most a 1 TiB blob.
const MAX_MAP_BYTES: u32 = ((1u64 << 40) / PIECE_SIZE / 8) as u32;
/// The longest repository name an origin hint may carry.
const MAX_REPO: u16 = 1024;

/// Where the origin has a blob: enough for the piece's owner to fetch it with its own access.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub size: u64,
    /// The registry name as in `--upstream` (`registry.local`, `docker.io`).
    pub registry: String,
    pub repo: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    HaveMap { digest: Digest },
    Piece { digest: Digest, index: u32, origin: Option<Origin> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    NotHere,
    NotYet,
    HaveMap { size: u64, pieces: Bitmap },
    Piece(Vec<u8>),
}

fn bad(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("malformed {} message: {why}", PROTOCOL))
}

async fn read_u32<T: AsyncRead + Unpin>(io: &mut T) -> io::Result<u32> {
    let mut b = [0u8; 4];
    io.read_exact(&mut b).await?;
    Ok(u32::from_be_bytes(b))
}

async fn read_digest<T: AsyncRead + Unpin>(io: &mut T) -> io::Result<Digest> {
    let mut b = [0u8; 32];
    io.read_exact(&mut b).await?;
    Ok(Digest::from_sha256(b))
}

async fn read_text<T: AsyncRead + Unpin>(io: &mut T, len: u16) -> io::Result<String> {
    let mut b = vec![0u8; usize::from(len)];
    io.read_exact(&mut b).await?;
    String::from_utf8(b).map_err(|_| bad("text is not UTF-8"))
}

#[derive(Debug, Clone, Default)]
pub struct Codec;

impl libp2p::request_response::Codec for Codec {
    type Protocol = StreamProtocol;
    type Request = Request;
    type Response = Response;

    async fn read_request<T: AsyncRead + Unpin + Send>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Request> {
        let mut tag = [0u8; 1];
        io.read_exact(&mut tag).await?;
        match tag[0] {
            1 => Ok(Request::HaveMap { digest: read_digest(io).await? }),
            2 => Ok(Request::Piece { digest: read_digest(io).await?, index: read_u32(io).await?, origin: None }),
            3 => {
                let (digest, index) = (read_digest(io).await?, read_u32(io).await?);
                let mut size = [0u8; 8];
                io.read_exact(&mut size).await?;
                let mut len = [0u8; 1];
                io.read_exact(&mut len).await?;
                let registry = read_text(io, u16::from(len[0])).await?;
                let mut len = [0u8; 2];
                io.read_exact(&mut len).await?;
                let len = u16::from_be_bytes(len);
                if len > MAX_REPO {
                    return Err(bad("repository name too long"));
                }
                let repo = read_text(io, len).await?;
                Ok(Request::Piece { digest, index, origin: Some(Origin { size: u64::from_be_bytes(size), registry, repo }) })
            }
            t => Err(bad(&format!("request tag {t}"))),
        }
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Response> {
        let mut tag = [0u8; 1];
        io.read_exact(&mut tag).await?;
        match tag[0] {
            0 => Ok(Response::NotHere),
            3 => Ok(Response::NotYet),
            1 => {
                let mut size = [0u8; 8];
                io.read_exact(&mut size).await?;
                let size = u64::from_be_bytes(size);
                let len = read_u32(io).await?;
                let pieces = u32::try_from(size.div_ceil(PIECE_SIZE)).map_err(|_| bad("absurd size"))?;
                if len > MAX_MAP_BYTES || len as usize != Bitmap::new(pieces).encoded_bits_len() {
                    return Err(bad("have-map length does not fit the size"));
                }
                let mut bits = vec![0u8; len as usize];
                io.read_exact(&mut bits).await?;
                let pieces = Bitmap::from_bytes(pieces, &bits).ok_or_else(|| bad("have-map bits past the end"))?;
                Ok(Response::HaveMap { size, pieces })
            }
            2 => {
                let len = read_u32(io).await?;
                if u64::from(len) > PIECE_SIZE || len == 0 {
                    return Err(bad("piece length out of range"));
                }
                let mut data = vec![0u8; len as usize];
                io.read_exact(&mut data).await?;
                Ok(Response::Piece(data))
            }
            t => Err(bad(&format!("response tag {t}"))),
        }
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(&mut self, _: &StreamProtocol, io: &mut T, req: Request) -> io::Result<()> {
        let mut out = Vec::with_capacity(37);
        match req {
            Request::HaveMap { digest } => {
                out.push(1);
                out.extend_from_slice(digest.as_bytes());
            }
            Request::Piece { digest, index, origin } => {
                out.push(if origin.is_some() { 3 } else { 2 });
                out.extend_from_slice(digest.as_bytes());
                out.extend_from_slice(&index.to_be_bytes());
                if let Some(o) = origin {
                    let (registry, repo) = (o.registry.as_bytes(), o.repo.as_bytes());
                    if registry.len() > usize::from(u8::MAX) || repo.len() > usize::from(MAX_REPO) {
                        return Err(io::Error::new(io::ErrorKind::InvalidInput, "registry or repository name too long"));
                    }
                    out.extend_from_slice(&o.size.to_be_bytes());
                    out.push(registry.len() as u8);
                    out.extend_from_slice(registry);
                    out.extend_from_slice(&(repo.len() as u16).to_be_bytes());
                    out.extend_from_slice(repo);
                }
            }
        }
        io.write_all(&out).await?;
        io.close().await
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(&mut self, _: &StreamProtocol, io: &mut T, resp: Response) -> io::Result<()> {
        match resp {
            Response::NotHere => io.write_all(&[0]).await?,
            Response::NotYet => io.write_all(&[3]).await?,
            Response::HaveMap { size, pieces } => {
                let bits = pieces.to_bytes();
                let mut out = Vec::with_capacity(13 + bits.len());
                out.push(1);
                out.extend_from_slice(&size.to_be_bytes());
                out.extend_from_slice(&(bits.len() as u32).to_be_bytes());
                out.extend_from_slice(&bits);
                io.write_all(&out).await?;
            }
            Response::Piece(data) => {
                io.write_all(&[2]).await?;
                io.write_all(&(data.len() as u32).to_be_bytes()).await?;
                io.write_all(&data).await?;
            }
        }
        io.close().await
    }
}

#[cfg(test)]
mod tests {
    use futures::io::Cursor;
    use libp2p::request_response::Codec as _;

    use super::*;

    fn roundtrip_response(resp: Response) -> io::Result<Response> {
        futures::executor::block_on(async {
            let mut buf = Cursor::new(Vec::new());
            Codec.write_response(&PROTOCOL, &mut buf, resp).await?;
            let bytes = buf.into_inner();
            Codec.read_response(&PROTOCOL, &mut Cursor::new(bytes)).await
        })
    }

    fn read_response(bytes: Vec<u8>) -> io::Result<Response> {
        futures::executor::block_on(Codec.read_response(&PROTOCOL, &mut Cursor::new(bytes)))
    }

    #[test]
    fn messages_round_trip() {
        let d = Digest::of(b"blob");
        let origin = Origin { size: 5 << 30, registry: "registry.local".into(), repo: "team/model".into() };
        for req in [
            Request::HaveMap { digest: d },
            Request::Piece { digest: d, index: 7, origin: None },
            Request::Piece { digest: d, index: 9, origin: Some(origin) },
        ] {
            let back = futures::executor::block_on(async {
                let mut buf = Cursor::new(Vec::new());
                Codec.write_request(&PROTOCOL, &mut buf, req.clone()).await?;
                Codec.read_request(&PROTOCOL, &mut Cursor::new(buf.into_inner())).await
            })
            .expect("round trip");
            assert_eq!(back, req);
        }
        let mut map = Bitmap::new(70);
        map.set(0, true);
        map.set(69, true);
        for resp in [
            Response::NotHere,
            Response::NotYet,
            Response::HaveMap { size: 70 * PIECE_SIZE - 3, pieces: map },
            Response::Piece(vec![9; 1000]),
        ] {
            assert_eq!(roundtrip_response(resp.clone()).expect("round trip"), resp);
        }
    }

    #[test]
    fn hostile_peer_messages_are_errors_not_allocations() {
        let mut huge_piece = vec![2u8];
        huge_piece.extend_from_slice(&u32::MAX.to_be_bytes());
        let mut huge_map = vec![1u8];
        huge_map.extend_from_slice(&u64::MAX.to_be_bytes());
        huge_map.extend_from_slice(&u32::MAX.to_be_bytes());
        let mut mismatched = vec![1u8];
        mismatched.extend_from_slice(&(10 * PIECE_SIZE).to_be_bytes());
        mismatched.extend_from_slice(&100u32.to_be_bytes());
        let mut short = vec![2u8];
        short.extend_from_slice(&10u32.to_be_bytes());
        short.extend_from_slice(&[1, 2, 3]);
        for (what, bytes) in [
            ("huge piece", huge_piece),
            ("huge map", huge_map),
            ("mismatched map", mismatched),
            ("short piece", short),
            ("bad tag", vec![9]),
            ("not yet with trailing bytes is fine, a bare 4 is not", vec![4]),
            ("empty", vec![]),
        ] {
            assert!(read_response(bytes).is_err(), "{what} accepted");
        }
        assert!(futures::executor::block_on(Codec.read_request(&PROTOCOL, &mut Cursor::new(vec![4u8; 40]))).is_err());
        let mut long_repo = vec![3u8];
        long_repo.extend_from_slice(&[0; 32 + 4 + 8]);
        long_repo.extend_from_slice(&[1, b'r']);
        long_repo.extend_from_slice(&u16::MAX.to_be_bytes());
        assert!(futures::executor::block_on(Codec.read_request(&PROTOCOL, &mut Cursor::new(long_repo))).is_err());
    }
}
