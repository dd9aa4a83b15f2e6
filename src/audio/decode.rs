//! Streaming decoding (symphonia) to stereo f32 at 44.1 kHz.
//!
//! WAV, FLAC, MP3, OGG/Vorbis, AAC/M4A and ALAC. Mono is duplicated to both channels; more
//! than two channels are folded down (even-numbered channels to the left, odd-numbered to
//! the right, averaged). Other sample rates are resampled with rubato's FFT resampler, the
//! resampler's delay removed so the output is aligned with the input and has exactly
//! `ceil(frames * 44100 / rate)` frames. Audio is read packet by packet: memory does not
//! grow with the length of the song.

use std::collections::VecDeque;
use std::fs::File;
use std::path::Path;

use rubato::{FftFixedIn, Resampler};
use symphonia::core::audio::SampleBuffer;
use symphonia::core::codecs::{CODEC_TYPE_NULL, Decoder, DecoderOptions};
use symphonia::core::errors::Error as SymError;
use symphonia::core::formats::{FormatOptions, FormatReader};
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;
use symphonia::core::probe::Hint;

/// The sample rate everything is converted to.
pub const SAMPLE_RATE: u32 = 44_100;

/// A stereo frame.
pub type Frame = [f32; 2];

/// Why audio could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not a recognised audio container or codec.
    #[error("unsupported audio: {0}")]
    Unsupported(String),
    /// A recognised format whose data is damaged or truncated.
    #[error("corrupt audio: {0}")]
    Corrupt(String),
    /// Longer than `MAX_AUDIO_SECONDS`.
    #[error("audio is longer than {max_seconds} s")]
    TooLong {
        /// The cap.
        max_seconds: u64,
    },
    /// No audio frames at all.
    #[error("the file contains no audio")]
    Empty,
    /// Reading the file failed.
    #[error("cannot read the audio file: {0}")]
    Io(#[from] std::io::Error),
}

impl DecodeError {
    /// The stable error code.
    pub fn code(&self) -> &'static str {
        match self {
            DecodeError::Unsupported(_) => "audio_unsupported",
            DecodeError::Corrupt(_) => "audio_corrupt",
            DecodeError::TooLong { .. } => "audio_too_long",
            DecodeError::Empty => "audio_empty",
            DecodeError::Io(_) => "internal_error",
        }
    }
}

/// Decoded packets tolerated before a stream counts as corrupt.
const MAX_DECODE_ERRORS: u32 = 16;
const RESAMPLE_CHUNK: usize = 1024;

/// A streaming reader of stereo 44.1 kHz frames.
pub struct AudioReader {
    format: Box<dyn FormatReader>,
    decoder: Box<dyn Decoder>,
    track_id: u32,
    in_rate: u32,
    resampler: Option<FftFixedIn<f32>>,
    pending: [Vec<f32>; 2],
    out: VecDeque<Frame>,
    frames_in: u64,
    frames_out: u64,
    skip: usize,
    expected_frames: Option<u64>,
    max_frames: u64,
    max_seconds: u64,
    decode_errors: u32,
    eof: bool,
    flushed: bool,
    sample_buf: Option<SampleBuffer<f32>>,
}

impl std::fmt::Debug for AudioReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AudioReader")
            .field("in_rate", &self.in_rate)
            .field("expected_frames", &self.expected_frames)
            .finish_non_exhaustive()
    }
}

fn sym_err(e: SymError) -> DecodeError {
    match e {
        SymError::Unsupported(what) => DecodeError::Unsupported(what.to_string()),
        SymError::IoError(e) => DecodeError::Corrupt(format!("unexpected end or read error: {e}")),
        other => DecodeError::Corrupt(other.to_string()),
    }
}

impl AudioReader {
    /// Opens `path`; `max_seconds` caps the duration (0: no cap).
    pub fn open(path: &Path, max_seconds: u64) -> Result<Self, DecodeError> {
        let file = File::open(path)?;
        if file.metadata()?.len() == 0 {
            return Err(DecodeError::Empty);
        }
        let mss = MediaSourceStream::new(Box::new(file), Default::default());
        let mut hint = Hint::new();
        if let Some(ext) = path.extension().and_then(|e| e.to_str()) {
            hint.with_extension(ext);
        }
        let probed = symphonia::default::get_probe()
            .format(
                &hint,
                mss,
                &FormatOptions {
                    enable_gapless: true,
                    ..Default::default()
                },
                &MetadataOptions::default(),
            )
            .map_err(|e| match e {
                SymError::IoError(_) | SymError::Unsupported(_) => {
                    DecodeError::Unsupported("not a recognised audio format".into())
                }
                other => sym_err(other),
            })?;
        let format = probed.format;
        let track = format
            .tracks()
            .iter()
            .find(|t| t.codec_params.codec != CODEC_TYPE_NULL)
            .ok_or_else(|| DecodeError::Unsupported("no audio track".into()))?;
        let params = track.codec_params.clone();
        let decoder = symphonia::default::get_codecs()
            .make(&params, &DecoderOptions::default())
            .map_err(|e| DecodeError::Unsupported(format!("codec: {e}")))?;
        let in_rate = params
            .sample_rate
            .ok_or_else(|| DecodeError::Unsupported("unknown sample rate".into()))?;
        if !(1000..=768_000).contains(&in_rate) {
            return Err(DecodeError::Unsupported(format!(
                "sample rate {in_rate} Hz is out of range"
            )));
        }
        let max_frames = if max_seconds == 0 {
            u64::MAX
        } else {
            max_seconds.saturating_mul(u64::from(in_rate))
        };
        if let Some(n) = params.n_frames
            && n > max_frames
        {
            return Err(DecodeError::TooLong { max_seconds });
        }
        let resampler = if in_rate == SAMPLE_RATE {
            None
        } else {
            Some(
                FftFixedIn::<f32>::new(
                    in_rate as usize,
                    SAMPLE_RATE as usize,
                    RESAMPLE_CHUNK,
                    2,
                    2,
                )
                .map_err(|e| DecodeError::Unsupported(format!("resampler: {e}")))?,
            )
        };
        let skip = resampler.as_ref().map_or(0, |r| r.output_delay());
        Ok(Self {
            track_id: track.id,
            format,
            decoder,
            in_rate,
            resampler,
            pending: [Vec::new(), Vec::new()],
            out: VecDeque::new(),
            frames_in: 0,
            frames_out: 0,
            skip,
            expected_frames: params.n_frames.map(|n| out_frames(n, in_rate)),
            max_frames,
            max_seconds,
            decode_errors: 0,
            eof: false,
            flushed: false,
            sample_buf: None,
        })
    }

    /// Frames handed out so far.
    pub fn frames_read(&self) -> u64 {
        self.frames_out
    }

    /// The source sample rate.
    pub fn source_rate(&self) -> u32 {
        self.in_rate
    }

    /// The number of output frames, when the container says how long it is.
    pub fn total_frames(&self) -> Option<u64> {
        self.expected_frames
    }

    /// Reads up to `max` frames; `None` at the end.
    pub fn read(&mut self, max: usize) -> Result<Option<Vec<Frame>>, DecodeError> {
        while self.out.len() < max && !self.flushed {
            if self.eof {
                self.flush()?;
            } else {
                self.decode_packet()?;
            }
        }
        if self.out.is_empty() {
            if self.frames_out == 0 {
                return Err(DecodeError::Empty);
            }
            return Ok(None);
        }
        let n = self.out.len().min(max);
        self.frames_out += n as u64;
        Ok(Some(self.out.drain(..n).collect()))
    }

    fn decode_packet(&mut self) -> Result<(), DecodeError> {
        let packet = match self.format.next_packet() {
            Ok(p) => p,
            Err(SymError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                self.eof = true;
                return Ok(());
            }
            Err(SymError::ResetRequired) => {
                self.eof = true;
                return Ok(());
            }
            Err(e) => return Err(sym_err(e)),
        };
        if packet.track_id() != self.track_id {
            return Ok(());
        }
        let decoded = match self.decoder.decode(&packet) {
            Ok(d) => d,
            Err(SymError::DecodeError(msg)) => {
                self.decode_errors += 1;
                if self.decode_errors > MAX_DECODE_ERRORS {
                    return Err(DecodeError::Corrupt(msg.to_string()));
                }
                return Ok(());
            }
            Err(SymError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                self.eof = true;
                return Ok(());
            }
            Err(e) => return Err(sym_err(e)),
        };
        let spec = *decoded.spec();
        let channels = spec.channels.count();
        if channels == 0 {
            return Err(DecodeError::Unsupported("no channels".into()));
        }
        let frames = decoded.frames();
        if frames == 0 {
            return Ok(());
        }
        let buf = match &mut self.sample_buf {
            Some(b) if b.capacity() >= decoded.capacity() * channels => b,
            slot => slot.insert(SampleBuffer::<f32>::new(decoded.capacity() as u64, spec)),
        };
        buf.copy_interleaved_ref(decoded);
        let samples = &buf.samples()[..frames * channels];
        self.frames_in += frames as u64;
        if self.frames_in > self.max_frames {
            return Err(DecodeError::TooLong {
                max_seconds: self.max_seconds,
            });
        }
        for frame in samples.chunks_exact(channels) {
            let [l, r] = fold_to_stereo(frame);
            if l.is_finite() && r.is_finite() {
                self.pending[0].push(l);
                self.pending[1].push(r);
            } else {
                self.pending[0].push(0.0);
                self.pending[1].push(0.0);
            }
        }
        self.resample(false)
    }

    fn resample(&mut self, last: bool) -> Result<(), DecodeError> {
        let Some(rs) = self.resampler.as_mut() else {
            let [l, r] = &mut self.pending;
            self.out
                .extend(l.drain(..).zip(r.drain(..)).map(|(l, r)| [l, r]));
            return Ok(());
        };
        loop {
            let need = rs.input_frames_next();
            let out = if self.pending[0].len() >= need {
                let chunk = [&self.pending[0][..need], &self.pending[1][..need]];
                let out = rs
                    .process(&chunk, None)
                    .map_err(|e| DecodeError::Corrupt(format!("resampling: {e}")))?;
                self.pending[0].drain(..need);
                self.pending[1].drain(..need);
                out
            } else if last && !self.pending[0].is_empty() {
                let chunk = [&self.pending[0][..], &self.pending[1][..]];
                let out = rs
                    .process_partial(Some(&chunk), None)
                    .map_err(|e| DecodeError::Corrupt(format!("resampling: {e}")))?;
                self.pending[0].clear();
                self.pending[1].clear();
                out
            } else {
                return Ok(());
            };
            let mut pairs = out[0].iter().zip(out[1].iter()).map(|(l, r)| [*l, *r]);
            for frame in pairs.by_ref() {
                if self.skip > 0 {
                    self.skip -= 1;
                } else {
                    self.out.push_back(frame);
                }
            }
        }
    }

    fn flush(&mut self) -> Result<(), DecodeError> {
        let target = out_frames(self.frames_in, self.in_rate);
        if let Some(expected) = self.expected_frames {
            // A container that announced more frames than it holds was cut short.
            let tolerance = u64::from(SAMPLE_RATE) / 10;
            if target + tolerance < expected {
                return Err(DecodeError::Corrupt(format!(
                    "truncated: {} of {} frames",
                    target, expected
                )));
            }
        }
        self.resample(true)?;
        if let Some(rs) = self.resampler.as_mut() {
            // Drain the resampler's delay line until every input frame has come out.
            let mut guard = 0;
            while (self.frames_out + self.out.len() as u64) < target && guard < 64 {
                let out = rs
                    .process_partial(None::<&[Vec<f32>]>, None)
                    .map_err(|e| DecodeError::Corrupt(format!("resampling: {e}")))?;
                for (l, r) in out[0].iter().zip(out[1].iter()) {
                    if self.skip > 0 {
                        self.skip -= 1;
                    } else {
                        self.out.push_back([*l, *r]);
                    }
                }
                guard += 1;
            }
        }
        let have = self.frames_out + self.out.len() as u64;
        if have > target {
            self.out.truncate(self.out.len() - (have - target) as usize);
        }
        self.expected_frames = Some(target);
        self.flushed = true;
        Ok(())
    }
}

/// Frames after resampling `frames` at `rate` to 44.1 kHz.
fn out_frames(frames: u64, rate: u32) -> u64 {
    (frames * u64::from(SAMPLE_RATE)).div_ceil(u64::from(rate))
}

fn fold_to_stereo(frame: &[f32]) -> Frame {
    match frame.len() {
        1 => [frame[0], frame[0]],
        2 => [frame[0], frame[1]],
        _ => {
            let (mut l, mut r, mut nl, mut nr) = (0.0, 0.0, 0.0f32, 0.0f32);
            for (i, s) in frame.iter().enumerate() {
                if i % 2 == 0 {
                    l += s;
                    nl += 1.0;
                } else {
                    r += s;
                    nr += 1.0;
                }
            }
            [l / nl.max(1.0), r / nr.max(1.0)]
        }
    }
}
