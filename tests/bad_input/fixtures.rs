//! Generators of small audio files (and of things that are not audio).

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
pub fn fmt_chunk(tag: u16, channels: u16, rate: u32, align: u16, bits: u16, ext: &[u8]) -> Vec<u8> {
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
