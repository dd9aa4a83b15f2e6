//! Replays the committed fuzz seeds (`fuzz/corpus/<target>/`) and the crashes found and fixed
//! (`tests/fixtures/fuzz/<target>/`) through the fuzz targets' own checks (`fuzz/checks/`),
//! so every `cargo test` runs them and the checks cannot drift from the library they
//! exercise.

use std::path::{Path, PathBuf};

#[path = "../fuzz/checks/decode.rs"]
mod decode;
#[path = "../fuzz/checks/onnx.rs"]
mod onnx;
#[path = "../fuzz/checks/request.rs"]
mod request;

/// The seeds of `target` (`fuzz/corpus/<target>/`), sorted, with their bytes.
fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    files(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus")
            .join(target),
    )
}

/// The fixed crashes of `target` (`tests/fixtures/fuzz/<target>/`).
fn regressions(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    files(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/fuzz")
            .join(target),
    )
}

/// Every file of `dir`, sorted, with its bytes; at least one.
fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} holds no input", dir.display());
    files
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect()
}

#[test]
fn the_decode_corpus_decodes_within_the_readers_contract() {
    for (path, bytes) in corpus("decode") {
        eprintln!("{}", path.display());
        decode::check(&bytes);
        // The seeds are real audio files: each decodes to the end (a seed that stopped
        // decoding would no longer reach the code it was committed to reach).
        let mut reader = uvr::audio::AudioReader::from_bytes(bytes, None, 0)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        while reader.read(4096).unwrap().is_some() {}
        assert!(reader.frames_read() > 0, "{}", path.display());
    }
    for (path, bytes) in regressions("decode") {
        eprintln!("{}", path.display());
        decode::check(&bytes);
    }
}

#[test]
fn the_onnx_corpus_parses_and_plans() {
    for (path, bytes) in corpus("onnx") {
        onnx::check(&bytes);
        let graph =
            uvr::mdx::onnx::parse(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        uvr::mdx::plan::plan(&graph).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
    for (_, bytes) in regressions("onnx") {
        onnx::check(&bytes);
    }
}

#[test]
fn the_request_corpus_runs_through_the_checks() {
    let mut accepted = 0;
    for (path, bytes) in corpus("request") {
        eprintln!("{}", path.display());
        if request::check(&bytes) {
            accepted += 1;
        }
    }
    // The seeds include valid requests (so the round-trip assertions run) and refused ones.
    assert!(accepted > 0, "no seed request is accepted");
}
