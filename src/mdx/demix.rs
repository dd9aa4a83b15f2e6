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
use rayon::prelude::*;
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

    /// Values of one spectrogram (`4 · dim_f · dim_t`).
    pub fn spec_len(&self) -> usize {
        4 * self.dim_f * self.dim_t
    }

    /// STFT of channel `c` of `chunk` into its two planes (`2 · dim_f · dim_t`: re, im).
    fn forward_channel(&self, chunk: &[Frame], c: usize, out: &mut [f32]) {
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
        let (re_plane, im_plane) = out.split_at_mut(f_n * t_n);
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
                re_plane[f * t_n + t] = re;
                im_plane[f * t_n + t] = im;
            }
        }
    }

    /// Inverse STFT of one channel's two planes (re, im) into `chunk()` samples.
    fn inverse_channel(&self, planes: &[f32]) -> Vec<f64> {
        let (n, hop, f_n, t_n) = (self.n_fft, self.hop, self.dim_f, self.dim_t);
        let total = n + hop * (t_n - 1);
        let mut y = vec![0.0f64; total];
        let mut spec = vec![Complex32::default(); n / 2 + 1];
        let mut frame = vec![0.0f32; n];
        let (re_plane, im_plane) = planes.split_at(f_n * t_n);
        for t in 0..t_n {
            for (f, s) in spec.iter_mut().enumerate() {
                *s = if f < f_n {
                    Complex32::new(re_plane[f * t_n + t], im_plane[f * t_n + t])
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
                y[t * hop + k] += f64::from(v / n as f32 * self.window[k]);
            }
        }
        let (lo, hi) = (n / 2, total - n / 2);
        (lo..hi).map(|i| y[i] / self.envelope[i]).collect()
    }

    /// STFTs of `chunks` (each `chunk()` frames) into consecutive spectrograms of `out`, every
    /// channel of every chunk in parallel.
    pub fn forward_batch(&self, chunks: &[Vec<Frame>], out: &mut [f32]) {
        let plane = 2 * self.dim_f * self.dim_t;
        out[..chunks.len() * 2 * plane]
            .par_chunks_mut(plane)
            .enumerate()
            .for_each(|(i, out)| self.forward_channel(&chunks[i / 2], i % 2, out));
    }

    /// Inverse STFTs of the first `count` spectrograms of `specs`, every channel of every
    /// chunk in parallel.
    pub fn inverse_batch(&self, specs: &[f32], count: usize) -> Vec<Vec<[f64; 2]>> {
        let plane = 2 * self.dim_f * self.dim_t;
        let channels: Vec<Vec<f64>> = specs[..count * 2 * plane]
            .par_chunks(plane)
            .map(|planes| self.inverse_channel(planes))
            .collect();
        channels
            .chunks(2)
            .map(|lr| lr[0].iter().zip(&lr[1]).map(|(l, r)| [*l, *r]).collect())
            .collect()
    }
}

/// Where a demix spent its time, summed over its batches. On a GPU the forward pass runs
/// while the CPU computes the next batch's STFT, so `forward` is the time spent waiting for
/// it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Phases {
    /// Chunks STFT'd.
    pub chunks: usize,
    /// Forward passes run (each over `batch` spectrograms, or fewer for a last partial batch
    /// on the CPU).
    pub passes: usize,
    /// Reading input, STFTs, copying the batch to the device.
    pub stft: std::time::Duration,
    /// Running (CPU) or queueing (GPU) the forward pass, waiting for it and reading its
    /// output back.
    pub forward: std::time::Duration,
    /// Inverse STFTs.
    pub istft: std::time::Duration,
    /// Overlap-add and writing the stems.
    pub overlap_add: std::time::Duration,
}

/// A batch whose forward pass has been submitted and whose output is not yet read.
struct InFlight {
    /// Mixture index of each chunk's start.
    starts: Vec<usize>,
    /// The padded mixture length, if the input's end was known when the batch was planned.
    total: Option<usize>,
    /// The model's output (possibly with padding items after `starts.len()`).
    pred: Tensor<4>,
}

/// Streams `input` through the UVR demix with `net`; writes the primary stem (`compensate`
/// applied) to `primary` and the mix minus it to `secondary` of `output`; adds where the time
/// went to `phases`.
///
/// Batches are pipelined: batch k+1 is read and STFT'd (in parallel across chunks and
/// channels) while the device runs batch k's forward pass; on a device that compiles kernels
/// per shape ([`MdxNet::fixed_shapes`]) a last partial batch is padded with silent chunks so
/// every pass has the shape [`crate::mdx::MdxModel::warm_up`] prepared.
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
    phases: &mut Phases,
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
    let padded_total = |n: usize| trim + n + gen_size + trim - (n % gen_size);
    let total_in = input.total_frames();
    let batch = opts.batch_for(net.fixed_shapes());
    let spec_len = sp.spec_len();
    let mut st = State {
        // The mixture: `trim` zeros, the input, then zeros up to `total` once the length is
        // known.
        mix: VecDeque::from(vec![[0.0; 2]; trim]),
        mix_start: 0,
        acc: VecDeque::new(),
        div: VecDeque::new(),
        acc_start: 0,
        written: 0,
    };
    let mut n: Option<usize> = None; // input length, known at the end
    let mut read: usize = 0;
    let mut next_chunk: usize = 0;
    let mut in_flight: Option<InFlight> = None;
    loop {
        let started = std::time::Instant::now();
        // Plan the next batch: read until `batch` chunks are covered or the input ends.
        let mut starts = Vec::new();
        if n.is_none_or(|n| next_chunk * step < padded_total(n)) {
            let want_end = (next_chunk + batch - 1) * step + chunk;
            while n.is_none() && st.mix_start + st.mix.len() < want_end {
                match input.next_chunk(65_536)? {
                    Some(frames) => {
                        read += frames.len();
                        st.mix.extend(frames);
                    }
                    None => n = Some(read),
                }
            }
            let total = n.map(padded_total);
            for k in next_chunk..next_chunk + batch {
                let s = k * step;
                match total {
                    Some(t) if s >= t => break,
                    Some(_) => starts.push(s),
                    None if s + chunk <= st.mix_start + st.mix.len() => starts.push(s),
                    None => break,
                }
            }
            if starts.is_empty() {
                return Err(SeparateError::Model("demix made no progress".into()));
            }
        }
        // Submit it: STFT, then the forward pass, which a GPU runs while the previous batch is
        // finished below.
        let next = if starts.is_empty() {
            None
        } else {
            let total = n.map(padded_total);
            let parts: Vec<Vec<Frame>> = starts
                .iter()
                .map(|s| {
                    (0..chunk)
                        .map(|i| {
                            let idx = s + i;
                            if total.is_some_and(|t| idx >= t) {
                                [0.0; 2]
                            } else {
                                st.mix.get(idx - st.mix_start).copied().unwrap_or([0.0; 2])
                            }
                        })
                        .collect()
                })
                .collect();
            let items = if net.fixed_shapes() {
                batch
            } else {
                starts.len()
            };
            let mut batch_in = vec![0.0f32; spec_len * items];
            sp.forward_batch(&parts, &mut batch_in);
            phases.chunks += starts.len();
            phases.passes += 1;
            phases.stft += started.elapsed();
            // On the CPU the pass runs here; on a GPU this only queues it.
            let submitted = std::time::Instant::now();
            let pred = submit(net, batch_in, items, opts.denoise);
            phases.forward += submitted.elapsed();
            next_chunk += starts.len();
            Some(InFlight {
                starts,
                total,
                pred,
            })
        };
        if next.is_none() {
            phases.stft += started.elapsed();
        }
        if let Some(done) = in_flight.take() {
            // Once `done` is added, everything before the pending batch's first chunk is final;
            // with nothing pending (the input's end is known by then), everything is.
            let limit = match &next {
                Some(b) => b.starts[0],
                None => n
                    .map(padded_total)
                    .ok_or_else(|| SeparateError::Model("demix ended before its input".into()))?,
            };
            finish(
                &sp, params, opts, done, limit, trim, chunk, n, &mut st, output, primary,
                secondary, phases,
            )?;
            if listener.progress(st.written, total_in) == Control::Stop {
                return Err(SeparateError::Stopped);
            }
        }
        match next {
            Some(b) => in_flight = Some(b),
            None => break,
        }
    }
    Ok(st.written)
}

/// The streaming state: the mixture window and the overlap-add accumulators.
struct State {
    mix: VecDeque<Frame>,
    /// Mixture index of `mix[0]`.
    mix_start: usize,
    acc: VecDeque<[f64; 2]>,
    div: VecDeque<f64>,
    /// Mixture index of `acc[0]`.
    acc_start: usize,
    written: u64,
}

/// Reads a batch's output, inverse-STFTs and overlap-adds it, and emits every sample before
/// `limit`, which no later chunk can touch.
#[allow(clippy::too_many_arguments)]
fn finish(
    sp: &Spectral,
    params: &MdxParams,
    opts: &DemixOptions,
    done: InFlight,
    limit: usize,
    trim: usize,
    chunk: usize,
    n: Option<usize>,
    st: &mut State,
    output: &mut dyn StemSink,
    primary: usize,
    secondary: usize,
    phases: &mut Phases,
) -> Result<(), SeparateError> {
    let started = std::time::Instant::now();
    let pred = done
        .pred
        .into_data()
        .try_to_vec::<f32>()
        .map_err(|e| SeparateError::Model(format!("reading the model output: {e:?}")))?;
    phases.forward += started.elapsed();
    let started = std::time::Instant::now();
    let waves = sp.inverse_batch(&pred, done.starts.len());
    phases.istft += started.elapsed();
    let started = std::time::Instant::now();
    let total = done.total;
    for (s, wave) in done.starts.iter().zip(&waves) {
        let end = total.map_or(s + chunk, |t| (s + chunk).min(t));
        let actual = end - s;
        while st.acc_start + st.acc.len() < end {
            st.acc.push_back([0.0; 2]);
            st.div.push_back(0.0);
        }
        for (i, sample) in wave.iter().enumerate().take(actual) {
            let w = if opts.overlap <= 0.0 || actual == 1 {
                1.0
            } else {
                0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / (actual - 1) as f64).cos()
            };
            let a = &mut st.acc[s + i - st.acc_start];
            a[0] += sample[0] * w;
            a[1] += sample[1] * w;
            st.div[s + i - st.acc_start] += w;
        }
    }
    let mut prim = Vec::new();
    let mut sec = Vec::new();
    let comp = f64::from(params.compensate);
    while st.acc_start < limit && !st.acc.is_empty() {
        let a = st.acc.pop_front().expect("non-empty");
        let d = st.div.pop_front().expect("same length");
        let p = st.acc_start;
        st.acc_start += 1;
        if p < trim {
            continue;
        }
        let i = p - trim;
        if n.is_some_and(|n| i >= n) {
            continue;
        }
        let x = st.mix[p - st.mix_start];
        let v = [(a[0] / d * comp) as f32, (a[1] / d * comp) as f32];
        prim.push(v);
        sec.push([x[0] - v[0], x[1] - v[1]]);
    }
    st.written += prim.len() as u64;
    output.write(primary, &prim)?;
    output.write(secondary, &sec)?;
    // Input before both the pending batch (which starts at `limit`, if any) and the next
    // unemitted sample is no longer needed.
    let keep_from = limit.min(st.acc_start);
    while st.mix_start < keep_from && !st.mix.is_empty() {
        st.mix.pop_front();
        st.mix_start += 1;
    }
    phases.overlap_add += started.elapsed();
    Ok(())
}

/// Submits one forward pass over `b` spectrograms (optionally denoised: the mean of `f(x)`
/// and `-f(-x)`); a GPU starts on it at once, the result is read when the tensor is.
pub(crate) fn submit(net: &MdxNet, input: Vec<f32>, b: usize, denoise: bool) -> Tensor<4> {
    let shape = [b, 4, net.dim_f, net.dim_t];
    let x = Tensor::<4>::from_data(TensorData::new(input, shape), net.device());
    let y = if denoise {
        let neg = net.forward(x.clone().neg());
        (net.forward(x) - neg) * 0.5
    } else {
        net.forward(x)
    };
    // Start the queued work now rather than when the result is read.
    let _ = net.device().flush();
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<f32> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/mdx")
            .join(name);
        std::fs::read(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }

    /// The STFT and iSTFT against the reference script's (tiny geometry: n_fft 160, hop 32,
    /// dim_f 64, dim_t 16): the spectrogram of a chunk (the demix zeroes bins 0-2, which
    /// the reference leaves), and the waveform of the model's output spectrogram.
    #[test]
    fn stft_and_istft_match_the_reference_fixtures() {
        let s = Spectral::new(160, 32, 64, 16);
        let wave = fixture("tiny.stft.wave.f32");
        let n = wave.len() / 2;
        assert_eq!(n, s.chunk());
        let chunk: Vec<Frame> = (0..n).map(|i| [wave[i], wave[n + i]]).collect();
        let mut spec = vec![0.0f32; s.spec_len()];
        s.forward_batch(&[chunk], &mut spec);
        let want = fixture("tiny.stft.spec.f32");
        let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let (planes, bins, frames) = (4, 64, 16);
        let mut max = 0.0f32;
        for p in 0..planes {
            for f in 3..bins {
                for t in 0..frames {
                    let i = (p * bins + f) * frames + t;
                    max = max.max((want[i] - spec[i]).abs());
                }
            }
        }
        assert!(max < 1e-5 * scale, "STFT: {max} against a scale of {scale}");
        for p in 0..planes {
            for f in 0..3 {
                assert!((0..frames).all(|t| spec[(p * bins + f) * frames + t] == 0.0));
            }
        }

        let out = fixture("tiny.forward.output.f32");
        let want = fixture("tiny.stft.istft_of_forward.f32");
        let back = s.inverse_batch(&out, 1).remove(0);
        let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let max = (0..2)
            .flat_map(|c| back.iter().map(move |f| f[c] as f32))
            .zip(&want)
            .map(|(g, w)| (g - w).abs())
            .fold(0.0f32, f32::max);
        assert!(
            max < 1e-5 * scale,
            "iSTFT: {max} against a scale of {scale}"
        );
    }
}
