//! Source separation: the [`Separator`] trait and its implementations.
//!
//! A separator turns stereo 44.1 kHz f32 audio into named stems (at least `vocals` and
//! `instrumental`). It pulls frames from a [`FrameSource`] chunk by chunk and pushes stem
//! frames to a [`StemSink`], so memory is bounded by the chunk size, not the song length;
//! between chunks it reports progress to a [`Listener`], which can ask it to stop.
//!
//! - [`dsp::CentreExtractor`] (`dsp-centre`): the no-weights default, centre-channel
//!   extraction in the STFT domain.

pub mod dsp;
pub mod ensemble;
pub mod presets;

use crate::audio::{DecodeError, Frame};

/// Stems of the built-in separator and of MDX-Net models.
pub const STEMS: &[&str] = &["vocals", "instrumental"];

/// A stem name as the API spells it: lower case, spaces and dashes as underscores
/// (`Lead Vocals` -> `lead_vocals`).
pub fn stem_name(s: &str) -> String {
    s.trim().to_lowercase().replace([' ', '-'], "_")
}

/// The name of "the mix minus `stem`": `instrumental` for vocals, `vocals` for an
/// instrumental, `no_<stem>` otherwise (UVR's "No Reverb", "No Echo", ...).
pub fn complement(stem: &str) -> String {
    match stem {
        "vocals" | "vocal" => "instrumental".into(),
        "instrumental" | "instrument" | "other" => "vocals".into(),
        s => format!("no_{s}"),
    }
}

/// What a listener wants after a progress report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Keep going.
    Continue,
    /// Stop as soon as possible (cancelled, or the lease was lost).
    Stop,
}

/// Receives progress between chunks.
pub trait Listener {
    /// `done` of `total` input frames are processed (`total` unknown for some streams).
    fn progress(&mut self, done: u64, total: Option<u64>) -> Control;
}

/// A listener that never stops anything.
#[derive(Debug, Default)]
pub struct NoListener;

impl Listener for NoListener {
    fn progress(&mut self, _: u64, _: Option<u64>) -> Control {
        Control::Continue
    }
}

/// Stereo input, pulled in chunks.
pub trait FrameSource {
    /// The total number of frames, when known.
    fn total_frames(&self) -> Option<u64>;
    /// Up to `max` frames; `None` at the end.
    fn next_chunk(&mut self, max: usize) -> Result<Option<Vec<Frame>>, SeparateError>;
}

impl FrameSource for crate::audio::AudioReader {
    fn total_frames(&self) -> Option<u64> {
        crate::audio::AudioReader::total_frames(self)
    }
    fn next_chunk(&mut self, max: usize) -> Result<Option<Vec<Frame>>, SeparateError> {
        Ok(self.read(max)?)
    }
}

/// In-memory input (tests, benchmarks).
#[derive(Debug)]
pub struct SliceSource<'a> {
    frames: &'a [Frame],
    pos: usize,
}

impl<'a> SliceSource<'a> {
    /// A source over `frames`.
    pub fn new(frames: &'a [Frame]) -> Self {
        Self { frames, pos: 0 }
    }
}

impl FrameSource for SliceSource<'_> {
    fn total_frames(&self) -> Option<u64> {
        Some(self.frames.len() as u64)
    }
    fn next_chunk(&mut self, max: usize) -> Result<Option<Vec<Frame>>, SeparateError> {
        if self.pos >= self.frames.len() {
            return Ok(None);
        }
        let end = (self.pos + max).min(self.frames.len());
        let out = self.frames[self.pos..end].to_vec();
        self.pos = end;
        Ok(Some(out))
    }
}

/// Receives stem frames; `stem` indexes [`Separator::stems`].
pub trait StemSink {
    /// Appends frames to one stem.
    fn write(&mut self, stem: usize, frames: &[Frame]) -> Result<(), SeparateError>;
}

/// Collects stems in memory (tests, benchmarks).
#[derive(Debug, Default)]
pub struct VecSink {
    /// One buffer per stem.
    pub stems: Vec<Vec<Frame>>,
}

impl StemSink for VecSink {
    fn write(&mut self, stem: usize, frames: &[Frame]) -> Result<(), SeparateError> {
        if self.stems.len() <= stem {
            self.stems.resize_with(stem + 1, Vec::new);
        }
        self.stems[stem].extend_from_slice(frames);
        Ok(())
    }
}

/// Why separation stopped.
#[derive(Debug, thiserror::Error)]
pub enum SeparateError {
    /// The listener asked to stop.
    #[error("stopped on request")]
    Stopped,
    /// The input could not be decoded.
    #[error(transparent)]
    Input(#[from] DecodeError),
    /// A stem could not be written.
    #[error("cannot write a stem: {0}")]
    Output(String),
    /// The model failed.
    #[error("separation failed: {0}")]
    Model(String),
    /// The model is installed but this build cannot run it (built without the `mdx` feature).
    #[error(
        "model {0:?} is unavailable: this build has no neural engine for MDX-Net or Roformer models (the `mdx` feature)"
    )]
    Unavailable(String),
}

impl SeparateError {
    /// The stable error code.
    pub fn code(&self) -> &'static str {
        match self {
            SeparateError::Stopped => "cancelled",
            SeparateError::Input(e) => e.code(),
            SeparateError::Output(_) => "internal_error",
            SeparateError::Model(_) => "separation_failed",
            SeparateError::Unavailable(_) => "model_unavailable",
        }
    }
}

/// A source separator.
pub trait Separator: Send {
    /// The model name.
    fn name(&self) -> &str;
    /// The model family ("dsp", "mdx-net", "bs-roformer", ...).
    fn family(&self) -> &'static str;
    /// The stems it produces, in sink index order: `vocals`, `instrumental` by default.
    fn stems(&self) -> Vec<String> {
        STEMS.iter().map(|s| s.to_string()).collect()
    }
    /// Separates the whole input; returns the number of frames written per stem (equal to
    /// the input length).
    fn separate(
        &mut self,
        input: &mut dyn FrameSource,
        output: &mut dyn StemSink,
        listener: &mut dyn Listener,
    ) -> Result<u64, SeparateError>;
}

/// Signal-to-distortion ratio in dB of `estimate` against `reference` (both channels).
pub fn sdr(reference: &[Frame], estimate: &[Frame]) -> f64 {
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (r, e) in reference.iter().zip(estimate) {
        for c in 0..2 {
            let (r, e) = (f64::from(r[c]), f64::from(e[c]));
            num += r * r;
            den += (r - e) * (r - e);
        }
    }
    10.0 * ((num + 1e-12) / (den + 1e-12)).log10()
}
