//! Fuzz target: `POST /generate`'s checks before anything is enqueued
//! (`fuzz/checks/request.rs`).

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../checks/request.rs"]
mod check;

fuzz_target!(|data: &[u8]| {
    check::check(data);
});
