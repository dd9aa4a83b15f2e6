//! Fuzz target: the ONNX reader and the MDX-Net graph checks (`fuzz/checks/onnx.rs`).

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../checks/onnx.rs"]
mod check;

fuzz_target!(|data: &[u8]| check::check(data));
