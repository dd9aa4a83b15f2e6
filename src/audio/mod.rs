//! Audio in and out: fetching ([`fetch`]), decoding to stereo 44.1 kHz f32 ([`decode`]),
//! writing stems ([`encode`]) and resampling them to another rate ([`resample`]).

pub mod decode;
pub mod encode;
pub mod fetch;
pub mod resample;

pub use decode::{AudioReader, DecodeError, Frame, SAMPLE_RATE};
