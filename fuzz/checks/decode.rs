//! Audio decoding: arbitrary bytes through [`AudioReader`] to the end, resampling included
//! (any source rate other than 44.1 kHz goes through the resampler).
//!
//! The input is the file itself; no extension hint is given, as for downloaded audio, and no
//! duration cap, as for `uvr separate`. Beyond "no panic": reads return between 1 and the
//! requested number of frames, all finite, and once the end is reached the reader reports
//! exactly the number of frames it handed out and keeps reporting the end.
//!
//! Shared by the fuzz target (`fuzz/fuzz_targets/decode.rs`) and the corpus replay in
//! `cargo test` (`tests/fuzz_corpus.rs`).

use uvr::audio::AudioReader;

const CHUNK: usize = 4096;

/// Decodes `data` to the end, asserting the reader's contract.
pub fn check(data: &[u8]) {
    let Ok(mut reader) = AudioReader::from_bytes(data.to_vec(), None, 0) else {
        return;
    };
    let mut frames: u64 = 0;
    loop {
        match reader.read(CHUNK) {
            Ok(Some(chunk)) => {
                assert!(!chunk.is_empty() && chunk.len() <= CHUNK);
                assert!(chunk.iter().flatten().all(|s| s.is_finite()));
                frames += chunk.len() as u64;
            }
            Ok(None) => break,
            Err(_) => return,
        }
    }
    assert_eq!(reader.frames_read(), frames);
    assert_eq!(reader.total_frames(), Some(frames));
    assert!(matches!(reader.read(CHUNK), Ok(None)));
}
