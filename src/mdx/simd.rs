//! What the CPU kernels ([`super::direct`], [`super::winograd`]) share: the run-time choice
//! of instruction set and, for their tests, the convolution by its definition.

use pulp::{Simd, WithSimd};

/// The best instruction set this CPU has: pulp's detection, plus AVX2 + FMA on x86-64 where
/// pulp was built without its `x86-v3` level.
pub(super) fn dispatch<Op: WithSimd>(op: Op) -> Op::Output {
    let arch = pulp::Arch::new();
    #[cfg(target_arch = "x86_64")]
    if matches!(arch, pulp::Arch::Scalar)
        && let Some(simd) = pulp::x86::V3::try_new()
    {
        return Simd::vectorize(simd, op);
    }
    arch.dispatch(op)
}

/// An output buffer `[n, c, h, w]` cut into tasks of `rows` output rows of one item, each
/// with those rows of every channel (channel by channel, the upper row first; the last task
/// of an item may have fewer rows): `(item, first row, rows)`.
pub(super) type RowTask<'o> = (usize, usize, Vec<&'o mut [f32]>);

/// See [`RowTask`].
pub(super) fn row_tasks(
    out: &mut [f32],
    [n, c, h, w]: [usize; 4],
    rows: usize,
) -> Vec<RowTask<'_>> {
    let per_item = h.div_ceil(rows);
    let mut tasks: Vec<RowTask<'_>> = Vec::with_capacity(n * per_item);
    if out.is_empty() {
        return tasks;
    }
    for (item, planes) in out.chunks_mut(c * h * w).enumerate() {
        let first = tasks.len();
        for t in 0..per_item {
            tasks.push((item, t * rows, Vec::with_capacity(rows * c)));
        }
        for plane in planes.chunks_mut(h * w) {
            for (y, row) in plane.chunks_mut(w).enumerate() {
                tasks[first + y / rows].2.push(row);
            }
        }
    }
    tasks
}

/// A convolution's bias padded with zeros to `blocks · block` output channels (the register
/// blocks of a kernel), zeros without one.
pub(super) fn padded_bias(bias: Option<&[f32]>, cout: usize, len: usize) -> Vec<f32> {
    let mut b = vec![0.0; len];
    if let Some(bias) = bias {
        b[..cout].copy_from_slice(bias);
    }
    b
}

#[cfg(test)]
pub(super) mod testing {
    /// The convolution by its definition, in f64.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn reference(
        x: &[f32],
        [n, cin, h, w]: [usize; 4],
        wt: &[f32],
        [cout, _, kh, kw]: [usize; 4],
        bias: &[f32],
        [ph, pw]: [usize; 2],
        relu: bool,
    ) -> Vec<f32> {
        let (oh, ow) = (h + 2 * ph + 1 - kh, w + 2 * pw + 1 - kw);
        let mut out = vec![0.0; n * cout * oh * ow];
        for b in 0..n {
            for co in 0..cout {
                for y in 0..oh {
                    for xo in 0..ow {
                        let mut s = f64::from(bias[co]);
                        for ci in 0..cin {
                            for ky in 0..kh {
                                for kx in 0..kw {
                                    let (iy, ix) = (y + ky, xo + kx);
                                    if iy < ph || ix < pw || iy - ph >= h || ix - pw >= w {
                                        continue;
                                    }
                                    let xv = x[((b * cin + ci) * h + iy - ph) * w + ix - pw];
                                    let wv = wt[((co * cin + ci) * kh + ky) * kw + kx];
                                    s += f64::from(xv) * f64::from(wv);
                                }
                            }
                        }
                        let s = s as f32;
                        out[((b * cout + co) * oh + y) * ow + xo] =
                            if relu { s.max(0.0) } else { s };
                    }
                }
            }
        }
        out
    }

    /// The largest absolute difference between two results of the same length.
    pub(crate) fn worst(got: &[f32], want: &[f32]) -> f32 {
        assert_eq!(got.len(), want.len(), "length");
        got.iter()
            .zip(want)
            .map(|(g, w)| (g - w).abs())
            .fold(0.0f32, f32::max)
    }

    pub(crate) fn values(len: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.max(1);
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                s as f32 / u32::MAX as f32 - 0.5
            })
            .collect()
    }
}
