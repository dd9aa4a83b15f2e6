//! Which spectrogram rows each band reads, for both variants, and how bands are grouped so
//! that bands of similar width run as one batched matrix product.
//!
//! A row is one channel of one STFT bin, `row = bin · channels + channel` (MSST folds the
//! stereo channels into the frequency axis, bin-major). A band reads its rows' real and
//! imaginary parts, interleaved: its input width is `2 · rows`.

use super::config::{RoformerConfig, Variant};

/// The rows of every band and how often each row is read.
#[derive(Debug, Clone, PartialEq)]
pub struct BandLayout {
    /// Rows of each band, in band order.
    pub bands: Vec<Vec<usize>>,
    /// For each row, how many bands read it (1 for BS-Roformer; the mask average's
    /// denominator for Mel-Band Roformer).
    pub bands_per_row: Vec<u32>,
    /// Bands grouped for batched products.
    pub groups: Vec<Group>,
}

/// Bands of similar width, zero-padded to the widest.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    /// The bands, by index.
    pub bands: Vec<usize>,
    /// The padded input width (`2 ·` the most rows among its bands).
    pub width: usize,
}

impl BandLayout {
    /// The layout of `config`.
    pub fn new(config: &RoformerConfig) -> Self {
        let channels = config.channels();
        let freqs = config.freqs();
        let bins: Vec<Vec<usize>> = match &config.variant {
            Variant::BandSplit { freqs_per_bands } => {
                let mut start = 0;
                freqs_per_bands
                    .iter()
                    .map(|&n| {
                        let b = (start..start + n).collect();
                        start += n;
                        b
                    })
                    .collect()
            }
            Variant::MelBand {
                num_bands,
                sample_rate,
            } => {
                let fb = mel_filterbank(*sample_rate, config.n_fft, *num_bands);
                fb.iter()
                    .enumerate()
                    .map(|(b, w)| {
                        (0..freqs)
                            .filter(|&f| {
                                w[f] > 0.0
                                    || (b == 0 && f == 0)
                                    || (b == num_bands - 1 && f == freqs - 1)
                            })
                            .collect()
                    })
                    .collect()
            }
        };
        let bands: Vec<Vec<usize>> = bins
            .iter()
            .map(|b| {
                b.iter()
                    .flat_map(|&f| (0..channels).map(move |s| f * channels + s))
                    .collect()
            })
            .collect();
        let mut bands_per_row = vec![0u32; freqs * channels];
        for b in &bands {
            for &r in b {
                bands_per_row[r] += 1;
            }
        }
        let groups = group(&bands);
        Self {
            bands,
            bands_per_row,
            groups,
        }
    }

    /// Input width of band `b` (`2 ·` its rows).
    pub fn width(&self, b: usize) -> usize {
        2 * self.bands[b].len()
    }

    /// Rows no band reads (must be empty for a usable model).
    pub fn uncovered(&self) -> Vec<usize> {
        (0..self.bands_per_row.len())
            .filter(|&r| self.bands_per_row[r] == 0)
            .collect()
    }
}

/// Groups bands whose widths are within 25 % of the narrowest in the group.
fn group(bands: &[Vec<usize>]) -> Vec<Group> {
    let mut order: Vec<usize> = (0..bands.len()).collect();
    order.sort_by_key(|&b| (bands[b].len(), b));
    let mut groups: Vec<Group> = Vec::new();
    let mut narrowest = 0;
    for b in order {
        let w = 2 * bands[b].len();
        match groups.last_mut() {
            Some(g) if 4 * w <= 5 * narrowest => {
                g.bands.push(b);
                g.width = g.width.max(w);
            }
            _ => {
                narrowest = w;
                groups.push(Group {
                    bands: vec![b],
                    width: w,
                });
            }
        }
    }
    for g in &mut groups {
        g.bands.sort_unstable();
    }
    groups
}

/// librosa's `filters.mel(sr, n_fft, n_mels)` with its defaults (Slaney mel scale, Slaney
/// area normalisation, 0 Hz to sr/2): `n_mels` rows of `n_fft / 2 + 1` weights.
pub fn mel_filterbank(sample_rate: u32, n_fft: usize, n_mels: usize) -> Vec<Vec<f64>> {
    let sr = f64::from(sample_rate);
    let bins = n_fft / 2 + 1;
    let fft_freqs: Vec<f64> = (0..bins)
        .map(|i| i as f64 * (sr / 2.0) / (bins - 1) as f64)
        .collect();
    let (lo, hi) = (hz_to_mel(0.0), hz_to_mel(sr / 2.0));
    let mel_f: Vec<f64> = (0..n_mels + 2)
        .map(|i| mel_to_hz(lo + (hi - lo) * i as f64 / (n_mels + 1) as f64))
        .collect();
    (0..n_mels)
        .map(|i| {
            let (d0, d1) = (mel_f[i + 1] - mel_f[i], mel_f[i + 2] - mel_f[i + 1]);
            let enorm = 2.0 / (mel_f[i + 2] - mel_f[i]);
            fft_freqs
                .iter()
                .map(|&f| {
                    let lower = -(mel_f[i] - f) / d0;
                    let upper = (mel_f[i + 2] - f) / d1;
                    // librosa stores the weights as float32.
                    f64::from((lower.min(upper).max(0.0) * enorm) as f32)
                })
                .collect()
        })
        .collect()
}

const F_SP: f64 = 200.0 / 3.0;
const MIN_LOG_HZ: f64 = 1000.0;
const MIN_LOG_MEL: f64 = MIN_LOG_HZ / F_SP;

fn log_step() -> f64 {
    6.4f64.ln() / 27.0
}

fn hz_to_mel(f: f64) -> f64 {
    if f >= MIN_LOG_HZ {
        MIN_LOG_MEL + (f / MIN_LOG_HZ).ln() / log_step()
    } else {
        f / F_SP
    }
}

fn mel_to_hz(m: f64) -> f64 {
    if m >= MIN_LOG_MEL {
        MIN_LOG_HZ * (log_step() * (m - MIN_LOG_MEL)).exp()
    } else {
        F_SP * m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> RoformerConfig {
        RoformerConfig::parse(yaml).unwrap()
    }

    #[test]
    fn bs_bands_are_contiguous_and_read_each_row_once() {
        let c = config(include_str!(
            "../../tests/fixtures/roformer/viperx_1297.yaml"
        ));
        let l = BandLayout::new(&c);
        assert_eq!(l.bands.len(), 62);
        assert_eq!(l.bands[0], vec![0, 1, 2, 3]);
        assert!(l.bands_per_row.iter().all(|&n| n == 1));
        assert_eq!(l.width(61), 2 * 2 * 129);
        // Equal widths share a group: 2, 4, 12, 24, 48 and 128/129 bins.
        assert_eq!(l.groups.len(), 6, "{:?}", l.groups);
        let mut all: Vec<usize> = l.groups.iter().flat_map(|g| g.bands.clone()).collect();
        all.sort_unstable();
        assert_eq!(all, (0..62).collect::<Vec<_>>());
    }

    #[test]
    fn mel_bands_overlap_and_cover_every_row() {
        let c = config(include_str!("../../tests/fixtures/roformer/mel_3005.yaml"));
        let l = BandLayout::new(&c);
        assert_eq!(l.bands.len(), 60);
        assert!(l.uncovered().is_empty());
        assert!(l.bands_per_row.iter().any(|&n| n >= 2));
        for g in &l.groups {
            let narrowest = g.bands.iter().map(|&b| l.width(b)).min().unwrap();
            assert!(4 * g.width <= 5 * narrowest, "{g:?}");
        }
    }

    #[test]
    fn mel_scale_round_trips() {
        for hz in [0.0, 440.0, 999.0, 1000.0, 8000.0, 22050.0] {
            assert!((mel_to_hz(hz_to_mel(hz)) - hz).abs() < 1e-9 * hz.max(1.0));
        }
    }
}
