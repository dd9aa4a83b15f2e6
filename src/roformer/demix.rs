//! MSST's demix (Music-Source-Separation-Training `demix`, generic mode), streamed.
//!
//! The mix is reflect-padded by `border = chunk - step` on both sides (when it is longer
//! than `2 · border`); chunks of `chunk` samples start every `step = chunk / num_overlap`;
//! a last chunk shorter than `chunk` is reflect-padded when longer than half a chunk, else
//! zero-padded. Chunks run `batch` at a time; each result is weighted by a linear fade-in
//! and fade-out window of `chunk / 10` samples (the batch holding the first chunk gets no
//! fade-in and the batch holding the last chunk no fade-out, decided per batch as the
//! reference does), overlap-added, and divided by the summed windows; the padding is cut.
//!
//! Unlike the reference nothing holds the whole song: a sample is emitted as soon as no
//! later chunk can touch it, so memory is bounded by `chunk + batch · step`.

use std::collections::VecDeque;

use crate::audio::Frame;
use crate::separation::{Control, FrameSource, Listener, SeparateError, StemSink};

/// The schedule of one demix.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Samples per chunk.
    pub chunk: usize,
    /// Samples between chunk starts.
    pub step: usize,
    /// Chunks per forward pass.
    pub batch: usize,
}

impl Plan {
    fn border(&self) -> usize {
        self.chunk - self.step
    }

    fn fade(&self) -> usize {
        self.chunk / 10
    }

    /// The window of a batch: linear fades, without the fade-in for the batch of the first
    /// chunk or the fade-out for the batch of the last.
    fn window(&self, first: bool, last: bool) -> Vec<f32> {
        let (c, f) = (self.chunk, self.fade());
        let mut w = vec![1.0f32; c];
        for k in 0..f {
            w[c - f + k] = linspace(1.0, 0.0, f, k);
        }
        for (k, v) in w.iter_mut().enumerate().take(f) {
            *v = linspace(0.0, 1.0, f, k);
        }
        if first {
            w[..f].fill(1.0);
        } else if last {
            w[c - f..].fill(1.0);
        }
        w
    }
}

/// `torch.linspace(a, b, n)[k]` (computed from both ends, as torch does).
fn linspace(a: f32, b: f32, n: usize, k: usize) -> f32 {
    if n == 1 {
        return a;
    }
    let step = (b - a) / (n - 1) as f32;
    if k < n / 2 {
        a + step * k as f32
    } else {
        b - step * (n - 1 - k) as f32
    }
}

/// Runs the network on a batch of chunks: `chunks[i]` is `[channel][sample]`, the result
/// `[i][output][channel][sample]`.
pub type Forward<'a> =
    dyn FnMut(&[[Vec<f32>; 2]]) -> Result<Vec<Vec<[Vec<f32>; 2]>>, SeparateError> + 'a;

/// The demix state: the padded input still needed and the sums not yet emitted.
struct Stream {
    plan: Plan,
    /// Padded samples from `base` on.
    input: VecDeque<Frame>,
    base: usize,
    /// Whether the mix is reflect-padded (known once `2 · border + 1` samples were read).
    padded: bool,
    /// The padded length, once the input ended.
    total: Option<usize>,
    /// Raw samples read.
    read: usize,
    /// Weighted sums per output and window sums, from `emitted` on.
    sums: Vec<VecDeque<[f64; 2]>>,
    weights: VecDeque<f64>,
    emitted: usize,
    /// Start of the next chunk.
    next: usize,
}

/// Separates `input` into `outputs` stems with `forward`, then writes, for each output `o`,
/// its samples to sink stem `o`, and when `complement` is set, the mix minus output 0 to
/// sink stem `outputs`. Returns the number of frames per stem.
pub fn demix(
    plan: Plan,
    outputs: usize,
    complement: bool,
    forward: &mut Forward<'_>,
    input: &mut dyn FrameSource,
    sink: &mut dyn StemSink,
    listener: &mut dyn Listener,
) -> Result<u64, SeparateError> {
    let total_in = input.total_frames();
    let mut s = Stream {
        plan,
        input: VecDeque::new(),
        base: 0,
        padded: false,
        total: None,
        read: 0,
        sums: vec![VecDeque::new(); outputs],
        weights: VecDeque::new(),
        emitted: 0,
        next: 0,
    };
    let border = plan.border();
    // Raw samples held back until it is known whether the mix gets padded.
    let mut head: Vec<Frame> = Vec::new();
    let mut decided = false;
    let mut ended = false;
    let mut written = 0u64;
    loop {
        // Read until a whole batch of full chunks is available past `next` (batches hold
        // the reference's chunks: the window flags depend on them) or the input ends.
        let need = s.next + (plan.batch - 1) * plan.step + plan.chunk;
        while !ended && (!decided || s.base + s.input.len() < need) {
            match input.next_chunk(plan.chunk.max(4096))? {
                Some(frames) => {
                    s.read += frames.len();
                    if decided {
                        s.input.extend(frames);
                    } else {
                        head.extend(frames);
                        if head.len() > 2 * border {
                            s.start(std::mem::take(&mut head), true);
                            decided = true;
                        }
                    }
                }
                None => {
                    ended = true;
                    if !decided {
                        let pad = head.len() > 2 * border && border > 0;
                        s.start(std::mem::take(&mut head), pad);
                        decided = true;
                    }
                    s.finish_input();
                }
            }
        }
        if s.total == Some(0) {
            return Ok(0);
        }
        // Form a batch of chunks that are complete (or the last ones).
        let mut chunks: Vec<[Vec<f32>; 2]> = Vec::new();
        let mut starts = Vec::new();
        let mut last = false;
        while chunks.len() < plan.batch {
            let available = s.base + s.input.len();
            if s.total.is_none() && available < s.next + plan.chunk {
                break;
            }
            let (chunk, len) = s.chunk_at(s.next);
            chunks.push(chunk);
            starts.push((s.next, len));
            s.next += plan.step;
            if s.total.is_some_and(|t| s.next >= t) {
                last = true;
                break;
            }
        }
        if chunks.is_empty() {
            continue;
        }
        let first = starts.last().is_some_and(|&(start, _)| start == 0);
        let window = plan.window(first, last && !first);
        let results = forward(&chunks)?;
        for ((start, len), out) in starts.iter().zip(&results) {
            s.accumulate(*start, *len, out, &window);
        }
        let done_to = if last {
            s.total.unwrap_or(0)
        } else {
            starts.last().map_or(0, |&(start, _)| start + plan.step)
        };
        written += s.emit(done_to, outputs, complement, sink)?;
        let done = s
            .read
            .min(done_to.saturating_sub(if s.padded { border } else { 0 }));
        if listener.progress(done as u64, total_in) == Control::Stop {
            return Err(SeparateError::Stopped);
        }
        if last {
            return Ok(written);
        }
        s.drop_before(s.emitted.min(s.next));
    }
}

impl Stream {
    /// Starts the padded input with the first raw samples.
    fn start(&mut self, head: Vec<Frame>, pad: bool) {
        self.padded = pad;
        if pad {
            let border = self.plan.border();
            for p in 0..border {
                self.input.push_back(head[border - p]);
            }
        }
        self.input.extend(head);
    }

    /// Appends the right padding and fixes the padded length.
    fn finish_input(&mut self) {
        let len = self.base + self.input.len();
        if self.padded {
            let border = self.plan.border();
            for q in 0..border {
                let f = self.input[len - 2 - q - self.base];
                self.input.push_back(f);
            }
        }
        self.total = Some(self.base + self.input.len());
    }

    /// The chunk starting at padded sample `start`, padded to a full chunk, and its length.
    fn chunk_at(&self, start: usize) -> ([Vec<f32>; 2], usize) {
        let end = (start + self.plan.chunk).min(self.base + self.input.len());
        let len = end - start;
        let mut ch = [
            Vec::with_capacity(self.plan.chunk),
            Vec::with_capacity(self.plan.chunk),
        ];
        for p in start..end {
            let f = self.input[p - self.base];
            ch[0].push(f[0]);
            ch[1].push(f[1]);
        }
        let pad = self.plan.chunk - len;
        for c in &mut ch {
            if len > self.plan.chunk / 2 {
                for q in 0..pad {
                    let v = c[len - 2 - q];
                    c.push(v);
                }
            } else {
                c.resize(self.plan.chunk, 0.0);
            }
        }
        (ch, len)
    }

    fn accumulate(&mut self, start: usize, len: usize, out: &[[Vec<f32>; 2]], window: &[f32]) {
        let end = start + len;
        let have = self.emitted + self.weights.len();
        if end > have {
            self.weights.resize(self.weights.len() + end - have, 0.0);
            for s in &mut self.sums {
                s.resize(s.len() + end - have, [0.0; 2]);
            }
        }
        for k in 0..len {
            let i = start + k - self.emitted;
            let w = window[k];
            self.weights[i] += f64::from(w);
            for (o, s) in out.iter().zip(&mut self.sums) {
                s[i][0] += f64::from(o[0][k] * w);
                s[i][1] += f64::from(o[1][k] * w);
            }
        }
    }

    /// Writes the finished samples before padded position `to`.
    fn emit(
        &mut self,
        to: usize,
        outputs: usize,
        complement: bool,
        sink: &mut dyn StemSink,
    ) -> Result<u64, SeparateError> {
        let border = if self.padded { self.plan.border() } else { 0 };
        let total = self.total.unwrap_or(usize::MAX);
        let (lo, hi) = (border, total.saturating_sub(border));
        let n = to.saturating_sub(self.emitted);
        let mut stems: Vec<Vec<Frame>> = vec![Vec::new(); outputs + usize::from(complement)];
        for _ in 0..n {
            let p = self.emitted;
            let w = self.weights.pop_front().unwrap_or(0.0);
            let values: Vec<[f64; 2]> = self
                .sums
                .iter_mut()
                .map(|s| s.pop_front().unwrap_or([0.0; 2]))
                .collect();
            self.emitted += 1;
            if p < lo || p >= hi {
                continue;
            }
            for (o, v) in values.iter().enumerate() {
                stems[o].push(if w != 0.0 {
                    [(v[0] / w) as f32, (v[1] / w) as f32]
                } else {
                    [0.0; 2]
                });
            }
            if complement {
                let mix = self.input[p - self.base];
                let t = stems[0].last().copied().unwrap_or([0.0; 2]);
                stems[outputs].push([mix[0] - t[0], mix[1] - t[1]]);
            }
        }
        for (i, frames) in stems.iter().enumerate() {
            if !frames.is_empty() {
                sink.write(i, frames)?;
            }
        }
        Ok(stems.first().map_or(0, |f| f.len() as u64))
    }

    /// Forgets input before padded position `p`, keeping, until the input ends, the last
    /// `border + 1` samples the right padding reflects.
    fn drop_before(&mut self, p: usize) {
        let p = match self.total {
            Some(_) => p,
            None => p.min((self.base + self.input.len()).saturating_sub(self.plan.border() + 1)),
        };
        while self.base < p && !self.input.is_empty() {
            self.input.pop_front();
            self.base += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::separation::{NoListener, SliceSource, VecSink};

    fn identity(chunks: &[[Vec<f32>; 2]]) -> Result<Vec<Vec<[Vec<f32>; 2]>>, SeparateError> {
        Ok(chunks.iter().map(|c| vec![c.clone()]).collect())
    }

    /// With a network that returns its input, the demix gives back the mix (windows and
    /// padding cancel) and the complement is silence, at any length and batch.
    #[test]
    fn an_identity_network_gives_back_the_mix() {
        for (len, batch) in [(10_000, 3), (1_001, 1), (150, 2), (40, 4), (4_000, 2)] {
            let mix: Vec<Frame> = (0..len)
                .map(|i| {
                    let x = (i as f32 * 0.05).sin();
                    [x, 0.5 * x + 0.1]
                })
                .collect();
            let plan = Plan {
                chunk: 400,
                step: 100,
                batch,
            };
            let mut sink = VecSink::default();
            let n = demix(
                plan,
                1,
                true,
                &mut identity,
                &mut SliceSource::new(&mix),
                &mut sink,
                &mut NoListener,
            )
            .unwrap();
            assert_eq!(n as usize, len);
            assert_eq!(sink.stems[0].len(), len);
            assert_eq!(sink.stems[1].len(), len);
            for (i, (a, b)) in mix.iter().zip(&sink.stems[0]).enumerate() {
                // The reference's quirk: an unpadded mix whose first batch holds more than the
                // first chunk fades that chunk in, so sample 0 has no weight and is 0.
                if i == 0 && len <= 2 * 300 && starts_batched(len, batch) {
                    assert_eq!(*b, [0.0, 0.0]);
                    continue;
                }
                assert!(
                    (a[0] - b[0]).abs() < 1e-5 && (a[1] - b[1]).abs() < 1e-5,
                    "len {len} batch {batch} sample {i}: {a:?} vs {b:?}"
                );
            }
            assert!(sink.stems[1].iter().all(|f| f[0].abs() < 1e-5));
        }
    }

    /// Whether the first batch of an unpadded mix of `len` holds a second chunk.
    fn starts_batched(len: usize, batch: usize) -> bool {
        batch > 1 && len > 100
    }

    #[test]
    fn windows_fade_as_the_reference_does() {
        let p = Plan {
            chunk: 100,
            step: 50,
            batch: 1,
        };
        let w = p.window(false, false);
        assert_eq!(
            (w[0], w[9], w[10], w[89], w[90], w[99]),
            (0.0, 1.0, 1.0, 1.0, 1.0, 0.0)
        );
        assert_eq!(p.window(true, false)[0], 1.0);
        assert_eq!(p.window(false, true)[99], 1.0);
        assert_eq!(p.window(false, true)[0], 0.0);
    }
}
