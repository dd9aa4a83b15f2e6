//! The ONNX reader and the MDX-Net graph checks that need no device: arbitrary bytes through
//! [`uvr::mdx::onnx::parse`], then [`uvr::mdx::plan::plan`].
//!
//! Beyond "no panic": a plan only reads values computed before it, and every weight it
//! hands to the device fills its shape.
//!
//! Shared by the fuzz target (`fuzz/fuzz_targets/onnx.rs`) and the corpus replay in
//! `cargo test` (`tests/fuzz_corpus.rs`).

use uvr::mdx::onnx;
use uvr::mdx::plan::{self, PlanOp};

/// Parses and plans `data`, asserting the plan's invariants.
pub fn check(data: &[u8]) {
    let Ok(graph) = onnx::parse(data) else {
        return;
    };
    let Ok(plan) = plan::plan(&graph) else {
        return;
    };
    assert_eq!(plan.steps.len(), graph.nodes.len());
    assert_eq!(plan.uses.len(), plan.steps.len() + 1);
    assert!(plan.output < plan.uses.len());
    for (i, step) in plan.steps.iter().enumerate() {
        assert_eq!(step.out, i + 1);
        for x in step.op.inputs() {
            assert!(x < step.out, "step {i} reads slot {x} before it is written");
        }
        let weights = match &step.op {
            PlanOp::Conv { w, .. } | PlanOp::ConvT { w, .. } => Some((w.as_ref(), 4)),
            PlanOp::MatMul { w, .. } => Some((*w, 2)),
            _ => None,
        };
        if let Some((w, rank)) = weights {
            assert_eq!(w.dims.len(), rank);
            assert_eq!(plan::element_count(&w.dims), Some(w.data.len()));
        }
    }
}
