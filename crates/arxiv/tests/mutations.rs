//! The fuzz target's body (`fuzz/fuzz_targets/parsers.rs`) run on seeded
//! mutations of every fixture, so that CI checks what `scripts/fuzz`
//! explores at length: any input gives a value or an error, never a panic.

use std::path::PathBuf;

fn parse_everything(text: &str) {
    let _ = arxiv::query::parse(text);
    let _ = arxiv::oai::parse(text);
    let _ = arxiv::announce::parse(text);
}

fn fixtures() -> Vec<Vec<u8>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    [root.clone(), root.join("arxiv-api")]
        .iter()
        .flat_map(|dir| std::fs::read_dir(dir).expect("fixture dir"))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "xml"))
        .map(|p| std::fs::read(p).expect("fixture"))
        .collect()
}

fn mutate(rng: &mut fastrand::Rng, input: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..rng.usize(1..8) {
        if out.is_empty() {
            break;
        }
        let at = rng.usize(..out.len());
        match rng.u8(..6) {
            0 => out[at] = rng.u8(..),
            1 => out.truncate(at),
            2 => {
                let end = (at + rng.usize(1..64)).min(out.len());
                out.drain(at..end);
            }
            3 => {
                let end = (at + rng.usize(1..256)).min(out.len());
                let copy = out[at..end].to_vec();
                let to = rng.usize(..out.len());
                out.splice(to..to, copy);
            }
            4 => {
                let tag: &[u8] = [
                    &b"<entry>"[..],
                    b"</feed>",
                    b"<![CDATA[",
                    b"&amp",
                    b"<id>",
                    b"\xff\xfe",
                ][rng.usize(..6)];
                out.splice(at..at, tag.iter().copied());
            }
            _ => {
                let other = rng.usize(..out.len());
                out.swap(at, other);
            }
        }
    }
    out
}

#[test]
fn mutated_fixtures_never_panic_a_parser() {
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    let fixtures = fixtures();
    assert!(fixtures.len() >= 20);
    for fixture in &fixtures {
        for _ in 0..200 {
            let input = mutate(&mut rng, fixture);
            parse_everything(&String::from_utf8_lossy(&input));
        }
    }
}
