//! Arbitrary bytes as a zstd:chunked blob: footer, TOC frame, TOC JSON, then every chunk read.
#![no_main]
use libfuzzer_sys::fuzz_target;
use snapshotter::zstd_chunked;

fuzz_target!(|data: &[u8]| {
    let blob = data.to_vec();
    if let Ok(index) = zstd_chunked::open(&blob, None, None) {
        for (_, chunk) in index.toc.chunks().take(64) {
            let _ = zstd_chunked::read_chunk(&blob, chunk);
        }
    }
});
