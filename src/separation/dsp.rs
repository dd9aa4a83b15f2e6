//! `dsp-centre`: vocal extraction without model weights, by centre-channel extraction in
//! the STFT domain.
//!
//! # Method
//! Lead vocals are almost always mixed to the centre: the same signal, in phase, at the same
//! level in both channels, while much of the accompaniment is spread across the stereo field.
//! For each short-time spectrum (4096-point STFT, hop 1024, square-root Hann windows, so
//! analysis and synthesis together reconstruct the input exactly) and each frequency bin the
//! extractor measures how "centred" the bin is:
//!
//! ```text
//! s = max(0, 2·Re(L·conj(R)) / (|L|² + |R|²))      (1 for identical channels, 0 for
//!                                                     uncorrelated or opposite ones)
//! ```
//!
//! smooths `s` over time (one-pole, per bin) and turns it into a soft mask `m = s^γ`. The
//! vocal estimate is `m · (L + R) / 2` in both channels, restricted to the vocal band
//! (`low_hz`..`high_hz`: kick drums and bass, also centred, stay in the accompaniment), and the
//! instrumental is the mix minus the vocals, so the two stems always sum back to the mix.
//!
//! # Limits
//! It separates *what is in the centre* from *what is not*: centred instruments inside the
//! vocal band (snare, centred keys or guitars) leak into the vocals; reverb and stereo
//! effects on the voice stay in the instrumental; mono recordings cannot be separated at all
//! (everything is centred, so everything lands in the vocals within the band). Neural models
//! (MDX-Net) do far better on real music; this is the fallback that needs no weights.
//!
//! Memory is constant: the state is a few STFT frames, whatever the song length.

use std::collections::VecDeque;
use std::sync::Arc;

use realfft::num_complex::Complex32;
use realfft::{ComplexToReal, RealFftPlanner, RealToComplex};

use super::{Control, FrameSource, Listener, SeparateError, Separator, StemSink};
use crate::audio::{Frame, SAMPLE_RATE};

/// The built-in separator's model name.
pub const NAME: &str = "dsp-centre";

/// Tuning of the extractor.
#[derive(Debug, Clone)]
pub struct Params {
    /// FFT size.
    pub n_fft: usize,
    /// Hop size (a quarter of `n_fft` for the window sum to be constant).
    pub hop: usize,
    /// Mask exponent: higher is more selective.
    pub gamma: f32,
    /// Temporal smoothing of the centre measure (0: none, towards 1: more).
    pub smoothing: f32,
    /// Lowest frequency assigned to vocals.
    pub low_hz: f32,
    /// Highest frequency assigned to vocals.
    pub high_hz: f32,
    /// Input frames per chunk between progress reports.
    pub chunk: usize,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            n_fft: 4096,
            hop: 1024,
            gamma: 6.0,
            smoothing: 0.4,
            low_hz: 120.0,
            high_hz: 12_000.0,
            chunk: 1 << 16,
        }
    }
}

/// The centre-channel extractor.
pub struct CentreExtractor {
    p: Params,
    fwd: Arc<dyn RealToComplex<f32>>,
    inv: Arc<dyn ComplexToReal<f32>>,
    window: Vec<f32>,
}

impl std::fmt::Debug for CentreExtractor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CentreExtractor")
            .field("params", &self.p)
            .finish()
    }
}

impl CentreExtractor {
    /// An extractor with `params`.
    pub fn new(p: Params) -> Self {
        assert!(p.n_fft >= 16 && p.n_fft % 4 == 0 && p.hop * 4 == p.n_fft);
        let mut planner = RealFftPlanner::<f32>::new();
        let window = (0..p.n_fft)
            .map(|i| {
                let hann =
                    0.5 - 0.5 * (2.0 * std::f32::consts::PI * i as f32 / p.n_fft as f32).cos();
                hann.sqrt()
            })
            .collect();
        Self {
            fwd: planner.plan_fft_forward(p.n_fft),
            inv: planner.plan_fft_inverse(p.n_fft),
            window,
            p,
        }
    }
}

/// The running STFT state of one separation.
struct Stft<'a> {
    x: &'a CentreExtractor,
    input: [Vec<f32>; 2],
    acc: Vec<f32>,
    spec: [Vec<Complex32>; 2],
    time: Vec<f32>,
    centre: Vec<f32>,
    band: (usize, usize),
    emitted: u64,
}

impl<'a> Stft<'a> {
    fn new(x: &'a CentreExtractor) -> Self {
        let n = x.p.n_fft;
        let bins = n / 2 + 1;
        let hz_per_bin = SAMPLE_RATE as f32 / n as f32;
        Self {
            x,
            // The first frame sees n - hop zeros before the signal (see `push`).
            input: [vec![0.0; n - x.p.hop], vec![0.0; n - x.p.hop]],
            acc: vec![0.0; n],
            spec: [
                vec![Complex32::default(); bins],
                vec![Complex32::default(); bins],
            ],
            time: vec![0.0; n],
            centre: vec![0.0; bins],
            band: (
                (x.p.low_hz / hz_per_bin).ceil() as usize,
                ((x.p.high_hz / hz_per_bin).floor() as usize).min(bins - 1),
            ),
            emitted: 0,
        }
    }

    /// Feeds frames; vocal frames (mono, for the padded timeline) come out in `vocals`.
    fn push(&mut self, frames: &[Frame], vocals: &mut Vec<f32>) -> Result<(), SeparateError> {
        let (n, hop) = (self.x.p.n_fft, self.x.p.hop);
        for f in frames {
            self.input[0].push(f[0]);
            self.input[1].push(f[1]);
            if self.input[0].len() == n {
                self.frame(vocals)?;
                self.input[0].drain(..hop);
                self.input[1].drain(..hop);
            }
        }
        Ok(())
    }

    fn frame(&mut self, vocals: &mut Vec<f32>) -> Result<(), SeparateError> {
        let (n, hop) = (self.x.p.n_fft, self.x.p.hop);
        for c in 0..2 {
            for (t, (s, w)) in self
                .time
                .iter_mut()
                .zip(self.input[c].iter().zip(&self.x.window))
            {
                *t = s * w;
            }
            self.x
                .fwd
                .process(&mut self.time, &mut self.spec[c])
                .map_err(|e| SeparateError::Model(e.to_string()))?;
        }
        let (lo, hi) = self.band;
        let a = self.x.p.smoothing;
        let [l, r] = &mut self.spec;
        for k in 0..l.len() {
            let (lk, rk) = (l[k], r[k]);
            let power = lk.norm_sqr() + rk.norm_sqr();
            let s = if power > 1e-12 {
                (2.0 * (lk * rk.conj()).re / power).max(0.0)
            } else {
                0.0
            };
            self.centre[k] = a * self.centre[k] + (1.0 - a) * s;
            let m = if k >= lo && k <= hi {
                self.centre[k].powf(self.x.p.gamma)
            } else {
                0.0
            };
            // Vocal spectrum (mid, masked) goes into l for the inverse transform.
            l[k] = (lk + rk) * (0.5 * m);
        }
        let last = l.len() - 1;
        l[0].im = 0.0;
        l[last].im = 0.0;
        self.x
            .inv
            .process(&mut self.spec[0], &mut self.time)
            .map_err(|e| SeparateError::Model(e.to_string()))?;
        // Windowed overlap-add; sqrt-Hann twice = Hann, whose copies at hop n/4 sum to 2.
        let scale = 1.0 / (n as f32 * 2.0);
        for ((a, t), w) in self.acc.iter_mut().zip(&self.time).zip(&self.x.window) {
            *a += t * w * scale;
        }
        vocals.extend_from_slice(&self.acc[..hop]);
        self.acc.drain(..hop);
        self.acc.resize(n, 0.0);
        self.emitted += hop as u64;
        Ok(())
    }
}

impl Separator for CentreExtractor {
    fn name(&self) -> &str {
        NAME
    }

    fn family(&self) -> &'static str {
        "dsp"
    }

    fn separate(
        &mut self,
        input: &mut dyn FrameSource,
        output: &mut dyn StemSink,
        listener: &mut dyn Listener,
    ) -> Result<u64, SeparateError> {
        let total = input.total_frames();
        let (n, hop) = (self.p.n_fft, self.p.hop);
        let pad = (n - hop) as u64;
        let mut stft = Stft::new(self);
        // Input frames waiting for their vocal estimate (at most about one FFT).
        let mut pending: VecDeque<Frame> = VecDeque::with_capacity(n * 2);
        let mut vocal_mono: Vec<f32> = Vec::with_capacity(self.p.chunk + n);
        let mut skip = pad; // vocal samples of the zero padding
        let mut consumed: u64 = 0;
        let mut written: u64 = 0;
        let mut emit = |vocal_mono: &mut Vec<f32>,
                        pending: &mut VecDeque<Frame>,
                        skip: &mut u64,
                        limit: u64,
                        written: &mut u64|
         -> Result<(), SeparateError> {
            let mut vocals = Vec::with_capacity(vocal_mono.len());
            let mut inst = Vec::with_capacity(vocal_mono.len());
            for v in vocal_mono.drain(..) {
                if *skip > 0 {
                    *skip -= 1;
                    continue;
                }
                if *written >= limit {
                    break;
                }
                let Some(x) = pending.pop_front() else { break };
                vocals.push([v, v]);
                inst.push([x[0] - v, x[1] - v]);
                *written += 1;
            }
            output.write(0, &vocals)?;
            output.write(1, &inst)?;
            Ok(())
        };
        while let Some(chunk) = input.next_chunk(self.p.chunk)? {
            consumed += chunk.len() as u64;
            pending.extend(chunk.iter().copied());
            stft.push(&chunk, &mut vocal_mono)?;
            emit(
                &mut vocal_mono,
                &mut pending,
                &mut skip,
                u64::MAX,
                &mut written,
            )?;
            if listener.progress(consumed, total) == Control::Stop {
                return Err(SeparateError::Stopped);
            }
        }
        // Flush: zeros push the last input samples through every overlapping frame.
        let tail = vec![[0.0f32; 2]; n];
        stft.push(&tail, &mut vocal_mono)?;
        emit(
            &mut vocal_mono,
            &mut pending,
            &mut skip,
            consumed,
            &mut written,
        )?;
        debug_assert_eq!(written, consumed);
        listener.progress(consumed, Some(consumed));
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::separation::{NoListener, SliceSource, VecSink, sdr};

    fn run(x: &mut CentreExtractor, input: &[Frame]) -> VecSink {
        let mut sink = VecSink::default();
        let n = x
            .separate(&mut SliceSource::new(input), &mut sink, &mut NoListener)
            .unwrap();
        assert_eq!(n, input.len() as u64);
        sink
    }

    fn noise(len: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2654435761).max(1);
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s as f32 / u32::MAX as f32) * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn stems_have_the_input_length_and_sum_to_the_mix() {
        let l = noise(50_000, 1);
        let r = noise(50_000, 2);
        let mix: Vec<Frame> = l.iter().zip(&r).map(|(a, b)| [a * 0.3, b * 0.3]).collect();
        for len in [1, 100, 4095, 4096, 50_000] {
            let out = run(&mut CentreExtractor::new(Params::default()), &mix[..len]);
            assert_eq!(out.stems[0].len(), len);
            assert_eq!(out.stems[1].len(), len);
            for ((v, a), m) in out.stems[0].iter().zip(&out.stems[1]).zip(&mix[..len]) {
                for c in 0..2 {
                    assert!((v[c] + a[c] - m[c]).abs() < 1e-5);
                }
            }
        }
    }

    #[test]
    fn a_centred_source_goes_to_vocals_and_a_wide_one_to_the_instrumental() {
        let sr = SAMPLE_RATE as f32;
        let voice: Vec<f32> = (0..88_200)
            .map(|i| {
                let t = i as f32 / sr;
                (1..6)
                    .map(|h| (2.0 * std::f32::consts::PI * 330.0 * h as f32 * t).sin() / h as f32)
                    .sum::<f32>()
                    * 0.2
            })
            .collect();
        let (wl, wr) = (noise(88_200, 7), noise(88_200, 8));
        let vocals: Vec<Frame> = voice.iter().map(|v| [*v, *v]).collect();
        let inst: Vec<Frame> = wl
            .iter()
            .zip(&wr)
            .map(|(a, b)| [a * 0.2, b * 0.2])
            .collect();
        let mix: Vec<Frame> = vocals
            .iter()
            .zip(&inst)
            .map(|(v, a)| [v[0] + a[0], v[1] + a[1]])
            .collect();
        let out = run(&mut CentreExtractor::new(Params::default()), &mix);
        let ours = sdr(&vocals, &out.stems[0]);
        let mid: Vec<Frame> = mix.iter().map(|f| [(f[0] + f[1]) / 2.0; 2]).collect();
        let baseline = sdr(&vocals, &mid);
        assert!(
            ours > baseline + 3.0,
            "ours {ours:.1} dB vs mid/L-R baseline {baseline:.1} dB"
        );
    }

    #[test]
    fn stop_is_honoured_between_chunks() {
        struct StopAfter(u32);
        impl Listener for StopAfter {
            fn progress(&mut self, _: u64, _: Option<u64>) -> Control {
                self.0 = self.0.saturating_sub(1);
                if self.0 == 0 {
                    Control::Stop
                } else {
                    Control::Continue
                }
            }
        }
        let mix = vec![[0.1f32, 0.1]; 300_000];
        let mut x = CentreExtractor::new(Params {
            chunk: 10_000,
            ..Params::default()
        });
        let err = x
            .separate(
                &mut SliceSource::new(&mix),
                &mut VecSink::default(),
                &mut StopAfter(2),
            )
            .unwrap_err();
        assert!(matches!(err, SeparateError::Stopped));
    }
}
