//! Comparing separated audio with a reference (the model suites `tests/mdx.rs` and
//! `tests/roformer.rs` include this file).

/// Raw little-endian float32 values of a fixture file.
pub fn read_f32(path: &std::path::Path) -> Vec<f32> {
    std::fs::read(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Writes channels-first stereo (`[2, n]`) as a 44.1 kHz float WAV (the real binary's input).
pub fn write_wav_f32(path: &std::path::Path, planar: &[f32], n: usize) {
    let spec = hound::WavSpec {
        channels: 2,
        sample_rate: 44_100,
        bits_per_sample: 32,
        sample_format: hound::SampleFormat::Float,
    };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    for i in 0..n {
        w.write_sample(planar[i]).unwrap();
        w.write_sample(planar[n + i]).unwrap();
    }
    w.finalize().unwrap();
}

/// Signal-to-noise ratio of `got` against `reference`, in dB.
pub fn snr_db(reference: &[f32], got: &[f32]) -> f64 {
    let (mut s, mut e) = (0.0f64, 0.0f64);
    for (r, g) in reference.iter().zip(got) {
        s += f64::from(*r) * f64::from(*r);
        e += (f64::from(*r) - f64::from(*g)).powi(2);
    }
    10.0 * (s / e.max(1e-30)).log10()
}

/// Channels-first stereo (`[2, n]`) of `got` against `want`: SNR over the whole clip above
/// `whole` dB, and above `local` dB in every stretch of `stretch` samples that is not
/// silent, so a local error (at a chunk seam, say) cannot hide in a good average.
pub fn assert_stereo_matches(
    what: &str,
    want: &[f32],
    got: &[f32],
    n: usize,
    (whole, local, stretch): (f64, f64, usize),
) {
    assert_eq!(want.len(), got.len(), "{what}: lengths differ");
    let snr = snr_db(want, got);
    assert!(snr > whole, "{what}: SNR {snr:.1} dB");
    for c in 0..2 {
        for start in (0..n).step_by(stretch) {
            let end = (start + stretch).min(n);
            let (w, g) = (
                &want[c * n + start..c * n + end],
                &got[c * n + start..c * n + end],
            );
            if w.iter().map(|v| v * v).sum::<f32>() < 1e-6 {
                continue;
            }
            let snr = snr_db(w, g);
            assert!(
                snr > local,
                "{what}: channel {c} samples {start}..{end}: {snr:.1} dB"
            );
        }
    }
}
