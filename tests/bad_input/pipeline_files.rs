//! The pipeline against damaged files: every format the decoder handles, intact, truncated
//! and corrupted; degenerate and lying headers; non-audio; extreme sample rates and channel
//! counts.

use super::fixtures;
use super::pipeline_cases::{End, LIMITS, file, run_pipeline_table};
use crate::common::e2e::{Deployment, Peer};

/// Every format the decoder handles, intact, truncated at several points and corrupted;
/// degenerate and lying headers; non-audio; extreme sample rates and channel counts.
#[actix_rt::test]
async fn pipeline_ends_every_damaged_file_with_a_stable_code() {
    use End::{Fail, Ok};
    use fixtures::*;
    let origin = Peer::start();
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
