//! Fuzz target: audio decoding to the end (`fuzz/checks/decode.rs`).
//!
//! The reader contains panics raised inside the third-party demuxers, decoders and the
//! resampler (they become `DecodeError::Corrupt`), so this target replaces libFuzzer's
//! abort-on-any-panic hook: only a panic that escapes the library is a crash.

#![no_main]

use std::backtrace::Backtrace;
use std::cell::RefCell;
use std::sync::Once;

use libfuzzer_sys::fuzz_target;
#[path = "../checks/decode.rs"]
mod check;

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

fuzz_target!(|data: &[u8]| {
    record_panics();
    if std::panic::catch_unwind(|| check::check(data)).is_err() {
        LAST_PANIC.with(|p| match p.borrow().as_ref() {
            Some((message, backtrace)) => eprintln!("{message}\n{backtrace}"),
            None => eprintln!("panic"),
        });
        std::process::abort();
    }
});
