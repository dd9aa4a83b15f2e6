//! Writing stems as WAV (hound): 16-bit or 24-bit PCM, or 32-bit float, stereo 44.1 kHz,
//! streamed frame block by frame block.

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;

use super::decode::{Frame, SAMPLE_RATE};

/// Output sample formats (`output_format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SampleFormat {
    /// 16-bit PCM (`wav`, `wav16`; the default).
    Int16,
    /// 24-bit PCM (`wav24`).
    Int24,
    /// 32-bit IEEE float (`wav32f`).
    Float32,
}

impl SampleFormat {
    /// Parses an `output_format` value (`None`: the default, 16-bit).
    pub fn parse(name: Option<&str>) -> Option<Self> {
        match name.unwrap_or("wav") {
            "wav" | "wav16" => Some(Self::Int16),
            "wav24" => Some(Self::Int24),
            "wav32f" => Some(Self::Float32),
            _ => None,
        }
    }

    /// The file extension.
    pub fn extension(self) -> &'static str {
        "wav"
    }

    /// Bytes one stereo frame takes in a file.
    pub fn bytes_per_frame(self) -> u64 {
        match self {
            Self::Int16 => 4,
            Self::Int24 => 6,
            Self::Float32 => 8,
        }
    }

    /// The size of a stem file of `frames` frames (data and header).
    pub fn file_bytes(self, frames: u64) -> u64 {
        frames.saturating_mul(self.bytes_per_frame()) + 44
    }

    fn spec(self) -> hound::WavSpec {
        let (bits, fmt) = match self {
            Self::Int16 => (16, hound::SampleFormat::Int),
            Self::Int24 => (24, hound::SampleFormat::Int),
            Self::Float32 => (32, hound::SampleFormat::Float),
        };
        hound::WavSpec {
            channels: 2,
            sample_rate: SAMPLE_RATE,
            bits_per_sample: bits,
            sample_format: fmt,
        }
    }
}

/// A stem being written.
pub struct StemWriter {
    writer: hound::WavWriter<BufWriter<File>>,
    format: SampleFormat,
    frames: u64,
}

impl std::fmt::Debug for StemWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StemWriter")
            .field("format", &self.format)
            .field("frames", &self.frames)
            .finish()
    }
}

impl StemWriter {
    /// Creates `path`.
    pub fn create(path: &Path, format: SampleFormat) -> Result<Self, hound::Error> {
        Ok(Self {
            writer: hound::WavWriter::create(path, format.spec())?,
            format,
            frames: 0,
        })
    }

    /// Appends frames.
    pub fn write(&mut self, frames: &[Frame]) -> Result<(), hound::Error> {
        for frame in frames {
            for s in frame {
                let s = if s.is_finite() { *s } else { 0.0 };
                match self.format {
                    SampleFormat::Int16 => self
                        .writer
                        .write_sample((s.clamp(-1.0, 1.0) * 32767.0).round() as i16)?,
                    SampleFormat::Int24 => self
                        .writer
                        .write_sample((s.clamp(-1.0, 1.0) * 8_388_607.0).round() as i32)?,
                    SampleFormat::Float32 => self.writer.write_sample(s)?,
                }
            }
        }
        self.frames += frames.len() as u64;
        Ok(())
    }

    /// Completes the header; returns the number of frames written.
    pub fn finish(self) -> Result<u64, hound::Error> {
        self.writer.finalize()?;
        Ok(self.frames)
    }
}
