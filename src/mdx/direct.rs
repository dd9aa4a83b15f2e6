//! Direct 2-D convolution on the CPU for the MDX-Net graph's stride-1 convolutions (the 3×3
//! convolutions of every TFC block, about three quarters of the network's arithmetic, and the
//! 1×1 convolutions at its ends).
//!
//! Burn's CPU backend runs a convolution as im2col + GEMM after copying the input to NHWC on
//! one thread; here the activations stay NCHW and each output row is computed in place from
//! the input rows it reads: those rows are copied, a segment of columns at a time, into a
//! small zero-padded buffer (which also supplies the padding, and keeps rows whose width is a
//! power of two from falling into one cache set), and a register block of 6 output channels
//! × 2 SIMD vectors of columns accumulates `Σ ci, ky, kx  w[co, ci, ky, kx] ·
//! x[ci, y + ky, x + kx]` from it with fused multiply-adds, the weights packed at load time so
//! the 6 channels' taps are adjacent. The
//! instruction set is chosen at run time (AVX-512, AVX2 + FMA, NEON, or scalar) through
//! `pulp`; output rows run in parallel on rayon's pool. A ReLU that alone reads the
//! convolution is applied in the same pass.
//!
//! The result is the same sum as the reference's, in a different order: equal up to float
//! rounding, which the fixture tests bound.

use pulp::{Simd, WithSimd};
use rayon::prelude::*;

use super::simd::{dispatch, padded_bias, row_tasks};

/// Output channels per register block.
const CB: usize = 6;
/// SIMD vectors of output columns per register block: 6 × 2 accumulators, 2 input vectors
/// and a broadcast weight fill AVX2's 16 registers without spilling.
const NV: usize = 2;
/// Values of packed input per segment of output columns (128 KiB): the input rows a segment
/// reads stay in L2 while every channel block of the segment runs.
const SEGMENT_VALUES: usize = 32 * 1024;

/// A stride-1, dilation-1, single-group convolution with its weights packed for the CPU.
#[derive(Debug, Clone)]
pub struct DirectConv {
    cin: usize,
    cout: usize,
    kh: usize,
    kw: usize,
    ph: usize,
    pw: usize,
    relu: bool,
    /// `[cout / CB][cin][kh][kw][CB]`, output channels zero-padded to a multiple of `CB`.
    packed: Vec<f32>,
    /// One per output channel, zero-padded like `packed`.
    bias: Vec<f32>,
}

impl DirectConv {
    /// Packs `w` (`[cout, cin, kh, kw]`, row-major) with optional `bias`; `None` when the
    /// geometry is outside what this kernel runs (padding of a kernel's size or more).
    pub fn new(
        w: &[f32],
        dims: [usize; 4],
        bias: Option<&[f32]>,
        padding: [usize; 2],
        relu: bool,
    ) -> Option<Self> {
        let [cout, cin, kh, kw] = dims;
        let [ph, pw] = padding;
        if cout == 0 || cin == 0 || kh == 0 || kw == 0 || ph >= kh || pw >= kw {
            return None;
        }
        if w.len() != cout * cin * kh * kw || bias.is_some_and(|b| b.len() != cout) {
            return None;
        }
        let blocks = cout.div_ceil(CB);
        let taps = kh * kw;
        let mut packed = vec![0.0; blocks * cin * taps * CB];
        for co in 0..cout {
            let (cb, c) = (co / CB, co % CB);
            for ci in 0..cin {
                for t in 0..taps {
                    packed[((cb * cin + ci) * taps + t) * CB + c] = w[(co * cin + ci) * taps + t];
                }
            }
        }
        Some(Self {
            cin,
            cout,
            kh,
            kw,
            ph,
            pw,
            relu,
            packed,
            bias: padded_bias(bias, cout, blocks * CB),
        })
    }

    /// Output channels.
    pub fn out_channels(&self) -> usize {
        self.cout
    }

    /// The output's `[height, width]` for an input of `[h, w]` (`None`: the input is smaller
    /// than the kernel allows).
    pub fn out_size(&self, h: usize, w: usize) -> Option<[usize; 2]> {
        let oh = (h + 2 * self.ph).checked_sub(self.kh)? + 1;
        let ow = (w + 2 * self.pw).checked_sub(self.kw)? + 1;
        Some([oh, ow])
    }

    /// Convolves `x` (`[n, cin, h, w]`, row-major) into a new `[n, cout, oh, ow]` buffer.
    ///
    /// # Panics
    /// When `x` does not hold `n · cin · h · w` values or the input is smaller than the kernel
    /// (the graph compiler checks both).
    pub fn run(&self, x: &[f32], [n, cin, h, w]: [usize; 4]) -> Vec<f32> {
        assert_eq!(cin, self.cin, "input channels");
        assert_eq!(x.len(), n * cin * h * w, "input length");
        let [oh, ow] = self
            .out_size(h, w)
            .expect("input at least the kernel's size");
        let mut out = vec![0.0f32; n * self.cout * oh * ow];
        if out.is_empty() {
            return out;
        }
        // One task per output row of one item, holding that row of every output channel.
        let rows = row_tasks(&mut out, [n, self.cout, oh, ow], 1);
        rows.into_par_iter().for_each(|(item, y, mut outs)| {
            let input = &x[item * cin * h * w..(item + 1) * cin * h * w];
            dispatch(Row {
                conv: self,
                input,
                h,
                w,
                y,
                outs: &mut outs,
            });
        });
        out
    }
}

/// A convolution the CPU runs with [`DirectConv`]: directly (stride 1), or, when the stride
/// equals the kernel (the encoder's downsampling) or a transposed convolution's stride equals
/// its kernel (the decoder's upsampling), as a 1×1 convolution between a rearrangement of the
/// input's patches into channels and back.
#[derive(Debug, Clone)]
pub enum CpuConv {
    /// Stride 1.
    Direct(DirectConv),
    /// 3×3, stride 1, padding 1: Winograd F(2×2, 3×3).
    Winograd(super::winograd::WinogradConv),
    /// Non-overlapping `k` patches (stride = kernel, no padding): space-to-depth, then a 1×1
    /// convolution over `cin · kh · kw` channels.
    Patches {
        /// The 1×1 convolution.
        conv: DirectConv,
        /// The kernel (= stride).
        k: [usize; 2],
    },
    /// A transposed convolution with stride = kernel and no padding: a 1×1 convolution into
    /// `cout · kh · kw` channels, then depth-to-space.
    Transposed {
        /// The 1×1 convolution.
        conv: DirectConv,
        /// The kernel (= stride).
        k: [usize; 2],
    },
}

impl CpuConv {
    /// A stride-`k` convolution over `k` patches, from `w` = `[cout, cin, kh, kw]`.
    pub fn patches(
        w: &[f32],
        [cout, cin, kh, kw]: [usize; 4],
        bias: Option<&[f32]>,
        relu: bool,
    ) -> Option<Self> {
        // `[cout, cin, kh, kw]` row-major is already `[cout, cin · kh · kw, 1, 1]`, in the
        // channel order space-to-depth produces.
        let conv = DirectConv::new(w, [cout, cin * kh * kw, 1, 1], bias, [0, 0], relu)?;
        Some(Self::Patches { conv, k: [kh, kw] })
    }

    /// A transposed convolution with stride `k`, from `w` = `[cin, cout, kh, kw]`.
    pub fn transposed(
        w: &[f32],
        [cin, cout, kh, kw]: [usize; 4],
        bias: Option<&[f32]>,
        relu: bool,
    ) -> Option<Self> {
        if w.len() != cin * cout * kh * kw || bias.is_some_and(|b| b.len() != cout) {
            return None;
        }
        let taps = kh * kw;
        // Output channel (co, ky, kx) of the 1×1 convolution reads w[ci, co, ky, kx].
        let mut w1 = vec![0.0; cout * taps * cin];
        for ci in 0..cin {
            for o in 0..cout * taps {
                w1[o * cin + ci] = w[ci * cout * taps + o];
            }
        }
        let b1: Option<Vec<f32>> = bias.map(|b| {
            b.iter()
                .flat_map(|&v| std::iter::repeat_n(v, taps))
                .collect()
        });
        let conv = DirectConv::new(&w1, [cout * taps, cin, 1, 1], b1.as_deref(), [0, 0], relu)?;
        Some(Self::Transposed { conv, k: [kh, kw] })
    }

    /// The output's shape for an input of `[n, c, h, w]` (`None`: too small for the kernel).
    pub fn out_dims(&self, [n, _, h, w]: [usize; 4]) -> Option<[usize; 4]> {
        match self {
            Self::Direct(conv) => {
                let [oh, ow] = conv.out_size(h, w)?;
                Some([n, conv.out_channels(), oh, ow])
            }
            Self::Winograd(conv) => Some([n, conv.out_channels(), h, w]),
            Self::Patches { conv, k } => {
                (h >= k[0] && w >= k[1]).then(|| [n, conv.out_channels(), h / k[0], w / k[1]])
            }
            Self::Transposed { conv, k } => {
                Some([n, conv.out_channels() / (k[0] * k[1]), h * k[0], w * k[1]])
            }
        }
    }

    /// Runs on `x` (`[n, c, h, w]`, row-major); the result has [`out_dims`](Self::out_dims).
    pub fn run(&self, x: &[f32], dims: [usize; 4]) -> Vec<f32> {
        match self {
            Self::Direct(conv) => conv.run(x, dims),
            Self::Winograd(conv) => conv.run(x, dims),
            Self::Patches { conv, k } => {
                let (patches, pdims) = space_to_depth(x, dims, *k);
                conv.run(&patches, pdims)
            }
            Self::Transposed { conv, k } => {
                let [n, _, h, w] = dims;
                let y = conv.run(x, dims);
                depth_to_space(&y, [n, conv.out_channels(), h, w], *k)
            }
        }
    }
}

/// `[n, c, h, w]` → `[n, c·kh·kw, h/kh, w/kw]`: channel `(ci, ky, kx)` holds
/// `x[ci, y·kh + ky, x·kw + kx]` (rows and columns past the last whole patch are dropped,
/// as a stride-k convolution drops them).
fn space_to_depth(
    x: &[f32],
    [n, c, h, w]: [usize; 4],
    [kh, kw]: [usize; 2],
) -> (Vec<f32>, [usize; 4]) {
    let (oh, ow) = (h / kh, w / kw);
    let mut out = vec![0.0; n * c * kh * kw * oh * ow];
    if !out.is_empty() {
        out.par_chunks_mut(kh * kw * oh * ow)
            .enumerate()
            .for_each(|(plane, dst)| {
                let src = &x[plane * h * w..(plane + 1) * h * w];
                for (t, dst) in dst.chunks_mut(oh * ow).enumerate() {
                    let (ky, kx) = (t / kw, t % kw);
                    for (y, dst) in dst.chunks_mut(ow).enumerate() {
                        let row = &src[(y * kh + ky) * w..];
                        for (xo, d) in dst.iter_mut().enumerate() {
                            *d = row[xo * kw + kx];
                        }
                    }
                }
            });
    }
    (out, [n, c * kh * kw, oh, ow])
}

/// `[n, c·kh·kw, h, w]` → `[n, c, h·kh, w·kw]`, the inverse of [`space_to_depth`].
fn depth_to_space(y: &[f32], [n, ck, h, w]: [usize; 4], [kh, kw]: [usize; 2]) -> Vec<f32> {
    let (oh, ow) = (h * kh, w * kw);
    let c = ck / (kh * kw);
    let mut out = vec![0.0; n * c * oh * ow];
    if !out.is_empty() {
        out.par_chunks_mut(oh * ow)
            .enumerate()
            .for_each(|(plane, dst)| {
                let src = &y[plane * kh * kw * h * w..(plane + 1) * kh * kw * h * w];
                for (t, src) in src.chunks(h * w).enumerate() {
                    let (ky, kx) = (t / kw, t % kw);
                    for (yi, src) in src.chunks(w).enumerate() {
                        let row = &mut dst[(yi * kh + ky) * ow..(yi * kh + ky + 1) * ow];
                        for (xi, v) in src.iter().enumerate() {
                            row[xi * kw + kx] = *v;
                        }
                    }
                }
            });
    }
    out
}

/// One output row (`y`) of every output channel of one item.
struct Row<'a, 'o> {
    conv: &'a DirectConv,
    /// `[cin, h, w]`.
    input: &'a [f32],
    h: usize,
    w: usize,
    y: usize,
    /// `cout` rows of `ow` values.
    outs: &'a mut [&'o mut [f32]],
}

impl WithSimd for Row<'_, '_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(mut self, simd: S) -> Self::Output {
        let c = self.conv;
        let ow = self.outs[0].len();
        let lanes = S::F32_LANES;
        let block = NV * lanes;
        // Columns per segment: the packed input of a segment (cin · kh rows) stays in L2.
        let seg = (SEGMENT_VALUES / (c.cin * c.kh) / block * block).max(block);
        let seg = seg.min(ow.next_multiple_of(lanes));
        // Packed rows, `stride` apart: wide enough for the last vector's taps, and not a
        // multiple of 4 KiB (rows of power-of-two widths would all fall into one cache set).
        let stride = (seg + c.kw - 1).next_multiple_of(lanes) + lanes;
        let mut packed = vec![0.0f32; c.cin * c.kh * stride];
        let mut xs = 0;
        while xs < ow {
            let len = seg.min(ow - xs);
            self.pack(&mut packed, stride, xs);
            // The kernel widths of the MDX graphs get unrolled code; any other runs the same
            // code with the width read at run time.
            match c.kw {
                1 => self.segment::<S, 1>(simd, &packed, stride, xs, len),
                3 => self.segment::<S, 3>(simd, &packed, stride, xs, len),
                _ => self.segment::<S, 0>(simd, &packed, stride, xs, len),
            }
            xs += len;
        }
    }
}

impl Row<'_, '_> {
    /// Copies the input this row reads for output columns `xs..` into `packed`
    /// (`[cin][kh][stride]`): packed column `j` of kernel row `ky` holds input column
    /// `xs + j - pw` of row `y + ky - ph`, zero outside the input (the padding).
    fn pack(&self, packed: &mut [f32], stride: usize, xs: usize) {
        let c = self.conv;
        for (r, dst) in packed.chunks_mut(stride).enumerate() {
            let (ci, ky) = (r / c.kh, r % c.kh);
            let iy = (self.y + ky).checked_sub(c.ph).filter(|&iy| iy < self.h);
            let Some(iy) = iy else {
                dst.fill(0.0);
                continue;
            };
            let row = &self.input[(ci * self.h + iy) * self.w..(ci * self.h + iy + 1) * self.w];
            // Packed column j reads input column xs + j - pw: j from `lead` reads column
            // `first`, for `count` columns.
            let lead = c.pw.saturating_sub(xs).min(stride);
            let first = (xs + lead).saturating_sub(c.pw);
            let count = (stride - lead).min(self.w.saturating_sub(first));
            dst[..lead].fill(0.0);
            dst[lead..lead + count].copy_from_slice(&row[first..first + count]);
            dst[lead + count..].fill(0.0);
        }
    }

    /// Every channel block over output columns `xs..xs + len`, from the packed input;
    /// `KW` is the kernel width (0: read from the convolution).
    #[inline(always)]
    fn segment<S: Simd, const KW: usize>(
        &mut self,
        simd: S,
        packed: &[f32],
        stride: usize,
        xs: usize,
        len: usize,
    ) {
        let lanes = S::F32_LANES;
        let block = NV * lanes;
        for cb in 0..self.conv.cout.div_ceil(CB) {
            let mut bx = 0;
            while bx + block <= len {
                self.block::<S, KW, NV>(simd, packed, stride, cb, xs, bx, block);
                bx += block;
            }
            while bx < len {
                let valid = (len - bx).min(lanes);
                self.block::<S, KW, 1>(simd, packed, stride, cb, xs, bx, valid);
                bx += lanes;
            }
        }
    }

    /// The weights of channel block `cb`, input channel `ci`, kernel row `ky`:
    /// `[kw][CB]`.
    #[inline(always)]
    fn taps(&self, cb: usize, ci: usize, ky: usize) -> &[f32] {
        let c = self.conv;
        let start = ((cb * c.cin + ci) * c.kh + ky) * c.kw * CB;
        &c.packed[start..start + c.kw * CB]
    }

    /// `CB` channels × `N` vectors of output columns `xs + bx ..`, of which the first
    /// `valid` are stored (fewer than `N` vectors' worth only for a row's last, partial
    /// vector); `KW` as in [`segment`](Self::segment).
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn block<S: Simd, const KW: usize, const N: usize>(
        &mut self,
        simd: S,
        packed: &[f32],
        stride: usize,
        cb: usize,
        xs: usize,
        bx: usize,
        valid: usize,
    ) {
        let c = self.conv;
        let lanes = S::F32_LANES;
        let mut acc = [[simd.splat_f32s(0.0); N]; CB];
        for (k, acc) in acc.iter_mut().enumerate() {
            *acc = [simd.splat_f32s(c.bias[cb * CB + k]); N];
        }
        let kw = if KW == 0 { c.kw } else { KW };
        let span = N * lanes + kw - 1;
        for ci in 0..c.cin {
            for ky in 0..c.kh {
                let start = (ci * c.kh + ky) * stride + bx;
                let row = &packed[start..start + span];
                let taps = &self.taps(cb, ci, ky)[..kw * CB];
                for kx in 0..kw {
                    let (v, _) = S::as_simd_f32s(&row[kx..kx + N * lanes]);
                    for (acc, &t) in acc.iter_mut().zip(&taps[kx * CB..kx * CB + CB]) {
                        let wv = simd.splat_f32s(t);
                        for (acc, &v) in acc.iter_mut().zip(v) {
                            *acc = simd.mul_add_f32s(wv, v, *acc);
                        }
                    }
                }
            }
        }
        let zero = simd.splat_f32s(0.0);
        let x0 = xs + bx;
        for (k, acc) in acc.iter().enumerate() {
            let co = cb * CB + k;
            if co >= c.cout {
                break;
            }
            let acc = acc.map(|a| if c.relu { simd.max_f32s(a, zero) } else { a });
            let out = &mut self.outs[co][x0..x0 + valid];
            if valid == N * lanes {
                S::as_mut_simd_f32s(out).0.copy_from_slice(&acc);
            } else {
                let values: &[f32] = pulp::bytemuck::cast_slice(&acc);
                out.copy_from_slice(&values[..valid]);
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
        // Widths below, at and above a register block and a cache segment; channel counts
        // that are and are not a multiple of the channel block; 3×3 "same", 1×1, and
        // asymmetric kernels with and without padding.
        type Case = ([usize; 4], [usize; 4], [usize; 2], bool);
        let cases: &[Case] = &[
            ([2, 3, 5, 37], [6, 3, 3, 3], [1, 1], true),
            ([1, 4, 9, 3], [5, 4, 3, 3], [1, 1], false),
            ([1, 2, 4, 1], [4, 2, 3, 3], [1, 1], true),
            ([2, 7, 3, 200], [9, 7, 1, 1], [0, 0], false),
            ([1, 5, 6, 401], [8, 5, 3, 3], [1, 1], true),
            ([1, 3, 7, 50], [2, 3, 2, 5], [0, 2], false),
            ([1, 2, 5, 30], [3, 2, 3, 3], [0, 0], true),
        ];
        for (i, &(xd, wd, pad, relu)) in cases.iter().enumerate() {
            let x = values(xd.iter().product(), 11 + i as u32);
            let w = values(wd.iter().product(), 23 + i as u32);
            let b = values(wd[0], 31 + i as u32);
            let conv = DirectConv::new(&w, wd, Some(&b), pad, relu).unwrap();
            let got = conv.run(&x, xd);
            let want = reference(&x, xd, &w, wd, &b, pad, relu);
            assert_eq!(got.len(), want.len(), "case {i}: length");
            let worst = worst(&got, &want);
            assert!(worst < 1e-5, "case {i}: largest difference {worst}");
            if relu {
                assert!(got.iter().all(|v| *v >= 0.0), "case {i}: ReLU applied");
            }
        }
    }

    #[test]
    fn non_overlapping_patches_match_a_strided_convolution() {
        // [n, cin, h, w] with a row and a column past the last whole patch.
        let (xd, wd) = ([2usize, 3, 7, 41], [5usize, 3, 2, 2]);
        let x = values(xd.iter().product(), 3);
        let w = values(wd.iter().product(), 5);
        let b = values(5, 7);
        let conv = CpuConv::patches(&w, wd, Some(&b), true).unwrap();
        let od = conv.out_dims(xd).unwrap();
        assert_eq!(od, [2, 5, 3, 20]);
        let got = conv.run(&x, xd);
        let mut want = vec![0.0f32; od.iter().product()];
        for n in 0..2 {
            for co in 0..5 {
                for y in 0..3 {
                    for xo in 0..20 {
                        let mut s = f64::from(b[co]);
                        for ci in 0..3 {
                            for ky in 0..2 {
                                for kx in 0..2 {
                                    let xv = x[((n * 3 + ci) * 7 + 2 * y + ky) * 41 + 2 * xo + kx];
                                    let wv = w[((co * 3 + ci) * 2 + ky) * 2 + kx];
                                    s += f64::from(xv) * f64::from(wv);
                                }
                            }
                        }
                        want[((n * 5 + co) * 3 + y) * 20 + xo] = (s as f32).max(0.0);
                    }
                }
            }
        }
        assert!(worst(&got, &want) < 1e-5);
    }

    #[test]
    fn a_transposed_convolution_with_stride_equal_to_its_kernel_matches_its_definition() {
        let (xd, wd) = ([2usize, 4, 3, 19], [4usize, 3, 2, 2]);
        let x = values(xd.iter().product(), 13);
        let w = values(wd.iter().product(), 17);
        let b = values(3, 19);
        for relu in [false, true] {
            let conv = CpuConv::transposed(&w, wd, Some(&b), relu).unwrap();
            let od = conv.out_dims(xd).unwrap();
            assert_eq!(od, [2, 3, 6, 38]);
            let got = conv.run(&x, xd);
            let mut want = vec![0.0f32; od.iter().product()];
            for n in 0..2 {
                for co in 0..3 {
                    for y in 0..6 {
                        for xo in 0..38 {
                            let (yi, ky, xi, kx) = (y / 2, y % 2, xo / 2, xo % 2);
                            let mut s = f64::from(b[co]);
                            for ci in 0..4 {
                                let xv = x[((n * 4 + ci) * 3 + yi) * 19 + xi];
                                let wv = w[((ci * 3 + co) * 2 + ky) * 2 + kx];
                                s += f64::from(xv) * f64::from(wv);
                            }
                            let s = s as f32;
                            want[((n * 3 + co) * 6 + y) * 38 + xo] =
                                if relu { s.max(0.0) } else { s };
                        }
                    }
                }
            }
            assert!(worst(&got, &want) < 1e-5, "relu {relu}");
        }
    }

    #[test]
    fn geometries_it_cannot_run_are_declined() {
        let w = vec![0.0; 9];
        assert!(DirectConv::new(&w, [1, 1, 3, 3], None, [3, 1], false).is_none());
        assert!(DirectConv::new(&w, [1, 1, 3, 3], Some(&[0.0, 0.0]), [1, 1], false).is_none());
        assert!(DirectConv::new(&w[..8], [1, 1, 3, 3], None, [1, 1], false).is_none());
        let conv = DirectConv::new(&w, [1, 1, 3, 3], None, [0, 0], false).unwrap();
        assert_eq!(conv.out_size(2, 5), None);
        assert_eq!(conv.out_size(3, 5), Some([1, 3]));
    }
}
