//! Watches a ferry store from outside: a background thread that keeps listing
//! `STORE/blobs/sha256/` and hashes every file it has not seen in that (size, mtime) state,
//! recording each one whose sha256 differs from its name. This is the "a kill -9 never leaves a
//! torn blob marked complete" invariant, checked continuously rather than only at the end.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::ferry::list_blob_files;
use super::sha256_file;

#[derive(Debug, Default)]
struct Findings {
    /// (name, size, mtime) states already hashed.
    seen: HashSet<(String, u64, std::time::SystemTime)>,
    /// Files whose content did not match their name: "name: got HEX (SIZE bytes)".
    violations: Vec<String>,
    verified: HashSet<String>,
}

/// A running auditor; stops on drop or [`StoreAuditor::finish`].
#[derive(Debug)]
pub struct StoreAuditor {
    stop: Arc<AtomicBool>,
    findings: Arc<Mutex<Findings>>,
    thread: Option<std::thread::JoinHandle<()>>,
    store: PathBuf,
}

impl StoreAuditor {
    /// Starts auditing `store` every 100 ms.
    pub fn start(store: PathBuf) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let findings = Arc::new(Mutex::new(Findings::default()));
        let (stop_flag, shared, dir) = (stop.clone(), findings.clone(), store.clone());
        let thread = std::thread::spawn(move || {
            while !stop_flag.load(Ordering::SeqCst) {
                audit_once(&dir, &shared);
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        StoreAuditor { stop, findings, thread: Some(thread), store }
    }

    /// Audits once more right now (synchronously).
    pub fn audit_now(&self) {
        audit_once(&self.store, &self.findings);
    }

    /// Names (hex) of files verified correct so far.
    pub fn verified(&self) -> HashSet<String> {
        self.findings.lock().expect("auditor lock").verified.clone()
    }

    /// Stops the thread, audits a last time, and returns every violation seen.
    pub fn finish(mut self) -> Vec<String> {
        self.stop_thread();
        audit_once(&self.store, &self.findings);
        self.findings.lock().expect("auditor lock").violations.clone()
    }

    fn stop_thread(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for StoreAuditor {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

fn audit_once(store: &std::path::Path, findings: &Mutex<Findings>) {
    for (name, path) in list_blob_files(store) {
        let Ok(meta) = std::fs::metadata(&path) else { continue };
        let state = (name.clone(), meta.len(), meta.modified().unwrap_or(std::time::UNIX_EPOCH));
        if findings.lock().expect("auditor lock").seen.contains(&state) {
            continue;
        }
        let Some(actual) = sha256_file(&path) else { continue };
        let mut findings = findings.lock().expect("auditor lock");
        findings.seen.insert(state);
        if actual == name {
            findings.verified.insert(name);
        } else {
            findings.violations.push(format!("{name}: content hashes to {actual} ({} bytes)", meta.len()));
        }
    }
}
