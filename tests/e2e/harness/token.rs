//! A small Docker token-auth server (the `realm` of a registry configured with `auth: token`).
//!
//! `GET /token?service=S&scope=repository:NAME:pull,push` (and the OAuth2 `POST /token` form with
//! `grant_type=password`) answers `{"token", "access_token", "expires_in"}` with an RS256 JWT whose
//! header carries an `x5c` chain (signing certificate issued by the test CA; the registry's
//! `rootcertbundle` is the CA) and whose claims are iss/sub/aud/exp/nbf/iat/jti/access.
//! Valid Basic credentials get every requested action, no credentials get an anonymous token
//! with no access, wrong credentials get 401. Signing is done by the `openssl` CLI.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use serde_json::json;

use super::run_ok;
use super::tls::{IssuedCert, TestCa};

/// Values the registry's `auth.token` section must match.
pub const SERVICE: &str = "ferry-e2e-registry";
pub const ISSUER: &str = "ferry-e2e-token-issuer";

/// A running token server; stops on drop.
#[derive(Debug)]
pub struct TokenServer {
    pub port: u16,
    /// PEM bundle the registry trusts for token signatures (`rootcertbundle`).
    pub root_cert_bundle: PathBuf,
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Debug)]
struct Shared {
    user: String,
    password: String,
    signer: IssuedCert,
    work_dir: PathBuf,
    stop: AtomicBool,
    issued: AtomicUsize,
    rejected: AtomicUsize,
}

impl TokenServer {
    /// Starts a token server accepting `user`/`password`, with keys made by `ca` in `ca_dir`.
    pub fn start(ca: &TestCa, ca_dir: PathBuf, user: &str, password: &str) -> Self {
        let signer = ca.issue_signing_cert("token-signer");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind token server");
        listener.set_nonblocking(true).expect("nonblocking token listener");
        let port = listener.local_addr().expect("token server addr").port();
        let shared = Arc::new(Shared {
            user: user.to_string(),
            password: password.to_string(),
            signer,
            work_dir: ca_dir,
            stop: AtomicBool::new(false),
            issued: AtomicUsize::new(0),
            rejected: AtomicUsize::new(0),
        });
        let for_thread = shared.clone();
        let thread = std::thread::spawn(move || accept_loop(listener, for_thread));
        TokenServer { port, root_cert_bundle: ca.cert.clone(), shared, thread: Some(thread) }
    }

    /// The `realm` URL clients are sent to.
    pub fn realm(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.port)
    }

    /// Tokens issued so far (including anonymous ones).
    pub fn issued(&self) -> usize {
        self.shared.issued.load(Ordering::SeqCst)
    }

    /// Requests rejected with 401 for wrong credentials.
    pub fn rejected(&self) -> usize {
        self.shared.rejected.load(Ordering::SeqCst)
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    while !shared.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                let shared = shared.clone();
                std::thread::spawn(move || {
                    let _ = serve(stream, &shared);
                });
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

fn serve(mut stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let (head, mut body) = read_head(&mut stream)?;
    let mut lines = head.lines();
    let request_line = lines.next().unwrap_or_default().to_string();
    let mut authorization = None;
    let mut content_length = 0usize;
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            match name.trim().to_ascii_lowercase().as_str() {
                "authorization" => authorization = Some(value.trim().to_string()),
                "content-length" => content_length = value.trim().parse().unwrap_or(0),
                _ => {}
            }
        }
    }
    while body.len() < content_length {
        let mut buf = [0u8; 4096];
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&buf[..n]);
    }
    let target = request_line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let query = target.split_once('?').map(|(_, q)| q.to_string()).unwrap_or_default();
    let mut params = parse_form(&query);
    let mut credentials = authorization.as_deref().and_then(basic_credentials);
    if request_line.starts_with("POST") {
        let form = parse_form(&String::from_utf8_lossy(&body));
        let field = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        if let (Some(u), Some(p)) = (field("username"), field("password")) {
            credentials = Some((u, p));
        }
        params.extend(form);
    }
    let (status, reply) = match credentials {
        Some((u, p)) if u != shared.user || p != shared.password => {
            shared.rejected.fetch_add(1, Ordering::SeqCst);
            (401, json!({"errors": [{"code": "UNAUTHORIZED", "message": "wrong credentials"}]}))
        }
        creds => {
            let subject = creds.map(|(u, _)| u).unwrap_or_default();
            let granted = if subject.is_empty() { Vec::new() } else { requested_access(&params) };
            let token = sign_token(shared, &subject, &granted);
            shared.issued.fetch_add(1, Ordering::SeqCst);
            (200, json!({"token": token, "access_token": token, "expires_in": 300}))
        }
    };
    let body = reply.to_string();
    let reason = if status == 200 { "OK" } else { "Unauthorized" };
    write!(
        stream,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn read_head(stream: &mut TcpStream) -> std::io::Result<(String, Vec<u8>)> {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(pos) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&data[..pos]).to_string();
            return Ok((head, data[pos + 4..].to_vec()));
        }
        let n = stream.read(&mut buf)?;
        if n == 0 || data.len() > 64 * 1024 {
            return Err(std::io::Error::other("incomplete request head"));
        }
        data.extend_from_slice(&buf[..n]);
    }
}

fn basic_credentials(header: &str) -> Option<(String, String)> {
    let encoded = header.strip_prefix("Basic ").or_else(|| header.strip_prefix("basic "))?;
    let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
    let (user, pass) = decoded.split_once(':')?;
    Some((user.to_string(), pass.to_string()))
}

fn parse_form(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%' && i + 2 < bytes.len())
            .then(|| std::str::from_utf8(&bytes[i + 1..i + 3]).ok())
            .flatten()
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match (escaped, bytes[i]) {
            (Some(b), _) => {
                out.push(b);
                i += 3;
            }
            (None, b'+') => {
                out.push(b' ');
                i += 1;
            }
            (None, b) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).to_string()
}

/// Every `scope` parameter (repeated, or space-separated) as a JWT `access` entry.
fn requested_access(params: &[(String, String)]) -> Vec<serde_json::Value> {
    params
        .iter()
        .filter(|(k, _)| k == "scope")
        .flat_map(|(_, v)| v.split(' ').map(str::to_string).collect::<Vec<_>>())
        .filter_map(|scope| {
            let (kind, rest) = scope.split_once(':')?;
            let (name, actions) = rest.rsplit_once(':')?;
            let actions: Vec<&str> = actions.split(',').filter(|a| !a.is_empty()).collect();
            Some(json!({"type": kind, "name": name, "actions": actions}))
        })
        .collect()
}

fn sign_token(shared: &Shared, subject: &str, access: &[serde_json::Value]) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs();
    let jti = format!("{now}-{}", shared.issued.load(Ordering::SeqCst) + shared.rejected.load(Ordering::SeqCst));
    let header = json!({"alg": "RS256", "typ": "JWT", "x5c": [shared.signer.der_base64()]});
    let claims = json!({
        "iss": ISSUER, "sub": subject, "aud": SERVICE,
        "exp": now + 300, "nbf": now - 10, "iat": now, "jti": jti, "access": access,
    });
    let signing_input = format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
    let unique = format!("{jti}-{:?}", std::thread::current().id()).replace(['(', ')'], "");
    let input = shared.work_dir.join(format!("jwt-{unique}.in"));
    let output = shared.work_dir.join(format!("jwt-{unique}.sig"));
    std::fs::write(&input, &signing_input).expect("write JWT signing input");
    run_ok(
        Command::new("openssl").arg("dgst").arg("-sha256").arg("-sign").arg(&shared.signer.key).arg("-out").arg(&output).arg(&input),
        Duration::from_secs(20),
    );
    let signature = std::fs::read(&output).expect("read JWT signature");
    let _ = std::fs::remove_file(&input);
    let _ = std::fs::remove_file(&output);
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature))
}
