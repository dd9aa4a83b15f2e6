//! Streaming stereo resampling (rubato's FFT resampler) with its delay removed: the output
//! is aligned with the input and, once finished, exactly as long as the input at the new
//! rate. Used for stems written at another rate than the separation's 44.1 kHz.

use rubato::{FftFixedIn, Resampler};

use super::decode::Frame;

/// Input frames per resampler call.
const CHUNK: usize = 1024;

/// A resampler fed frame blocks of any size.
pub struct Resample {
    inner: FftFixedIn<f32>,
    from: u32,
    to: u32,
    pending: [Vec<f32>; 2],
    /// Output frames still to drop (the resampler's delay).
    skip: usize,
    frames_in: u64,
    frames_out: u64,
}

impl std::fmt::Debug for Resample {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resample")
            .field("from", &self.from)
            .field("to", &self.to)
            .finish_non_exhaustive()
    }
}

impl Resample {
    /// A resampler from `from` Hz to `to` Hz.
    pub fn new(from: u32, to: u32) -> Result<Self, String> {
        let inner = FftFixedIn::<f32>::new(from as usize, to as usize, CHUNK, 2, 2)
            .map_err(|e| format!("resampler {from} -> {to} Hz: {e}"))?;
        let skip = inner.output_delay();
        Ok(Self {
            inner,
            from,
            to,
            pending: [Vec::new(), Vec::new()],
            skip,
            frames_in: 0,
            frames_out: 0,
        })
    }

    /// Resamples `frames`, appending what comes out to `out`.
    pub fn push(&mut self, frames: &[Frame], out: &mut Vec<Frame>) -> Result<(), String> {
        self.frames_in += frames.len() as u64;
        for [l, r] in frames {
            self.pending[0].push(*l);
            self.pending[1].push(*r);
        }
        loop {
            let need = self.inner.input_frames_next();
            if self.pending[0].len() < need {
                return Ok(());
            }
            let chunk = [&self.pending[0][..need], &self.pending[1][..need]];
            let res = self
                .inner
                .process(&chunk, None)
                .map_err(|e| format!("resampling: {e}"))?;
            self.pending[0].drain(..need);
            self.pending[1].drain(..need);
            self.emit(&res, out);
        }
    }

    /// Drains the rest: the output then holds exactly the input's length at the new rate.
    pub fn finish(&mut self, out: &mut Vec<Frame>) -> Result<(), String> {
        let target = (u128::from(self.frames_in) * u128::from(self.to))
            .div_ceil(u128::from(self.from.max(1))) as u64;
        let before = out.len();
        if !self.pending[0].is_empty() {
            let chunk = [&self.pending[0][..], &self.pending[1][..]];
            let res = self
                .inner
                .process_partial(Some(&chunk), None)
                .map_err(|e| format!("resampling: {e}"))?;
            self.pending = [Vec::new(), Vec::new()];
            self.emit(&res, out);
        }
        let mut guard = 0;
        while self.frames_out < target && guard < 64 {
            let res = self
                .inner
                .process_partial(None::<&[Vec<f32>]>, None)
                .map_err(|e| format!("resampling: {e}"))?;
            self.emit(&res, out);
            guard += 1;
        }
        if self.frames_out > target {
            let extra = (self.frames_out - target) as usize;
            out.truncate(out.len().saturating_sub(extra).max(before));
            self.frames_out = target;
        }
        Ok(())
    }

    fn emit(&mut self, res: &[Vec<f32>], out: &mut Vec<Frame>) {
        for (l, r) in res[0].iter().zip(res[1].iter()) {
            if self.skip > 0 {
                self.skip -= 1;
            } else {
                out.push([*l, *r]);
                self.frames_out += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 1 kHz tone resampled from 44.1 to 48 kHz in uneven blocks has the exact length and
    /// is the same tone, in phase (the delay is removed).
    #[test]
    fn a_tone_keeps_its_length_and_phase() {
        let tone = |rate: f32, n: usize| -> Vec<Frame> {
            (0..n)
                .map(|i| {
                    let s = (2.0 * std::f32::consts::PI * 1000.0 * i as f32 / rate).sin() * 0.5;
                    [s, -s]
                })
                .collect()
        };
        let input = tone(44_100.0, 44_100);
        let mut r = Resample::new(44_100, 48_000).unwrap();
        let mut out = Vec::new();
        for block in input.chunks(777) {
            r.push(block, &mut out).unwrap();
        }
        r.finish(&mut out).unwrap();
        assert_eq!(out.len(), 48_000);
        let want = tone(48_000.0, 48_000);
        // Away from the edges (the filter's ramp), the error is small against the signal.
        let (mut err, mut sig) = (0.0f64, 0.0f64);
        for (a, b) in out[2000..46_000].iter().zip(&want[2000..46_000]) {
            err += f64::from(a[0] - b[0]).powi(2) + f64::from(a[1] - b[1]).powi(2);
            sig += f64::from(b[0]).powi(2) + f64::from(b[1]).powi(2);
        }
        let snr = 10.0 * (sig / err).log10();
        assert!(snr > 60.0, "SNR {snr:.1} dB");
    }
}
