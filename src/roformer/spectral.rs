//! The Roformer's STFT on the CPU, as `torch.stft`/`torch.istft` compute it (periodic Hann
//! window of `n_fft`, `center` with reflect padding, one-sided, optionally normalised), and
//! the moves between spectrograms and the network's band inputs and masks.

use std::sync::Arc;

use realfft::num_complex::Complex32;
use realfft::{ComplexToReal, RealFftPlanner, RealToComplex};

use super::bands::BandLayout;

/// One channel's spectrogram, bin-major: `[bins][frames]`.
pub type Spectrum = Vec<Complex32>;

/// STFT and inverse STFT of one geometry.
pub struct Stft {
    n_fft: usize,
    hop: usize,
    window: Vec<f32>,
    scale: f32,
    fwd: Arc<dyn RealToComplex<f32>>,
    inv: Arc<dyn ComplexToReal<f32>>,
}

impl std::fmt::Debug for Stft {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stft")
            .field("n_fft", &self.n_fft)
            .field("hop", &self.hop)
            .finish_non_exhaustive()
    }
}

impl Stft {
    /// The STFT with `n_fft`, `hop`; `normalized` scales it by `1/sqrt(n_fft)`.
    pub fn new(n_fft: usize, hop: usize, normalized: bool) -> Self {
        let mut planner = RealFftPlanner::<f32>::new();
        let window = (0..n_fft)
            .map(|i| {
                (0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / n_fft as f64).cos()) as f32
            })
            .collect();
        Self {
            n_fft,
            hop,
            window,
            scale: if normalized {
                1.0 / (n_fft as f32).sqrt()
            } else {
                1.0
            },
            fwd: planner.plan_fft_forward(n_fft),
            inv: planner.plan_fft_inverse(n_fft),
        }
    }

    /// Bins per frame.
    pub fn bins(&self) -> usize {
        self.n_fft / 2 + 1
    }

    /// Frames of a signal of `len` samples.
    pub fn frames(&self, len: usize) -> usize {
        len / self.hop + 1
    }

    /// The spectrogram of `x` (longer than `n_fft / 2`).
    pub fn forward(&self, x: &[f32]) -> Spectrum {
        let (n, bins, frames) = (self.n_fft, self.bins(), self.frames(x.len()));
        let len = x.len() as isize;
        let half = (n / 2) as isize;
        let reflect = |i: isize| -> usize {
            let i = if i < 0 { -i } else { i };
            (if i >= len { 2 * (len - 1) - i } else { i }) as usize
        };
        let mut out = vec![Complex32::default(); bins * frames];
        let mut frame = vec![0.0f32; n];
        let mut spec = vec![Complex32::default(); bins];
        for t in 0..frames {
            let start = (t * self.hop) as isize - half;
            for (k, v) in frame.iter_mut().enumerate() {
                *v = x[reflect(start + k as isize)] * self.window[k];
            }
            self.fwd
                .process(&mut frame, &mut spec)
                .expect("buffer sizes match the plan");
            for (f, s) in spec.iter().enumerate() {
                out[f * frames + t] = *s * self.scale;
            }
        }
        out
    }

    /// The signal of `len` samples whose spectrogram is `spec` (`torch.istft` with
    /// `length = len`).
    pub fn inverse(&self, spec: &[Complex32], len: usize) -> Vec<f32> {
        let (n, hop, bins) = (self.n_fft, self.hop, self.bins());
        let frames = spec.len() / bins;
        let total = n + hop * (frames - 1);
        let mut y = vec![0.0f64; total];
        let mut env = vec![0.0f64; total];
        let mut buf = vec![Complex32::default(); bins];
        let mut frame = vec![0.0f32; n];
        let unscale = 1.0 / (self.scale * n as f32);
        for t in 0..frames {
            for (f, b) in buf.iter_mut().enumerate() {
                *b = spec[f * frames + t];
            }
            buf[0].im = 0.0;
            buf[bins - 1].im = 0.0;
            self.inv
                .process(&mut buf, &mut frame)
                .expect("buffer sizes match the plan");
            for (k, v) in frame.iter().enumerate() {
                let w = self.window[k];
                y[t * hop + k] += f64::from(v * unscale * w);
                env[t * hop + k] += f64::from(w * w);
            }
        }
        let start = n / 2;
        (start..start + len)
            .map(|i| {
                if i < total && env[i] > 1e-11 {
                    (y[i] / env[i]) as f32
                } else {
                    0.0
                }
            })
            .collect()
    }
}

/// The band inputs of a batch, one `[bands, batch · frames, width]` buffer per group:
/// `specs[item][channel]` laid out as the network reads them.
pub fn band_inputs(layout: &BandLayout, specs: &[Vec<Spectrum>], frames: usize) -> Vec<Vec<f32>> {
    let channels = specs.first().map_or(2, Vec::len);
    let n = specs.len() * frames;
    layout
        .groups
        .iter()
        .map(|g| {
            let w = g.width;
            let mut out = vec![0.0f32; g.bands.len() * n * w];
            for (k, &band) in g.bands.iter().enumerate() {
                for (item, spec) in specs.iter().enumerate() {
                    for (j, &row) in layout.bands[band].iter().enumerate() {
                        let (f, s) = (row / channels, row % channels);
                        let src = &spec[s][f * frames..(f + 1) * frames];
                        for (t, c) in src.iter().enumerate() {
                            let o = (k * n + item * frames + t) * w + 2 * j;
                            out[o] = c.re;
                            out[o + 1] = c.im;
                        }
                    }
                }
            }
            out
        })
        .collect()
}

/// The masked spectrograms of one stem: the masks of every band (one buffer per group, as
/// [`band_inputs`] lays them out) averaged over the bands that read each row, times the
/// mixture's spectrogram; the DC bin zeroed when `zero_dc`. Returns `[item][channel]`.
pub fn apply_masks(
    layout: &BandLayout,
    masks: &[Vec<f32>],
    specs: &[Vec<Spectrum>],
    frames: usize,
    zero_dc: bool,
) -> Vec<Vec<Spectrum>> {
    let channels = specs.first().map_or(2, Vec::len);
    let n = specs.len() * frames;
    let mut sum: Vec<Vec<Spectrum>> = specs
        .iter()
        .map(|s| {
            s.iter()
                .map(|c| vec![Complex32::default(); c.len()])
                .collect()
        })
        .collect();
    for (g, data) in layout.groups.iter().zip(masks) {
        let w = g.width;
        for (k, &band) in g.bands.iter().enumerate() {
            for (item, acc) in sum.iter_mut().enumerate() {
                for (j, &row) in layout.bands[band].iter().enumerate() {
                    let (f, s) = (row / channels, row % channels);
                    let dst = &mut acc[s][f * frames..(f + 1) * frames];
                    for (t, d) in dst.iter_mut().enumerate() {
                        let o = (k * n + item * frames + t) * w + 2 * j;
                        *d += Complex32::new(data[o], data[o + 1]);
                    }
                }
            }
        }
    }
    for (acc, spec) in sum.iter_mut().zip(specs) {
        for (s, (a, x)) in acc.iter_mut().zip(spec).enumerate() {
            for (i, (m, v)) in a.iter_mut().zip(x).enumerate() {
                let f = i / frames;
                let count = layout.bands_per_row[f * channels + s] as f32;
                *m = if zero_dc && f == 0 {
                    Complex32::default()
                } else {
                    *v * (*m / count.max(1e-8))
                };
            }
        }
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inverse_undoes_forward() {
        for normalized in [false, true] {
            let stft = Stft::new(64, 16, normalized);
            let x: Vec<f32> = (0..320)
                .map(|i| ((i * 7919) % 97) as f32 / 97.0 - 0.5)
                .collect();
            let spec = stft.forward(&x);
            assert_eq!(spec.len(), 33 * 21);
            let y = stft.inverse(&spec, x.len());
            let err = x
                .iter()
                .zip(&y)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(err < 1e-5, "normalized {normalized}: {err}");
        }
    }
}
