//! Winograd F(2×2, 3×3) convolution on the CPU for the MDX-Net graph's 3×3 "same"
//! convolutions (stride 1, padding 1: the TFC blocks, about three quarters of the network's
//! arithmetic).
//!
//! Each 2×2 tile of outputs is `Aᵀ [Σ_ci (G g Gᵀ) ⊙ (Bᵀ d B)] A` over the 4×4 input tile `d`
//! around it (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2015): 16
//! multiply-adds per tile and input channel instead of 36. The weights' transform `G g Gᵀ`
//! is computed once at load time (in f64); the inputs' transform `Bᵀ d B` (additions only) is
//! computed for a pair of output rows, a segment of columns at a time, into a buffer that
//! stays in L2; the 16 products are then sums over input channels, accumulated in a register
//! block of 6 output channels × 2 SIMD vectors of tiles like [`super::direct`]'s, and folded
//! into the 2×2 outputs (`Aᵀ · A`, additions only) as each of the 16 is done. Bias and a fused
//! ReLU are applied on the way out. Instruction set chosen at run time through `pulp`; pairs
//! of output rows run in parallel on rayon's pool.
//!
//! The transforms' coefficients are 0, ±1 and ±½: the result equals the direct sum up to float
//! rounding (a few units in the last place more than the direct kernel, bounded by the tests).

use pulp::{Simd, WithSimd};
use rayon::prelude::*;

use super::simd::{dispatch, padded_bias, row_tasks};

/// Output channels per register block.
const CB: usize = 6;
/// SIMD vectors of tiles per register block.
const NV: usize = 2;
/// The 4 × 4 products of a tile.
const TAPS: usize = 16;
/// Transformed input values per segment of tiles (256 KiB, in L2 while every channel block
/// of the segment runs).
const SEGMENT_VALUES: usize = 64 * 1024;
/// `A` of F(2, 3) by columns: output 0 sums products 0, 1, 2; output 1 is 1 − 2 − 3.
const A: [[f32; 4]; 2] = [[1.0, 1.0, 1.0, 0.0], [0.0, 1.0, -1.0, -1.0]];

/// A 3×3, stride-1, padding-1, single-group convolution with its weights transformed.
#[derive(Debug, Clone)]
pub struct WinogradConv {
    cin: usize,
    cout: usize,
    relu: bool,
    /// `[cout / CB][16][cin][CB]`: `G g Gᵀ` of every (output, input) channel pair, output
    /// channels zero-padded to a multiple of `CB`.
    packed: Vec<f32>,
    /// One per output channel, zero-padded like `packed`.
    bias: Vec<f32>,
}

impl WinogradConv {
    /// Transforms `w` (`[cout, cin, 3, 3]`, row-major) with optional `bias`; `None` for any
    /// other kernel size or inconsistent lengths.
    pub fn new(
        w: &[f32],
        [cout, cin, kh, kw]: [usize; 4],
        bias: Option<&[f32]>,
        relu: bool,
    ) -> Option<Self> {
        if (kh, kw) != (3, 3) || cout == 0 || cin == 0 || w.len() != cout * cin * 9 {
            return None;
        }
        if bias.is_some_and(|b| b.len() != cout) {
            return None;
        }
        const G: [[f64; 3]; 4] = [
            [1.0, 0.0, 0.0],
            [0.5, 0.5, 0.5],
            [0.5, -0.5, 0.5],
            [0.0, 0.0, 1.0],
        ];
        let blocks = cout.div_ceil(CB);
        let mut packed = vec![0.0; blocks * TAPS * cin * CB];
        for co in 0..cout {
            for ci in 0..cin {
                let g = &w[(co * cin + ci) * 9..(co * cin + ci + 1) * 9];
                for t in 0..TAPS {
                    let (a, b) = (t / 4, t % 4);
                    let mut s = 0.0f64;
                    for i in 0..3 {
                        for j in 0..3 {
                            s += G[a][i] * f64::from(g[i * 3 + j]) * G[b][j];
                        }
                    }
                    packed[(((co / CB) * TAPS + t) * cin + ci) * CB + co % CB] = s as f32;
                }
            }
        }
        Some(Self {
            cin,
            cout,
            relu,
            packed,
            bias: padded_bias(bias, cout, blocks * CB),
        })
    }

    /// Output channels.
    pub fn out_channels(&self) -> usize {
        self.cout
    }

    /// Convolves `x` (`[n, cin, h, w]`, row-major) into a new `[n, cout, h, w]` buffer.
    ///
    /// # Panics
    /// When `x` does not hold `n · cin · h · w` values (the graph compiler checks it).
    pub fn run(&self, x: &[f32], [n, cin, h, w]: [usize; 4]) -> Vec<f32> {
        assert_eq!(cin, self.cin, "input channels");
        assert_eq!(x.len(), n * cin * h * w, "input length");
        let mut out = vec![0.0f32; n * self.cout * h * w];
        if out.is_empty() {
            return out;
        }
        // One task per pair of output rows of one item, holding those rows of every output
        // channel (channel by channel, the upper row first).
        let tasks = row_tasks(&mut out, [n, self.cout, h, w], 2);
        tasks.into_par_iter().for_each(|(item, y0, mut outs)| {
            dispatch(RowPair {
                conv: self,
                input: &x[item * cin * h * w..(item + 1) * cin * h * w],
                h,
                w,
                y0,
                outs: &mut outs,
            });
        });
        out
    }
}

/// Output rows `y0` and `y0 + 1` (when there is one) of every output channel of one item.
struct RowPair<'a, 'o> {
    conv: &'a WinogradConv,
    /// `[cin, h, w]`.
    input: &'a [f32],
    h: usize,
    w: usize,
    y0: usize,
    /// `rows · cout` rows of `w` values.
    outs: &'a mut [&'o mut [f32]],
}

impl WithSimd for RowPair<'_, '_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(mut self, simd: S) -> Self::Output {
        let c = self.conv;
        let block = NV * S::F32_LANES;
        let tiles = self.w.div_ceil(2);
        let seg = (SEGMENT_VALUES / (TAPS * c.cin) / block * block)
            .max(block)
            .min(tiles.next_multiple_of(block));
        // Transformed rows `stride` apart, not a multiple of 4 KiB (rows of power-of-two
        // widths would all fall into one cache set).
        let stride = seg + S::F32_LANES;
        let mut v = vec![0.0f32; TAPS * c.cin * stride];
        let mut scratch = Scratch::new(seg);
        let mut ts = 0;
        while ts < tiles {
            let len = seg.min(tiles - ts);
            self.transform(simd, &mut v, stride, ts, seg, &mut scratch);
            let mut tb = 0;
            while tb < len {
                for cb in 0..c.cout.div_ceil(CB) {
                    self.block(simd, &v, stride, cb, ts, tb, block.min(len - tb));
                }
                tb += block;
            }
            ts += len;
        }
    }
}

/// Per-task buffers of the input transform: one input channel's four rows split into even
/// and odd columns, and their row transforms.
struct Scratch {
    /// One input row's columns `2·ts − 1 ..`, zero outside the input.
    window: Vec<f32>,
    even: [Vec<f32>; 4],
    odd: [Vec<f32>; 4],
    /// `[row][b]`: the rows' transforms along the columns.
    rt: [[Vec<f32>; 4]; 4],
}

impl Scratch {
    fn new(seg: usize) -> Self {
        let v = |n| vec![0.0f32; n];
        Self {
            window: v(2 * seg + 2),
            even: std::array::from_fn(|_| v(seg + 1)),
            odd: std::array::from_fn(|_| v(seg + 1)),
            rt: std::array::from_fn(|_| std::array::from_fn(|_| v(seg))),
        }
    }
}

impl RowPair<'_, '_> {
    /// `Bᵀ d B` of tiles `ts..ts + seg` for every input channel into `v`
    /// (`[16][cin][stride]`). Tile `t` covers input rows `y0 - 1 ..= y0 + 2` and columns
    /// `2t - 1 ..= 2t + 2`, zero outside the input (the padding, and tiles past the row).
    #[inline(always)]
    fn transform<S: Simd>(
        &self,
        simd: S,
        v: &mut [f32],
        stride: usize,
        ts: usize,
        seg: usize,
        s: &mut Scratch,
    ) {
        let (c, h, w) = (self.conv, self.h, self.w);
        for ci in 0..c.cin {
            for i in 0..4 {
                let (even, odd) = (&mut s.even[i], &mut s.odd[i]);
                let iy = (self.y0 + i).checked_sub(1).filter(|&iy| iy < h);
                let Some(iy) = iy else {
                    even.fill(0.0);
                    odd.fill(0.0);
                    continue;
                };
                let row = &self.input[(ci * h + iy) * w..(ci * h + iy + 1) * w];
                // Window column j is input column 2·ts − 1 + j.
                let window = &mut s.window;
                let lead = usize::from(ts == 0);
                let first = (2 * ts + lead - 1).min(w);
                let count = (window.len() - lead).min(w - first);
                window[..lead].fill(0.0);
                window[lead..lead + count].copy_from_slice(&row[first..first + count]);
                window[lead + count..].fill(0.0);
                for ((e, o), pair) in even
                    .iter_mut()
                    .zip(odd.iter_mut())
                    .zip(window.chunks_exact(2))
                {
                    *e = pair[0];
                    *o = pair[1];
                }
                // Bᵀ along the columns: d0 − d2, d1 + d2, d2 − d1, d1 − d3 of every tile.
                let [r0, r1, r2, r3] = &mut s.rt[i];
                let (e0, _) = S::as_simd_f32s(&even[..seg]);
                let (e1, _) = S::as_simd_f32s(&even[1..=seg]);
                let (o0, _) = S::as_simd_f32s(&odd[..seg]);
                let (o1, _) = S::as_simd_f32s(&odd[1..=seg]);
                let (r0, _) = S::as_mut_simd_f32s(r0);
                let (r1, _) = S::as_mut_simd_f32s(r1);
                let (r2, _) = S::as_mut_simd_f32s(r2);
                let (r3, _) = S::as_mut_simd_f32s(r3);
                let rows = r0.iter_mut().zip(r1.iter_mut()).zip(r2.iter_mut().zip(r3));
                let cols = e0.iter().zip(e1).zip(o0.iter().zip(o1));
                for (((r0, r1), (r2, r3)), ((&e0, &e1), (&o0, &o1))) in rows.zip(cols) {
                    *r0 = simd.sub_f32s(e0, e1);
                    *r1 = simd.add_f32s(o0, e1);
                    *r2 = simd.sub_f32s(e1, o0);
                    *r3 = simd.sub_f32s(o0, o1);
                }
            }
            // Bᵀ along the rows, into the 16 planes: r0 − r2, r1 + r2, r2 − r1, r1 − r3.
            for b in 0..4 {
                let (x0, _) = S::as_simd_f32s(&s.rt[0][b]);
                let (x1, _) = S::as_simd_f32s(&s.rt[1][b]);
                let (x2, _) = S::as_simd_f32s(&s.rt[2][b]);
                let (x3, _) = S::as_simd_f32s(&s.rt[3][b]);
                for (a, (p, q, add)) in [
                    (x0, x2, false),
                    (x1, x2, true),
                    (x2, x1, false),
                    (x1, x3, false),
                ]
                .into_iter()
                .enumerate()
                {
                    let start = ((a * 4 + b) * c.cin + ci) * stride;
                    let (dst, _) = S::as_mut_simd_f32s(&mut v[start..start + seg]);
                    for (d, (&p, &q)) in dst.iter_mut().zip(p.iter().zip(q)) {
                        *d = if add {
                            simd.add_f32s(p, q)
                        } else {
                            simd.sub_f32s(p, q)
                        };
                    }
                }
            }
        }
    }

    /// Channel block `cb` × tiles `ts + tb ..` (a register block's worth; `valid` of them are
    /// stored): the 16 channel sums one after the other, each folded into the 2×2 outputs.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn block<S: Simd>(
        &mut self,
        simd: S,
        v: &[f32],
        stride: usize,
        cb: usize,
        ts: usize,
        tb: usize,
        valid: usize,
    ) {
        let c = self.conv;
        let lanes = S::F32_LANES;
        let zero = simd.splat_f32s(0.0);
        // Outputs (row dy, column dx) at index 2·dy + dx, started at the bias.
        let mut y = [[[zero; NV]; 4]; CB];
        for (k, y) in y.iter_mut().enumerate() {
            *y = [[simd.splat_f32s(c.bias[cb * CB + k]); NV]; 4];
        }
        let weights = &c.packed[cb * TAPS * c.cin * CB..(cb + 1) * TAPS * c.cin * CB];
        for (t, taps) in weights.chunks_exact(c.cin * CB).enumerate() {
            let mut acc = [[zero; NV]; CB];
            let plane = &v[t * c.cin * stride..(t + 1) * c.cin * stride];
            for (row, wt) in plane.chunks_exact(stride).zip(taps.chunks_exact(CB)) {
                let (u, _) = S::as_simd_f32s(&row[tb..tb + NV * lanes]);
                for (acc, &wk) in acc.iter_mut().zip(wt) {
                    let wv = simd.splat_f32s(wk);
                    for (acc, &u) in acc.iter_mut().zip(u) {
                        *acc = simd.mul_add_f32s(wv, u, *acc);
                    }
                }
            }
            // Aᵀ · A: product (a, b) adds to output (dy, dx) with sign A[dy][a] · A[dx][b].
            let (a, b) = (t / 4, t % 4);
            for (o, sign) in (0..4).map(|o| (o, A[o / 2][a] * A[o % 2][b])) {
                if sign == 0.0 {
                    continue;
                }
                for (y, acc) in y.iter_mut().zip(&acc) {
                    for (y, &acc) in y[o].iter_mut().zip(acc) {
                        *y = if sign > 0.0 {
                            simd.add_f32s(*y, acc)
                        } else {
                            simd.sub_f32s(*y, acc)
                        };
                    }
                }
            }
        }
        let rows = self.outs.len() / c.cout;
        let x0 = 2 * (ts + tb);
        for (k, y) in y.iter().enumerate() {
            let co = cb * CB + k;
            if co >= c.cout {
                break;
            }
            for dy in 0..rows {
                let row = &mut *self.outs[co * rows + dy];
                let left: &[f32] = pulp::bytemuck::cast_slice(&y[2 * dy]);
                let right: &[f32] = pulp::bytemuck::cast_slice(&y[2 * dy + 1]);
                let end = (x0 + 2 * valid).min(self.w);
                for (x, pair) in row[x0..end].chunks_mut(2).enumerate() {
                    let (l, r) = (left[x], right[x]);
                    pair[0] = if c.relu { l.max(0.0) } else { l };
                    if let Some(p) = pair.get_mut(1) {
                        *p = if c.relu { r.max(0.0) } else { r };
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mdx::simd::testing::{reference, values, worst};

    #[test]
    fn every_geometry_matches_the_definition() {
        // Odd and even heights and widths (a last row pair of one row, a last tile of one
        // column), widths below, at and above a register block and a segment, channel counts
        // that are and are not a multiple of the channel block, one and several items.
        let cases: &[([usize; 4], usize, bool)] = &[
            ([1, 1, 1, 1], 1, false),
            ([2, 3, 5, 37], 6, true),
            ([1, 4, 9, 3], 5, false),
            ([1, 2, 4, 1], 4, true),
            ([1, 5, 6, 401], 8, true),
            ([2, 7, 3, 200], 13, false),
            ([1, 48, 4, 130], 48, true),
        ];
        for (i, &(xd, cout, relu)) in cases.iter().enumerate() {
            let wd = [cout, xd[1], 3, 3];
            let x = values(xd.iter().product(), 11 + i as u32);
            let w = values(wd.iter().product(), 23 + i as u32);
            let b = values(cout, 31 + i as u32);
            let conv = WinogradConv::new(&w, wd, Some(&b), relu).unwrap();
            let got = conv.run(&x, xd);
            let want = reference(&x, xd, &w, wd, &b, [1, 1], relu);
            assert_eq!(got.len(), want.len(), "case {i}: length");
            let worst = worst(&got, &want);
            assert!(worst < 1e-5, "case {i}: largest difference {worst}");
            if relu {
                assert!(got.iter().all(|v| *v >= 0.0), "case {i}: ReLU applied");
            }
        }
    }

    #[test]
    fn other_kernels_are_declined() {
        let w = vec![0.0; 25];
        assert!(WinogradConv::new(&w, [1, 1, 5, 5], None, false).is_none());
        assert!(WinogradConv::new(&w[..9], [1, 1, 3, 3], Some(&[0.0, 0.0]), false).is_none());
        assert!(WinogradConv::new(&w[..8], [1, 1, 3, 3], None, false).is_none());
        assert!(WinogradConv::new(&w[..9], [1, 1, 3, 3], None, false).is_some());
    }
}
