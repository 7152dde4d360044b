//! Manifests from a misbehaving upstream (a raw HTTP server on loopback): an endless body is
//! refused at the size limit, a body that is not what `Docker-Content-Digest` says is refused.

use std::io::{Read, Write};
use std::net::TcpListener;

use p2p_node::Digest;
use registry_proxy::names::{Reference, Repo};
use registry_proxy::upstream::{Upstreams, MAX_MANIFEST};
use registry_proxy::{MirrorSettings, UpstreamSettings};

/// Answers every connection with `head` and then `body_len` bytes of `fill` (chunked, no length).
fn serve(head: &'static str, body_len: usize, fill: u8) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let _ = conn.write_all(head.as_bytes());
            let chunk = vec![fill; 64 * 1024];
            let mut left = body_len;
            while left > 0 {
                let n = left.min(chunk.len());
                if conn
                    .write_all(format!("{n:x}\r\n").as_bytes())
                    .and_then(|()| conn.write_all(&chunk[..n]))
                    .and_then(|()| conn.write_all(b"\r\n"))
                    .is_err()
                {
                    break;
                }
                left -= n;
            }
            let _ = conn.write_all(b"0\r\n\r\n");
        }
    });
    addr
}

fn upstream(addr: &str) -> std::sync::Arc<registry_proxy::upstream::Upstream> {
    let settings = MirrorSettings {
        upstreams: vec![UpstreamSettings::parse(&format!("reg.test=http://{addr}")).expect("spec")],
        ..MirrorSettings::default()
    };
    Upstreams::new(&settings).expect("upstreams").select(Some("reg.test")).expect("select")
}

#[tokio::test]
async fn an_oversized_manifest_is_refused_at_the_limit() {
    let addr = serve(
        "HTTP/1.1 200 OK\r\ncontent-type: application/vnd.oci.image.manifest.v1+json\r\ntransfer-encoding: chunked\r\n\r\n",
        10 << 20,
        b' ',
    );
    let up = upstream(&addr);
    let e = up.get_manifest(&Repo::parse("a/b").expect("repo"), &Reference::Tag("v1".into())).await.expect_err("10 MiB manifest");
    assert!(e.to_string().contains(&format!("larger than {MAX_MANIFEST} bytes")), "{e}");
}

#[tokio::test]
async fn a_manifest_unlike_its_claimed_digest_is_refused() {
    let claimed = Digest::of(b"something else");
    let head: &'static str = Box::leak(
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ndocker-content-digest: {claimed}\r\ntransfer-encoding: chunked\r\n\r\n"
        )
        .into_boxed_str(),
    );
    let up = upstream(&serve(head, 100, b'{'));
    let e = up.get_manifest(&Repo::parse("a/b").expect("repo"), &Reference::Tag("v1".into())).await.expect_err("digest mismatch");
    assert!(e.to_string().contains("digest mismatch"), "{e}");
}
