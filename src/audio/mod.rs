//! Audio in and out: fetching ([`fetch`]), decoding to stereo 44.1 kHz f32 ([`decode`], Opus
//! through libopus in [`opus_input`]), writing stems ([`encode`], Ogg Opus in [`ogg_opus`])
//! and resampling them to another rate ([`resample`]).

pub mod decode;
pub mod encode;
pub mod fetch;
pub mod ogg_opus;
pub mod opus_input;
pub mod resample;

pub use decode::{AudioReader, DecodeError, Frame, SAMPLE_RATE};
