//! Ensembles: one stem from several models' outputs, combined as UVR combines them
//! (`lib_v5/spec_utils.py`, `ensemble_inputs`):
//!
//! - `average`: the mean of the waveforms.
//! - `max_spec` / `min_spec`: each output's STFT (`n_fft` 2048, hop 1024, periodic Hann
//!   window, centred frames with reflected edges, as librosa 0.9 computes it), then, bin by
//!   bin and channel by channel, the complex value of largest (smallest) magnitude, folding
//!   the outputs in order (a later output wins a tie), and the inverse STFT (overlap-add
//!   normalised by the summed squared window). The inverse is `hop × (frames − 1)` samples
//!   long, so the last `length mod 1024` samples are zero, as UVR pads them.
//!
//! Inputs are streamed from files of interleaved little-endian `f32` stereo frames, all of
//! the same length; memory stays constant whatever the song's length.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::str::FromStr;

use realfft::RealFftPlanner;
use realfft::num_complex::Complex32;

use crate::audio::Frame;

/// How the outputs are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// Mean of the waveforms.
    Average,
    /// Largest magnitude per STFT bin.
    MaxSpec,
    /// Smallest magnitude per STFT bin.
    MinSpec,
}

/// The algorithm names of requests.
pub const ALGORITHMS: &[&str] = &["average", "max_spec", "min_spec"];

/// Most models in one ensemble.
pub const MAX_MODELS: usize = 4;

impl FromStr for Algorithm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "average" => Ok(Self::Average),
            "max_spec" => Ok(Self::MaxSpec),
            "min_spec" => Ok(Self::MinSpec),
            other => Err(format!(
                "ensemble must be one of {}, not {other:?}",
                ALGORITHMS.join(", ")
            )),
        }
    }
}

impl Algorithm {
    /// The request name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Average => "average",
            Self::MaxSpec => "max_spec",
            Self::MinSpec => "min_spec",
        }
    }
}

const N_FFT: usize = 2048;
const HOP: usize = 1024;
const BLOCK: usize = 1 << 15;

/// Combines the stems in `inputs` (each `frames` stereo frames of raw `f32`), handing the
/// result to `sink` in blocks, in order; `frames` frames in all.
pub fn combine(
    algorithm: Algorithm,
    inputs: &[PathBuf],
    frames: u64,
    sink: &mut dyn FnMut(&[Frame]) -> io::Result<()>,
) -> io::Result<()> {
    if inputs.is_empty() {
        return Err(io::Error::other("an ensemble needs at least one output"));
    }
    match algorithm {
        Algorithm::Average => average(inputs, frames, sink),
        Algorithm::MaxSpec => spectral(inputs, frames, true, sink),
        Algorithm::MinSpec => spectral(inputs, frames, false, sink),
    }
}

fn read_frames(
    r: &mut impl Read,
    n: usize,
    buf: &mut Vec<u8>,
    out: &mut Vec<Frame>,
) -> io::Result<()> {
    buf.resize(n * 8, 0);
    r.read_exact(buf)?;
    out.clear();
    out.extend(buf.chunks_exact(8).map(|b| {
        [
            f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            f32::from_le_bytes([b[4], b[5], b[6], b[7]]),
        ]
    }));
    Ok(())
}

fn average(
    inputs: &[PathBuf],
    frames: u64,
    sink: &mut dyn FnMut(&[Frame]) -> io::Result<()>,
) -> io::Result<()> {
    let mut readers = inputs
        .iter()
        .map(|p| File::open(p).map(BufReader::new))
        .collect::<io::Result<Vec<_>>>()?;
    let (mut buf, mut block, mut sum) = (Vec::new(), Vec::new(), Vec::new());
    let scale = 1.0 / inputs.len() as f32;
    let mut left = frames;
    while left > 0 {
        let n = left.min(BLOCK as u64) as usize;
        sum.clear();
        sum.resize(n, [0.0f32; 2]);
        for r in &mut readers {
            read_frames(r, n, &mut buf, &mut block)?;
            for (s, f) in sum.iter_mut().zip(&block) {
                s[0] += f[0];
                s[1] += f[1];
            }
        }
        for s in &mut sum {
            s[0] *= scale;
            s[1] *= scale;
        }
        sink(&sum)?;
        left -= n as u64;
    }
    Ok(())
}

/// numpy's `reflect` padding of index `i` into `0..len`.
fn reflect(mut i: i64, len: i64) -> usize {
    if len == 1 {
        return 0;
    }
    let period = 2 * (len - 1);
    i = i.rem_euclid(period);
    (if i < len { i } else { period - i }) as usize
}

/// One model's output, read by frame with reflected edges.
struct Source {
    file: File,
    len: i64,
    raw: Vec<u8>,
}

impl Source {
    /// The samples of channel `ch` of STFT frame `t` (padded positions `t·hop ..
    /// t·hop + n_fft`, original `t·hop − n_fft/2 ..`), into `out`.
    fn frame(&mut self, t: usize, out: &mut [[f32; N_FFT]; 2]) -> io::Result<()> {
        let start = (t * HOP) as i64 - (N_FFT / 2) as i64;
        let end = start + N_FFT as i64;
        // One contiguous read covering every (reflected) index of the frame.
        let n = N_FFT as i64;
        let (lo, hi) = if start >= 0 && end <= self.len {
            (start, end)
        } else if self.len <= 2 * n {
            (0, self.len)
        } else if start < 0 {
            // Negative indices reflect onto 1..=-start.
            (0, end.max(1 - start))
        } else {
            // Indices past the end reflect down to 2(len-1) - (end-1).
            (start.min(2 * (self.len - 1) - (end - 1)), self.len)
        };
        let (lo, hi) = (lo as usize, hi as usize);
        self.raw.resize((hi - lo) * 8, 0);
        self.file.read_exact_at(&mut self.raw, (lo * 8) as u64)?;
        let [left, right] = out;
        for (k, (l, r)) in left.iter_mut().zip(right.iter_mut()).enumerate() {
            let i = reflect(start + k as i64, self.len) - lo;
            let b = &self.raw[i * 8..i * 8 + 8];
            *l = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            *r = f32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        }
        Ok(())
    }
}

fn spectral(
    inputs: &[PathBuf],
    frames: u64,
    keep_larger: bool,
    sink: &mut dyn FnMut(&[Frame]) -> io::Result<()>,
) -> io::Result<()> {
    let len = frames as i64;
    if len == 0 {
        return Ok(());
    }
    let mut sources = inputs
        .iter()
        .map(|p| {
            Ok(Source {
                file: File::open(p)?,
                len,
                raw: Vec::new(),
            })
        })
        .collect::<io::Result<Vec<_>>>()?;
    let window: Vec<f32> = (0..N_FFT)
        .map(|k| {
            let x = 2.0 * std::f64::consts::PI * k as f64 / N_FFT as f64;
            (0.5 - 0.5 * x.cos()) as f32
        })
        .collect();
    let mut planner = RealFftPlanner::<f32>::new();
    let fwd = planner.plan_fft_forward(N_FFT);
    let inv = planner.plan_fft_inverse(N_FFT);
    let bins = N_FFT / 2 + 1;
    let n_frames = 1 + frames as usize / HOP;
    // The inverse's length (centred frames, trimmed by n_fft/2 at both ends).
    let out_len = HOP * (n_frames - 1);
    let mut bufs = vec![[[0.0f32; N_FFT]; 2]; sources.len()];
    let mut time = vec![0.0f32; N_FFT];
    let mut spec = vec![Complex32::default(); bins];
    let mut best = [
        vec![Complex32::default(); bins],
        vec![Complex32::default(); bins],
    ];
    let mut scratch_f = fwd.make_scratch_vec();
    let mut scratch_i = inv.make_scratch_vec();
    let mut ola = OverlapAdd {
        end: N_FFT / 2 + out_len,
        ..OverlapAdd::default()
    };
    let mut inv_in = vec![Complex32::default(); bins];
    let scale = 1.0 / N_FFT as f32;
    for t in 0..n_frames {
        for (src, buf) in sources.iter_mut().zip(bufs.iter_mut()) {
            src.frame(t, buf)?;
        }
        for ch in 0..2 {
            for (k, buf) in bufs.iter().enumerate() {
                for (i, x) in time.iter_mut().enumerate() {
                    *x = buf[ch][i] * window[i];
                }
                fwd.process_with_scratch(&mut time, &mut spec, &mut scratch_f)
                    .map_err(|e| io::Error::other(e.to_string()))?;
                if k == 0 {
                    best[ch].copy_from_slice(&spec);
                } else {
                    for (b, s) in best[ch].iter_mut().zip(&spec) {
                        let (ms, mb) = (s.norm(), b.norm());
                        if (keep_larger && ms >= mb) || (!keep_larger && ms <= mb) {
                            *b = *s;
                        }
                    }
                }
            }
        }
        // Frame t lands on padded positions t·hop .. t·hop + n_fft.
        let at = ola.reserve(t * HOP);
        for (ch, spectrum) in best.iter().enumerate() {
            inv_in.copy_from_slice(spectrum);
            // A real signal's DC and Nyquist bins are real.
            inv_in[0].im = 0.0;
            inv_in[bins - 1].im = 0.0;
            inv.process_with_scratch(&mut inv_in, &mut time, &mut scratch_i)
                .map_err(|e| io::Error::other(e.to_string()))?;
            for ((a, x), w) in ola.acc[at..at + N_FFT].iter_mut().zip(&time).zip(&window) {
                a[ch] += x * scale * w;
            }
        }
        for (s, w) in ola.wsum[at..at + N_FFT].iter_mut().zip(&window) {
            *s += w * w;
        }
        // Positions before the next frame's start are complete.
        ola.emit((t + 1) * HOP, sink)?;
    }
    ola.emit(usize::MAX, sink)?;
    // UVR pads the shorter inverse with zeros to the input's length.
    let mut block = Vec::new();
    let mut left = frames as usize - ola.emitted;
    while left > 0 {
        let n = left.min(BLOCK);
        block.clear();
        block.resize(n, [0.0; 2]);
        sink(&block)?;
        left -= n;
    }
    Ok(())
}

/// The inverse STFT's overlap-add, from padded position `base` on, emitting finished
/// samples normalised by the summed squared window; the first n_fft/2 padded positions and
/// everything from `end` on are trimmed, as librosa's `istft` trims them.
#[derive(Default)]
struct OverlapAdd {
    acc: Vec<Frame>,
    wsum: Vec<f32>,
    base: usize,
    end: usize,
    /// Original samples handed to the sink.
    emitted: usize,
    block: Vec<Frame>,
}

impl OverlapAdd {
    /// Makes room for a frame at padded position `start`; returns its offset in `acc`.
    fn reserve(&mut self, start: usize) -> usize {
        let need = start + N_FFT - self.base;
        if self.acc.len() < need {
            self.acc.resize(need, [0.0; 2]);
            self.wsum.resize(need, 0.0);
        }
        start - self.base
    }

    /// Hands padded positions `base .. upto` (they are final) to the sink.
    fn emit(
        &mut self,
        upto: usize,
        sink: &mut dyn FnMut(&[Frame]) -> io::Result<()>,
    ) -> io::Result<()> {
        let upto = upto.min(self.end);
        if upto <= self.base {
            return Ok(());
        }
        let n = upto - self.base;
        let skip = (N_FFT / 2).saturating_sub(self.base).min(n);
        self.block.clear();
        self.block.extend(
            self.acc[skip..n]
                .iter()
                .zip(&self.wsum[skip..n])
                .map(|(f, &w)| {
                    if w > f32::MIN_POSITIVE {
                        [f[0] / w, f[1] / w]
                    } else {
                        *f
                    }
                }),
        );
        self.emitted += self.block.len();
        sink(&self.block)?;
        self.acc.drain(..n);
        self.wsum.drain(..n);
        self.base = upto;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/ensemble")
            .join(format!("{name}.f32"))
    }

    fn load(path: &PathBuf) -> Vec<Frame> {
        let bytes = std::fs::read(path).unwrap();
        let (mut buf, mut out) = (Vec::new(), Vec::new());
        read_frames(&mut &bytes[..], bytes.len() / 8, &mut buf, &mut out).unwrap();
        out
    }

    /// Each algorithm against the numpy reference (`models/reference/ensemble_reference.py`,
    /// float64) of the same two outputs, fed in uneven blocks to the sink's consumer.
    #[test]
    fn combinations_match_the_numpy_reference() {
        let inputs = [fixture("a"), fixture("b")];
        let frames = load(&inputs[0]).len() as u64;
        assert_eq!(frames, 30_000);
        for algorithm in [Algorithm::Average, Algorithm::MaxSpec, Algorithm::MinSpec] {
            let want = load(&fixture(algorithm.name()));
            let mut got: Vec<Frame> = Vec::new();
            combine(algorithm, &inputs, frames, &mut |b| {
                got.extend_from_slice(b);
                Ok(())
            })
            .unwrap();
            assert_eq!(got.len(), want.len(), "{algorithm:?}");
            let (mut err, mut sig, mut max) = (0.0f64, 0.0f64, 0.0f32);
            for (g, w) in got.iter().zip(&want) {
                for c in 0..2 {
                    let d = g[c] - w[c];
                    max = max.max(d.abs());
                    err += f64::from(d).powi(2);
                    sig += f64::from(w[c]).powi(2);
                }
            }
            let snr = 10.0 * (sig / err.max(1e-30)).log10();
            assert!(
                max < 2e-5 && snr > 90.0,
                "{algorithm:?}: max {max:e}, SNR {snr:.1} dB"
            );
            if algorithm != Algorithm::Average {
                // The inverse is hop × (frames − 1) long; UVR pads the rest with zeros.
                let kept = HOP * (30_000 / HOP);
                assert!(
                    got[kept..].iter().all(|f| *f == [0.0, 0.0]),
                    "{algorithm:?}"
                );
                assert!(got[kept - 1] != [0.0, 0.0]);
            }
        }
        // max_spec and min_spec differ from each other and from either input.
        let a = load(&inputs[0]);
        let maxed = load(&fixture("max_spec"));
        assert!(
            a.iter()
                .zip(&maxed)
                .any(|(x, y)| (x[0] - y[0]).abs() > 1e-3)
        );
        assert!("median".parse::<Algorithm>().is_err());
    }

    #[test]
    fn reflection_matches_numpy() {
        // np.pad([0, 1, 2, 3], 3, mode="reflect") -> [3, 2, 1, 0, 1, 2, 3, 2, 1, 0]
        let got: Vec<usize> = (-3..7).map(|i| reflect(i, 4)).collect();
        assert_eq!(got, [3, 2, 1, 0, 1, 2, 3, 2, 1, 0]);
        assert_eq!(reflect(5, 1), 0);
    }
}
