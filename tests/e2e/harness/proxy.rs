//! A named fault injector: a loopback HTTP/1.1 proxy put between ferry and the upstream
//! registry. One request per connection (it forces `Connection: close` upstream). Modes:
//! - `Pass`: forward bytes unchanged (optionally rate-limited, to stretch a big download);
//! - `CorruptBlobAt(offset)`: in 2xx replies to `GET .../blobs/...`, flip the byte at absolute
//!   blob offset `offset` (206 replies are mapped through their `Content-Range`);
//! - `Refuse`: close the listening socket, so connects fail (the WAN is down) until the mode
//!   changes back; the same port is bound again.
//!
//! It also counts accepted connections, so it doubles as a canary: "nobody came here".

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the proxy does to traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Pass,
    CorruptBlobAt(u64),
    Refuse,
}

#[derive(Debug)]
struct Shared {
    upstream: SocketAddr,
    mode: Mutex<Mode>,
    /// Bytes per second for upstream→client bodies; 0 = unlimited.
    rate_limit: AtomicU64,
    connections: AtomicUsize,
    corrupted: AtomicUsize,
    stop: AtomicBool,
}

/// A running fault proxy; stops on drop.
#[derive(Debug)]
pub struct FaultProxy {
    pub port: u16,
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FaultProxy {
    /// Starts a proxy on a free loopback port forwarding to `upstream` (`127.0.0.1:PORT`).
    pub fn start(upstream: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().expect("proxy addr").port();
        let shared = Arc::new(Shared {
            upstream: upstream.parse().expect("upstream socket address"),
            mode: Mutex::new(Mode::Pass),
            rate_limit: AtomicU64::new(0),
            connections: AtomicUsize::new(0),
            corrupted: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
        });
        let for_thread = shared.clone();
        let thread = std::thread::spawn(move || accept_loop(Some(listener), port, for_thread));
        FaultProxy { port, shared, thread: Some(thread) }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.shared.mode.lock().expect("proxy mode lock") = mode;
    }

    /// Limits upstream→client throughput; `None` removes the limit (also for open connections).
    pub fn set_rate_limit(&self, bytes_per_second: Option<u64>) {
        self.shared.rate_limit.store(bytes_per_second.unwrap_or(0), Ordering::SeqCst);
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Blob replies in which a byte was flipped so far.
    pub fn corrupted(&self) -> usize {
        self.shared.corrupted.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn accept_loop(mut listener: Option<TcpListener>, port: u16, shared: Arc<Shared>) {
    while !shared.stop.load(Ordering::SeqCst) {
        let refusing = *shared.mode.lock().expect("proxy mode lock") == Mode::Refuse;
        if refusing {
            listener = None;
        } else if listener.is_none() {
            listener = TcpListener::bind(("127.0.0.1", port)).ok();
        }
        let Some(active) = &listener else {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        };
        active.set_nonblocking(true).expect("nonblocking proxy listener");
        match active.accept() {
            Ok((client, _)) => {
                shared.connections.fetch_add(1, Ordering::SeqCst);
                let shared = shared.clone();
                std::thread::spawn(move || {
                    let _ = handle(client, &shared);
                });
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

fn handle(mut client: TcpStream, shared: &Shared) -> std::io::Result<()> {
    client.set_nonblocking(false)?;
    client.set_read_timeout(Some(Duration::from_secs(60)))?;
    let (head, rest) = read_until_blank_line(&mut client)?;
    let head_text = String::from_utf8_lossy(&head).to_string();
    let mut lines = head_text.split("\r\n");
    let request_line = lines.next().unwrap_or_default().to_string();
    let mut rewritten = format!("{request_line}\r\n");
    for line in lines.filter(|l| !l.is_empty()) {
        let name = line.split(':').next().unwrap_or_default().trim().to_ascii_lowercase();
        if name != "connection" && name != "keep-alive" {
            rewritten.push_str(line);
            rewritten.push_str("\r\n");
        }
    }
    rewritten.push_str("Connection: close\r\n\r\n");
    let mut upstream = TcpStream::connect_timeout(&shared.upstream, Duration::from_secs(5))?;
    upstream.write_all(rewritten.as_bytes())?;
    upstream.write_all(&rest)?;
    // Client → upstream (request bodies); ends when either side closes.
    let (mut client_reader, mut upstream_writer) = (client.try_clone()?, upstream.try_clone()?);
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut client_reader, &mut upstream_writer);
        let _ = upstream_writer.shutdown(Shutdown::Write);
    });
    let is_blob_get = request_line.starts_with("GET ") && request_line.contains("/blobs/");
    let result = relay_response(&mut upstream, &mut client, shared, is_blob_get);
    let _ = client.shutdown(Shutdown::Both);
    let _ = upstream.shutdown(Shutdown::Both);
    result
}

/// Copies the reply to the client, flipping one byte when asked, honouring the rate limit.
fn relay_response(upstream: &mut TcpStream, client: &mut TcpStream, shared: &Shared, is_blob_get: bool) -> std::io::Result<()> {
    upstream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let (head, mut body_start) = read_until_blank_line(upstream)?;
    let head_text = String::from_utf8_lossy(&head).to_string();
    let status: u16 = head_text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let header = |name: &str| {
        head_text.split("\r\n").find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    };
    let body_base: u64 = header("content-range")
        .and_then(|v| v.strip_prefix("bytes ").and_then(|r| r.split('-').next()).and_then(|s| s.parse().ok()))
        .unwrap_or(0);
    let corrupt_at = match *shared.mode.lock().expect("proxy mode lock") {
        Mode::CorruptBlobAt(offset) if is_blob_get && (200..300).contains(&status) => offset.checked_sub(body_base),
        _ => None,
    };
    client.write_all(&head)?;
    let mut sent: u64 = 0;
    let started = Instant::now();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let mut chunk = if body_start.is_empty() {
            let n = upstream.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            buf[..n].to_vec()
        } else {
            std::mem::take(&mut body_start)
        };
        if let Some(index) = corrupt_at.and_then(|at| at.checked_sub(sent)).filter(|i| *i < chunk.len() as u64) {
            chunk[index as usize] ^= 0x5A;
            shared.corrupted.fetch_add(1, Ordering::SeqCst);
        }
        client.write_all(&chunk)?;
        sent += chunk.len() as u64;
        let rate = shared.rate_limit.load(Ordering::SeqCst);
        if rate > 0 {
            let due = Duration::from_secs_f64(sent as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait.min(Duration::from_millis(500)));
            }
        }
    }
}

/// Reads up to and including the first `\r\n\r\n`; returns (head with the blank line, extra bytes).
fn read_until_blank_line(stream: &mut TcpStream) -> std::io::Result<(Vec<u8>, Vec<u8>)> {
    let mut data = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        if let Some(pos) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = data.split_off(pos + 4);
            return Ok((data, rest));
        }
        let n = stream.read(&mut buf)?;
        if n == 0 || data.len() > 256 * 1024 {
            return Err(std::io::Error::other("connection closed before a complete HTTP head"));
        }
        data.extend_from_slice(&buf[..n]);
    }
}
