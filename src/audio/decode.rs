//! Streaming decoding (symphonia) to stereo f32 at 44.1 kHz.
//!
//! WAV, FLAC, MP3, OGG/Vorbis, Opus (Ogg or WebM, libopus), AAC/M4A and ALAC. Mono is duplicated to both channels; more
//! than two channels are folded down (even-numbered channels to the left, odd-numbered to
//! the right, averaged). Other sample rates are resampled with rubato's FFT resampler, the
//! resampler's delay removed so the output is aligned with the input and has exactly
//! `ceil(frames * 44100 / rate)` frames. Audio is read packet by packet: memory does not
//! grow with the length of the song.
//!
//! Input is untrusted. Non-finite samples become silence and finite ones are limited to
//! ±[`MAX_SAMPLE`], so no later FFT can overflow; a panic inside the third-party demuxers,
//! decoders or the resampler is contained and reported as [`DecodeError::Corrupt`], and a
//! reader that failed once keeps failing.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Cursor;
use std::path::Path;

use rubato::{FftFixedIn, Resampler};
use symphonia::core::audio::SampleBuffer;
use symphonia::core::codecs::{CODEC_TYPE_NULL, CodecParameters, Decoder, DecoderOptions};
use symphonia::core::errors::Error as SymError;
use symphonia::core::formats::{FormatOptions, FormatReader};
use symphonia::core::io::{MediaSource, MediaSourceStream};
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

/// The largest sample magnitude passed on, 80 dB above full scale: larger finite samples are
/// clipped to it, so that the resampler's and the separators' FFTs stay finite.
pub const MAX_SAMPLE: f32 = 1.0e4;

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
    failed: bool,
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

/// Runs `f`, which drives a third-party demuxer, decoder or the resampler, turning a panic
/// inside it into [`DecodeError::Corrupt`]: a malformed file must not take the worker down.
/// Whatever `f` touched is left in an unknown state, so callers stop using it.
fn contain<T>(what: &str, f: impl FnOnce() -> Result<T, DecodeError>) -> Result<T, DecodeError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|payload| {
        let detail = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("unknown failure");
        Err(DecodeError::Corrupt(format!(
            "{what} failed on malformed data: {detail}"
        )))
    })
}

/// What reading one packet gave.
enum Packet {
    /// The end of the stream.
    End,
    /// Nothing to use (another track, an empty or undecodable packet).
    Skip,
    /// `frames` frames of `channels` channels, interleaved in the sample buffer.
    Audio { frames: usize, channels: usize },
}

fn sym_err(e: SymError) -> DecodeError {
    match e {
        SymError::Unsupported(what) => DecodeError::Unsupported(what.to_string()),
        SymError::IoError(e) => DecodeError::Corrupt(format!("unexpected end or read error: {e}")),
        other => DecodeError::Corrupt(other.to_string()),
    }
}

/// Whether the frame count comes from a WAV written to a pipe (`ffmpeg ... -f wav -`), which
/// cannot know its length and says 0xFFFFFFFF bytes of data: that count is no length, so the
/// stream is read to its end like one whose container gives none.
fn streamed_wav(params: &CodecParameters) -> bool {
    use symphonia::core::codecs::{
        CODEC_TYPE_PCM_ALAW, CODEC_TYPE_PCM_F32LE, CODEC_TYPE_PCM_F64LE, CODEC_TYPE_PCM_MULAW,
        CODEC_TYPE_PCM_S16LE, CODEC_TYPE_PCM_S24LE, CODEC_TYPE_PCM_S32LE, CODEC_TYPE_PCM_U8,
    };
    let (Some(n), Some(channels)) = (params.n_frames, params.channels) else {
        return false;
    };
    let sample_bytes = match params.codec {
        CODEC_TYPE_PCM_U8 | CODEC_TYPE_PCM_ALAW | CODEC_TYPE_PCM_MULAW => 1,
        CODEC_TYPE_PCM_S16LE => 2,
        CODEC_TYPE_PCM_S24LE => 3,
        CODEC_TYPE_PCM_S32LE | CODEC_TYPE_PCM_F32LE => 4,
        CODEC_TYPE_PCM_F64LE => 8,
        _ => return false,
    };
    let sample_bytes = params
        .bits_per_coded_sample
        .map_or(sample_bytes, |b| u64::from(b.div_ceil(8)));
    let frame_bytes = sample_bytes * channels.count() as u64;
    frame_bytes > 0 && n == u64::from(u32::MAX) / frame_bytes
}

/// Recognises the container and makes a decoder for its first audio track.
type Probed = (
    Box<dyn FormatReader>,
    u32,
    CodecParameters,
    Box<dyn Decoder>,
);

fn probe(hint: &Hint, mss: MediaSourceStream) -> Result<Probed, DecodeError> {
    let probed = symphonia::default::get_probe()
        .format(
            hint,
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
    let (track_id, params) = (track.id, track.codec_params.clone());
    let decoder = super::opus_input::codecs()
        .make(&params, &DecoderOptions::default())
        .map_err(|e| DecodeError::Unsupported(format!("codec: {e}")))?;
    Ok((format, track_id, params, decoder))
}

impl AudioReader {
    /// Opens `path`; `max_seconds` caps the duration (0: no cap).
    pub fn open(path: &Path, max_seconds: u64) -> Result<Self, DecodeError> {
        let file = File::open(path)?;
        if file.metadata()?.len() == 0 {
            return Err(DecodeError::Empty);
        }
        let extension = path.extension().and_then(|e| e.to_str());
        Self::from_source(Box::new(file), extension, max_seconds)
    }

    /// Decodes audio held in memory; `extension` (`"wav"`, `"mp3"`...) is only a hint, the
    /// content decides. `max_seconds` caps the duration (0: no cap).
    pub fn from_bytes(
        bytes: Vec<u8>,
        extension: Option<&str>,
        max_seconds: u64,
    ) -> Result<Self, DecodeError> {
        if bytes.is_empty() {
            return Err(DecodeError::Empty);
        }
        Self::from_source(Box::new(Cursor::new(bytes)), extension, max_seconds)
    }

    fn from_source(
        source: Box<dyn MediaSource>,
        extension: Option<&str>,
        max_seconds: u64,
    ) -> Result<Self, DecodeError> {
        let mss = MediaSourceStream::new(source, Default::default());
        let mut hint = Hint::new();
        if let Some(ext) = extension {
            hint.with_extension(ext);
        }
        let (format, track_id, params, decoder) =
            contain("the audio demuxer", || probe(&hint, mss))?;
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
        let n_frames = params.n_frames.filter(|_| !streamed_wav(&params));
        // No recording is 2^48 frames long (200 years at 44.1 kHz): such a count is a damaged
        // header, e.g. the underflow a release build of the MP3 demuxer computes for a LAME
        // delay longer than the stream (a debug build panics there: corrupt as well).
        if let Some(n) = n_frames
            && n > 1 << 48
        {
            return Err(DecodeError::Corrupt(format!(
                "the container claims {n} frames"
            )));
        }
        if let Some(n) = n_frames
            && n > max_frames
        {
            return Err(DecodeError::TooLong { max_seconds });
        }
        let resampler = if in_rate == SAMPLE_RATE {
            None
        } else {
            Some(contain("the resampler", || {
                FftFixedIn::<f32>::new(in_rate as usize, SAMPLE_RATE as usize, RESAMPLE_CHUNK, 2, 2)
                    .map_err(|e| DecodeError::Unsupported(format!("resampler: {e}")))
            })?)
        };
        let skip = resampler.as_ref().map_or(0, |r| r.output_delay());
        Ok(Self {
            track_id,
            format,
            decoder,
            in_rate,
            resampler,
            pending: [Vec::new(), Vec::new()],
            out: VecDeque::new(),
            frames_in: 0,
            frames_out: 0,
            skip,
            expected_frames: n_frames.map(|n| out_frames(n, in_rate)),
            max_frames,
            max_seconds,
            decode_errors: 0,
            eof: false,
            flushed: false,
            failed: false,
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

    /// Reads up to `max` frames; `None` at the end. After an error, every later call fails.
    pub fn read(&mut self, max: usize) -> Result<Option<Vec<Frame>>, DecodeError> {
        if self.failed {
            return Err(DecodeError::Corrupt(
                "reading stopped at an earlier error".into(),
            ));
        }
        if let Err(e) = self.fill(max) {
            self.failed = true;
            return Err(e);
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

    /// Decodes until `max` frames are ready or the stream has ended.
    fn fill(&mut self, max: usize) -> Result<(), DecodeError> {
        while self.out.len() < max && !self.flushed {
            if self.eof {
                self.flush()?;
            } else {
                self.decode_packet()?;
            }
        }
        Ok(())
    }

    /// Reads and decodes the next packet into the sample buffer.
    fn next_packet(&mut self) -> Result<Packet, DecodeError> {
        let packet = match self.format.next_packet() {
            Ok(p) => p,
            Err(SymError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Ok(Packet::End);
            }
            Err(SymError::ResetRequired) => return Ok(Packet::End),
            Err(e) => return Err(sym_err(e)),
        };
        if packet.track_id() != self.track_id {
            return Ok(Packet::Skip);
        }
        let decoded = match self.decoder.decode(&packet) {
            Ok(d) => d,
            Err(SymError::DecodeError(msg)) => {
                self.decode_errors += 1;
                if self.decode_errors > MAX_DECODE_ERRORS {
                    return Err(DecodeError::Corrupt(msg.to_string()));
                }
                return Ok(Packet::Skip);
            }
            Err(SymError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Ok(Packet::End);
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
            return Ok(Packet::Skip);
        }
        let buf = match &mut self.sample_buf {
            Some(b) if b.capacity() >= decoded.capacity() * channels => b,
            slot => slot.insert(SampleBuffer::<f32>::new(decoded.capacity() as u64, spec)),
        };
        buf.copy_interleaved_ref(decoded);
        Ok(Packet::Audio { frames, channels })
    }

    fn decode_packet(&mut self) -> Result<(), DecodeError> {
        let (frames, channels) = match contain("the audio decoder", || self.next_packet())? {
            Packet::End => {
                self.eof = true;
                return Ok(());
            }
            Packet::Skip => return Ok(()),
            Packet::Audio { frames, channels } => (frames, channels),
        };
        let samples = self
            .sample_buf
            .as_ref()
            .and_then(|b| b.samples().get(..frames * channels))
            .ok_or_else(|| DecodeError::Corrupt("the decoder gave fewer samples".into()))?;
        self.frames_in += frames as u64;
        if self.frames_in > self.max_frames {
            return Err(DecodeError::TooLong {
                max_seconds: self.max_seconds,
            });
        }
        for frame in samples.chunks_exact(channels) {
            let [l, r] = fold_to_stereo(frame);
            let (l, r) = if l.is_finite() && r.is_finite() {
                (
                    l.clamp(-MAX_SAMPLE, MAX_SAMPLE),
                    r.clamp(-MAX_SAMPLE, MAX_SAMPLE),
                )
            } else {
                (0.0, 0.0)
            };
            self.pending[0].push(l);
            self.pending[1].push(r);
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
                let out = contain("the resampler", || {
                    rs.process(&chunk, None)
                        .map_err(|e| DecodeError::Corrupt(format!("resampling: {e}")))
                })?;
                self.pending[0].drain(..need);
                self.pending[1].drain(..need);
                out
            } else if last && !self.pending[0].is_empty() {
                let chunk = [&self.pending[0][..], &self.pending[1][..]];
                let out = contain("the resampler", || {
                    rs.process_partial(Some(&chunk), None)
                        .map_err(|e| DecodeError::Corrupt(format!("resampling: {e}")))
                })?;
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
            if target.saturating_add(tolerance) < expected {
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
                let out = contain("the resampler", || {
                    rs.process_partial(None::<&[Vec<f32>]>, None)
                        .map_err(|e| DecodeError::Corrupt(format!("resampling: {e}")))
                })?;
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

/// Frames after resampling `frames` at `rate` to 44.1 kHz (saturating: containers may
/// announce any length).
fn out_frames(frames: u64, rate: u32) -> u64 {
    let n = (u128::from(frames) * u128::from(SAMPLE_RATE)).div_ceil(u128::from(rate.max(1)));
    u64::try_from(n).unwrap_or(u64::MAX)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A 16-bit WAV of `frames` frames of a quiet ramp.
    fn wav(rate: u32, channels: u16, frames: u32) -> Vec<u8> {
        let spec = hound::WavSpec {
            channels,
            sample_rate: rate,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut out = std::io::Cursor::new(Vec::new());
        let mut w = hound::WavWriter::new(&mut out, spec).unwrap();
        for i in 0..frames * u32::from(channels) {
            w.write_sample((i % 512) as i16).unwrap();
        }
        w.finalize().unwrap();
        out.into_inner()
    }

    fn read_all(r: &mut AudioReader) -> Result<u64, DecodeError> {
        let mut n = 0;
        while let Some(chunk) = r.read(1000)? {
            n += chunk.len() as u64;
        }
        Ok(n)
    }

    #[test]
    fn in_memory_audio_decodes_and_resamples_to_the_announced_length() {
        for (rate, channels, frames) in [(44_100, 2, 3000), (8_000, 1, 800), (48_000, 3, 4800)] {
            let mut r = AudioReader::from_bytes(wav(rate, channels, frames), None, 0).unwrap();
            assert_eq!(r.source_rate(), rate);
            let n = read_all(&mut r).unwrap();
            assert_eq!(n, out_frames(u64::from(frames), rate), "{rate} Hz");
            assert_eq!(r.total_frames(), Some(n));
            assert!(r.read(10).unwrap().is_none());
        }
    }

    #[test]
    fn empty_and_unrecognised_bytes_are_typed_errors() {
        assert!(matches!(
            AudioReader::from_bytes(Vec::new(), None, 0),
            Err(DecodeError::Empty)
        ));
        assert!(matches!(
            AudioReader::from_bytes(b"definitely not audio".to_vec(), Some("wav"), 0),
            Err(DecodeError::Unsupported(_))
        ));
    }

    /// Found by `cargo fuzz run decode`: a 96 kHz float WAV with samples near `f32::MAX`
    /// overflowed the resampler's FFT to NaN, and rubato panicked on it.
    #[test]
    fn fuzz_regression_huge_float_samples() {
        let input = include_bytes!("../../tests/fixtures/fuzz/decode/huge-float-samples.wav");
        let mut r = AudioReader::from_bytes(input.to_vec(), None, 0).unwrap();
        let mut frames = 0;
        while let Some(chunk) = r.read(1000).unwrap() {
            assert!(chunk.iter().flatten().all(|s| s.is_finite()));
            frames += chunk.len() as u64;
        }
        assert_eq!(r.total_frames(), Some(frames));
    }

    /// 2000 stereo float frames cycling through `f32::MAX`, `-f32::MAX`, NaN, infinity and
    /// 0.5 (five samples, so every frame holds a different pair).
    fn hostile_float_wav(rate: u32) -> Vec<u8> {
        let spec = hound::WavSpec {
            channels: 2,
            sample_rate: rate,
            bits_per_sample: 32,
            sample_format: hound::SampleFormat::Float,
        };
        let mut out = std::io::Cursor::new(Vec::new());
        let mut w = hound::WavWriter::new(&mut out, spec).unwrap();
        for i in 0..4000 {
            let s = [f32::MAX, -f32::MAX, f32::NAN, f32::INFINITY, 0.5][i % 5];
            w.write_sample(s).unwrap();
        }
        w.finalize().unwrap();
        out.into_inner()
    }

    #[test]
    fn out_of_range_samples_are_clipped_or_silenced() {
        // At 44.1 kHz nothing is resampled: each frame comes out exactly as clipped.
        let mut r = AudioReader::from_bytes(hostile_float_wav(44_100), None, 0).unwrap();
        let mut frames = Vec::new();
        while let Some(chunk) = r.read(1000).unwrap() {
            frames.extend(chunk);
        }
        assert_eq!(frames.len(), 2000);
        let m = MAX_SAMPLE;
        // A frame with a non-finite sample is silenced whole.
        let cycle = [[m, -m], [0.0, 0.0], [0.5, m], [0.0, 0.0], [0.0, 0.0]];
        for (i, f) in frames.iter().enumerate() {
            assert_eq!(*f, cycle[i % 5], "frame {i}");
        }
    }

    #[test]
    fn clipped_samples_stay_finite_through_the_resampler() {
        // At 96 kHz the clipped samples go through the resampler: every output frame is
        // finite and stays near the clipping level, where `f32::MAX` would overflow.
        let mut r = AudioReader::from_bytes(hostile_float_wav(96_000), None, 0).unwrap();
        let mut n = 0;
        while let Some(chunk) = r.read(1000).unwrap() {
            for s in chunk.iter().flatten() {
                assert!(s.is_finite() && s.abs() <= 4.0 * MAX_SAMPLE, "{s}");
            }
            n += chunk.len() as u64;
        }
        assert_eq!(n, out_frames(2000, 96_000));
        assert_eq!(r.total_frames(), Some(n));
    }

    /// Found by `cargo fuzz run decode`: a Matroska header with a zero EBML length byte made
    /// symphonia's demuxer panic ("attempt to subtract with overflow", with overflow checks
    /// on, as in debug builds); the panic is contained and reported as corrupt audio.
    #[test]
    fn fuzz_regression_ebml_vint_overflow() {
        let input = include_bytes!("../../tests/fixtures/fuzz/decode/ebml-vint-overflow.mka");
        let err = AudioReader::from_bytes(input.to_vec(), None, 0).unwrap_err();
        assert!(
            matches!(err, DecodeError::Corrupt(_) | DecodeError::Unsupported(_)),
            "{err}"
        );
    }

    #[test]
    fn a_panic_inside_a_decoder_is_contained() {
        let err = contain::<()>("the test decoder", || panic!("boom")).unwrap_err();
        assert_eq!(err.code(), "audio_corrupt");
        assert!(err.to_string().contains("boom"), "{err}");
    }

    #[test]
    fn announced_lengths_saturate() {
        assert_eq!(out_frames(u64::MAX, 1000), u64::MAX);
        assert_eq!(out_frames(1000, 1000), 44_100);
        assert_eq!(out_frames(1, 48_000), 1);
    }

    #[test]
    fn the_duration_cap_applies_to_in_memory_audio() {
        let err = AudioReader::from_bytes(wav(8_000, 1, 16_000), None, 1).unwrap_err();
        assert_eq!(err.code(), "audio_too_long");
    }
}
