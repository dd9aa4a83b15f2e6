//! Audio in and out: fetching ([`fetch`]), decoding to stereo 44.1 kHz f32 ([`decode`]) and
//! writing stems ([`encode`]).

pub mod decode;
pub mod encode;
pub mod fetch;

pub use decode::{AudioReader, DecodeError, Frame, SAMPLE_RATE};
