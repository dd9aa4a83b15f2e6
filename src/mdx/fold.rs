//! Load-time graph rewrites: batch norms (per-channel affine maps) that alone read a
//! convolution's output are folded into that convolution's weights and bias, and ReLUs that
//! alone read a convolution's output are fused into it.

use std::borrow::Cow;
use std::collections::HashMap;

use super::onnx::Initializer;
use super::plan::{Plan, PlanOp};

/// Folds every per-channel affine map (a batch norm) that alone reads a convolution's or
/// transposed convolution's output into that convolution's weights and bias: one pass over
/// the activations fewer per fold, and the same function up to float rounding.
/// (UVR's exported graphs keep a batch norm after every ConvTranspose.)
pub(super) fn fold_affines(plan: &mut Plan<'_>) {
    merge_into_producers(plan, |consumer, producer| match consumer {
        PlanOp::Affine { scale, shift, .. } => fold_into(producer, scale, shift),
        _ => false,
    });
}

/// Fuses every ReLU that alone reads a (transposed) convolution's output into it (run after
/// [`fold_affines`], so `Conv → BatchNorm → Relu` becomes one operation).
pub(super) fn fuse_relus(plan: &mut Plan<'_>) {
    merge_into_producers(plan, |consumer, producer| match (consumer, producer) {
        (PlanOp::Relu { .. }, PlanOp::Conv { relu, .. } | PlanOp::ConvT { relu, .. }) => {
            *relu = true;
            true
        }
        _ => false,
    });
}

/// Removes every one-input step whose input is read by it alone (and is not the graph
/// output) when `merge` folds it into the step that produced that input; the producer then
/// writes the removed step's slot.
fn merge_into_producers<'g>(
    plan: &mut Plan<'g>,
    mut merge: impl FnMut(&PlanOp<'g>, &mut PlanOp<'g>) -> bool,
) {
    let mut producer: HashMap<usize, usize> = HashMap::new();
    for (i, s) in plan.steps.iter().enumerate() {
        producer.insert(s.out, i);
    }
    let mut removed = vec![false; plan.steps.len()];
    // By index: step `i` is read while an earlier step, `j`, is rewritten.
    #[allow(clippy::needless_range_loop)]
    for i in 0..plan.steps.len() {
        let &[x] = plan.steps[i].op.inputs().as_slice() else {
            continue;
        };
        if plan.uses[x] != 1 || x == plan.output {
            continue;
        }
        // Producers come before their readers (the plan is in execution order).
        let Some(&j) = producer.get(&x).filter(|&&j| j < i) else {
            continue;
        };
        let (before, from_i) = plan.steps.split_at_mut(i);
        if !merge(&from_i[0].op, &mut before[j].op) {
            continue;
        }
        // The producer now writes the merged step's result; its old slot is unused.
        plan.steps[j].out = plan.steps[i].out;
        plan.uses[x] = 0;
        removed[i] = true;
    }
    let mut k = 0;
    plan.steps.retain(|_| {
        k += 1;
        !removed[k - 1]
    });
}

/// Scales output channel `o` of a (transposed) convolution by `scale[o]` and adds `shift[o]`
/// to its bias; `false` (nothing changed) when the channel counts disagree.
fn fold_into(op: &mut PlanOp<'_>, scale: &[f32], shift: &[f32]) -> bool {
    let (w, b, transposed, groups) = match op {
        PlanOp::Conv { w, b, geometry, .. } => (w, b, false, geometry.groups),
        PlanOp::ConvT { w, b, geometry, .. } => (w, b, true, geometry.groups),
        _ => return false,
    };
    let d = w.dims.clone();
    let outs = if transposed { d[1] * groups } else { d[0] };
    if scale.len() != outs
        || shift.len() != outs
        || b.as_ref().is_some_and(|b| b.data.len() != outs)
    {
        return false;
    }
    let k = d[2] * d[3];
    // The output channel a weight belongs to: `[out, in/groups, kh, kw]` for a convolution;
    // `[in, out/groups, kh, kw]` for a transposed one, where input channel `ci` (of group
    // `ci / (in/groups)`) feeds output channel `group · out/groups + co`.
    let channel = |i: usize| {
        if transposed {
            let (ci, co) = (i / (d[1] * k), (i / k) % d[1]);
            (ci / (d[0] / groups)) * d[1] + co
        } else {
            i / (d[1] * k)
        }
    };
    for (i, v) in w.to_mut().data.iter_mut().enumerate() {
        *v *= scale[channel(i)];
    }
    let bias: Vec<f32> = (0..outs)
        .map(|o| b.as_ref().map_or(0.0, |b| b.data[o]) * scale[o] + shift[o])
        .collect();
    *b = Some(Cow::Owned(Initializer {
        dims: vec![outs],
        data: bias,
    }));
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mdx::onnx::Graph;
    use crate::mdx::plan::{ConvGeometry, element_count, plan};
    use crate::mdx::synth::{Geometry, convtdfnet};

    /// Batch norms that alone read a Conv's or ConvTranspose's output (these are folded).
    fn folded(g: &Graph) -> usize {
        g.nodes
            .iter()
            .filter(|n| n.op_type == "BatchNormalization")
            .filter(|n| {
                let x = &n.inputs[0];
                let readers = g.nodes.iter().filter(|m| m.inputs.contains(x)).count();
                readers == 1
                    && g.nodes.iter().any(|m| {
                        m.outputs.first() == Some(x)
                            && (m.op_type == "Conv" || m.op_type == "ConvTranspose")
                    })
            })
            .count()
    }

    #[test]
    fn a_synthetic_convtdfnet_folds() {
        let g = convtdfnet(
            &Geometry {
                dim_f: 32,
                dim_t: 8,
                g: 4,
                stages: 2,
                l: 1,
                bn: 2,
            },
            1,
        );
        let mut p = plan(&g).unwrap();
        fold_affines(&mut p);
        assert_eq!(p.steps.len(), g.nodes.len() - folded(&g));
        assert_eq!(p.uses[p.output], 1);
    }

    /// Every ReLU after a (transposed) convolution is fused into it; those after a MatMul
    /// stay, and the graph output is never fused away.
    #[test]
    fn relus_after_convolutions_are_fused() {
        let geo = Geometry {
            dim_f: 32,
            dim_t: 8,
            g: 4,
            stages: 2,
            l: 2,
            bn: 2,
        };
        let g = convtdfnet(&geo, 1);
        let mut p = plan(&g).unwrap();
        fold_affines(&mut p);
        let before = p.steps.len();
        fuse_relus(&mut p);
        let count = |op: &str| g.nodes.iter().filter(|n| n.op_type == op).count();
        let fused = p
            .steps
            .iter()
            .filter(|s| {
                matches!(
                    s.op,
                    PlanOp::Conv { relu: true, .. } | PlanOp::ConvT { relu: true, .. }
                )
            })
            .count();
        // Every Conv but the last (the output projection) and every ConvTranspose (through
        // its folded batch norm) is followed by a ReLU.
        assert_eq!(fused, count("Conv") - 1 + count("ConvTranspose"));
        assert_eq!(p.steps.len(), before - fused);
        for s in &p.steps {
            if let PlanOp::Relu { x } = s.op {
                assert!(
                    !p.steps.iter().any(|c| c.out == x
                        && matches!(c.op, PlanOp::Conv { .. } | PlanOp::ConvT { .. })),
                    "a ReLU left after a convolution"
                );
            }
        }
        assert_eq!(p.uses[p.output], 1);
    }

    /// The exported reference graphs lose every batch norm that follows a transposed
    /// convolution.
    #[test]
    fn the_reference_fixtures_fold() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mdx");
        for name in ["tiny", "small5"] {
            let bytes = std::fs::read(dir.join(format!("{name}.onnx"))).unwrap();
            let g = crate::mdx::onnx::parse(&bytes).unwrap();
            let mut p = plan(&g).unwrap_or_else(|e| panic!("{name}: {e}"));
            fold_affines(&mut p);
            assert_eq!(p.steps.len(), g.nodes.len() - folded(&g), "{name}");
            assert!(
                folded(&g) > 0,
                "{name}: UVR graphs keep a BN after each ConvTranspose"
            );
            assert!(
                !p.steps
                    .iter()
                    .any(|s| matches!(s.op, PlanOp::Affine { x, .. }
                    if p.steps.iter().any(|c| c.out == x && matches!(c.op, PlanOp::ConvT { .. })))),
                "{name}: no batch norm left after a transposed convolution"
            );
        }
    }

    /// Folding matches applying the affine map after the convolution, for both kinds and
    /// with groups (checked on a direct evaluation of every output channel's weights).
    #[test]
    fn folding_scales_each_output_channel() {
        let init = |dims: Vec<usize>| Initializer {
            data: (0..element_count(&dims).unwrap())
                .map(|i| i as f32 * 0.5 - 3.0)
                .collect(),
            dims,
        };
        let geometry = ConvGeometry {
            stride: [1, 1],
            padding: [0, 0],
            dilation: [1, 1],
            groups: 2,
        };
        // ConvT with groups 2: weights [in 4, out/groups 3, 1, 2] -> 6 output channels.
        let w = init(vec![4, 3, 1, 2]);
        let b = init(vec![6]);
        let scale: Vec<f32> = (0..6).map(|o| 1.0 + o as f32).collect();
        let shift: Vec<f32> = (0..6).map(|o| -(o as f32)).collect();
        let mut op = PlanOp::ConvT {
            x: 0,
            w: Cow::Borrowed(&w),
            b: Some(Cow::Borrowed(&b)),
            geometry,
            output_padding: [0, 0],
            relu: false,
        };
        assert!(fold_into(&mut op, &scale, &shift));
        let PlanOp::ConvT { w: fw, b: fb, .. } = &op else {
            unreachable!()
        };
        for ci in 0..4 {
            for co in 0..3 {
                let o = (ci / 2) * 3 + co;
                for k in 0..2 {
                    let i = (ci * 3 + co) * 2 + k;
                    assert_eq!(fw.data[i], w.data[i] * scale[o]);
                }
            }
        }
        for o in 0..6 {
            assert_eq!(
                fb.as_ref().unwrap().data[o],
                b.data[o] * scale[o] + shift[o]
            );
        }
        // Conv: weights [out 6, in/groups 2, 1, 1], no bias.
        let w = init(vec![6, 2, 1, 1]);
        let mut op = PlanOp::Conv {
            x: 0,
            w: Cow::Borrowed(&w),
            b: None,
            geometry,
            relu: false,
        };
        assert!(fold_into(&mut op, &scale, &shift));
        let PlanOp::Conv { w: fw, b: fb, .. } = &op else {
            unreachable!()
        };
        for i in 0..12 {
            assert_eq!(fw.data[i], w.data[i] * scale[i / 2]);
        }
        assert_eq!(fb.as_ref().unwrap().data, shift);
        // A channel count that disagrees leaves the operation alone.
        assert!(!fold_into(&mut op, &scale[..5], &shift[..5]));
    }
}
