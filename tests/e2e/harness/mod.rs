//! Shared utilities for the end-to-end tests: free loopback ports, temp dirs, hashing,
//! deterministic pseudo-random data, bounded waits, subprocesses with timeouts, checks that a
//! required Debian binary is installed, and a raw HTTP/1.1 client for requests that `reqwest`
//! would normalise (`..` in paths) or refuse to send.
//!
//! Every wait here has a timeout and panics with a message naming what was awaited.

pub mod containerd;
pub mod ferry;
pub mod image;
pub mod netns;
pub mod oci;
pub mod proxy;
pub mod registry;
pub mod rootfs;
pub mod store;
pub mod swarm;
pub mod tls;
pub mod token;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

/// A loopback port that was free a moment ago (bound to port 0, then released).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr of a bound listener").port()
}

/// A fresh temp dir named after the test component, removed on drop.
pub fn temp_dir(what: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(&format!("ferry-e2e-{what}-")).tempdir().expect("create a temp dir")
}

/// Lowercase hex sha256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// OCI digest string `sha256:<hex>` of `data`.
pub fn digest_of(data: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(data))
}

/// Hex sha256 of a file, computed by coreutils' `sha256sum` (fast even in debug builds);
/// `None` when the file cannot be read (e.g. it was renamed away meanwhile).
pub fn sha256_file(path: &Path) -> Option<String> {
    let out = Command::new("sha256sum").arg(path).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    out.status.success().then(|| text.split_whitespace().next().unwrap_or_default().to_string())
}

/// `len` bytes of deterministic pseudo-random data (xorshift64*), distinct for each `seed`.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Polls `probe` every 50 ms until it returns `Some`, or panics after `timeout` naming `what`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Panics with the apt package to install when `binary` is not on PATH.
pub fn require_binary(binary: &str, apt_package: &str) {
    let found = std::env::var_os("PATH").map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(binary).is_file())).unwrap_or(false);
    assert!(found, "`{binary}` is not installed; run `apt-get install -y {apt_package}`");
}

/// What a finished subprocess left behind.
#[derive(Debug)]
pub struct CmdOutput {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `cmd` to completion, killing it after `timeout`; output is captured.
pub fn run_cmd(cmd: &mut Command, timeout: Duration) -> CmdOutput {
    let shown = format!("{cmd:?}");
    let mut child =
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap_or_else(|e| panic!("spawn {shown}: {e}"));
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{shown} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    CmdOutput { success: status.success(), stdout: out_reader.join().unwrap_or_default(), stderr: err_reader.join().unwrap_or_default() }
}

/// Runs `cmd` and panics with its output unless it succeeds.
pub fn run_ok(cmd: &mut Command, timeout: Duration) -> String {
    let shown = format!("{cmd:?}");
    let out = run_cmd(cmd, timeout);
    assert!(out.success, "{shown} failed\nstdout: {}\nstderr: {}", out.stdout, out.stderr);
    out.stdout
}

/// An HTTP client for loopback tests: no proxies from the environment, bounded waits.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(120))
        .build()
        .expect("build reqwest client")
}

/// A response read by [`raw_http`].
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

/// Sends `GET target` verbatim (no normalisation) with `extra_headers`, `Connection: close`,
/// and reads the whole reply (10 s timeout).
pub fn raw_get(addr: SocketAddr, target: &str, extra_headers: &[(&str, &str)]) -> RawResponse {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect for raw GET");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("set_read_timeout");
    let mut request = format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in extra_headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).expect("write raw request");
    let mut reply = Vec::new();
    if let Err(e) = stream.read_to_end(&mut reply) {
        assert!(!reply.is_empty(), "raw GET {target}: no reply: {e}");
    }
    let split = reply
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("raw GET {target}: reply has no header end: {:?}", String::from_utf8_lossy(&reply)));
    let head = String::from_utf8_lossy(&reply[..split]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("raw GET {target}: bad status line in {head:?}"));
    RawResponse { status, head, body: reply[split + 4..].to_vec() }
}
