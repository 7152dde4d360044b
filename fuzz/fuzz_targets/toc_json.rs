//! Arbitrary bytes as TOC JSON, validated against a blob whose data ends at 1 MiB.
#![no_main]
use libfuzzer_sys::fuzz_target;
use snapshotter::toc::{RawToc, Toc};

fuzz_target!(|data: &[u8]| {
    if let Ok(raw) = serde_json::from_slice::<RawToc>(data) {
        let _ = Toc::from_raw(&raw, 1 << 20);
    }
});
