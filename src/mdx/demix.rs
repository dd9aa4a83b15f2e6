//! UVR's MDX demix procedure, streamed.
//!
//! Exactly UVR's `SeperateMDX.demix` (and python-audio-separator's `MDXSeparator.demix`)
//! with segment size `dim_t`: the mix gets `trim = n_fft / 2` zeros in front and
//! `gen_size + trim - (n % gen_size)` behind (`gen_size = chunk - 2·trim`, `chunk = hop·(dim_t - 1)`);
//! chunks of `chunk` samples start every `step = (1 - overlap)·chunk` samples; each chunk is
//! STFT'd (periodic Hann, `center` with reflect padding, not normalised, first `dim_f` bins,
//! the first 3 bins zeroed), run through the model (optionally "denoised": the mean of
//! `f(x)` and `-f(-x)`), inverse-STFT'd, weighted by a symmetric Hann window of its length
//! and overlap-added; the sum is divided by the summed windows, the padding dropped, the
//! result multiplied by `compensate` to give the primary stem; the secondary stem is the mix
//! minus the primary.
//!
//! The difference from UVR: nothing holds the whole song. Chunks are computed as soon as
//! their input has arrived, several per forward pass, and every sample is emitted as soon as
//! no later chunk can touch it, so memory is bounded by `batch · chunk`, not song length.

use std::collections::VecDeque;
use std::sync::Arc;

use burn::tensor::{Tensor, TensorData};
use realfft::num_complex::Complex32;
use realfft::{ComplexToReal, RealFftPlanner, RealToComplex};

pub use super::params::{DemixOptions, MdxParams};

use super::graph::MdxNet;
use crate::audio::Frame;
use crate::separation::{Control, FrameSource, Listener, SeparateError, StemSink};

/// The STFT of one geometry.
pub struct Spectral {
    n_fft: usize,
    hop: usize,
    dim_f: usize,
    dim_t: usize,
    window: Vec<f32>,
    /// The summed squared windows of a chunk's frames (the iSTFT normaliser), computed once.
    envelope: Vec<f64>,
    fwd: Arc<dyn RealToComplex<f32>>,
    inv: Arc<dyn ComplexToReal<f32>>,
}

impl std::fmt::Debug for Spectral {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spectral")
            .field("n_fft", &self.n_fft)
            .field("hop", &self.hop)
            .finish()
    }
}

impl Spectral {
    /// The STFT for `n_fft`/`hop` feeding `dim_f × dim_t` spectrograms.
    pub fn new(n_fft: usize, hop: usize, dim_f: usize, dim_t: usize) -> Self {
        let mut planner = RealFftPlanner::<f32>::new();
        let window: Vec<f32> = (0..n_fft)
            .map(|i| {
                (0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / n_fft as f64).cos()) as f32
            })
            .collect();
        let mut envelope = vec![0.0f64; n_fft + hop * (dim_t - 1)];
        for t in 0..dim_t {
            for (k, w) in window.iter().enumerate() {
                envelope[t * hop + k] += f64::from(w * w);
            }
        }
        Self {
            window,
            envelope,
            fwd: planner.plan_fft_forward(n_fft),
            inv: planner.plan_fft_inverse(n_fft),
            n_fft,
            hop,
            dim_f,
            dim_t,
        }
    }

    /// Samples per chunk.
    pub fn chunk(&self) -> usize {
        self.hop * (self.dim_t - 1)
    }

    /// STFT of one stereo chunk into `out` (`4 · dim_f · dim_t`, layout [4][dim_f][dim_t]),
    /// with the first 3 bins zeroed.
    pub fn forward(&self, chunk: &[Frame], out: &mut [f32]) {
        let (n, hop, f_n, t_n) = (self.n_fft, self.hop, self.dim_f, self.dim_t);
        let len = chunk.len() as isize;
        let half = (n / 2) as isize;
        let mut frame = vec![0.0f32; n];
        let mut spec = vec![Complex32::default(); n / 2 + 1];
        let reflect = |mut i: isize| -> usize {
            // numpy/torch "reflect" padding (edge sample not repeated).
            if len == 1 {
                return 0;
            }
            loop {
                if i < 0 {
                    i = -i;
                } else if i >= len {
                    i = 2 * (len - 1) - i;
                } else {
                    return i as usize;
                }
            }
        };
        for c in 0..2 {
            for t in 0..t_n {
                let start = (t * hop) as isize - half;
                for (k, v) in frame.iter_mut().enumerate() {
                    *v = chunk[reflect(start + k as isize)][c] * self.window[k];
                }
                self.fwd
                    .process(&mut frame, &mut spec)
                    .expect("buffer sizes match the plan");
                for f in 0..f_n {
                    let (re, im) = if f < 3 {
                        (0.0, 0.0)
                    } else {
                        (spec[f].re, spec[f].im)
                    };
                    out[((2 * c) * f_n + f) * t_n + t] = re;
                    out[((2 * c + 1) * f_n + f) * t_n + t] = im;
                }
            }
        }
    }

    /// Inverse STFT of one `[4][dim_f][dim_t]` spectrogram into `chunk()` stereo samples.
    pub fn inverse(&self, spec_in: &[f32], out: &mut Vec<[f64; 2]>) {
        let (n, hop, f_n, t_n) = (self.n_fft, self.hop, self.dim_f, self.dim_t);
        let total = n + hop * (t_n - 1);
        let mut y = vec![[0.0f64; 2]; total];
        let env = &self.envelope;
        let mut spec = vec![Complex32::default(); n / 2 + 1];
        let mut frame = vec![0.0f32; n];
        for c in 0..2 {
            for t in 0..t_n {
                for (f, s) in spec.iter_mut().enumerate() {
                    *s = if f < f_n {
                        Complex32::new(
                            spec_in[((2 * c) * f_n + f) * t_n + t],
                            spec_in[((2 * c + 1) * f_n + f) * t_n + t],
                        )
                    } else {
                        Complex32::default()
                    };
                }
                spec[0].im = 0.0;
                let last = spec.len() - 1;
                spec[last].im = 0.0;
                self.inv
                    .process(&mut spec, &mut frame)
                    .expect("buffer sizes match the plan");
                for (k, v) in frame.iter().enumerate() {
                    y[t * hop + k][c] += f64::from(v / n as f32 * self.window[k]);
                }
            }
        }
        out.clear();
        let (lo, hi) = (n / 2, total - n / 2);
        out.extend((lo..hi).map(|i| [y[i][0] / env[i], y[i][1] / env[i]]));
    }
}

/// Streams `input` through the UVR demix with `net`; writes the primary stem (`compensate`
/// applied) to `primary` and the mix minus it to `secondary` of `output`.
#[allow(clippy::too_many_arguments)]
pub fn demix(
    net: &MdxNet,
    params: &MdxParams,
    opts: &DemixOptions,
    input: &mut dyn FrameSource,
    output: &mut dyn StemSink,
    primary: usize,
    secondary: usize,
    listener: &mut dyn Listener,
) -> Result<u64, SeparateError> {
    let sp = Spectral::new(params.n_fft, params.hop, net.dim_f, net.dim_t);
    let chunk = sp.chunk();
    let trim = params.n_fft / 2;
    if chunk <= 2 * trim {
        return Err(SeparateError::Model(format!(
            "chunk of {chunk} samples is too short for n_fft {}",
            params.n_fft
        )));
    }
    let gen_size = chunk - 2 * trim;
    let step = if opts.overlap <= 0.0 {
        chunk
    } else {
        (((1.0 - f64::from(opts.overlap)) * chunk as f64) as usize).max(1)
    };
    let total_in = input.total_frames();
    // The mixture: `trim` zeros, the input, then zeros up to `total` once the length is known.
    let mut mix: VecDeque<Frame> = VecDeque::from(vec![[0.0; 2]; trim]);
    let mut mix_start: usize = 0; // mixture index of mix[0]
    let mut n: Option<usize> = None; // input length, known at the end
    let mut read: usize = 0;
    let mut acc: VecDeque<[f64; 2]> = VecDeque::new();
    let mut div: VecDeque<f64> = VecDeque::new();
    let mut acc_start: usize = 0; // mixture index of acc[0]
    let mut next_chunk: usize = 0;
    let mut written: u64 = 0;
    let spec_len = 4 * net.dim_f * net.dim_t;
    let mut wave = Vec::with_capacity(chunk);
    let batch = opts.batch.max(1);
    loop {
        let total = n.map(|n| trim + n + gen_size + trim - (n % gen_size));
        if total.is_some_and(|t| next_chunk * step >= t) {
            break;
        }
        // Read until `batch` chunks are covered or the input ends.
        let want_end = (next_chunk + batch - 1) * step + chunk;
        while n.is_none() && mix_start + mix.len() < want_end {
            match input.next_chunk(65_536)? {
                Some(frames) => {
                    read += frames.len();
                    mix.extend(frames);
                }
                None => n = Some(read),
            }
        }
        let total = n.map(|n| trim + n + gen_size + trim - (n % gen_size));
        // The chunks of this pass.
        let mut starts = Vec::new();
        for k in next_chunk..next_chunk + batch {
            let s = k * step;
            match total {
                Some(t) if s >= t => break,
                Some(_) => starts.push(s),
                None if s + chunk <= mix_start + mix.len() => starts.push(s),
                None => break,
            }
        }
        if starts.is_empty() {
            return Err(SeparateError::Model("demix made no progress".into()));
        }
        let mut batch_in = vec![0.0f32; spec_len * starts.len()];
        let mut part = vec![[0.0f32; 2]; chunk];
        for (b, s) in starts.iter().enumerate() {
            for (i, p) in part.iter_mut().enumerate() {
                let idx = s + i;
                *p = if total.is_some_and(|t| idx >= t) {
                    [0.0; 2]
                } else {
                    mix.get(idx - mix_start).copied().unwrap_or([0.0; 2])
                };
            }
            sp.forward(&part, &mut batch_in[b * spec_len..(b + 1) * spec_len]);
        }
        let pred = run(net, &batch_in, starts.len(), opts.denoise)?;
        for (b, s) in starts.iter().enumerate() {
            let end = total.map_or(s + chunk, |t| (s + chunk).min(t));
            let actual = end - s;
            sp.inverse(&pred[b * spec_len..(b + 1) * spec_len], &mut wave);
            while acc_start + acc.len() < end {
                acc.push_back([0.0; 2]);
                div.push_back(0.0);
            }
            for i in 0..actual {
                let w = if opts.overlap <= 0.0 || actual == 1 {
                    1.0
                } else {
                    0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / (actual - 1) as f64).cos()
                };
                let a = &mut acc[s + i - acc_start];
                a[0] += wave[i][0] * w;
                a[1] += wave[i][1] * w;
                div[s + i - acc_start] += w;
            }
        }
        next_chunk += starts.len();
        // Everything before the next chunk's start is final.
        let limit = match total {
            Some(t) if next_chunk * step >= t => t,
            _ => next_chunk * step,
        };
        let mut prim = Vec::new();
        let mut sec = Vec::new();
        while acc_start < limit && !acc.is_empty() {
            let a = acc.pop_front().expect("non-empty");
            let d = div.pop_front().expect("same length");
            let p = acc_start;
            acc_start += 1;
            if p < trim {
                continue;
            }
            let i = p - trim;
            if n.is_some_and(|n| i >= n) {
                continue;
            }
            let x = mix[p - mix_start];
            let comp = f64::from(params.compensate);
            let v = [(a[0] / d * comp) as f32, (a[1] / d * comp) as f32];
            prim.push(v);
            sec.push([x[0] - v[0], x[1] - v[1]]);
        }
        written += prim.len() as u64;
        output.write(primary, &prim)?;
        output.write(secondary, &sec)?;
        // Input before both the next chunk and the next unemitted sample is no longer needed.
        let keep_from = (next_chunk * step).min(acc_start);
        while mix_start < keep_from && !mix.is_empty() {
            mix.pop_front();
            mix_start += 1;
        }
        if listener.progress(written, total_in) == Control::Stop {
            return Err(SeparateError::Stopped);
        }
    }
    Ok(written)
}

/// One forward pass over `b` spectrograms (optionally denoised), back on the host.
fn run(net: &MdxNet, input: &[f32], b: usize, denoise: bool) -> Result<Vec<f32>, SeparateError> {
    let shape = [b, 4, net.dim_f, net.dim_t];
    let x = Tensor::<4>::from_data(TensorData::new(input.to_vec(), shape), net.device());
    let y = if denoise {
        let neg = net.forward(x.clone().neg());
        (net.forward(x) - neg) * 0.5
    } else {
        net.forward(x)
    };
    y.into_data()
        .try_to_vec::<f32>()
        .map_err(|e| SeparateError::Model(format!("reading the model output: {e:?}")))
}
