//! Ogg Opus stems (RFC 7845): libopus (the `opus` crate, built from its bundled sources)
//! encodes 20 ms frames at 48 kHz, constrained VBR at the asked bit rate; the `ogg` crate
//! pages them. The identification header carries the encoder's look-ahead as pre-skip and
//! the last page's granule position the exact length, so decoders give back exactly the
//! samples that went in.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;

use ogg::writing::{PacketWriteEndInfo, PacketWriter};

use super::decode::Frame;

/// Opus's own rate: stems in Opus are always written at 48 kHz.
pub const RATE: u32 = 48_000;
/// Samples per channel in a 20 ms frame at 48 kHz.
const FRAME: usize = 960;
/// The most bytes libopus writes for one frame (its documented bound for a packet).
const MAX_PACKET: usize = 4000;
/// Packets per page at most: a page a second, as opusenc writes them, so that a damaged or
/// cut page costs a second of audio, not the rest of the file.
const PAGE_PACKETS: u64 = 50;
/// The Ogg stream's serial number (one logical stream per file).
const SERIAL: u32 = 0x7576_7231;

/// An Ogg Opus file being written.
pub struct OggOpusWriter {
    encoder: opus::Encoder,
    pages: PacketWriter<'static, BufWriter<File>>,
    /// Interleaved samples not yet encoded (fewer than a frame's).
    pending: Vec<f32>,
    packet: Vec<u8>,
    /// The encoder's look-ahead, in samples at 48 kHz (the header's pre-skip).
    pre_skip: u64,
    /// Samples per channel taken in.
    samples: u64,
    /// Samples per channel encoded (whole frames, the last one padded with silence).
    encoded: u64,
}

impl std::fmt::Debug for OggOpusWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OggOpusWriter")
            .field("pre_skip", &self.pre_skip)
            .field("samples", &self.samples)
            .finish_non_exhaustive()
    }
}

fn opus_error(e: opus::Error) -> io::Error {
    io::Error::other(format!("libopus: {e}"))
}

impl OggOpusWriter {
    /// Creates `path` for a stereo stream at `kbps` (frames come in at 48 kHz).
    pub fn create(path: &Path, kbps: u32) -> io::Result<Self> {
        let mut encoder =
            opus::Encoder::new(RATE, opus::Channels::Stereo, opus::Application::Audio)
                .map_err(opus_error)?;
        let bits = i32::try_from(kbps * 1000).map_err(io::Error::other)?;
        encoder
            .set_bitrate(opus::Bitrate::Bits(bits))
            .map_err(opus_error)?;
        encoder.set_vbr(true).map_err(opus_error)?;
        encoder.set_vbr_constraint(true).map_err(opus_error)?;
        encoder.set_complexity(10).map_err(opus_error)?;
        let pre_skip = u64::try_from(encoder.get_lookahead().map_err(opus_error)?)
            .map_err(io::Error::other)?;
        let mut pages = PacketWriter::new(BufWriter::new(File::create(path)?));
        pages.write_packet(
            head(pre_skip as u16),
            SERIAL,
            PacketWriteEndInfo::EndPage,
            0,
        )?;
        pages.write_packet(tags(), SERIAL, PacketWriteEndInfo::EndPage, 0)?;
        Ok(Self {
            encoder,
            pages,
            pending: Vec::with_capacity(2 * FRAME),
            packet: vec![0; MAX_PACKET],
            pre_skip,
            samples: 0,
            encoded: 0,
        })
    }

    /// Appends frames (48 kHz).
    pub fn write(&mut self, frames: &[Frame]) -> io::Result<()> {
        for [l, r] in frames {
            let clean = |s: f32| {
                if s.is_finite() {
                    s.clamp(-1.0, 1.0)
                } else {
                    0.0
                }
            };
            self.pending.push(clean(*l));
            self.pending.push(clean(*r));
            if self.pending.len() == 2 * FRAME {
                self.encode(PacketWriteEndInfo::NormalPacket, u64::MAX)?;
            }
        }
        self.samples += frames.len() as u64;
        Ok(())
    }

    /// Encodes the pending frame (padded with silence) and pages it; `last_granule` caps
    /// the granule position (the stream's exact end).
    fn encode(&mut self, mut end: PacketWriteEndInfo, last_granule: u64) -> io::Result<()> {
        // Packets 0, 50, 100... end their page. The first audio packet so has a page of its
        // own, and the page holding the end trimming never also holds the stream's start: a
        // reader given one page with both (symphonia's Ogg demuxer) takes the trimmed samples
        // for a negative start instead.
        let packet = self.encoded / FRAME as u64;
        if end == PacketWriteEndInfo::NormalPacket && packet % PAGE_PACKETS == 0 {
            end = PacketWriteEndInfo::EndPage;
        }
        self.pending.resize(2 * FRAME, 0.0);
        let n = self
            .encoder
            .encode_float(&self.pending, &mut self.packet)
            .map_err(opus_error)?;
        self.pending.clear();
        self.encoded += FRAME as u64;
        // The granule position counts decoded samples, the pre-skip included.
        let granule = self.encoded.min(last_granule);
        self.pages
            .write_packet(self.packet[..n].to_vec(), SERIAL, end, granule)
    }

    /// Encodes the last frame and enough silence to push the encoder's look-ahead through,
    /// and completes the file; the last granule position cuts the padding off.
    pub fn finish(mut self) -> io::Result<()> {
        let total = self.samples + self.pre_skip;
        loop {
            let last = self.encoded + FRAME as u64 >= total;
            let end = if last {
                PacketWriteEndInfo::EndStream
            } else {
                PacketWriteEndInfo::NormalPacket
            };
            self.encode(end, total)?;
            if last {
                break;
            }
        }
        let mut file = self.pages.into_inner();
        file.flush()
    }
}

/// The identification header (RFC 7845, 5.1): version 1, stereo, channel mapping family 0.
fn head(pre_skip: u16) -> Vec<u8> {
    let mut h = Vec::with_capacity(19);
    h.extend_from_slice(b"OpusHead");
    h.push(1);
    h.push(2);
    h.extend_from_slice(&pre_skip.to_le_bytes());
    h.extend_from_slice(&RATE.to_le_bytes());
    h.extend_from_slice(&0i16.to_le_bytes());
    h.push(0);
    h
}

/// The comment header (RFC 7845, 5.2): the encoder library as vendor, one comment.
fn tags() -> Vec<u8> {
    let vendor = opus::version();
    let comment = format!("ENCODER=uvr {}", env!("CARGO_PKG_VERSION"));
    let mut t = Vec::with_capacity(24 + vendor.len() + comment.len());
    t.extend_from_slice(b"OpusTags");
    t.extend_from_slice(&(vendor.len() as u32).to_le_bytes());
    t.extend_from_slice(vendor.as_bytes());
    t.extend_from_slice(&1u32.to_le_bytes());
    t.extend_from_slice(&(comment.len() as u32).to_le_bytes());
    t.extend_from_slice(comment.as_bytes());
    t
}
