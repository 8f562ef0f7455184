//! Any bytes through every parser: an error is fine, a panic is a bug.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = arxiv::query::parse(&text);
    let _ = arxiv::oai::parse(&text);
    let _ = arxiv::announce::parse(&text);
});
