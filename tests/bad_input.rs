//! Bad input, table-driven: every malformed request and every damaged or hostile audio source
//! gets a stable error code, the service stays up, and nothing is left half-written in Redis or
//! in storage.
//!
//! - A. The API, in process ([`spawn_app`]): bodies, types, missing and extra fields, URLs with
//!   unicode tricks, private, loopback, link-local and metadata targets (literal, spelled
//!   otherwise, or names that resolve to them through /etc/hosts), schemes, priorities. After
//!   every rejected case nothing is stored in Redis and `/health` still answers.
//! - B. The pipeline, through the real `uvr` binary with the `dsp-centre` separator: every
//!   format the decoder handles (WAV PCM 8/16/24/32f, A-law, IMA ADPCM, FLAC, MP3, Ogg Vorbis,
//!   AAC in ADTS), intact, truncated at several points and corrupted; empty, one-sample and
//!   lying headers; non-audio; an hour of silence against the size and duration limits;
//!   extreme sample rates and channel counts; redirect chains; redirects into private space.
//!   Every task ends in the expected state with the expected code, exactly one signed webhook,
//!   nothing left in the staging directory and, when it failed, no stems in storage.
//!
//! The fixtures are generated here, without external tools: WAV through `hound` or by hand, and
//! minimal but valid FLAC (verbatim subframes), MP3 (silent MPEG-1 Layer III frames, with and
//! without a Xing header), AAC (silent ADTS frames) and Ogg Vorbis (a one-codebook setup with
//! unused floors) streams.
//!
//! Redirects into private space need a configuration where the audio origin is allowed but the
//! redirect target is not. The address policy has no allow-list (only
//! `ALLOW_PRIVATE_NETWORKS`), so that deployment keeps the policy on and reaches the loopback
//! origin through a forward proxy (`OUTBOUND_PROXY`; proxies of the environment are ignored, which
//! `environment_proxies_are_ignored` checks): the audio URLs
//! name a host under `.invalid`, which resolves nowhere, so nothing leaves the machine, and each
//! redirect target is checked by the policy before any request. (Through a proxy the
//! connect-time DNS check does not apply, since the proxy resolves names: that deployment tests
//! the checks of redirect targets, not DNS. The DNS check is tested without a proxy in
//! `src/audio/fetch.rs` and `tests/pipeline.rs`.)

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use common::e2e::{Deployment, Received, WEBHOOK_SECRET, header_map, verify_signature};
use common::{PASSWORD, TestApp, USER, spawn_app};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

/// Generators of small audio files (and of things that are not audio).
mod fixtures {
    use std::io::Cursor;

    /// The test signal: a 440 Hz tone, its phase shifted per channel.
    pub fn sample(i: usize, ch: usize, rate: u32) -> f32 {
        let t = i as f32 / rate.max(1) as f32;
        0.4 * (2.0 * std::f32::consts::PI * 440.0 * t + ch as f32 * 0.7).sin()
    }

    /// Sample encodings of PCM WAV.
    #[derive(Debug, Clone, Copy)]
    pub enum Pcm {
        U8,
        I16,
        I24,
        F32,
    }

    /// A WAV written by `hound` (WAVE_FORMAT_EXTENSIBLE for more than two channels or more
    /// than 16 bits, as hound does).
    pub fn wav(rate: u32, channels: u16, frames: usize, pcm: Pcm) -> Vec<u8> {
        let (bits, format) = match pcm {
            Pcm::U8 => (8, hound::SampleFormat::Int),
            Pcm::I16 => (16, hound::SampleFormat::Int),
            Pcm::I24 => (24, hound::SampleFormat::Int),
            Pcm::F32 => (32, hound::SampleFormat::Float),
        };
        let spec = hound::WavSpec {
            channels,
            sample_rate: rate,
            bits_per_sample: bits,
            sample_format: format,
        };
        let mut cur = Cursor::new(Vec::new());
        {
            let mut w = hound::WavWriter::new(&mut cur, spec).unwrap();
            for i in 0..frames {
                for c in 0..channels as usize {
                    let s = sample(i, c, rate);
                    match pcm {
                        Pcm::U8 => w.write_sample((s * 127.0) as i8),
                        Pcm::I16 => w.write_sample((s * 32767.0) as i16),
                        Pcm::I24 => w.write_sample((s * 8_388_607.0) as i32),
                        Pcm::F32 => w.write_sample(s),
                    }
                    .unwrap();
                }
            }
            w.finalize().unwrap();
        }
        cur.into_inner()
    }

    /// A 16-bit stereo tone WAV of `seconds` at `rate`.
    pub fn tone(seconds: f32, rate: u32) -> Vec<u8> {
        wav(rate, 2, (seconds * rate as f32) as usize, Pcm::I16)
    }

    /// The offset of a RIFF sub-chunk's header.
    pub fn chunk_offset(wav: &[u8], id: &[u8; 4]) -> usize {
        let mut pos = 12;
        while pos + 8 <= wav.len() {
            if &wav[pos..pos + 4] == id {
                return pos;
            }
            let len = u32::from_le_bytes(wav[pos + 4..pos + 8].try_into().unwrap()) as usize;
            pos += 8 + len + (len & 1);
        }
        panic!("no {} chunk", String::from_utf8_lossy(id));
    }

    /// Overwrites a little-endian u32 at `at`.
    pub fn patch_u32(mut bytes: Vec<u8>, at: usize, v: u32) -> Vec<u8> {
        bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
        bytes
    }

    /// Overwrites a little-endian u16 at `at`.
    pub fn patch_u16(mut bytes: Vec<u8>, at: usize, v: u16) -> Vec<u8> {
        bytes[at..at + 2].copy_from_slice(&v.to_le_bytes());
        bytes
    }

    /// A WAV whose `fmt ` says `rate` (a value hound would not write, such as 0).
    pub fn wav_with_rate(rate: u32) -> Vec<u8> {
        let w = tone(0.25, 8000);
        let fmt = chunk_offset(&w, b"fmt ");
        let w = patch_u32(w, fmt + 12, rate);
        patch_u32(w, fmt + 16, rate.wrapping_mul(4))
    }

    /// A WAV whose `fmt ` says `channels` channels.
    pub fn wav_with_channels(channels: u16) -> Vec<u8> {
        let w = tone(0.25, 44_100);
        let fmt = chunk_offset(&w, b"fmt ");
        patch_u16(w, fmt + 10, channels)
    }

    /// A WAV whose `data` chunk claims `data_len` bytes (and RIFF `riff_len`).
    pub fn wav_with_lengths(wav: Vec<u8>, riff_len: u32, data_len: u32) -> Vec<u8> {
        let data = chunk_offset(&wav, b"data");
        let w = patch_u32(wav, 4, riff_len);
        patch_u32(w, data + 4, data_len)
    }

    /// A RIFF/WAVE file from a `fmt ` body, optional extra chunks and the sample data.
    pub fn riff(fmt: &[u8], extra: &[(&[u8; 4], Vec<u8>)], data: &[u8]) -> Vec<u8> {
        let mut body = b"WAVE".to_vec();
        let mut chunk = |id: &[u8; 4], bytes: &[u8]| {
            body.extend_from_slice(id);
            body.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            body.extend_from_slice(bytes);
            if bytes.len() % 2 == 1 {
                body.push(0);
            }
        };
        chunk(b"fmt ", fmt);
        for (id, bytes) in extra {
            chunk(id, bytes);
        }
        chunk(b"data", data);
        let mut out = b"RIFF".to_vec();
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend(body);
        out
    }

    /// A `fmt ` body: tag, channels, rate, byte rate, block align, bits, then `ext`.
    pub fn fmt_chunk(
        tag: u16,
        channels: u16,
        rate: u32,
        align: u16,
        bits: u16,
        ext: &[u8],
    ) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&tag.to_le_bytes());
        f.extend_from_slice(&channels.to_le_bytes());
        f.extend_from_slice(&rate.to_le_bytes());
        f.extend_from_slice(&(rate * u32::from(align)).to_le_bytes());
        f.extend_from_slice(&align.to_le_bytes());
        f.extend_from_slice(&bits.to_le_bytes());
        f.extend_from_slice(ext);
        f
    }

    /// G.711 A-law, stereo, 8 kHz (A-law silence is 0xD5).
    pub fn alaw(frames: usize) -> Vec<u8> {
        let fmt = fmt_chunk(6, 2, 8000, 2, 8, &0u16.to_le_bytes());
        riff(&fmt, &[], &vec![0xD5; frames * 2])
    }

    /// IMA ADPCM, stereo, 22.05 kHz: `blocks` blocks of silence (1017 frames each).
    pub fn ima_adpcm(blocks: usize) -> Vec<u8> {
        const ALIGN: u16 = 1024;
        let frames_per_block: u16 = (ALIGN - 8) * 8 / 8 + 1;
        let mut ext = 2u16.to_le_bytes().to_vec();
        ext.extend_from_slice(&frames_per_block.to_le_bytes());
        let mut fmt = fmt_chunk(0x11, 2, 22_050, ALIGN, 4, &ext);
        // The byte rate of ADPCM is per block.
        let byte_rate = 22_050 * u32::from(ALIGN) / u32::from(frames_per_block);
        fmt[8..12].copy_from_slice(&byte_rate.to_le_bytes());
        let fact = (blocks as u32 * u32::from(frames_per_block))
            .to_le_bytes()
            .to_vec();
        riff(
            &fmt,
            &[(b"fact", fact)],
            &vec![0u8; blocks * ALIGN as usize],
        )
    }

    /// Most-significant-bit-first bit packing (FLAC, MPEG).
    #[derive(Default)]
    pub struct MsbBits {
        out: Vec<u8>,
        cur: u8,
        n: u32,
    }

    impl MsbBits {
        pub fn put(&mut self, v: u64, bits: u32) {
            for i in (0..bits).rev() {
                self.cur = (self.cur << 1) | ((v >> i) & 1) as u8;
                self.n += 1;
                if self.n == 8 {
                    self.out.push(self.cur);
                    self.cur = 0;
                    self.n = 0;
                }
            }
        }

        /// The bytes, the last one padded with zero bits.
        pub fn finish(mut self) -> Vec<u8> {
            if self.n > 0 {
                self.out.push(self.cur << (8 - self.n));
            }
            self.out
        }
    }

    /// Least-significant-bit-first bit packing (Vorbis).
    #[derive(Default)]
    pub struct LsbBits {
        out: Vec<u8>,
        cur: u8,
        n: u32,
    }

    impl LsbBits {
        pub fn put(&mut self, v: u64, bits: u32) {
            for i in 0..bits {
                self.cur |= (((v >> i) & 1) as u8) << self.n;
                self.n += 1;
                if self.n == 8 {
                    self.out.push(self.cur);
                    self.cur = 0;
                    self.n = 0;
                }
            }
        }

        pub fn finish(mut self) -> Vec<u8> {
            if self.n > 0 {
                self.out.push(self.cur);
            }
            self.out
        }
    }

    /// A CRC without reflection or final xor, MSB first: CRC-8 (0x07) and CRC-16 (0x8005)
    /// of FLAC, CRC-32 (0x04C11DB7) of Ogg.
    fn crc_msb(data: &[u8], width: u32, poly: u32) -> u32 {
        let top = 1u32 << (width - 1);
        let mask = u32::MAX >> (32 - width);
        let mut crc = 0u32;
        for &b in data {
            crc ^= u32::from(b) << (width - 8);
            for _ in 0..8 {
                crc = if crc & top != 0 {
                    (crc << 1) ^ poly
                } else {
                    crc << 1
                } & mask;
            }
        }
        crc
    }

    fn crc8(data: &[u8]) -> u8 {
        crc_msb(data, 8, 0x07) as u8
    }

    fn crc16(data: &[u8]) -> u16 {
        crc_msb(data, 16, 0x8005) as u16
    }

    /// FLAC with verbatim subframes (valid, just not compressed): the tone, `bps` 16 or 24.
    pub fn flac(rate: u32, channels: u16, bps: u32, frames: usize) -> Vec<u8> {
        const BLOCK: usize = 4096;
        let mut out = b"fLaC".to_vec();
        let mut w = MsbBits::default();
        w.put(1, 1); // last metadata block
        w.put(0, 7); // STREAMINFO
        w.put(34, 24);
        w.put(BLOCK as u64, 16);
        w.put(BLOCK as u64, 16);
        w.put(0, 24);
        w.put(0, 24);
        w.put(u64::from(rate), 20);
        w.put(u64::from(channels) - 1, 3);
        w.put(u64::from(bps) - 1, 5);
        w.put(frames as u64, 36);
        w.put(0, 64); // MD5 unknown
        w.put(0, 64);
        out.extend(w.finish());
        let full = (1i64 << (bps - 1)) - 1;
        let mask = (1u64 << bps) - 1;
        let (mut start, mut index) = (0usize, 0u64);
        while start < frames {
            let n = BLOCK.min(frames - start);
            let mut h = MsbBits::default();
            h.put(0x3FFE, 14); // sync
            h.put(0, 1);
            h.put(0, 1); // fixed block size
            h.put(7, 4); // block size: 16 bits at the end of the header
            h.put(0, 4); // sample rate: from STREAMINFO
            h.put(u64::from(channels) - 1, 4); // independent channels
            h.put(if bps == 24 { 6 } else { 4 }, 3);
            h.put(0, 1);
            assert!(
                index < 2048,
                "frame numbers above 2047 are not encoded here"
            );
            if index < 128 {
                h.put(index, 8);
            } else {
                h.put(0xC0 | (index >> 6), 8);
                h.put(0x80 | (index & 0x3F), 8);
            }
            h.put(n as u64 - 1, 16);
            let mut frame = h.finish();
            frame.push(crc8(&frame));
            let mut body = MsbBits::default();
            for c in 0..channels as usize {
                body.put(0, 1);
                body.put(1, 6); // VERBATIM
                body.put(0, 1);
                for i in start..start + n {
                    let v = (f64::from(sample(i, c, rate)) * full as f64) as i64;
                    body.put(v as u64 & mask, bps);
                }
            }
            frame.extend(body.finish());
            let crc = crc16(&frame);
            frame.extend_from_slice(&crc.to_be_bytes());
            out.extend(frame);
            start += n;
            index += 1;
        }
        out
    }

    /// MPEG-1 Layer III, 128 kbit/s, 44.1 kHz, stereo: the size of one frame.
    pub const MP3_FRAME: usize = 417;
    /// PCM frames per MPEG-1 Layer III frame.
    pub const MP3_SAMPLES: usize = 1152;

    fn mp3_frame() -> Vec<u8> {
        // Header, then all-zero side information and main data: a valid frame of silence.
        let mut f = vec![0u8; MP3_FRAME];
        f[..4].copy_from_slice(&[0xFF, 0xFB, 0x90, 0x00]);
        f
    }

    /// The Xing header of an MP3 stream.
    #[derive(Debug, Clone, Copy)]
    pub struct Xing {
        /// The frame count it claims.
        pub frames: u32,
        /// A LAME extension with this encoder delay (samples), if any.
        pub lame_delay: Option<u32>,
    }

    /// `frames` silent MP3 frames, after a Xing (+ LAME) frame when given.
    pub fn mp3(frames: usize, xing: Option<Xing>) -> Vec<u8> {
        let mut out = Vec::new();
        if let Some(x) = xing {
            let mut f = mp3_frame();
            let at = 4 + 32; // after the header and the stereo side information
            f[at..at + 4].copy_from_slice(b"Xing");
            f[at + 4..at + 8].copy_from_slice(&1u32.to_be_bytes()); // frame count present
            f[at + 8..at + 12].copy_from_slice(&x.frames.to_be_bytes());
            if let Some(delay) = x.lame_delay {
                let lame = at + 12;
                f[lame..lame + 9].copy_from_slice(b"Lavf58.76");
                // Delay is stored as 12 bits (minus the decoder delay of 529), then padding.
                let trim = (delay.saturating_sub(529) & 0xFFF) << 12;
                f[lame + 21..lame + 24].copy_from_slice(&trim.to_be_bytes()[1..]);
            }
            out.extend(f);
        }
        for _ in 0..frames {
            out.extend(mp3_frame());
        }
        out
    }

    /// AAC-LC samples per frame.
    pub const AAC_SAMPLES: usize = 1024;

    /// Silent AAC-LC frames in ADTS, 44.1 kHz, mono or stereo.
    pub fn aac_adts(frames: usize, channels: u64) -> Vec<u8> {
        let ics = |b: &mut MsbBits| {
            b.put(100, 8); // global gain
            b.put(0, 1); // reserved
            b.put(0, 2); // ONLY_LONG_SEQUENCE
            b.put(0, 1); // window shape
            b.put(0, 6); // max_sfb = 0: no bands, no spectral data
            b.put(0, 1); // no prediction
            b.put(0, 3); // no pulse, TNS, gain control
        };
        let mut raw = MsbBits::default();
        if channels == 1 {
            raw.put(0, 3); // SCE
            raw.put(0, 4);
            ics(&mut raw);
        } else {
            raw.put(1, 3); // CPE
            raw.put(0, 4);
            raw.put(0, 1); // no common window
            ics(&mut raw);
            ics(&mut raw);
        }
        raw.put(7, 3); // END
        let raw = raw.finish();
        let mut h = MsbBits::default();
        h.put(0xFFF, 12);
        h.put(0, 1); // MPEG-4
        h.put(0, 2);
        h.put(1, 1); // no CRC
        h.put(1, 2); // AAC LC
        h.put(4, 4); // 44.1 kHz
        h.put(0, 1);
        h.put(channels, 3);
        h.put(0, 4);
        h.put(7 + raw.len() as u64, 13);
        h.put(0x7FF, 11);
        h.put(0, 2);
        let mut frame = h.finish();
        frame.extend(raw);
        frame.repeat(frames)
    }

    fn ogg_crc(data: &[u8]) -> u32 {
        crc_msb(data, 32, 0x04C1_1DB7)
    }

    fn ogg_page(out: &mut Vec<u8>, seq: u32, granule: u64, flags: u8, packets: &[Vec<u8>]) {
        let mut lacing = Vec::new();
        for p in packets {
            lacing.extend(std::iter::repeat_n(255u8, p.len() / 255));
            lacing.push((p.len() % 255) as u8);
        }
        assert!(lacing.len() <= 255);
        let start = out.len();
        out.extend_from_slice(b"OggS");
        out.push(0);
        out.push(flags);
        out.extend_from_slice(&granule.to_le_bytes());
        out.extend_from_slice(&0x5556_5221u32.to_le_bytes()); // serial
        out.extend_from_slice(&seq.to_le_bytes());
        out.extend_from_slice(&[0; 4]); // CRC, filled below
        out.push(lacing.len() as u8);
        out.extend(lacing);
        for p in packets {
            out.extend_from_slice(p);
        }
        let crc = ogg_crc(&out[start..]);
        out[start + 22..start + 26].copy_from_slice(&crc.to_le_bytes());
    }

    /// Vorbis samples per audio packet after the first (short 256-sample blocks only).
    pub const VORBIS_SAMPLES: usize = 128;

    /// An Ogg Vorbis stream of `seconds` of silence: one codebook, one floor 1 that every
    /// packet marks unused, one residue, one mapping, one short-block mode.
    pub fn ogg_vorbis(channels: u8, rate: u32, seconds: f32) -> Vec<u8> {
        let mut ident = vec![1];
        ident.extend_from_slice(b"vorbis");
        ident.extend_from_slice(&0u32.to_le_bytes());
        ident.push(channels);
        ident.extend_from_slice(&rate.to_le_bytes());
        ident.extend_from_slice(&[0; 12]); // bitrates
        ident.push((11 << 4) | 8); // blocksizes 256 and 2048
        ident.push(1);
        let mut comment = vec![3];
        comment.extend_from_slice(b"vorbis");
        let vendor = b"uvr bad_input";
        comment.extend_from_slice(&(vendor.len() as u32).to_le_bytes());
        comment.extend_from_slice(vendor);
        comment.extend_from_slice(&0u32.to_le_bytes());
        comment.push(1);
        let mut b = LsbBits::default();
        b.put(0, 8); // one codebook
        b.put(0x56_4342, 24);
        b.put(1, 16); // dimensions
        b.put(2, 24); // entries
        b.put(0, 1); // not ordered
        b.put(0, 1); // not sparse
        b.put(0, 5); // length 1
        b.put(0, 5); // length 1
        b.put(0, 4); // no lookup
        b.put(0, 6); // one time-domain transform
        b.put(0, 16);
        b.put(0, 6); // one floor
        b.put(1, 16); // floor type 1
        b.put(0, 5); // no partitions
        b.put(0, 2); // multiplier 1
        b.put(7, 4); // range bits
        b.put(0, 6); // one residue
        b.put(0, 16); // residue type 0
        b.put(0, 24); // begin
        b.put(0, 24); // end
        b.put(0, 24); // partition size 1
        b.put(0, 6); // one classification
        b.put(0, 8); // classbook 0
        b.put(0, 3); // no books in the cascade
        b.put(0, 1);
        b.put(0, 6); // one mapping
        b.put(0, 16); // type 0
        b.put(0, 1); // one submap
        b.put(0, 1); // no coupling
        b.put(0, 2); // reserved
        b.put(0, 8); // submap: unused
        b.put(0, 8); // floor 0
        b.put(0, 8); // residue 0
        b.put(0, 6); // one mode
        b.put(0, 1); // short blocks
        b.put(0, 16);
        b.put(0, 16);
        b.put(0, 8); // mapping 0
        b.put(1, 1); // framing
        let mut setup = vec![5];
        setup.extend_from_slice(b"vorbis");
        setup.extend(b.finish());
        // An audio packet: type 0, (mode: 0 bits), then one "floor unused" bit per channel.
        let mut p = LsbBits::default();
        p.put(0, 1);
        for _ in 0..channels {
            p.put(0, 1);
        }
        let packet = p.finish();
        let samples = (seconds * rate as f32) as usize;
        let packets = samples / VORBIS_SAMPLES + 1;
        let mut out = Vec::new();
        ogg_page(&mut out, 0, 0, 0x02, &[ident]);
        ogg_page(&mut out, 1, 0, 0, &[comment, setup]);
        let mut done = 0;
        let mut seq = 2;
        while done < packets {
            let n = 200.min(packets - done);
            done += n;
            let granule = ((done - 1) * VORBIS_SAMPLES) as u64;
            let flags = if done == packets { 0x04 } else { 0 };
            ogg_page(&mut out, seq, granule, flags, &vec![packet.clone(); n]);
            seq += 1;
        }
        out
    }

    /// Deterministic pseudo-random bytes.
    pub fn noise(n: usize, mut seed: u32) -> Vec<u8> {
        (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                (seed >> 24) as u8
            })
            .collect()
    }

    /// `seconds` of a stereo tone as Ogg Opus at 96 kbps, written by the service's own stem
    /// encoder (libopus; Opus is too involved to hand-encode here).
    pub fn ogg_opus(seconds: f32) -> Vec<u8> {
        use uvr::audio::encode::{Encoding, StemWriter};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tone.opus");
        let frames: Vec<[f32; 2]> = (0..(seconds * 44_100.0) as usize)
            .map(|i| {
                let t = i as f32 / 44_100.0;
                let s = (2.0 * std::f32::consts::PI * 440.0 * t).sin() * 0.4;
                [s, s * 0.5]
            })
            .collect();
        let mut w = StemWriter::create(&path, Encoding::Opus { kbps: 96 }, 48_000).unwrap();
        w.write(&frames).unwrap();
        w.finish().unwrap();
        std::fs::read(path).unwrap()
    }

    /// The first `keep` bytes (`keep` may be a fraction of the length).
    pub fn truncate(bytes: &[u8], keep: usize) -> Vec<u8> {
        bytes[..keep.min(bytes.len())].to_vec()
    }

    /// `bytes` with `n` bytes of noise written over the middle.
    pub fn corrupt_middle(bytes: &[u8], n: usize) -> Vec<u8> {
        let mut out = bytes.to_vec();
        let at = out.len() / 2 - n / 2;
        out[at..at + n].copy_from_slice(&noise(n, 0xC0FFEE));
        out
    }

    pub fn html() -> Vec<u8> {
        b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head>\
          <body><h1>Not Found</h1><p>The requested URL was not found.</p></body></html>\n"
            .repeat(20)
    }

    /// A PNG signature and IHDR, then noise.
    pub fn png() -> Vec<u8> {
        let mut out = b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR\x00\x00\x01\x00\x00\x00\x01\x00\x08\x06\x00\x00\x00".to_vec();
        out.extend(noise(4000, 7));
        out
    }

    /// An ID3v2 tag with nothing after it.
    pub fn id3_only() -> Vec<u8> {
        let mut out = b"ID3\x04\x00\x00\x00\x00\x02\x00".to_vec(); // 256 bytes of tag
        out.extend(vec![0u8; 256]);
        out
    }
}

// ---------------------------------------------------------------------------------------------
// A. The API
// ---------------------------------------------------------------------------------------------

/// A request body as sent.
enum Body {
    /// JSON, `Content-Type: application/json`.
    Json(Value),
    /// Raw bytes with an optional content type, with a `Content-Length`.
    Raw(Option<&'static str>, Vec<u8>),
    /// Raw JSON bytes sent chunked, without a `Content-Length`.
    Chunked(Vec<u8>),
}

/// What the API must answer.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Answer {
    /// Rejected with this status and code, naming this field (or none).
    Reject(u16, &'static str, Option<&'static str>),
    /// Accepted (202), one task stored, its URLs stored in ASCII form.
    Accept,
}

struct ApiCase {
    name: String,
    body: Body,
    headers: Vec<(&'static str, Vec<u8>)>,
    answer: Answer,
}

const AUDIO: &str = "https://93.184.215.14/audio.wav";
const HOOK: &str = "https://93.184.215.14/hook";

fn case(name: impl Into<String>, body: Body, answer: Answer) -> ApiCase {
    ApiCase {
        name: name.into(),
        body,
        headers: Vec::new(),
        answer,
    }
}

/// `{"audio", "hook_url"}` valid, with `field` set to `value` (or removed when `value` is
/// `None`).
fn with(field: &str, value: Option<Value>) -> Value {
    let mut body = json!({"audio": AUDIO, "hook_url": HOOK});
    match value {
        Some(v) => body[field] = v,
        None => {
            body.as_object_mut().unwrap().remove(field);
        }
    }
    body
}

fn reject422(code: &'static str, field: &'static str) -> Answer {
    Answer::Reject(422, code, Some(field))
}

/// Runs the table against one app: each case answers as expected, stores nothing when rejected
/// (exactly one task when accepted), and `/health` answers 200 after it. Every mismatch is
/// collected, so one run reports all of them.
async fn run_api_table(app: &TestApp, cases: Vec<ApiCase>) {
    let url = format!("{}/generate", app.base);
    let health = format!("{}/health", app.base);
    let mut failures = Vec::new();
    let mut lines = Vec::new();
    for c in &cases {
        let before = app.stored_tasks();
        let mut req = app
            .client
            .post(&url)
            .basic_auth(USER, Some(PASSWORD))
            .timeout(Duration::from_secs(20));
        for (k, v) in &c.headers {
            req = req.header(*k, reqwest::header::HeaderValue::from_bytes(v).unwrap());
        }
        req = match &c.body {
            Body::Json(v) => req.json(v),
            Body::Raw(ct, bytes) => {
                let req = match ct {
                    Some(ct) => req.header("content-type", *ct),
                    None => req,
                };
                req.body(bytes.clone())
            }
            Body::Chunked(bytes) => {
                let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
                    bytes.chunks(4096).map(|c| Ok(c.to_vec())).collect();
                req.header("content-type", "application/json")
                    .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                        chunks,
                    )))
            }
        };
        let (status, body) = match req.send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let text = resp.text().await.unwrap_or_default();
                (
                    status,
                    serde_json::from_str::<Value>(&text).unwrap_or(Value::Null),
                )
            }
            Err(e) => (0, json!({"transport_error": e.to_string()})),
        };
        let after = app.stored_tasks();
        let got = if status == 202 {
            Answer::Accept
        } else {
            let code = body["error"]["code"]
                .as_str()
                .unwrap_or("<none>")
                .to_string();
            let field = body["error"]["field"].as_str().map(|f| f.to_string());
            Answer::Reject(
                status,
                Box::leak(code.into_boxed_str()),
                field.map(|f| &*Box::leak(f.into_boxed_str())),
            )
        };
        let mut problems = Vec::new();
        if got != c.answer {
            problems.push(format!("expected {:?}, got {:?}: {body}", c.answer, got));
        }
        match c.answer {
            Answer::Reject(..) => {
                if after != before {
                    problems.push(format!("stored tasks changed {before:?} -> {after:?}"));
                }
                if got == c.answer && body["error"]["message"].as_str().is_none_or(str::is_empty) {
                    problems.push("no error message".into());
                }
            }
            Answer::Accept => {
                if after != (before.0 + 1, before.1 + 1) {
                    problems.push(format!("expected one new task, {before:?} -> {after:?}"));
                }
                if let Some(id) = body["task_id"].as_str() {
                    let t: Value = app.get(&format!("/tasks/{id}")).await.json().await.unwrap();
                    for f in ["audio", "hook_url"] {
                        let u = t["request"][f].as_str().unwrap_or_default();
                        if !u.is_ascii() || u.chars().any(|ch| ch.is_control() || ch == ' ') {
                            problems.push(format!("{f} stored unnormalised: {u:?}"));
                        }
                    }
                }
            }
        }
        let up = app
            .client
            .get(&health)
            .send()
            .await
            .is_ok_and(|r| r.status() == 200);
        if !up {
            problems.push("/health no longer answers 200".into());
        }
        let outcome = if problems.is_empty() {
            "ok"
        } else {
            "MISMATCH"
        };
        lines.push(format!("  {outcome:8} {:60} {:?}", c.name, got));
        if !problems.is_empty() {
            failures.push(format!("{}: {}", c.name, problems.join("; ")));
        }
    }
    eprintln!("{} cases:\n{}", cases.len(), lines.join("\n"));
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// Malformed bodies, content types, sizes and the JSON shape.
#[actix_rt::test]
async fn api_rejects_malformed_bodies_with_stable_codes() {
    let app = spawn_app(&[]);
    let valid = serde_json::to_vec(&with("priority", None)).unwrap();
    let malformed = |name: &str, bytes: &[u8]| {
        case(
            format!("malformed JSON: {name}"),
            Body::Raw(Some("application/json"), bytes.to_vec()),
            Answer::Reject(400, "malformed_json", None),
        )
    };
    let mut bom = b"\xEF\xBB\xBF".to_vec();
    bom.extend_from_slice(&valid);
    let mut invalid_utf8 = br#"{"audio": "https://93.184.215.14/a"#.to_vec();
    invalid_utf8
        .extend_from_slice(b"\xC3\x28\xFF.wav\", \"hook_url\": \"https://93.184.215.14/h\"}");
    let padded = |pad: usize| {
        let mut body = with("priority", None);
        body["padding"] = json!("x".repeat(pad));
        serde_json::to_vec(&body).unwrap()
    };
    let many_keys: serde_json::Map<String, Value> = (0..4000)
        .map(|i| (format!("k{i}"), json!(i)))
        .chain([
            ("audio".to_string(), json!(AUDIO)),
            ("hook_url".to_string(), json!(HOOK)),
        ])
        .collect();
    let cases = vec![
        malformed("truncated", br#"{"audio": "#),
        malformed("empty body", b""),
        malformed("whitespace only", b"   \n\t "),
        malformed("trailing garbage", &[valid.as_slice(), b" x"].concat()),
        malformed("two objects", &[valid.as_slice(), valid.as_slice()].concat()),
        malformed("single quotes", b"{'audio': 'https://93.184.215.14/a.wav'}"),
        malformed("NaN literal", br#"{"audio": "https://93.184.215.14/a.wav", "priority": NaN}"#),
        malformed("trailing comma", br#"{"audio": "https://93.184.215.14/a.wav",}"#),
        malformed("comment", br#"{"audio": "https://93.184.215.14/a.wav" /* x */}"#),
        malformed("UTF-8 byte order mark", &bom),
        malformed("invalid UTF-8 in a string", &invalid_utf8),
        malformed("lone surrogate escape", br#"{"audio": "https://93.184.215.14/\ud800", "hook_url": "x"}"#),
        malformed("raw NUL in a string", b"{\"audio\": \"https://93.184.215.14/a\x00.wav\"}"),
        malformed("number out of range", br#"{"audio": "x", "hook_url": "y", "priority": 1e400}"#),
        malformed("nesting 30000 deep", &[vec![b'['; 30_000], vec![b']'; 30_000]].concat()),
        malformed("nesting 200 deep in an extra field", format!(r#"{{"audio": "{AUDIO}", "hook_url": "{HOOK}", "x": {}{}}}"#, "[".repeat(200), "]".repeat(200)).as_bytes()),
        case("JSON array", Body::Raw(Some("application/json"), b"[1, 2]".to_vec()), Answer::Reject(422, "invalid_body", Some("body"))),
        case("JSON string", Body::Raw(Some("application/json"), br#""https://93.184.215.14/a.wav""#.to_vec()), Answer::Reject(422, "invalid_body", Some("body"))),
        case("JSON number", Body::Raw(Some("application/json"), b"42".to_vec()), Answer::Reject(422, "invalid_body", Some("body"))),
        case("JSON null", Body::Raw(Some("application/json"), b"null".to_vec()), Answer::Reject(422, "invalid_body", Some("body"))),
        case("JSON true", Body::Raw(Some("application/json"), b"true".to_vec()), Answer::Reject(422, "invalid_body", Some("body"))),
        case("content type text/plain", Body::Raw(Some("text/plain"), valid.clone()), Answer::Reject(415, "unsupported_media_type", None)),
        case("no content type", Body::Raw(None, valid.clone()), Answer::Reject(415, "unsupported_media_type", None)),
        case("form body", Body::Raw(Some("application/x-www-form-urlencoded"), b"audio=x&hook_url=y".to_vec()), Answer::Reject(415, "unsupported_media_type", None)),
        case("multipart body with a part that names no field", Body::Raw(Some("multipart/form-data; boundary=x"), b"--x\r\n\r\n--x--".to_vec()), Answer::Reject(400, "malformed_body", None)),
        case("multipart body without a boundary", Body::Raw(Some("multipart/form-data"), b"--x--".to_vec()), Answer::Reject(400, "malformed_body", None)),
        case("content type application/jsonp", Body::Raw(Some("application/jsonp"), valid.clone()), Answer::Reject(415, "unsupported_media_type", None)),
        case("content type json with charset", Body::Raw(Some("application/json; charset=utf-8"), valid.clone()), Answer::Accept),
        case("content type application/vnd.api+json", Body::Raw(Some("application/vnd.api+json"), valid.clone()), Answer::Accept),
        case("a 60 KB extra field under the 64 KiB limit", Body::Raw(Some("application/json"), padded(60_000)), Answer::Accept),
        case("4000 extra keys under the limit", Body::Json(Value::Object(many_keys)), Answer::Accept),
        case("a 200 KB extra field, with Content-Length", Body::Raw(Some("application/json"), padded(200_000)), Answer::Reject(413, "payload_too_large", None)),
        case("a 100 KB body, chunked without Content-Length", Body::Chunked(padded(100_000)), Answer::Reject(413, "payload_too_large", None)),
        case(
            "duplicate key: the last one (private) wins",
            Body::Raw(Some("application/json"), format!(r#"{{"audio": "{AUDIO}", "audio": "http://127.0.0.1/a.wav", "hook_url": "{HOOK}"}}"#).into_bytes()),
            reject422("private_address", "audio"),
        ),
        ApiCase {
            name: "Idempotency-Key empty".into(),
            body: Body::Json(with("priority", None)),
            headers: vec![("idempotency-key", b"".to_vec())],
            answer: reject422("invalid_idempotency_key", "Idempotency-Key"),
        },
        ApiCase {
            name: "Idempotency-Key of 256 bytes".into(),
            body: Body::Json(with("priority", None)),
            headers: vec![("idempotency-key", vec![b'k'; 256])],
            answer: reject422("invalid_idempotency_key", "Idempotency-Key"),
        },
        ApiCase {
            name: "Idempotency-Key with a space".into(),
            body: Body::Json(with("priority", None)),
            headers: vec![("idempotency-key", b"order 1".to_vec())],
            answer: reject422("invalid_idempotency_key", "Idempotency-Key"),
        },
        ApiCase {
            name: "Idempotency-Key with non-ASCII bytes".into(),
            body: Body::Json(with("priority", None)),
            headers: vec![("idempotency-key", b"caf\xE9".to_vec())],
            answer: Answer::Reject(422, "invalid_idempotency_key", None),
        },
    ];
    run_api_table(&app, cases).await;
}

/// Every field with every wrong JSON type, missing fields, out-of-range and unknown values.
#[actix_rt::test]
async fn api_rejects_wrong_types_missing_fields_and_bad_priorities() {
    let app = spawn_app(&[]);
    let mut cases = vec![
        case(
            "empty object",
            Body::Json(json!({})),
            reject422("missing_field", "audio"),
        ),
        case(
            "audio missing",
            Body::Json(with("audio", None)),
            reject422("missing_field", "audio"),
        ),
        case(
            "hook_url missing: accepted, the client polls",
            Body::Json(with("hook_url", None)),
            Answer::Accept,
        ),
        case(
            "audio null",
            Body::Json(with("audio", Some(Value::Null))),
            reject422("missing_field", "audio"),
        ),
        case(
            "hook_url null: accepted, the client polls",
            Body::Json(with("hook_url", Some(Value::Null))),
            Answer::Accept,
        ),
        case(
            "field names are case-sensitive",
            Body::Json(json!({"Audio": AUDIO, "hook_url": HOOK})),
            reject422("missing_field", "audio"),
        ),
    ];
    let wrong_types = [
        ("number", json!(42)),
        ("float", json!(1.5)),
        ("bool", json!(true)),
        ("array", json!([AUDIO])),
        ("object", json!({"url": AUDIO})),
    ];
    for field in ["audio", "hook_url"] {
        for (kind, v) in &wrong_types {
            cases.push(case(
                format!("{field} as {kind}"),
                Body::Json(with(field, Some(v.clone()))),
                reject422(
                    "invalid_type",
                    if field == "audio" {
                        "audio"
                    } else {
                        "hook_url"
                    },
                ),
            ));
        }
    }
    for (kind, v) in [
        ("string \"3\"", json!("3")),
        ("float 3.5", json!(3.5)),
        ("float 3.0", json!(3.0)),
        ("exponent 1e0", json!(1e0)),
        ("bool", json!(true)),
        ("array", json!([3])),
        ("object", json!({"value": 3})),
    ] {
        cases.push(case(
            format!("priority as {kind}"),
            Body::Json(with("priority", Some(v))),
            reject422("invalid_type", "priority"),
        ));
    }
    for (kind, v) in [
        ("0", json!(0)),
        ("6", json!(6)),
        ("-1", json!(-1)),
        ("255", json!(255)),
        ("256", json!(256)),
        ("u64::MAX", json!(u64::MAX)),
        ("i64::MIN", json!(i64::MIN)),
    ] {
        cases.push(case(
            format!("priority {kind}"),
            Body::Json(with("priority", Some(v))),
            reject422("out_of_range", "priority"),
        ));
    }
    cases.push(case(
        "priority 2^64 (parsed as a float)",
        Body::Raw(
            Some("application/json"),
            format!(
                r#"{{"audio": "{AUDIO}", "hook_url": "{HOOK}", "priority": 18446744073709551616}}"#
            )
            .into_bytes(),
        ),
        reject422("invalid_type", "priority"),
    ));
    for p in [1, 5] {
        cases.push(case(
            format!("priority {p} (valid bound)"),
            Body::Json(with("priority", Some(json!(p)))),
            Answer::Accept,
        ));
    }
    cases.push(case(
        "priority null (default)",
        Body::Json(with("priority", Some(Value::Null))),
        Answer::Accept,
    ));
    for (kind, v) in [
        ("number", json!(1)),
        ("bool", json!(false)),
        ("array", json!(["dsp-centre"])),
        ("object", json!({})),
    ] {
        cases.push(case(
            format!("model as {kind}"),
            Body::Json(with("model", Some(v))),
            reject422("invalid_type", "model"),
        ));
    }
    for m in [
        "",
        "nope",
        "../../etc/passwd",
        "dsp-centre\u{0}",
        "DSP-CENTRE",
        "dsp-centre ",
    ] {
        cases.push(case(
            format!("model {m:?}"),
            Body::Json(with("model", Some(json!(m)))),
            reject422("unknown_model", "model"),
        ));
    }
    for (kind, v, code) in [
        ("a string", json!("vocals"), "invalid_type"),
        ("an object", json!({"vocals": true}), "invalid_type"),
        ("[1]", json!([1]), "invalid_type"),
        ("[null]", json!([null]), "invalid_type"),
        ("[]", json!([]), "out_of_range"),
        ("[\"drums\"]", json!(["drums"]), "unknown_stem"),
        (
            "[\"vocals\", \"../x\"]",
            json!(["vocals", "../x"]),
            "unknown_stem",
        ),
    ] {
        cases.push(case(
            format!("stems {kind}"),
            Body::Json(with("stems", Some(v))),
            reject422(code, "stems"),
        ));
    }
    for (kind, v, code) in [
        ("number", json!(16), "invalid_type"),
        ("array", json!(["wav"]), "invalid_type"),
        ("bool", json!(true), "invalid_type"),
        ("\"ogg\"", json!("ogg"), "unsupported_format"),
        ("\"\"", json!(""), "unsupported_format"),
        ("\"wav8\"", json!("wav8"), "unsupported_format"),
        ("\"flac32\"", json!("flac32"), "unsupported_format"),
    ] {
        cases.push(case(
            format!("output_format {kind}"),
            Body::Json(with("output_format", Some(v))),
            reject422(code, "output_format"),
        ));
    }
    let format = |extra: Value| {
        let mut b = json!({"audio": AUDIO, "hook_url": HOOK});
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        Body::Json(b)
    };
    for (kind, extra, code, field) in [
        (
            "bitrate with wav",
            json!({"bitrate": 320}),
            "unsupported_format",
            "bitrate",
        ),
        (
            "bitrate with flac",
            json!({"output_format": "flac", "bitrate": 320}),
            "unsupported_format",
            "bitrate",
        ),
        (
            "mp3 bitrate 96",
            json!({"output_format": "mp3", "bitrate": 96}),
            "out_of_range",
            "bitrate",
        ),
        (
            "mp3 bitrate -1",
            json!({"output_format": "mp3", "bitrate": -1}),
            "out_of_range",
            "bitrate",
        ),
        (
            "mp3 bitrate 2.5",
            json!({"output_format": "mp3", "bitrate": 2.5}),
            "out_of_range",
            "bitrate",
        ),
        (
            "mp3 bitrate \"320\"",
            json!({"output_format": "mp3", "bitrate": "320"}),
            "invalid_type",
            "bitrate",
        ),
        (
            "opus bitrate 320",
            json!({"output_format": "opus", "bitrate": 320}),
            "out_of_range",
            "bitrate",
        ),
        (
            "opus at 44.1 kHz",
            json!({"output_format": "opus", "sample_rate": 44100}),
            "unsupported_format",
            "sample_rate",
        ),
        (
            "opus at the source rate",
            json!({"output_format": "opus", "sample_rate": "source"}),
            "unsupported_format",
            "sample_rate",
        ),
        (
            "sample_rate 96000",
            json!({"sample_rate": 96000}),
            "out_of_range",
            "sample_rate",
        ),
        (
            "sample_rate 0",
            json!({"sample_rate": 0}),
            "out_of_range",
            "sample_rate",
        ),
        (
            "sample_rate \"48000\"",
            json!({"sample_rate": "48000"}),
            "invalid_type",
            "sample_rate",
        ),
        (
            "sample_rate true",
            json!({"sample_rate": true}),
            "invalid_type",
            "sample_rate",
        ),
    ] {
        cases.push(case(kind, format(extra), reject422(code, field)));
    }
    for (kind, extra, code, field) in [
        (
            "models: one model",
            json!({"models": ["dsp-centre"], "ensemble": "average"}),
            "out_of_range",
            "models",
        ),
        (
            "models: twice the same",
            json!({"models": ["dsp-centre", "dsp-centre"], "ensemble": "average"}),
            "out_of_range",
            "models",
        ),
        (
            "models: unknown",
            json!({"models": ["dsp-centre", "nope"], "ensemble": "average"}),
            "unknown_model",
            "models",
        ),
        (
            "models: not names",
            json!({"models": [1, 2], "ensemble": "average"}),
            "invalid_type",
            "models",
        ),
        (
            "models: a string",
            json!({"models": "dsp-centre", "ensemble": "average"}),
            "invalid_type",
            "models",
        ),
        (
            "models and model",
            json!({"model": "dsp-centre", "models": ["dsp-centre", "x"], "ensemble": "average"}),
            "invalid_body",
            "models",
        ),
        (
            "ensemble without models",
            json!({"ensemble": "average"}),
            "missing_field",
            "models",
        ),
        (
            "five models",
            json!({"models": ["a", "b", "c", "d", "e"], "ensemble": "average"}),
            "out_of_range",
            "models",
        ),
    ] {
        cases.push(case(kind, format(extra), reject422(code, field)));
    }
    for (kind, extra) in [
        (
            "mp3 at 128 kbps, 48 kHz",
            json!({"output_format": "mp3", "bitrate": 128, "sample_rate": 48000}),
        ),
        (
            "flac24 at the source rate",
            json!({"output_format": "FLAC24", "sample_rate": "source"}),
        ),
        (
            "opus at 64 kbps, 48 kHz",
            json!({"output_format": "Opus", "bitrate": 64, "sample_rate": 48000}),
        ),
    ] {
        cases.push(case(
            format!("{kind}: accepted"),
            format(extra),
            Answer::Accept,
        ));
    }
    for field in ["audio", "hook_url"] {
        let long = format!("https://93.184.215.14/{}", "a".repeat(5000));
        cases.push(case(
            format!("{field} of 5000 bytes"),
            Body::Json(with(field, Some(json!(long)))),
            reject422(
                "field_too_long",
                if field == "audio" {
                    "audio"
                } else {
                    "hook_url"
                },
            ),
        ));
    }
    run_api_table(&app, cases).await;
}

/// Names in /etc/hosts (and this machine's own name) that resolve only to non-public
/// addresses and that the `localhost` rule does not catch by name: the submission-time DNS
/// check must refuse them.
fn local_names() -> Vec<String> {
    use std::net::ToSocketAddrs;
    let mut names: Vec<String> = std::fs::read_to_string("/etc/hosts")
        .unwrap_or_default()
        .lines()
        .map(|l| l.split('#').next().unwrap_or_default())
        .flat_map(|l| {
            l.split_whitespace()
                .skip(1)
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        names.push(h.trim().to_string());
    }
    names.sort();
    names.dedup();
    names
        .into_iter()
        .filter(|n| {
            let l = n.to_ascii_lowercase();
            !l.is_empty() && l != "localhost" && !l.ends_with(".localhost") && !l.contains(':')
        })
        .filter(|n| {
            let addrs: Vec<_> = (n.as_str(), 80)
                .to_socket_addrs()
                .map(|a| a.collect())
                .unwrap_or_default();
            !addrs.is_empty() && addrs.iter().all(|a| !uvr::net::is_public(a.ip()))
        })
        .collect()
}

/// URL syntax and unicode tricks, schemes, and every spelling of a non-public target.
#[actix_rt::test]
async fn api_rejects_hostile_urls_with_stable_codes() {
    let app = spawn_app(&[]);
    let mut cases = Vec::new();
    let mut audio = |name: &str, url: &str, answer: Answer| {
        cases.push(case(
            format!("audio {name}: {url:?}"),
            Body::Json(with("audio", Some(json!(url)))),
            answer,
        ));
    };
    let invalid = reject422("invalid_url", "audio");
    let scheme = reject422("unsupported_scheme", "audio");
    let private = reject422("private_address", "audio");
    // Syntax.
    for (name, url) in [
        ("not a URL", "not a url"),
        ("empty", ""),
        ("relative path", "/audio.wav"),
        ("scheme-relative", "//93.184.215.14/a.wav"),
        ("no host", "http://"),
        ("port without host", "http://:80/a.wav"),
        ("leading space", " https://93.184.215.14/a.wav"),
        ("trailing newline", "https://93.184.215.14/a.wav\n"),
        ("tab inside the host", "http://127.0.0\t.1/a.wav"),
        ("newline inside the host", "http://93.184.215.\n14/a.wav"),
        ("NUL inside", "https://93.184.215.14/a\u{0}.wav"),
        ("bad port", "http://93.184.215.14:99999/a.wav"),
        ("bad IPv6", "http://[::1/a.wav"),
        ("IPv6 zone id", "http://[fe80::1%25eth0]/a.wav"),
        ("RTL override in the host", "http://\u{202E}vaw.live/a.wav"),
        (
            "RTL override inside an IP",
            "http://127.0.0.1\u{202E}/a.wav",
        ),
    ] {
        audio(name, url, invalid);
    }
    // Schemes (refused whatever the host).
    for url in [
        "file:///etc/passwd",
        "file://localhost/etc/passwd",
        "FILE:///etc/passwd",
        "ftp://93.184.215.14/a.wav",
        "gopher://93.184.215.14:70/_GET%20/",
        "data:audio/wav;base64,UklGRiQAAABXQVZFZm10IA==",
        "javascript:alert(1)",
        "ws://93.184.215.14/a",
        "wss://93.184.215.14/a",
        "dict://93.184.215.14:11211/stats",
        "ldap://93.184.215.14/",
        "sftp://93.184.215.14/a.wav",
        "jar:http://93.184.215.14/a.jar!/",
        "mailto:a@93.184.215.14",
    ] {
        audio("scheme", url, scheme);
    }
    // Loopback, private, link-local, CGNAT, metadata, reserved: literal and respelled.
    for url in [
        "http://127.0.0.1/a.wav",
        "http://127.0.0.1:6379/",
        "http://127.1/a.wav",
        "http://127.0.0.1./a.wav",
        "http://0x7f000001/a.wav",
        "http://017700000001/a.wav",
        "http://2130706433/a.wav",
        "http://0x7f.0.0.1/a.wav",
        "http://0177.0.0.1/a.wav",
        "http://127.000.000.001/a.wav",
        "http://0/a.wav",
        "http://0.0.0.0/a.wav",
        "http://10.0.0.1/a.wav",
        "http://172.16.0.1/a.wav",
        "http://192.168.1.1/a.wav",
        "http://169.254.169.254/latest/meta-data/",
        "http://169.254.170.2/v2/credentials",
        "http://100.64.0.1/a.wav",
        "http://100.100.100.200/latest/meta-data/",
        "http://192.0.0.192/",
        "http://198.18.0.1/a.wav",
        "http://224.0.0.1/a.wav",
        "http://255.255.255.255/a.wav",
        "http://[::1]/a.wav",
        "http://[::]/a.wav",
        "http://[::ffff:127.0.0.1]/a.wav",
        "http://[::ffff:7f00:1]/a.wav",
        "http://[0:0:0:0:0:ffff:127.0.0.1]/a.wav",
        "http://[::ffff:169.254.169.254]/a.wav",
        "http://[::127.0.0.1]/a.wav",
        "http://[fd00::1]/a.wav",
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://[fe80::1]/a.wav",
        "http://[fc00::1]/a.wav",
        "http://[64:ff9b::a9fe:a9fe]/a.wav",
        "http://[2002:7f00:1::]/a.wav",
        "http://[ff02::1]/a.wav",
        "http://[2001:db8::1]/a.wav",
    ] {
        audio("non-public", url, private);
    }
    // Unicode and parser tricks that land on a non-public host.
    for (name, url) in [
        (
            "ideographic full stops",
            "http://127\u{3002}0\u{3002}0\u{3002}1/a.wav",
        ),
        (
            "fullwidth full stops",
            "http://127\u{FF0E}0\u{FF0E}0\u{FF0E}1/a.wav",
        ),
        (
            "halfwidth ideographic full stops",
            "http://169\u{FF61}254\u{FF61}169\u{FF61}254/",
        ),
        (
            "fullwidth digits",
            "http://\u{FF11}\u{FF12}\u{FF17}.\u{FF10}.\u{FF10}.\u{FF11}/a.wav",
        ),
        (
            "fullwidth localhost",
            "http://\u{FF4C}\u{FF4F}\u{FF43}\u{FF41}\u{FF4C}\u{FF48}\u{FF4F}\u{FF53}\u{FF54}/a.wav",
        ),
        (
            "IDN homograph of localhost (roman numeral l)",
            "http://\u{217C}ocalhost/a.wav",
        ),
        ("soft hyphen in localhost", "http://local\u{00AD}host/a.wav"),
        (
            "uppercase LOCALHOST with a trailing dot",
            "http://LOCALHOST./a.wav",
        ),
        ("localhost with a port", "http://localhost:8000/a.wav"),
        ("a subdomain of localhost", "http://foo.localhost/a.wav"),
        (
            "a deep subdomain of localhost",
            "http://a.b.c.localhost/a.wav",
        ),
        ("percent-encoded IP", "http://%31%32%37.0.0.1/a.wav"),
        (
            "percent-encoded localhost",
            "http://%6c%6f%63%61%6c%68%6f%73%74/a.wav",
        ),
        (
            "userinfo before a private host",
            "http://good@127.0.0.1/a.wav",
        ),
        (
            "public-looking userinfo before a private host",
            "http://93.184.215.14@127.0.0.1/a.wav",
        ),
        (
            "userinfo and port before metadata",
            "http://93.184.215.14:80@169.254.169.254/",
        ),
        ("backslashes for slashes", "http:\\\\127.0.0.1\\a.wav"),
        (
            "backslash before userinfo",
            "http://127.0.0.1\\@93.184.215.14/a.wav",
        ),
        ("mixed-case scheme, private host", "HtTp://127.0.0.1/a.wav"),
    ] {
        audio(name, url, private);
    }
    // Tricks that land on a public (or unresolvable) host: accepted and stored normalised;
    // the fetcher checks the address again when it connects.
    for (name, url) in [
        (
            "IDN homograph (Cyrillic a), resolving nowhere",
            "http://ex\u{0430}mple.com/a.wav",
        ),
        (
            "IDN homograph of apple, resolving nowhere",
            "http://\u{0430}\u{0440}\u{0440}\u{04CF}\u{0435}.com/a.wav",
        ),
        (
            "RTL override in the path",
            "https://93.184.215.14/\u{202E}vaw.exe",
        ),
        (
            "private-looking userinfo, public host",
            "http://127.0.0.1@93.184.215.14/a.wav",
        ),
        (
            "backslash then @ (path, not userinfo)",
            "http://93.184.215.14\\@127.0.0.1/a.wav",
        ),
        (
            "fragment hiding a private host",
            "http://93.184.215.14#@127.0.0.1/a.wav",
        ),
        ("uppercase scheme", "HTTPS://93.184.215.14/a.wav"),
        (
            "zero-width space in the host (IDNA drops it)",
            "http://exa\u{200B}mple.com/a.wav",
        ),
    ] {
        audio(name, url, Answer::Accept);
    }
    // Names that resolve (through /etc/hosts) to loopback: refused by the DNS check.
    let names = local_names();
    eprintln!("names resolving to non-public addresses here: {names:?}");
    // At least one such row, or the DNS half of the check would go untested without notice
    // (Debian's /etc/hosts names the machine; add a loopback alias to one that does not).
    assert!(
        !names.is_empty(),
        "no name in /etc/hosts (other than localhost) resolves to a non-public address here"
    );
    for n in &names {
        audio(
            "resolves to loopback",
            &format!("http://{n}/a.wav"),
            private,
        );
        audio(
            "resolves to loopback, trailing dot",
            &format!("http://{n}./a.wav"),
            private,
        );
    }
    // The webhook URL goes through the same rules.
    let mut hook = |url: &str, answer: Answer| {
        cases.push(case(
            format!("hook_url {url:?}"),
            Body::Json(with("hook_url", Some(json!(url)))),
            answer,
        ));
    };
    for url in [
        "http://127.0.0.1:6379/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:127.0.0.1]/h",
        "http://0x7f000001/h",
        "http://localhost/h",
        "http://127\u{3002}0\u{3002}0\u{3002}1/h",
        "http://good@10.0.0.1/h",
        "http://[fd00::1]/h",
        "http://100.64.0.1/h",
    ] {
        hook(url, reject422("private_address", "hook_url"));
    }
    for url in [
        "file:///etc/passwd",
        "gopher://93.184.215.14/",
        "data:,x",
        "ftp://93.184.215.14/h",
    ] {
        hook(url, reject422("unsupported_scheme", "hook_url"));
    }
    for n in names.iter().take(1) {
        hook(
            &format!("http://{n}:9/h"),
            reject422("private_address", "hook_url"),
        );
    }
    run_api_table(&app, cases).await;
}

// ---------------------------------------------------------------------------------------------
// B. The pipeline
// ---------------------------------------------------------------------------------------------

/// What an audio origin serves and has received.
#[derive(Default)]
struct OriginState {
    files: HashMap<String, Arc<Vec<u8>>>,
    /// `/redirect/{name}`: 302 to this location (`None`: a 302 without `Location`).
    redirects: HashMap<String, Option<String>>,
    /// `/stream/{name}`: generated silence.
    streams: HashMap<String, Silence>,
    /// `/trickle/{name}`: a WAV header, then one byte every this many milliseconds.
    trickles: HashMap<String, u64>,
    /// Every file path asked for (`/audio/...`), in order, direct or through the proxy.
    asked: Vec<String>,
    hooks: Vec<Received>,
}

/// Silence generated as it is sent (nothing held in memory).
#[derive(Debug, Clone, Copy)]
struct Silence {
    rate: u32,
    channels: u16,
    seconds: u64,
    /// Send a `Content-Length` (otherwise chunked).
    content_length: bool,
    /// Say 0xFFFFFFFF in the RIFF and data lengths, as a WAV written to a pipe does.
    unknown_length: bool,
}

impl Silence {
    fn data_len(&self) -> u64 {
        self.seconds * u64::from(self.rate) * u64::from(self.channels) * 2
    }

    fn header(&self) -> Vec<u8> {
        let data = match self.unknown_length {
            true => u32::MAX,
            false => u32::try_from(self.data_len()).unwrap(),
        };
        let mut h = b"RIFF".to_vec();
        h.extend_from_slice(&data.saturating_add(36).to_le_bytes());
        h.extend_from_slice(b"WAVEfmt ");
        h.extend_from_slice(&16u32.to_le_bytes());
        let align = self.channels * 2;
        h.extend(fixtures::fmt_chunk(
            1,
            self.channels,
            self.rate,
            align,
            16,
            &[],
        ));
        h.extend_from_slice(b"data");
        h.extend_from_slice(&data.to_le_bytes());
        h
    }
}

/// A loopback HTTP server: audio files, redirects, generated streams, and webhooks. It also
/// works as a forward proxy: requests in absolute form are routed by their path.
#[derive(Clone)]
struct Origin {
    base: String,
    port: u16,
    state: Arc<Mutex<OriginState>>,
}

async fn origin_file(req: HttpRequest, st: web::Data<Arc<Mutex<OriginState>>>) -> HttpResponse {
    let name = req.match_info().get("name").unwrap_or_default();
    let mut st = st.lock().unwrap();
    st.asked.push(req.path().to_string());
    match st.files.get(name).cloned() {
        None => HttpResponse::NotFound().body("no such file"),
        Some(d) => HttpResponse::Ok()
            .content_type("application/octet-stream")
            .body(d.as_ref().clone()),
    }
}

async fn origin_redirect(req: HttpRequest, st: web::Data<Arc<Mutex<OriginState>>>) -> HttpResponse {
    let name = req.match_info().get("name").unwrap_or_default();
    match st.lock().unwrap().redirects.get(name).cloned() {
        None => HttpResponse::NotFound().finish(),
        Some(None) => HttpResponse::Found().finish(),
        Some(Some(location)) => HttpResponse::Found()
            .insert_header(("location", location))
            .finish(),
    }
}

static ZEROS: [u8; 1 << 16] = [0; 1 << 16];

async fn origin_stream(req: HttpRequest, st: web::Data<Arc<Mutex<OriginState>>>) -> HttpResponse {
    let name = req.match_info().get("name").unwrap_or_default();
    let Some(s) = st.lock().unwrap().streams.get(name).copied() else {
        return HttpResponse::NotFound().finish();
    };
    let header = web::Bytes::from(s.header());
    let total = header.len() as u64 + s.data_len();
    let chunks =
        futures_util::stream::unfold((Some(header), s.data_len()), |(head, left)| async move {
            if let Some(h) = head {
                return Some((Ok::<_, std::io::Error>(h), (None, left)));
            }
            if left == 0 {
                return None;
            }
            let n = left.min(ZEROS.len() as u64);
            Some((
                Ok(web::Bytes::from_static(&ZEROS[..n as usize])),
                (None, left - n),
            ))
        });
    let mut resp = HttpResponse::Ok();
    resp.content_type("audio/wav");
    if s.content_length {
        resp.no_chunking(total);
    }
    resp.streaming(chunks)
}

async fn origin_trickle(req: HttpRequest, st: web::Data<Arc<Mutex<OriginState>>>) -> HttpResponse {
    let name = req.match_info().get("name").unwrap_or_default();
    let Some(every) = st.lock().unwrap().trickles.get(name).copied() else {
        return HttpResponse::NotFound().finish();
    };
    let header = Silence {
        rate: 44_100,
        channels: 2,
        seconds: 1,
        content_length: false,
        unknown_length: false,
    }
    .header();
    // The header at once, then a zero byte every `every` ms for at most ten minutes.
    let bytes = futures_util::stream::unfold(0u64, move |sent| {
        let header = header.clone();
        async move {
            if sent == 0 {
                return Some((Ok::<_, std::io::Error>(web::Bytes::from(header)), 1));
            }
            if sent > 600_000 / every.max(1) {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(every)).await;
            Some((Ok(web::Bytes::from_static(&[0u8])), sent + 1))
        }
    });
    HttpResponse::Ok()
        .content_type("audio/wav")
        .streaming(bytes)
}

async fn origin_hook(
    req: HttpRequest,
    body: web::Bytes,
    st: web::Data<Arc<Mutex<OriginState>>>,
) -> HttpResponse {
    let headers = header_map(&req);
    st.lock().unwrap().hooks.push(Received {
        headers,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        raw: body.to_vec(),
        at: Instant::now(),
    });
    HttpResponse::Ok().finish()
}

impl Origin {
    fn start() -> Self {
        let state = Arc::new(Mutex::new(OriginState::default()));
        let data = web::Data::new(state.clone());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .route("/audio/{name}", web::get().to(origin_file))
                .route("/redirect/{name}", web::get().to(origin_redirect))
                .route("/stream/{name}", web::get().to(origin_stream))
                .route("/trickle/{name}", web::get().to(origin_trickle))
                .route("/hook", web::post().to(origin_hook))
        })
        .workers(2)
        .disable_signals()
        .listen(listener)
        .unwrap()
        .run();
        actix_rt::spawn(server);
        Self {
            base: format!("http://127.0.0.1:{port}"),
            port,
            state,
        }
    }

    fn hooks(&self) -> Vec<Received> {
        self.state.lock().unwrap().hooks.clone()
    }
}

/// Where a case's audio comes from.
#[derive(Clone)]
enum Source {
    /// These bytes, at `/audio/{case}`.
    File(Vec<u8>),
    /// Nothing there: 404.
    Missing,
    /// Generated silence at `/stream/{case}`.
    Stream(Silence),
    /// A WAV header, then one byte every this many milliseconds, at `/trickle/{case}`.
    Trickle(u64),
    /// `hops` relative redirects, then a redirect to `then` (absolute or relative; `None`: a
    /// redirect without `Location`). In `then`, `{port}` is the origin's port and `{self}` the
    /// redirect's own path.
    Redirects { hops: usize, then: Option<String> },
}

/// How a case must end.
#[derive(Debug, Clone, Copy, PartialEq)]
enum End {
    /// Succeeded, with about this many seconds of audio.
    Ok(f64),
    /// Failed with this code.
    Fail(&'static str),
}

struct PipeCase {
    name: String,
    source: Source,
    end: End,
}

fn pipe(name: impl Into<String>, source: Source, end: End) -> PipeCase {
    PipeCase {
        name: name.into(),
        source,
        end,
    }
}

fn file(name: impl Into<String>, bytes: Vec<u8>, end: End) -> PipeCase {
    pipe(name, Source::File(bytes), end)
}

fn slug(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect()
}

/// Serves a case's source from `origin`; returns the path to ask for.
fn install(origin: &Origin, key: &str, source: &Source) -> String {
    let mut st = origin.state.lock().unwrap();
    match source {
        Source::File(bytes) => {
            st.files.insert(key.into(), Arc::new(bytes.clone()));
            format!("/audio/{key}")
        }
        Source::Missing => format!("/audio/{key}"),
        Source::Stream(s) => {
            st.streams.insert(key.into(), *s);
            format!("/stream/{key}")
        }
        Source::Trickle(every) => {
            st.trickles.insert(key.into(), *every);
            format!("/trickle/{key}")
        }
        Source::Redirects { hops, then } => {
            for i in 0..*hops {
                st.redirects.insert(
                    format!("{key}-{i}"),
                    Some(format!("/redirect/{key}-{}", i + 1)),
                );
            }
            let last = then.as_ref().map(|t| {
                t.replace("{port}", &origin.port.to_string())
                    .replace("{self}", &format!("/redirect/{key}-{hops}"))
            });
            st.redirects.insert(format!("{key}-{hops}"), last);
            format!("/redirect/{key}-0")
        }
    }
}

async fn api_get(client: &reqwest::Client, base: &str, path: &str) -> (u16, Value) {
    match client
        .get(format!("{base}{path}"))
        .basic_auth("admin", Some(common::e2e::PASSWORD))
        .send()
        .await
    {
        Ok(r) => {
            let s = r.status().as_u16();
            (s, r.json().await.unwrap_or(Value::Null))
        }
        Err(_) => (0, Value::Null),
    }
}

fn dir_entries(p: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(p)
        .map(|it| {
            it.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Submits every case to a deployment (all roles in one `uvr`), waits for their webhooks, and
/// checks each: state and code on the record and in the one signed webhook, no staging files,
/// stems in storage only for successes. Then the service must still be up and still separate
/// a valid song. `audio_base` is where the audio URLs point (the origin, or a name reached
/// through the proxy); hooks go to `hook_base`.
async fn run_pipeline_table(
    dep: &Deployment,
    origin: &Origin,
    audio_base: &str,
    hook_base: &str,
    cases: Vec<PipeCase>,
) {
    let mut svc = dep.spawn("api,processor,uploader", "all");
    let client = reqwest::Client::new();
    let base = dep.base();
    let started = Instant::now();
    let mut ids = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let key = format!("{i:02}-{}", slug(&c.name));
        let path = install(origin, &key, &c.source);
        let resp = client
            .post(format!("{base}/generate"))
            .basic_auth("admin", Some(common::e2e::PASSWORD))
            .json(&json!({"audio": format!("{audio_base}{path}"), "hook_url": format!("{hook_base}/hook")}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202, "{}: {:?}", c.name, resp.text().await);
        let body: Value = resp.json().await.unwrap();
        ids.push(body["task_id"].as_str().unwrap().to_string());
    }
    // Every task ends with a webhook.
    let deadline = Instant::now() + Duration::from_secs(150);
    while origin.hooks().len() < cases.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // And no task sends a second one: nothing is left to claim.
    dep.redis.settled(Duration::from_secs(60)).await;
    let hooks = origin.hooks();
    let mut failures = Vec::new();
    let mut lines = Vec::new();
    let staging = dep.path("staging");
    let stems = dep.path("stems");
    for (c, id) in cases.iter().zip(&ids) {
        let mut problems = Vec::new();
        let (_, t) = api_get(&client, &base, &format!("/tasks/{id}")).await;
        let status = t["status"].as_str().unwrap_or("?").to_string();
        let code = t["error"]["code"].as_str().map(str::to_string);
        let mine: Vec<&Received> = hooks
            .iter()
            .filter(|h| h.body["task_id"] == id.as_str())
            .collect();
        let got = match (status.as_str(), &code) {
            ("succeeded", _) => End::Ok(
                mine.first()
                    .and_then(|h| h.body["duration_seconds"].as_f64())
                    .unwrap_or(-1.0),
            ),
            ("failed", Some(code)) => End::Fail(Box::leak(code.clone().into_boxed_str())),
            _ => End::Fail(Box::leak(format!("<{status}>").into_boxed_str())),
        };
        let matches = match (c.end, got) {
            (End::Ok(want), End::Ok(have)) => (want - have).abs() < 0.06,
            (a, b) => a == b,
        };
        if !matches {
            problems.push(format!(
                "expected {:?}, got {:?} (attempts {})",
                c.end, got, t["attempts"]
            ));
        }
        if mine.len() != 1 {
            problems.push(format!("{} webhooks", mine.len()));
        }
        if let Some(h) = mine.first() {
            if !verify_signature(WEBHOOK_SECRET, h) {
                problems.push("webhook signature does not verify".into());
            }
            let want_status = if matches!(c.end, End::Ok(_)) {
                "succeeded"
            } else {
                "failed"
            };
            if h.body["status"] != want_status {
                problems.push(format!("webhook status {}", h.body["status"]));
            }
            if let End::Fail(want) = c.end
                && h.body["error"]["code"] != want
            {
                problems.push(format!("webhook code {}", h.body["error"]["code"]));
            }
        }
        if let End::Fail(_) = c.end
            && t["attempts"] != 1
        {
            problems.push(format!(
                "{} attempts for a permanent failure",
                t["attempts"]
            ));
        }
        if staging.join(id).exists() {
            problems.push(format!(
                "staging left behind: {:?}",
                dir_entries(&staging.join(id))
            ));
        }
        let stored = dir_entries(&stems.join(id));
        match c.end {
            End::Fail(_) if !stored.is_empty() => {
                problems.push(format!("stems stored for a failed task: {stored:?}"))
            }
            End::Ok(_) if stored != ["instrumental.wav", "vocals.wav"] => {
                problems.push(format!("stored stems {stored:?}"))
            }
            _ => {}
        }
        let outcome = if problems.is_empty() {
            "ok"
        } else {
            "MISMATCH"
        };
        let message = t["error"]["message"].as_str().unwrap_or_default();
        lines.push(format!("  {outcome:8} {:64} {got:?} {message}", c.name));
        if !problems.is_empty() {
            failures.push(format!("{}: {}", c.name, problems.join("; ")));
        }
    }
    eprintln!(
        "{} cases in {:.1} s:\n{}",
        cases.len(),
        started.elapsed().as_secs_f64(),
        lines.join("\n")
    );
    // Nothing at all is left in the staging directory.
    let left = dir_entries(&staging);
    if !left.is_empty() {
        failures.push(format!("staging directory not empty: {left:?}"));
    }
    // Storage holds only the successes' stems.
    let succeeded: Vec<&String> = cases
        .iter()
        .zip(&ids)
        .filter(|(c, _)| matches!(c.end, End::Ok(_)))
        .map(|(_, id)| id)
        .collect();
    for d in dir_entries(&stems) {
        if !succeeded.iter().any(|id| **id == d) {
            failures.push(format!("unexpected entry in storage: {d}"));
        }
    }
    // The service is still up and still separates.
    let alive = svc
        .child
        .as_mut()
        .is_some_and(|c| c.try_wait().is_ok_and(|s| s.is_none()));
    if !alive {
        failures.push("the service exited".into());
    }
    let (h, _) = api_get(&client, &base, "/health").await;
    if h != 200 {
        failures.push(format!("/health answers {h}"));
    }
    // Panics inside the third-party demuxers are contained by the decoder (their message
    // still reaches the log); any other panic is a bug.
    let log = svc.log_text();
    for line in log.lines().filter(|l| {
        l.contains("the separator panicked")
            || (l.contains("panicked at") && !l.contains("/symphonia-"))
    }) {
        failures.push(format!("a panic in the log: {line}"));
    }
    assert!(
        failures.is_empty(),
        "{} problems:\n{}\n\nlog tail:\n{}",
        failures.len(),
        failures.join("\n"),
        tail(&log, 40)
    );
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Deployment settings shared by the pipeline tables: two attempts (a retried failure would
/// show), a 20 s duration cap and a 64 MiB download cap, so the hour-long cases are refused
/// quickly, for a reason the test chooses.
const LIMITS: [(&str, &str); 5] = [
    ("MAX_ATTEMPTS", "2"),
    ("PROCESSOR_CONCURRENCY", "2"),
    ("UPLOADER_CONCURRENCY", "2"),
    ("MAX_AUDIO_SECONDS", "20"),
    ("MAX_AUDIO_BYTES", "67108864"),
];

/// Every format the decoder handles, intact, truncated at several points and corrupted;
/// degenerate and lying headers; non-audio; extreme sample rates and channel counts.
#[actix_rt::test]
async fn pipeline_ends_every_damaged_file_with_a_stable_code() {
    use End::{Fail, Ok};
    use fixtures::*;
    let origin = Origin::start();
    let dep = Deployment::new(&LIMITS);
    let pcm16 = tone(1.0, 44_100);
    let mut cases = vec![
        // WAV, every encoding.
        file("WAV PCM16 stereo 44.1 kHz", pcm16.clone(), Ok(1.0)),
        file(
            "WAV PCM24 stereo 48 kHz",
            wav(48_000, 2, 48_000, Pcm::I24),
            Ok(1.0),
        ),
        file(
            "WAV float32 stereo 44.1 kHz",
            wav(44_100, 2, 44_100, Pcm::F32),
            Ok(1.0),
        ),
        file(
            "WAV PCM8 mono 22.05 kHz",
            wav(22_050, 1, 22_050, Pcm::U8),
            Ok(1.0),
        ),
        file("WAV A-law stereo 8 kHz", alaw(8000), Ok(1.0)),
        file(
            "WAV IMA ADPCM stereo 22.05 kHz",
            ima_adpcm(22),
            Ok(22.0 * 1017.0 / 22_050.0),
        ),
        // WAV, damaged.
        file(
            "WAV truncated to the RIFF header (12 B)",
            truncate(&pcm16, 12),
            Fail("audio_unsupported"),
        ),
        file(
            "WAV truncated inside fmt (30 B)",
            truncate(&pcm16, 30),
            Fail("audio_unsupported"),
        ),
        file(
            "WAV truncated after the header (44 B)",
            truncate(&pcm16, 44),
            Fail("audio_corrupt"),
        ),
        file(
            "WAV truncated at half",
            truncate(&pcm16, pcm16.len() / 2),
            Fail("audio_corrupt"),
        ),
        file(
            "WAV truncated by one byte",
            truncate(&pcm16, pcm16.len() - 1),
            Ok(1.0),
        ),
        file(
            "WAV with 4 KB of noise in the middle (PCM has no checksum)",
            corrupt_middle(&pcm16, 4096),
            Ok(1.0),
        ),
        file(
            "WAV header claiming 10 s, holding 1 s",
            wav_with_lengths(pcm16.clone(), 36 + 1_764_000, 1_764_000),
            Fail("audio_corrupt"),
        ),
        file(
            "WAV header claiming an hour, holding 1 s",
            wav_with_lengths(pcm16.clone(), 36 + 635_040_000, 635_040_000),
            Fail("audio_too_long"),
        ),
        file(
            "WAV data chunk longer than its RIFF chunk",
            wav_with_lengths(pcm16.clone(), pcm16.len() as u32 - 8, 0x7FFF_FFFF),
            Fail("audio_corrupt"),
        ),
        file(
            "WAV RIFF length 0xFFFFFFFF, data length right",
            wav_with_lengths(pcm16.clone(), u32::MAX, 176_400),
            Ok(1.0),
        ),
        file(
            "WAV PCM16 lengths 0xFFFFFFFF (written to a pipe)",
            wav_with_lengths(pcm16.clone(), u32::MAX, u32::MAX),
            Ok(1.0),
        ),
        file(
            "WAV PCM24 lengths 0xFFFFFFFF (written to a pipe)",
            wav_with_lengths(wav(48_000, 2, 48_000, Pcm::I24), u32::MAX, u32::MAX),
            Ok(1.0),
        ),
        file(
            "WAV PCM16 lengths 0xFFFFFFFF, 30 s (over the cap)",
            wav_with_lengths(tone(30.0, 8000), u32::MAX, u32::MAX),
            Fail("audio_too_long"),
        ),
        file(
            "WAV data length 0 with samples after it",
            wav_with_lengths(pcm16.clone(), 36, 0),
            Fail("audio_empty"),
        ),
        file(
            "WAV with no samples",
            wav(44_100, 2, 0, Pcm::I16),
            Fail("audio_empty"),
        ),
        file("WAV with one sample", wav(44_100, 2, 1, Pcm::I16), Ok(0.0)),
        file("zero-length file", Vec::new(), Fail("audio_empty")),
        // Sample rates.
        file(
            "WAV at 1 Hz",
            wav(1, 2, 4, Pcm::I16),
            Fail("audio_unsupported"),
        ),
        file(
            "WAV at 999 Hz",
            wav(999, 2, 999, Pcm::I16),
            Fail("audio_unsupported"),
        ),
        file(
            "WAV at 1 kHz (lowest accepted)",
            wav(1000, 2, 1000, Pcm::I16),
            Ok(1.0),
        ),
        file("WAV at 8 kHz", tone(1.0, 8000), Ok(1.0)),
        file(
            "WAV at 384 kHz",
            wav(384_000, 2, 384_000, Pcm::I16),
            Ok(1.0),
        ),
        file(
            "WAV at 0 Hz (crafted: the demuxer panics, contained)",
            wav_with_rate(0),
            Fail("audio_corrupt"),
        ),
        file(
            "WAV at 4294967295 Hz (crafted)",
            wav_with_rate(u32::MAX),
            Fail("audio_unsupported"),
        ),
        // Channel counts: folded to stereo up to symphonia's 26 positions.
        file("WAV mono", wav(44_100, 1, 44_100, Pcm::I16), Ok(1.0)),
        file("WAV 6 channels", wav(44_100, 6, 44_100, Pcm::I16), Ok(1.0)),
        file("WAV 8 channels", wav(44_100, 8, 44_100, Pcm::I16), Ok(1.0)),
        file(
            "WAV 26 channels",
            wav(44_100, 26, 11_025, Pcm::I16),
            Ok(0.25),
        ),
        file(
            "WAV 32 channels",
            wav(44_100, 32, 11_025, Pcm::I16),
            Fail("audio_unsupported"),
        ),
        file(
            "WAV 0 channels (crafted)",
            wav_with_channels(0),
            Fail("audio_corrupt"),
        ),
        file(
            "WAV 65535 channels (crafted)",
            wav_with_channels(u16::MAX),
            Fail("audio_corrupt"),
        ),
    ];
    let flac16 = flac(44_100, 2, 16, 44_100);
    cases.extend([
        file("FLAC 16-bit stereo 44.1 kHz", flac16.clone(), Ok(1.0)),
        file(
            "FLAC 24-bit mono 48 kHz",
            flac(48_000, 1, 24, 48_000),
            Ok(1.0),
        ),
        file("FLAC with one sample", flac(44_100, 2, 16, 1), Ok(0.0)),
        file(
            "FLAC truncated after STREAMINFO",
            truncate(&flac16, 42),
            Fail("audio_unsupported"),
        ),
        file(
            "FLAC truncated at half",
            truncate(&flac16, flac16.len() / 2),
            Fail("audio_corrupt"),
        ),
        file(
            "FLAC truncated by two bytes (last 71 ms frame lost, within 0.1 s)",
            truncate(&flac16, flac16.len() - 2),
            Ok(40_960.0 / 44_100.0),
        ),
        file(
            "FLAC with 64 B of noise in the middle (one 93 ms frame lost)",
            corrupt_middle(&flac16, 64),
            Ok(40_004.0 / 44_100.0),
        ),
        file(
            "FLAC with 40 KB of noise in the middle",
            corrupt_middle(&flac16, 40_000),
            Fail("audio_corrupt"),
        ),
    ]);
    let mp3_plain = mp3(40, None);
    let mp3_xing = mp3(
        40,
        Some(Xing {
            frames: 40,
            lame_delay: None,
        }),
    );
    let mp3_secs = 40.0 * MP3_SAMPLES as f64 / 44_100.0;
    cases.extend([
        file("MP3 (no Xing header)", mp3_plain.clone(), Ok(mp3_secs)),
        file("MP3 with a Xing header", mp3_xing.clone(), Ok(mp3_secs)),
        file(
            "MP3 truncated at half (no Xing: a stream)",
            truncate(&mp3_plain, 20 * MP3_FRAME),
            Ok(mp3_secs / 2.0),
        ),
        file(
            "MP3 truncated at half (Xing says 40 frames)",
            truncate(&mp3_xing, 21 * MP3_FRAME),
            Fail("audio_corrupt"),
        ),
        file(
            "MP3 with 64 B of noise in the middle",
            corrupt_middle(&mp3_plain, 64),
            Ok(mp3_secs),
        ),
        file(
            "MP3 with 2 KB of noise in the middle (5 frames lost)",
            corrupt_middle(&mp3_plain, 2048),
            Fail("audio_corrupt"),
        ),
        file(
            "MP3 whose Xing header claims 2^32-1 frames",
            mp3(
                40,
                Some(Xing {
                    frames: u32::MAX,
                    lame_delay: None,
                }),
            ),
            Fail("audio_too_long"),
        ),
        file(
            "MP3 whose LAME delay exceeds its length",
            mp3(
                40,
                Some(Xing {
                    frames: 0,
                    lame_delay: Some(2000),
                }),
            ),
            Fail("audio_corrupt"),
        ),
        file(
            "MP3 truncated inside the first frame",
            truncate(&mp3_plain, 100),
            Fail("audio_unsupported"),
        ),
    ]);
    let aac = aac_adts(44, 2);
    let aac_secs = 44.0 * AAC_SAMPLES as f64 / 44_100.0;
    cases.extend([
        file("AAC-LC (ADTS) stereo", aac.clone(), Ok(aac_secs)),
        file("AAC-LC (ADTS) mono", aac_adts(44, 1), Ok(aac_secs)),
        file(
            "AAC truncated at half",
            truncate(&aac, aac.len() / 2),
            Ok(aac_secs / 2.0),
        ),
        file(
            "AAC with noise in the middle",
            corrupt_middle(&aac, 64),
            Fail("audio_unsupported"),
        ),
    ]);
    let ogg = ogg_vorbis(2, 44_100, 1.0);
    cases.extend([
        file("Ogg Vorbis stereo 44.1 kHz", ogg.clone(), Ok(1.0)),
        file("Ogg Vorbis mono 8 kHz", ogg_vorbis(1, 8000, 1.0), Ok(1.0)),
        file(
            "Ogg Vorbis truncated after the headers",
            truncate(&ogg, 200),
            Fail("audio_unsupported"),
        ),
        file(
            "Ogg Vorbis truncated at half",
            truncate(&ogg, ogg.len() / 2),
            Fail("audio_unsupported"),
        ),
        file(
            "Ogg Vorbis with noise in the middle (a page of 0.58 s lost)",
            corrupt_middle(&ogg, 64),
            Fail("audio_corrupt"),
        ),
    ]);
    let opus = ogg_opus(3.0);
    cases.extend([
        file("Ogg Opus stereo (libopus)", opus.clone(), Ok(3.0)),
        file(
            "Ogg Opus truncated after the headers",
            truncate(&opus, 120),
            Fail("audio_unsupported"),
        ),
        file(
            "Ogg Opus truncated at half (the pages before the cut: a stream)",
            truncate(&opus, opus.len() / 2),
            Ok(1.0 + 648.0 / 48_000.0),
        ),
        file(
            "Ogg Opus with noise in the middle (a page of 1 s lost)",
            corrupt_middle(&opus, 64),
            Fail("audio_corrupt"),
        ),
    ]);
    cases.extend([
        file("HTML error page", html(), Fail("audio_unsupported")),
        file("PNG image", png(), Fail("audio_unsupported")),
        file(
            "64 KB of random bytes (a false MPEG sync inside)",
            noise(65_536, 42),
            Fail("audio_corrupt"),
        ),
        file(
            "an ID3 tag and nothing else",
            id3_only(),
            Fail("audio_unsupported"),
        ),
        file(
            "JSON",
            br#"{"audio": "https://93.184.215.14/a.wav"}"#.to_vec(),
            Fail("audio_unsupported"),
        ),
        file(
            "RIFF/WAVE with a garbage fmt chunk",
            b"RIFF\x10\x00\x00\x00WAVEfmt garbage garbage".to_vec(),
            Fail("audio_corrupt"),
        ),
        file(
            "control: a valid song after all of the above",
            tone(0.5, 44_100),
            Ok(0.5),
        ),
    ]);
    run_pipeline_table(&dep, &origin, &origin.base, &origin.base, cases).await;
}

/// Transport-level input: missing files, an hour of silence against the size and duration
/// caps (streamed, with and without `Content-Length`), redirect chains and broken redirects.
#[actix_rt::test]
async fn pipeline_limits_and_redirect_chains_end_with_stable_codes() {
    use End::{Fail, Ok};
    let origin = Origin::start();
    let dep = Deployment::new(&LIMITS);
    let hour = |rate, channels, content_length, unknown_length| {
        Source::Stream(Silence {
            rate,
            channels,
            seconds: 3600,
            content_length,
            unknown_length,
        })
    };
    let song = Some("/audio/shared".to_string());
    origin
        .state
        .lock()
        .unwrap()
        .files
        .insert("shared".into(), Arc::new(fixtures::tone(0.5, 44_100)));
    let cases = vec![
        pipe("404 Not Found", Source::Missing, Fail("audio_http_status")),
        pipe(
            "an hour of silence, 8 kHz mono (57.6 MB, under the byte cap)",
            hour(8000, 1, true, false),
            Fail("audio_too_long"),
        ),
        pipe(
            "an hour of silence, 8 kHz mono, length unknown (cap hit while decoding)",
            hour(8000, 1, false, true),
            Fail("audio_too_long"),
        ),
        pipe(
            "an hour of silence, 44.1 kHz stereo (635 MB), Content-Length",
            hour(44_100, 2, true, false),
            Fail("audio_too_large"),
        ),
        pipe(
            "an hour of silence, 44.1 kHz stereo (635 MB), chunked",
            hour(44_100, 2, false, false),
            Fail("audio_too_large"),
        ),
        pipe(
            "5 redirects (the limit)",
            Source::Redirects {
                hops: 4,
                then: song.clone(),
            },
            Ok(0.5),
        ),
        pipe(
            "6 redirects",
            Source::Redirects {
                hops: 5,
                then: song.clone(),
            },
            Fail("audio_too_many_redirects"),
        ),
        pipe(
            "a redirect loop",
            Source::Redirects {
                hops: 0,
                then: Some("{self}".into()),
            },
            Fail("audio_too_many_redirects"),
        ),
        pipe(
            "a redirect without Location",
            Source::Redirects {
                hops: 1,
                then: None,
            },
            Fail("audio_too_many_redirects"),
        ),
        pipe(
            "a redirect to an unparseable URL",
            Source::Redirects {
                hops: 0,
                then: Some("http://[::1".into()),
            },
            Fail("audio_too_many_redirects"),
        ),
        pipe(
            "a redirect to ftp:",
            Source::Redirects {
                hops: 0,
                then: Some("ftp://127.0.0.1:{port}/a.wav".into()),
            },
            Fail("unsupported_scheme"),
        ),
        pipe(
            "a redirect to file:",
            Source::Redirects {
                hops: 1,
                then: Some("file:///etc/passwd".into()),
            },
            Fail("unsupported_scheme"),
        ),
        pipe(
            "a redirect to a 404",
            Source::Redirects {
                hops: 0,
                then: Some("/audio/none".into()),
            },
            Fail("audio_http_status"),
        ),
        pipe(
            "control: a valid song after all of the above",
            Source::File(fixtures::tone(0.5, 44_100)),
            Ok(0.5),
        ),
    ];
    run_pipeline_table(&dep, &origin, &origin.base, &origin.base, cases).await;
}

/// What one task may take: a source that trickles its bytes is cut off by the total deadline
/// (`FETCH_TOTAL_TIMEOUT_SECONDS`) with `audio_timeout` after one attempt, instead of holding
/// a processor for as long as it keeps each gap under the idle timeout; stems that would
/// pass `MAX_OUTPUT_BYTES` fail with `output_too_large`, before writing when the length is
/// known and as they grow when it is not, leaving nothing behind. And the proxy variables of
/// the environment are not obeyed: every one of them names a decoy proxy that would answer
/// 404, and the song and the webhooks still go directly.
#[actix_rt::test]
async fn pipeline_bounds_slow_sources_and_large_outputs_and_ignores_environment_proxies() {
    use End::{Fail, Ok};
    let origin = Origin::start();
    let decoy = Origin::start();
    let dep = Deployment::new(&[
        LIMITS[0],
        LIMITS[1],
        ("FETCH_TOTAL_TIMEOUT_SECONDS", "3"),
        // Two 16-bit stems of about 5.6 s (176,400 bytes per second each).
        ("MAX_OUTPUT_BYTES", "2000000"),
        ("http_proxy", decoy.base.as_str()),
        ("HTTP_PROXY", decoy.base.as_str()),
        ("https_proxy", decoy.base.as_str()),
        ("all_proxy", decoy.base.as_str()),
        ("ALL_PROXY", decoy.base.as_str()),
    ]);
    let started = Instant::now();
    let cases = vec![
        pipe(
            "a byte every 400 ms, well inside the idle timeout",
            Source::Trickle(400),
            Fail("audio_timeout"),
        ),
        pipe(
            "control: a song, with proxies in the environment",
            Source::File(fixtures::tone(0.5, 44_100)),
            Ok(0.5),
        ),
        pipe(
            "10 s: two stems over MAX_OUTPUT_BYTES, known before writing",
            Source::File(fixtures::tone(10.0, 44_100)),
            Fail("output_too_large"),
        ),
        pipe(
            "10 s of unknown length: over MAX_OUTPUT_BYTES while writing",
            Source::Stream(Silence {
                rate: 44_100,
                channels: 2,
                seconds: 10,
                content_length: false,
                unknown_length: true,
            }),
            Fail("output_too_large"),
        ),
        pipe(
            "control: 5 s, within the budget",
            Source::File(fixtures::tone(5.0, 44_100)),
            Ok(5.0),
        ),
    ];
    run_pipeline_table(&dep, &origin, &origin.base, &origin.base, cases).await;
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the trickling source was not cut off at its deadline"
    );
    assert_eq!(
        decoy.state.lock().unwrap().asked,
        Vec::<String>::new(),
        "a request went through an environment proxy"
    );
    assert_eq!(origin.state.lock().unwrap().asked.len(), 3);
}

/// Redirects into private space, with the address policy on. The origin is reached through a
/// forward proxy under a name that resolves nowhere (see the module documentation); every
/// redirect target below would serve a valid song if the policy let the request through.
#[actix_rt::test]
async fn pipeline_refuses_redirects_into_private_space() {
    use End::{Fail, Ok};
    let origin = Origin::start();
    let dep = Deployment::new(&[
        LIMITS[0],
        LIMITS[1],
        ("ALLOW_PRIVATE_NETWORKS", "false"),
        ("OUTBOUND_PROXY", origin.base.as_str()),
    ]);
    origin
        .state
        .lock()
        .unwrap()
        .files
        .insert("shared".into(), Arc::new(fixtures::tone(0.5, 44_100)));
    let to = |target: &str| Source::Redirects {
        hops: 0,
        then: Some(target.to_string()),
    };
    let private = Fail("private_address");
    let cases = vec![
        pipe(
            "control: the song through the proxy",
            Source::File(fixtures::tone(0.5, 44_100)),
            Ok(0.5),
        ),
        pipe(
            "control: two public redirects",
            Source::Redirects {
                hops: 1,
                then: Some("/audio/shared".into()),
            },
            Ok(0.5),
        ),
        pipe(
            "to 127.0.0.1",
            to("http://127.0.0.1:{port}/audio/shared"),
            private,
        ),
        pipe("to 127.1", to("http://127.1:{port}/audio/shared"), private),
        pipe(
            "to 0x7f000001",
            to("http://0x7f000001:{port}/audio/shared"),
            private,
        ),
        pipe(
            "to 2130706433",
            to("http://2130706433:{port}/audio/shared"),
            private,
        ),
        pipe(
            "to 0.0.0.0",
            to("http://0.0.0.0:{port}/audio/shared"),
            private,
        ),
        pipe(
            "to localhost",
            to("http://localhost:{port}/audio/shared"),
            private,
        ),
        pipe(
            "to a subdomain of localhost",
            to("http://a.localhost:{port}/audio/shared"),
            private,
        ),
        pipe("to [::1]", to("http://[::1]:{port}/audio/shared"), private),
        pipe(
            "to [::ffff:127.0.0.1]",
            to("http://[::ffff:127.0.0.1]:{port}/audio/shared"),
            private,
        ),
        pipe(
            "to userinfo@127.0.0.1",
            to("http://good@127.0.0.1:{port}/audio/shared"),
            private,
        ),
        pipe(
            "to a percent-encoded 127.0.0.1",
            to("http://%31%32%37.0.0.1:{port}/audio/shared"),
            private,
        ),
        pipe(
            "to 169.254.169.254 (metadata)",
            to("http://169.254.169.254/latest/meta-data/"),
            private,
        ),
        pipe(
            "to [fd00:ec2::254] (metadata)",
            to("http://[fd00:ec2::254]/latest/meta-data/"),
            private,
        ),
        pipe(
            "to 100.100.100.200 (metadata)",
            to("http://100.100.100.200/latest/meta-data/"),
            private,
        ),
        pipe("to 10.0.0.1", to("http://10.0.0.1/a.wav"), private),
        pipe("to 100.64.0.1", to("http://100.64.0.1/a.wav"), private),
        pipe("to [fd00::1]", to("http://[fd00::1]/a.wav"), private),
        pipe(
            "two public hops, then 127.0.0.1",
            Source::Redirects {
                hops: 2,
                then: Some("http://127.0.0.1:{port}/audio/shared".into()),
            },
            private,
        ),
        pipe(
            "to file:",
            to("file:///etc/passwd"),
            Fail("unsupported_scheme"),
        ),
        pipe(
            "to gopher: on loopback",
            to("gopher://127.0.0.1:{port}/_GET"),
            Fail("unsupported_scheme"),
        ),
        pipe(
            "control: a valid song after all of the above",
            Source::File(fixtures::tone(0.5, 44_100)),
            Ok(0.5),
        ),
    ];
    run_pipeline_table(
        &dep,
        &origin,
        "http://audio.invalid",
        "http://hooks.invalid",
        cases,
    )
    .await;
}
