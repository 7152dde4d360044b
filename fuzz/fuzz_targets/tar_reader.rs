//! Arbitrary bytes as a tar stream: every entry and its content read to the end.
#![no_main]
use libfuzzer_sys::fuzz_target;
use snapshotter::tar::TarReader;

fuzz_target!(|data: &[u8]| {
    let mut r = TarReader::new(data);
    let mut buf = [0u8; 4096];
    while let Ok(Some(_)) = r.next_entry() {
        while let Ok(n) = r.content(&mut buf) {
            if n == 0 {
                break;
            }
        }
    }
});
