//! Writing stems, streamed block by block (constant memory whatever the length): WAV (16-bit
//! or 24-bit PCM, 32-bit float; hound), FLAC (16 or 24 bits; flac-codec), MP3 (LAME through
//! mp3lame-encoder, constant bit rate, with the LAME tag that tells decoders the encoder's
//! delay and padding), Ogg Opus (libopus, see [`super::ogg_opus`]; always 48 kHz), at
//! 44.1 kHz (the separation's rate), 48 kHz or the source's rate (rubato, see
//! [`super::resample`]).

use std::fs::File;
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::path::Path;

use super::decode::{Frame, SAMPLE_RATE};
use super::ogg_opus::OggOpusWriter;
use super::resample::Resample;
use crate::task::OutputRate;

/// The `output_format` values.
pub const FORMATS: &[&str] = &[
    "wav", "wav16", "wav24", "wav32f", "flac", "flac16", "flac24", "mp3", "opus",
];
/// MP3 bit rates in kbps (`bitrate`); the default is the last.
pub const MP3_BITRATES: &[u32] = &[128, 160, 192, 224, 256, 320];
/// Opus bit rates in kbps (`bitrate`, stereo); the default is [`OPUS_DEFAULT_KBPS`].
pub const OPUS_BITRATES: &[u32] = &[64, 96, 128, 160, 192, 256];
/// The Opus bit rate when none is asked for (transparent for most music in stereo).
pub const OPUS_DEFAULT_KBPS: u32 = 160;
/// Output sample rates besides the source's own.
pub const SAMPLE_RATES: &[u32] = &[44_100, 48_000];
/// The range of source rates a stem can be written at (`sample_rate: "source"`).
pub const SOURCE_RATES: std::ops::RangeInclusive<u32> = 8_000..=192_000;

/// How stems are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// 16-bit PCM WAV (`wav`, `wav16`; the default).
    Wav16,
    /// 24-bit PCM WAV (`wav24`).
    Wav24,
    /// 32-bit float WAV (`wav32f`).
    Wav32f,
    /// 16-bit FLAC (`flac`, `flac16`).
    Flac16,
    /// 24-bit FLAC (`flac24`).
    Flac24,
    /// MP3, constant bit rate in kbps (`mp3`, `bitrate`).
    Mp3 {
        /// Bit rate in kbps, one of [`MP3_BITRATES`].
        kbps: u32,
    },
    /// Ogg Opus, constrained variable bit rate in kbps (`opus`, `bitrate`), always 48 kHz.
    Opus {
        /// Bit rate in kbps, one of [`OPUS_BITRATES`].
        kbps: u32,
    },
}

/// Why a format request cannot be met.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FormatError {
    /// The request field at fault (`output_format`, `bitrate`, `sample_rate`).
    pub field: &'static str,
    /// Stable code (`unsupported_format`, `out_of_range`).
    pub code: &'static str,
    /// For humans.
    pub message: String,
}

impl Encoding {
    /// Parses `output_format` and `bitrate` (kbps; only for lossy formats).
    pub fn parse(format: Option<&str>, bitrate: Option<u32>) -> Result<Self, FormatError> {
        let enc = match format.unwrap_or("wav") {
            "wav" | "wav16" => Self::Wav16,
            "wav24" => Self::Wav24,
            "wav32f" => Self::Wav32f,
            "flac" | "flac16" => Self::Flac16,
            "flac24" => Self::Flac24,
            "mp3" => {
                let kbps = lossy_bitrate(
                    "mp3",
                    MP3_BITRATES,
                    MP3_BITRATES[MP3_BITRATES.len() - 1],
                    bitrate,
                )?;
                return Ok(Self::Mp3 { kbps });
            }
            "opus" => {
                let kbps = lossy_bitrate("opus", OPUS_BITRATES, OPUS_DEFAULT_KBPS, bitrate)?;
                return Ok(Self::Opus { kbps });
            }
            other => {
                return Err(FormatError {
                    field: "output_format",
                    code: "unsupported_format",
                    message: format!(
                        "output_format must be one of {}, not {other:?}",
                        FORMATS.join(", ")
                    ),
                });
            }
        };
        if bitrate.is_some() {
            return Err(FormatError {
                field: "bitrate",
                code: "unsupported_format",
                message: format!(
                    "bitrate applies to mp3 and opus only, not to {}",
                    enc.name()
                ),
            });
        }
        Ok(enc)
    }

    /// The canonical name (`wav16`, `flac24`, `mp3`...).
    pub fn name(self) -> &'static str {
        match self {
            Self::Wav16 => "wav16",
            Self::Wav24 => "wav24",
            Self::Wav32f => "wav32f",
            Self::Flac16 => "flac16",
            Self::Flac24 => "flac24",
            Self::Mp3 { .. } => "mp3",
            Self::Opus { .. } => "opus",
        }
    }

    /// The bit rate of a lossy encoding, kbps.
    pub fn kbps(self) -> Option<u32> {
        match self {
            Self::Mp3 { kbps } | Self::Opus { kbps } => Some(kbps),
            _ => None,
        }
    }

    /// Refuses an output rate the encoding cannot be written at: Opus is 48 kHz only, so
    /// with `opus` a `sample_rate` other than 48000 (`"source"` included) is an error.
    pub fn check_rate(self, requested: Option<OutputRate>) -> Result<(), FormatError> {
        match (self, requested) {
            (Self::Opus { .. }, Some(r)) if r != OutputRate::Hz(super::ogg_opus::RATE) => {
                Err(FormatError {
                    field: "sample_rate",
                    code: "unsupported_format",
                    message: "opus stems are always 48000 Hz: give sample_rate 48000 or none"
                        .into(),
                })
            }
            _ => Ok(()),
        }
    }

    /// The file extension.
    pub fn extension(self) -> &'static str {
        match self {
            Self::Wav16 | Self::Wav24 | Self::Wav32f => "wav",
            Self::Flac16 | Self::Flac24 => "flac",
            Self::Mp3 { .. } => "mp3",
            Self::Opus { .. } => "opus",
        }
    }

    /// The media type a stem file is served with.
    pub fn media_type(self) -> &'static str {
        media_type(self.extension()).expect("every encoding's extension has a media type")
    }

    /// The most bytes a stem of `frames` frames at `rate` can take (a bound for
    /// `MAX_OUTPUT_BYTES`: exact for WAV, FLAC's verbatim worst case, MP3's bit rate).
    pub fn max_file_bytes(self, frames: u64, rate: u32) -> u64 {
        let header = 8 << 10;
        match self {
            Self::Wav16 => frames.saturating_mul(4) + 44,
            Self::Wav24 => frames.saturating_mul(6) + 44,
            Self::Wav32f => frames.saturating_mul(8) + 44,
            // Verbatim subframes plus frame headers and footers (a few bytes per block).
            Self::Flac16 => frames.saturating_mul(4).saturating_mul(101) / 100 + header,
            Self::Flac24 => frames.saturating_mul(6).saturating_mul(101) / 100 + header,
            Self::Mp3 { kbps } => {
                // A frame of 1152 samples at least, padding and the LAME tag frame.
                let seconds = (frames + 2 * 1152) as f64 / f64::from(rate.max(1));
                (seconds * f64::from(kbps) * 1000.0 / 8.0) as u64 + header
            }
            Self::Opus { kbps } => {
                // Constrained VBR stays near its rate; a quarter more covers its reservoir,
                // plus the look-ahead frames and Ogg's page headers and lacing (50 packets
                // a second).
                let seconds = (frames + 2 * 960) as f64 / f64::from(rate.max(1));
                (seconds * (f64::from(kbps) * 1000.0 / 8.0 * 1.25 + 256.0)) as u64 + header
            }
        }
    }
}

/// The media type of a stem file's extension (`wav`, `flac`, `mp3`, `opus`).
pub fn media_type(extension: &str) -> Option<&'static str> {
    match extension {
        "wav" => Some("audio/wav"),
        "flac" => Some("audio/flac"),
        "mp3" => Some("audio/mpeg"),
        "opus" => Some("audio/ogg; codecs=opus"),
        _ => None,
    }
}

/// A lossy format's bit rate: the one asked for when it is one of `allowed`, else `default`.
fn lossy_bitrate(
    format: &str,
    allowed: &[u32],
    default: u32,
    bitrate: Option<u32>,
) -> Result<u32, FormatError> {
    let kbps = bitrate.unwrap_or(default);
    if !allowed.contains(&kbps) {
        return Err(FormatError {
            field: "bitrate",
            code: "out_of_range",
            message: format!("{format} bitrate must be one of {allowed:?} kbps, not {kbps}"),
        });
    }
    Ok(kbps)
}

/// The rate stems are written at: 48 kHz for Opus, else the one asked for (44100 or
/// 48000), the source's own (kept within [`SOURCE_RATES`]), or 44.1 kHz.
pub fn output_rate(encoding: Encoding, requested: Option<OutputRate>, source_rate: u32) -> u32 {
    if let Encoding::Opus { .. } = encoding {
        return super::ogg_opus::RATE;
    }
    match requested {
        Some(OutputRate::Source(_)) => {
            source_rate.clamp(*SOURCE_RATES.start(), *SOURCE_RATES.end())
        }
        Some(OutputRate::Hz(r)) => r,
        None => SAMPLE_RATE,
    }
}

/// A stem being written.
pub struct StemWriter {
    sink: Sink,
    resample: Option<Resample>,
    buf: Vec<Frame>,
    frames: u64,
}

enum Sink {
    Wav(hound::WavWriter<BufWriter<File>>, Encoding),
    Flac(
        Box<flac_codec::encode::FlacSampleWriter<BufWriter<File>>>,
        u32,
        Vec<i32>,
    ),
    Mp3 {
        encoder: Box<mp3lame_encoder::Encoder>,
        file: BufWriter<File>,
        pcm: Vec<i16>,
        out: Vec<u8>,
    },
    Opus(Box<OggOpusWriter>),
}

impl std::fmt::Debug for StemWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StemWriter")
            .field("frames", &self.frames)
            .field("resample", &self.resample)
            .finish_non_exhaustive()
    }
}

fn to_i16(s: f32) -> i16 {
    let s = if s.is_finite() { s } else { 0.0 };
    (s.clamp(-1.0, 1.0) * 32767.0).round() as i16
}

fn to_i24(s: f32) -> i32 {
    let s = if s.is_finite() { s } else { 0.0 };
    (s.clamp(-1.0, 1.0) * 8_388_607.0).round() as i32
}

impl StemWriter {
    /// Creates `path` for stems of `encoding` at `rate` Hz (frames come in at 44.1 kHz).
    pub fn create(path: &Path, encoding: Encoding, rate: u32) -> io::Result<Self> {
        let resample = (rate != SAMPLE_RATE)
            .then(|| Resample::new(SAMPLE_RATE, rate))
            .transpose()
            .map_err(io::Error::other)?;
        let sink = match encoding {
            Encoding::Wav16 | Encoding::Wav24 | Encoding::Wav32f => {
                let (bits, sample_format) = match encoding {
                    Encoding::Wav16 => (16, hound::SampleFormat::Int),
                    Encoding::Wav24 => (24, hound::SampleFormat::Int),
                    _ => (32, hound::SampleFormat::Float),
                };
                let spec = hound::WavSpec {
                    channels: 2,
                    sample_rate: rate,
                    bits_per_sample: bits,
                    sample_format,
                };
                Sink::Wav(
                    hound::WavWriter::create(path, spec).map_err(io::Error::other)?,
                    encoding,
                )
            }
            Encoding::Flac16 | Encoding::Flac24 => {
                let bits = if encoding == Encoding::Flac16 { 16 } else { 24 };
                let w = flac_codec::encode::FlacSampleWriter::create(
                    path,
                    flac_codec::encode::Options::default(),
                    rate,
                    bits,
                    2,
                    None,
                )
                .map_err(io::Error::other)?;
                Sink::Flac(Box::new(w), bits, Vec::new())
            }
            Encoding::Mp3 { kbps } => {
                let bitrate = match kbps {
                    128 => mp3lame_encoder::Bitrate::Kbps128,
                    160 => mp3lame_encoder::Bitrate::Kbps160,
                    192 => mp3lame_encoder::Bitrate::Kbps192,
                    224 => mp3lame_encoder::Bitrate::Kbps224,
                    256 => mp3lame_encoder::Bitrate::Kbps256,
                    _ => mp3lame_encoder::Bitrate::Kbps320,
                };
                let lame =
                    |e: mp3lame_encoder::BuildError| io::Error::other(format!("LAME: {e:?}"));
                let mut b = mp3lame_encoder::Builder::new()
                    .ok_or_else(|| io::Error::other("LAME: cannot allocate an encoder"))?;
                b.set_num_channels(2).map_err(lame)?;
                b.set_sample_rate(rate).map_err(lame)?;
                b.set_brate(bitrate).map_err(lame)?;
                b.set_quality(mp3lame_encoder::Quality::NearBest)
                    .map_err(lame)?;
                b.set_to_write_vbr_tag(true).map_err(lame)?;
                Sink::Mp3 {
                    encoder: Box::new(b.build().map_err(lame)?),
                    file: BufWriter::new(File::create(path)?),
                    pcm: Vec::new(),
                    out: Vec::new(),
                }
            }
            Encoding::Opus { kbps } => {
                if rate != super::ogg_opus::RATE {
                    return Err(io::Error::other(format!(
                        "opus is 48000 Hz only, not {rate}"
                    )));
                }
                Sink::Opus(Box::new(OggOpusWriter::create(path, kbps)?))
            }
        };
        Ok(Self {
            sink,
            resample,
            buf: Vec::new(),
            frames: 0,
        })
    }

    /// Appends frames (44.1 kHz).
    pub fn write(&mut self, frames: &[Frame]) -> io::Result<()> {
        match self.resample.as_mut() {
            None => self.sink.write(frames)?,
            Some(r) => {
                self.buf.clear();
                r.push(frames, &mut self.buf).map_err(io::Error::other)?;
                self.sink.write(&self.buf)?;
            }
        }
        self.frames += frames.len() as u64;
        Ok(())
    }

    /// Completes the file; returns the number of (44.1 kHz) frames written.
    pub fn finish(mut self) -> io::Result<u64> {
        if let Some(r) = self.resample.as_mut() {
            self.buf.clear();
            r.finish(&mut self.buf).map_err(io::Error::other)?;
            self.sink.write(&self.buf)?;
        }
        self.sink.finish()?;
        Ok(self.frames)
    }
}

impl Sink {
    fn write(&mut self, frames: &[Frame]) -> io::Result<()> {
        match self {
            Sink::Wav(w, enc) => {
                for s in frames.iter().flatten() {
                    match enc {
                        Encoding::Wav16 => w.write_sample(to_i16(*s)),
                        Encoding::Wav24 => w.write_sample(to_i24(*s)),
                        _ => w.write_sample(if s.is_finite() { *s } else { 0.0 }),
                    }
                    .map_err(io::Error::other)?;
                }
            }
            Sink::Flac(w, bits, samples) => {
                samples.clear();
                samples.extend(frames.iter().flatten().map(|s| match bits {
                    16 => i32::from(to_i16(*s)),
                    _ => to_i24(*s),
                }));
                w.write(samples).map_err(io::Error::other)?;
            }
            Sink::Mp3 {
                encoder,
                file,
                pcm,
                out,
            } => {
                pcm.clear();
                pcm.extend(frames.iter().flatten().map(|s| to_i16(*s)));
                out.clear();
                out.reserve(mp3lame_encoder::max_required_buffer_size(frames.len()));
                encoder
                    .encode_to_vec(mp3lame_encoder::InterleavedPcm(pcm.as_slice()), out)
                    .map_err(|e| io::Error::other(format!("LAME: {e:?}")))?;
                file.write_all(out)?;
            }
            Sink::Opus(w) => w.write(frames)?,
        }
        Ok(())
    }

    fn finish(self) -> io::Result<()> {
        match self {
            Sink::Wav(w, _) => w.finalize().map_err(io::Error::other),
            Sink::Flac(w, ..) => w.finalize().map_err(io::Error::other),
            Sink::Mp3 {
                mut encoder,
                mut file,
                mut out,
                ..
            } => {
                out.clear();
                out.reserve(7200);
                encoder
                    .flush_to_vec::<mp3lame_encoder::FlushGap>(&mut out)
                    .map_err(|e| io::Error::other(format!("LAME: {e:?}")))?;
                file.write_all(&out)?;
                // The first frame was reserved for the LAME tag (delay and padding, so that
                // decoders can give back exactly the samples that went in).
                out.clear();
                out.reserve(encoder.lame_tag_size().max(1));
                if encoder.lame_tag_encode_to_vec(&mut out).is_some() {
                    file.seek(SeekFrom::Start(0))?;
                    file.write_all(&out)?;
                }
                file.flush()
            }
            Sink::Opus(w) => w.finish(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::SourceRate;

    #[test]
    fn formats_and_bitrates_are_checked() {
        assert_eq!(Encoding::parse(None, None), Ok(Encoding::Wav16));
        assert_eq!(Encoding::parse(Some("flac"), None), Ok(Encoding::Flac16));
        assert_eq!(
            Encoding::parse(Some("mp3"), None),
            Ok(Encoding::Mp3 { kbps: 320 })
        );
        assert_eq!(
            Encoding::parse(Some("mp3"), Some(192)),
            Ok(Encoding::Mp3 { kbps: 192 })
        );
        let e = Encoding::parse(Some("mp3"), Some(100)).unwrap_err();
        assert_eq!((e.field, e.code), ("bitrate", "out_of_range"));
        let e = Encoding::parse(Some("flac"), Some(320)).unwrap_err();
        assert_eq!((e.field, e.code), ("bitrate", "unsupported_format"));
        let e = Encoding::parse(Some("aiff"), None).unwrap_err();
        assert_eq!((e.field, e.code), ("output_format", "unsupported_format"));
        for f in FORMATS {
            assert!(Encoding::parse(Some(f), None).is_ok(), "{f}");
        }
        assert_eq!(output_rate(Encoding::Wav16, None, 96_000), 44_100);
        assert_eq!(
            output_rate(Encoding::Flac16, Some(OutputRate::Hz(48_000)), 22_050),
            48_000
        );
        let source = Some(OutputRate::Source(SourceRate::Source));
        assert_eq!(output_rate(Encoding::Wav16, source, 22_050), 22_050);
        assert_eq!(output_rate(Encoding::Wav16, source, 4_000), 8_000);
        let json: OutputRate = serde_json::from_str("\"source\"").unwrap();
        assert_eq!(Some(json), source);
        let json: OutputRate = serde_json::from_str("48000").unwrap();
        assert_eq!(json, OutputRate::Hz(48_000));
    }

    /// 1.5 s of two tones (one per channel) with a slow sweep, written in blocks of uneven
    /// size.
    fn write(path: &Path, encoding: Encoding, rate: u32) -> u64 {
        let n = 66_150;
        let frames: Vec<Frame> = (0..n)
            .map(|i| {
                let t = i as f32 / 44_100.0;
                let l = (2.0 * std::f32::consts::PI * (440.0 + 200.0 * t) * t).sin() * 0.5;
                let r = (2.0 * std::f32::consts::PI * 1234.5 * t).sin() * 0.3;
                [l, r]
            })
            .collect();
        let mut w = StemWriter::create(path, encoding, rate).unwrap();
        for block in frames.chunks(4321) {
            w.write(block).unwrap();
        }
        w.finish().unwrap()
    }

    /// What the service's reader makes of a file: its rate, and its frames at 44.1 kHz.
    fn read(path: &Path) -> (u32, Vec<Frame>) {
        let mut r = crate::audio::AudioReader::open(path, 0).unwrap();
        let mut out = Vec::new();
        while let Some(block) = r.read(8192).unwrap() {
            out.extend(block);
        }
        (r.source_rate(), out)
    }

    fn snr_db(reference: &[Frame], test: &[Frame]) -> f64 {
        let (mut sig, mut err) = (0.0f64, 0.0f64);
        for (a, b) in reference.iter().zip(test) {
            for c in 0..2 {
                sig += f64::from(a[c]).powi(2);
                err += f64::from(a[c] - b[c]).powi(2);
            }
        }
        10.0 * (sig / err.max(1e-30)).log10()
    }

    /// Every format decodes back (symphonia, through the service's own reader) at the rate
    /// it was written at, with the length of the input; lossless formats give exactly the
    /// WAV path's samples, MP3 stays above 20 dB SNR against it (aligned by its LAME tag).
    #[test]
    fn every_format_decodes_back_to_the_wav_path() {
        let dir = tempfile::tempdir().unwrap();
        for rate in [44_100, 48_000] {
            let file = |name: &str| dir.path().join(format!("{name}-{rate}"));
            assert_eq!(write(&file("wav16.wav"), Encoding::Wav16, rate), 66_150);
            write(&file("wav24.wav"), Encoding::Wav24, rate);
            write(&file("flac16.flac"), Encoding::Flac16, rate);
            write(&file("flac24.flac"), Encoding::Flac24, rate);
            write(&file("mp3.mp3"), Encoding::Mp3 { kbps: 192 }, rate);
            let (r16, wav16) = read(&file("wav16.wav"));
            let (r24, wav24) = read(&file("wav24.wav"));
            assert_eq!((r16, r24), (rate, rate));
            assert_eq!(wav16.len(), 66_150, "{rate}: the input's length");
            for (name, reference) in [("flac16.flac", &wav16), ("flac24.flac", &wav24)] {
                let (r, frames) = read(&file(name));
                assert_eq!(r, rate, "{name}");
                assert!(
                    frames == *reference,
                    "{name} at {rate} Hz differs from the WAV path"
                );
            }
            let (r, mp3) = read(&file("mp3.mp3"));
            assert_eq!(r, rate);
            assert!(
                mp3.len().abs_diff(66_150) <= 1152,
                "{rate}: mp3 length {}",
                mp3.len()
            );
            let snr = snr_db(&wav16, &mp3);
            assert!(snr > 20.0, "{rate}: mp3 SNR {snr:.1} dB");
            // Sizes: FLAC below its bound, MP3 about its bit rate.
            for (name, enc) in [
                ("flac16.flac", Encoding::Flac16),
                ("mp3.mp3", Encoding::Mp3 { kbps: 192 }),
            ] {
                let bytes = std::fs::metadata(file(name)).unwrap().len();
                let at_rate = 66_150 * u64::from(rate) / 44_100;
                assert!(
                    bytes <= enc.max_file_bytes(at_rate, rate),
                    "{name}: {bytes}"
                );
            }
        }
    }

    /// An Ogg Opus file decoded by libopus: its rate, pre-skip, and its samples with the
    /// pre-skip dropped and the length cut at the last granule position.
    fn read_opus(path: &Path) -> (u32, u16, Vec<Frame>) {
        let mut pages = ogg::PacketReader::new(File::open(path).unwrap());
        let head = pages.read_packet_expected().unwrap();
        assert_eq!(&head.data[..8], b"OpusHead");
        assert_eq!((head.data[8], head.data[9]), (1, 2), "version 1, stereo");
        let pre_skip = u16::from_le_bytes([head.data[10], head.data[11]]);
        let rate = u32::from_le_bytes(head.data[12..16].try_into().unwrap());
        let tags = pages.read_packet_expected().unwrap();
        assert_eq!(&tags.data[..8], b"OpusTags");
        let mut decoder = opus::Decoder::new(48_000, opus::Channels::Stereo).unwrap();
        let mut pcm = vec![0f32; 2 * 5760];
        let (mut out, mut last_granule) = (Vec::new(), 0);
        while let Some(p) = pages.read_packet().unwrap() {
            let n = decoder.decode_float(&p.data, &mut pcm, false).unwrap();
            out.extend(pcm[..2 * n].chunks(2).map(|c| [c[0], c[1]]));
            if p.last_in_page() {
                last_granule = p.absgp_page();
            }
        }
        let end = usize::try_from(last_granule).unwrap();
        assert!(end <= out.len(), "the last granule is within the stream");
        out.truncate(end);
        (rate, pre_skip, out.split_off(usize::from(pre_skip)))
    }

    /// Opus is 48 kHz whatever was asked, exactly as long as the input once the pre-skip
    /// and the end trimming are applied (decoded by libopus from the Ogg pages, and by the
    /// service's reader as an input), and above 20 dB SNR against the 32-bit float WAV path
    /// at 48 kHz; its size stays within the bound `MAX_OUTPUT_BYTES` is checked against.
    #[test]
    fn opus_decodes_back_to_the_wav_path() {
        let dir = tempfile::tempdir().unwrap();
        let (wav, opus) = (dir.path().join("ref.wav"), dir.path().join("stem.opus"));
        let enc = Encoding::Opus { kbps: 128 };
        assert_eq!(output_rate(enc, None, 44_100), 48_000);
        write(&wav, Encoding::Wav32f, 48_000);
        assert_eq!(write(&opus, enc, output_rate(enc, None, 44_100)), 66_150);
        let reference: Vec<Frame> = hound::WavReader::open(&wav)
            .unwrap()
            .into_samples::<f32>()
            .map(Result::unwrap)
            .collect::<Vec<_>>()
            .chunks(2)
            .map(|c| [c[0], c[1]])
            .collect();
        assert_eq!(reference.len(), 72_000);
        let (rate, pre_skip, decoded) = read_opus(&opus);
        assert_eq!(rate, 48_000);
        assert!(pre_skip > 0, "libopus has a look-ahead");
        assert_eq!(decoded.len(), 72_000, "the input's length at 48 kHz");
        let snr = snr_db(&reference, &decoded);
        assert!(snr > 20.0, "opus SNR {snr:.1} dB");
        let bytes = std::fs::metadata(&opus).unwrap().len();
        assert!(bytes <= enc.max_file_bytes(72_000, 48_000), "{bytes}");
        // The service's own reader (symphonia's Ogg demuxer, libopus) gives the same audio
        // back at 44.1 kHz.
        let (r, input) = read(&opus);
        assert_eq!((r, input.len()), (48_000, 66_150));
        let (_, wav_input) = read(&wav);
        let snr = snr_db(&wav_input, &input);
        assert!(snr > 20.0, "opus read back as input: SNR {snr:.1} dB");
        // An empty stem is a valid, empty stream.
        let empty = dir.path().join("empty.opus");
        StemWriter::create(&empty, enc, 48_000)
            .unwrap()
            .finish()
            .unwrap();
        assert!(read_opus(&empty).2.is_empty());
        // Formats and rates.
        assert_eq!(
            Encoding::parse(Some("opus"), None),
            Ok(Encoding::Opus { kbps: 160 })
        );
        let e = Encoding::parse(Some("opus"), Some(320)).unwrap_err();
        assert_eq!((e.field, e.code), ("bitrate", "out_of_range"));
        assert!(enc.check_rate(Some(OutputRate::Hz(48_000))).is_ok());
        assert!(enc.check_rate(None).is_ok());
        let e = enc.check_rate(Some(OutputRate::Hz(44_100))).unwrap_err();
        assert_eq!((e.field, e.code), ("sample_rate", "unsupported_format"));
        assert!(
            enc.check_rate(Some(OutputRate::Source(SourceRate::Source)))
                .is_err()
        );
        assert!(
            Encoding::Mp3 { kbps: 320 }
                .check_rate(Some(OutputRate::Hz(44_100)))
                .is_ok()
        );
        assert_eq!(enc.media_type(), "audio/ogg; codecs=opus");
    }
}
