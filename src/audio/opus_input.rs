//! Opus input: a symphonia decoder backed by libopus (symphonia demuxes Ogg and Matroska/WebM
//! Opus but has no Opus decoder of its own). It drops the stream's pre-skip and applies the
//! demuxer's end trimming, so a file decodes to exactly the samples that were encoded. A
//! stream in Ogg whose timestamps jump (a page lost to damage) is corrupt: decoding on would
//! shift everything after the gap against the source.
//! [`codecs`] is symphonia's registry with it added.

use std::sync::{LazyLock, Mutex, PoisonError};

use symphonia::core::audio::{
    AsAudioBufferRef, AudioBuffer, AudioBufferRef, Channels, Signal, SignalSpec,
};
use symphonia::core::codecs::{
    CODEC_TYPE_OPUS, CodecDescriptor, CodecParameters, CodecRegistry, Decoder, DecoderOptions,
    FinalizeResult,
};
use symphonia::core::errors::{Error, Result};
use symphonia::core::formats::Packet;
use symphonia::core::support_codec;
use symphonia::core::units::TimeBase;

/// Opus decodes at 48 kHz.
const RATE: u32 = 48_000;
/// The longest Opus packet: 120 ms at 48 kHz.
const MAX_FRAMES: usize = 5760;

/// symphonia's decoders plus [`OpusDecoder`].
pub fn codecs() -> &'static CodecRegistry {
    static REGISTRY: LazyLock<CodecRegistry> = LazyLock::new(|| {
        let mut registry = CodecRegistry::new();
        symphonia::default::register_enabled_codecs(&mut registry);
        registry.register_all::<OpusDecoder>();
        registry
    });
    &REGISTRY
}

/// A mono or stereo Opus stream (channel mapping family 0; multichannel streams are refused).
pub struct OpusDecoder {
    params: CodecParameters,
    /// libopus's state is `Send` but not `Sync`, which symphonia's decoders must be.
    decoder: Mutex<opus::Decoder>,
    channels: usize,
    pcm: Vec<f32>,
    buf: AudioBuffer<f32>,
    /// Samples of the pre-skip still to drop.
    skip: usize,
    /// Where the next packet starts, when the demuxer's timestamps count samples at 48 kHz
    /// (Ogg); `None` before the first packet and in other containers.
    next_ts: Option<u64>,
    /// Whether timestamps are checked for gaps (they count samples at 48 kHz).
    check_gaps: bool,
}

impl std::fmt::Debug for OpusDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpusDecoder")
            .field("channels", &self.channels)
            .field("skip", &self.skip)
            .finish_non_exhaustive()
    }
}

impl Decoder for OpusDecoder {
    fn try_new(params: &CodecParameters, _options: &DecoderOptions) -> Result<Self> {
        let channels = params.channels.map_or(2, Channels::count);
        let (layout, opus_channels) = match channels {
            1 => (Channels::FRONT_LEFT, opus::Channels::Mono),
            2 => (
                Channels::FRONT_LEFT | Channels::FRONT_RIGHT,
                opus::Channels::Stereo,
            ),
            _ => return Err(Error::Unsupported("opus: more than two channels")),
        };
        let decoder = opus::Decoder::new(RATE, opus_channels)
            .map_err(|_| Error::Unsupported("opus: the decoder cannot start"))?;
        Ok(Self {
            params: params.clone(),
            decoder: Mutex::new(decoder),
            channels,
            pcm: vec![0.0; MAX_FRAMES * channels],
            buf: AudioBuffer::new(MAX_FRAMES as u64, SignalSpec::new(RATE, layout)),
            skip: params.delay.unwrap_or(0) as usize,
            next_ts: None,
            check_gaps: params.time_base == Some(TimeBase::new(1, RATE)),
        })
    }

    fn supported_codecs() -> &'static [CodecDescriptor] {
        &[support_codec!(CODEC_TYPE_OPUS, "opus", "Opus (libopus)")]
    }

    fn reset(&mut self) {
        // A seek: the decoder state starts again, the pre-skip does not.
        self.next_ts = None;
        let _ = self
            .decoder
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .reset_state();
    }

    fn codec_params(&self) -> &CodecParameters {
        &self.params
    }

    fn decode(&mut self, packet: &Packet) -> Result<AudioBufferRef<'_>> {
        if self.check_gaps {
            if let Some(expected) = self.next_ts
                && packet.ts > expected
            {
                let ms = (packet.ts - expected) * 1000 / u64::from(RATE);
                return Err(Error::IoError(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("opus: {ms} ms of the stream are missing (a damaged or lost page)"),
                )));
            }
            self.next_ts = Some(packet.ts + packet.dur);
        }
        let n = self
            .decoder
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .decode_float(&packet.data, &mut self.pcm, false)
            .map_err(|_| Error::DecodeError("opus: invalid packet"))?;
        self.buf.clear();
        self.buf.render_reserved(Some(n));
        for ch in 0..self.channels {
            let plane = self.buf.chan_mut(ch);
            for (i, s) in plane.iter_mut().enumerate() {
                *s = self.pcm[i * self.channels + ch];
            }
        }
        let skip = self.skip.min(n);
        self.skip -= skip;
        self.buf
            .trim(packet.trim_start as usize + skip, packet.trim_end as usize);
        Ok(self.buf.as_audio_buffer_ref())
    }

    fn finalize(&mut self) -> FinalizeResult {
        FinalizeResult::default()
    }

    fn last_decoded(&self) -> AudioBufferRef<'_> {
        self.buf.as_audio_buffer_ref()
    }
}
