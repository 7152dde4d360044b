//! "Fail loudly, never hang": an upstream that accepts connections and never answers (a WAN
//! link that went dark). With a 2 s read timeout, 20 concurrent requests for one cold blob all
//! fail with a 504 within a few seconds, together, instead of retrying one after another.

use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::harness::ferry::{FerryNode, FerryOptions};
use crate::harness::oci::{blob_url, get};
use crate::harness::temp_dir;

/// Accepts connections and holds them open without reading or writing; drops them on Drop.
struct Blackhole {
    addr: String,
    held: Arc<Mutex<Vec<std::net::TcpStream>>>,
}

impl Blackhole {
    fn start() -> Blackhole {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind blackhole");
        let addr = listener.local_addr().expect("addr").to_string();
        let held = Arc::new(Mutex::new(Vec::new()));
        let keep = held.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                keep.lock().expect("lock").push(conn);
            }
        });
        Blackhole { addr, held }
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        self.held.lock().expect("lock").clear();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_waiters_on_a_dark_upstream_fail_together_and_fast() {
    let hole = Blackhole::start();
    let work = temp_dir("blackhole");
    let config = work.path().join("ferry.toml");
    std::fs::write(&config, "[registry]\nread_timeout = \"2s\"\nconnect_timeout = \"2s\"\n").expect("config");
    let mut options = FerryOptions::upstream("registry.local", &format!("http://{}", hole.addr));
    options.extra_args = vec!["--config".into(), config.display().to_string()];
    let ferry = FerryNode::start(options).await;

    let digest = format!("sha256:{}", "ab".repeat(32));
    let url = format!("{}?ns=registry.local", blob_url(&ferry.url(), "test/dark", &digest));
    let started = Instant::now();
    let clients: Vec<_> = (0..20).map(|_| tokio::spawn(get_owned(url.clone()))).collect();
    let mut replies = Vec::new();
    for c in clients {
        replies.push(c.await.expect("client task"));
    }
    let elapsed = started.elapsed();
    for r in &replies {
        let r = r.as_ref().expect("ferry answers even when its upstream does not");
        let body = String::from_utf8_lossy(&r.body);
        assert!(matches!(r.status, 502 | 504), "status {} body {body}", r.status);
        assert!(body.contains("timed out") || body.contains("registry.local"), "the error says what happened: {body}");
    }
    assert!(elapsed < Duration::from_secs(10), "20 waiters took {elapsed:?}: they retried one after another instead of failing together");
}

async fn get_owned(url: String) -> Result<crate::harness::oci::Reply, String> {
    get(&url, &[]).await
}
