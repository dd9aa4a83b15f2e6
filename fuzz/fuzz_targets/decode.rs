//! Audio decoding: arbitrary bytes through [`AudioReader`] to the end, resampling included
//! (any source rate other than 44.1 kHz goes through the resampler).
//!
//! The input is the file itself; no extension hint is given, as for downloaded audio, and no
//! duration cap, as for `uvr separate`. Beyond "no panic": reads return between 1 and the
//! requested number of frames, all finite, and once the end is reached the reader reports
//! exactly the number of frames it handed out and keeps reporting the end.
//!
//! The reader contains panics raised inside the third-party demuxers, decoders and the
//! resampler (they become `DecodeError::Corrupt`), so this target replaces libFuzzer's
//! abort-on-any-panic hook: only a panic that escapes the library is a crash.

#![no_main]

use std::backtrace::Backtrace;
use std::cell::RefCell;
use std::sync::Once;

use libfuzzer_sys::fuzz_target;
use uvr::audio::AudioReader;

const CHUNK: usize = 4096;

thread_local! {
    /// The latest panic on this thread, reported if it escapes.
    static LAST_PANIC: RefCell<Option<(String, Backtrace)>> = const { RefCell::new(None) };
}

fn record_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let panic = (info.to_string(), Backtrace::force_capture());
            LAST_PANIC.with(|p| *p.borrow_mut() = Some(panic));
        }));
    });
}

fn decode(data: &[u8]) {
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

fuzz_target!(|data: &[u8]| {
    record_panics();
    if std::panic::catch_unwind(|| decode(data)).is_err() {
        LAST_PANIC.with(|p| match p.borrow().as_ref() {
            Some((message, backtrace)) => eprintln!("{message}\n{backtrace}"),
            None => eprintln!("panic"),
        });
        std::process::abort();
    }
});
