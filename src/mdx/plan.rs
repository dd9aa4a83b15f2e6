//! The device-independent half of the MDX-Net graph compiler: checks an ONNX [`Graph`]
//! against what the engine runs and resolves it into a list of operations over value slots,
//! weights still as [`Initializer`]s. [`super::graph`] only puts the weights on a device.
//!
//! Everything a file can get wrong is refused here with a typed [`GraphError`]: the
//! interface, unknown operators, missing or ill-shaped parameters, and attribute values the
//! tensor operations cannot take (zero or negative strides, groups or dilations, negative
//! pads, a `perm` that is not a permutation). No Burn types appear, so the checks are
//! available (and fuzzed) without the `mdx` feature.

use std::borrow::Cow;
use std::collections::HashMap;

use super::onnx::{Graph, Initializer, Node};

/// Largest accepted model input, in values per item (`4 · dim_f · dim_t`): UVR's largest
/// models take about 3 M; this is 1 GiB of f32.
pub const MAX_INPUT_VALUES: usize = 1 << 28;

/// Why a graph cannot be run.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    /// An operator outside the MDX-Net set.
    #[error(
        "unsupported operator {op} (node {node:?}); MDX-Net graphs use Conv, ConvTranspose, BatchNormalization, MatMul, Relu, Add, Mul, Transpose"
    )]
    UnsupportedOp {
        /// The operator.
        op: String,
        /// The node name.
        node: String,
    },
    /// A parameter the operator needs is not among the initializers.
    #[error("node {node:?} ({op}): missing parameter {name:?}")]
    MissingParameter {
        /// The node.
        node: String,
        /// The operator.
        op: String,
        /// The missing initializer.
        name: String,
    },
    /// A parameter has the wrong shape.
    #[error("node {node:?} ({op}): parameter {name:?} has shape {dims:?}, expected {expected}")]
    BadShape {
        /// The node.
        node: String,
        /// The operator.
        op: String,
        /// The parameter.
        name: String,
        /// Its shape.
        dims: Vec<usize>,
        /// What was expected.
        expected: String,
    },
    /// An attribute value the operator cannot take.
    #[error("node {node:?} ({op}): attribute {name} = {value:?}: {reason}")]
    BadAttribute {
        /// The node.
        node: String,
        /// The operator.
        op: String,
        /// The attribute.
        name: &'static str,
        /// Its value.
        value: Vec<i64>,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The graph's input or output is not the MDX-Net `[batch, 4, dim_f, dim_t]`.
    #[error("graph interface: {0}")]
    Interface(String),
}

/// Convolution geometry, per spatial axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeometry {
    /// Strides (at least 1).
    pub stride: [usize; 2],
    /// Symmetric zero padding.
    pub padding: [usize; 2],
    /// Dilations (at least 1).
    pub dilation: [usize; 2],
    /// Groups (at least 1).
    pub groups: usize,
}

/// One operation; `x`, `a`, `b` are value slots (slot 0 is the graph input).
#[derive(Debug, Clone)]
pub enum PlanOp<'g> {
    /// 2-D convolution; `w` is `[out, in/groups, kh, kw]`.
    Conv {
        /// Input slot.
        x: usize,
        /// Weights (rank 4); owned once a batch norm has been folded in.
        w: Cow<'g, Initializer>,
        /// Optional bias.
        b: Option<Cow<'g, Initializer>>,
        /// Strides, pads, dilations, groups.
        geometry: ConvGeometry,
        /// Whether a ReLU that alone read the result was fused into it.
        relu: bool,
    },
    /// 2-D transposed convolution; `w` is `[in, out/groups, kh, kw]`.
    ConvT {
        /// Input slot.
        x: usize,
        /// Weights (rank 4); owned once a batch norm has been folded in.
        w: Cow<'g, Initializer>,
        /// Optional bias.
        b: Option<Cow<'g, Initializer>>,
        /// Strides, pads, dilations, groups.
        geometry: ConvGeometry,
        /// Extra rows/columns added on one side of the output.
        output_padding: [usize; 2],
        /// Whether a ReLU that alone read the result was fused into it.
        relu: bool,
    },
    /// A batch norm folded into `x · scale + shift`, per channel.
    Affine {
        /// Input slot.
        x: usize,
        /// Per-channel scale.
        scale: Vec<f32>,
        /// Per-channel shift.
        shift: Vec<f32>,
    },
    /// Matrix product over the last axis; `w` is `[in, out]`.
    MatMul {
        /// Input slot.
        x: usize,
        /// Weights (rank 2).
        w: &'g Initializer,
    },
    /// `max(x, 0)`.
    Relu {
        /// Input slot.
        x: usize,
    },
    /// Element-wise sum of two values.
    Add {
        /// First operand slot.
        a: usize,
        /// Second operand slot.
        b: usize,
    },
    /// Adds a constant along the last axis (a bias after a MatMul).
    AddConst {
        /// Input slot.
        x: usize,
        /// The constant.
        c: &'g Initializer,
    },
    /// Element-wise product of two values.
    Mul {
        /// First operand slot.
        a: usize,
        /// Second operand slot.
        b: usize,
    },
    /// Axis permutation (a permutation of `0..4`).
    Transpose {
        /// Input slot.
        x: usize,
        /// The permutation.
        perm: [usize; 4],
    },
}

impl PlanOp<'_> {
    /// The slots the operation reads.
    pub fn inputs(&self) -> Vec<usize> {
        match self {
            PlanOp::Conv { x, .. }
            | PlanOp::ConvT { x, .. }
            | PlanOp::Affine { x, .. }
            | PlanOp::MatMul { x, .. }
            | PlanOp::Relu { x }
            | PlanOp::AddConst { x, .. }
            | PlanOp::Transpose { x, .. } => vec![*x],
            PlanOp::Add { a, b } | PlanOp::Mul { a, b } => vec![*a, *b],
        }
    }
}

/// An operation and the slot it writes.
#[derive(Debug, Clone)]
pub struct PlanStep<'g> {
    /// The operation.
    pub op: PlanOp<'g>,
    /// The slot of its result.
    pub out: usize,
}

/// A checked graph, ready to be put on a device.
#[derive(Debug, Clone)]
pub struct Plan<'g> {
    /// The operations, in execution order.
    pub steps: Vec<PlanStep<'g>>,
    /// The slot holding the graph output.
    pub output: usize,
    /// How many times each slot is read (the output counts once), so values can be dropped
    /// as soon as they are consumed.
    pub uses: Vec<usize>,
    /// Frequency bins the model takes (`dim_f`).
    pub dim_f: usize,
    /// Frames per chunk (`dim_t`).
    pub dim_t: usize,
}

struct Ctx<'g> {
    graph: &'g Graph,
}

impl<'g> Ctx<'g> {
    fn param(&self, node: &Node, idx: usize) -> Result<&'g Initializer, GraphError> {
        let name = node.inputs.get(idx).cloned().unwrap_or_default();
        self.graph
            .initializers
            .get(&name)
            .ok_or_else(|| GraphError::MissingParameter {
                node: node.name.clone(),
                op: node.op_type.clone(),
                name,
            })
    }

    fn opt_param(&self, node: &Node, idx: usize) -> Option<&'g Initializer> {
        node.inputs
            .get(idx)
            .filter(|n| !n.is_empty())
            .and_then(|n| self.graph.initializers.get(n))
    }

    /// A float tensor of `rank` whose data fills its shape.
    fn weights(
        &self,
        node: &Node,
        init: &'g Initializer,
        rank: usize,
        what: &str,
    ) -> Result<&'g Initializer, GraphError> {
        let bad = |expected: String| GraphError::BadShape {
            node: node.name.clone(),
            op: node.op_type.clone(),
            name: what.into(),
            dims: init.dims.clone(),
            expected,
        };
        if init.dims.len() != rank {
            return Err(bad(format!("rank {rank}")));
        }
        if init.dims.contains(&0) || element_count(&init.dims) != Some(init.data.len()) {
            return Err(bad(format!(
                "non-empty float32 data filling the shape ({} values given)",
                init.data.len()
            )));
        }
        Ok(init)
    }
}

/// The number of elements of a shape, `None` on overflow.
pub fn element_count(dims: &[usize]) -> Option<usize> {
    dims.iter().try_fold(1usize, |n, d| n.checked_mul(*d))
}

fn bad_attr(node: &Node, name: &'static str, value: &[i64], reason: &'static str) -> GraphError {
    GraphError::BadAttribute {
        node: node.name.clone(),
        op: node.op_type.clone(),
        name,
        value: value.to_vec(),
        reason,
    }
}

/// A per-axis attribute (`strides`, `dilations`...): one value for both axes or one per axis,
/// each at least `min`.
fn pair(
    node: &Node,
    name: &'static str,
    default: usize,
    min: usize,
) -> Result<[usize; 2], GraphError> {
    let v = node.ints(name, &[]);
    let get = |i: i64| {
        usize::try_from(i)
            .ok()
            .filter(|n| *n >= min)
            .ok_or_else(|| {
                bad_attr(
                    node,
                    name,
                    &v,
                    if min == 0 {
                        "must not be negative"
                    } else {
                        "must be positive"
                    },
                )
            })
    };
    Ok(match v.as_slice() {
        [a, b] => [get(*a)?, get(*b)?],
        [a] => {
            let a = get(*a)?;
            [a, a]
        }
        _ => [default, default],
    })
}

fn symmetric_pads(node: &Node) -> Result<[usize; 2], GraphError> {
    let p = node.ints("pads", &[0, 0, 0, 0]);
    if p.len() == 4 && (p[0] != p[2] || p[1] != p[3]) {
        return Err(GraphError::UnsupportedOp {
            op: format!("{} with asymmetric pads {p:?}", node.op_type),
            node: node.name.clone(),
        });
    }
    let half = &p[..p.len().min(2)];
    let get =
        |i: i64| usize::try_from(i).map_err(|_| bad_attr(node, "pads", &p, "must not be negative"));
    Ok(match half {
        [a, b] => [get(*a)?, get(*b)?],
        [a] => {
            let a = get(*a)?;
            [a, a]
        }
        _ => [0, 0],
    })
}

fn geometry(node: &Node) -> Result<ConvGeometry, GraphError> {
    let group = node.int("group", 1);
    Ok(ConvGeometry {
        stride: pair(node, "strides", 1, 1)?,
        padding: symmetric_pads(node)?,
        dilation: pair(node, "dilations", 1, 1)?,
        groups: usize::try_from(group)
            .ok()
            .filter(|g| *g >= 1)
            .ok_or_else(|| bad_attr(node, "group", &[group], "must be positive"))?,
    })
}

/// The model's `(dim_f, dim_t)`, from its `[batch, 4, dim_f, dim_t]` input; the graph must
/// also declare an output.
pub fn interface(graph: &Graph) -> Result<(usize, usize), GraphError> {
    let input = graph
        .inputs
        .first()
        .ok_or_else(|| GraphError::Interface("the graph has no input".into()))?;
    if input.dims.len() != 4 || input.dims[1] != Some(4) {
        return Err(GraphError::Interface(format!(
            "input {:?} has shape {:?}, expected [batch, 4, dim_f, dim_t]",
            input.name, input.dims
        )));
    }
    let (Some(dim_f), Some(dim_t)) = (input.dims[2], input.dims[3]) else {
        return Err(GraphError::Interface(
            "dim_f and dim_t must be fixed".into(),
        ));
    };
    if dim_f == 0 || dim_t < 2 {
        return Err(GraphError::Interface(format!(
            "dim_f {dim_f} and dim_t {dim_t}: expected dim_f >= 1 and dim_t >= 2"
        )));
    }
    if element_count(&[4, dim_f, dim_t]).is_none_or(|n| n > MAX_INPUT_VALUES) {
        return Err(GraphError::Interface(format!(
            "dim_f {dim_f} × dim_t {dim_t} is larger than any MDX-Net model"
        )));
    }
    if graph.outputs.is_empty() {
        return Err(GraphError::Interface("the graph has no output".into()));
    }
    Ok((dim_f, dim_t))
}

/// Checks `graph` and resolves it into operations over value slots.
pub fn plan(graph: &Graph) -> Result<Plan<'_>, GraphError> {
    let (dim_f, dim_t) = interface(graph)?;
    let (Some(input), Some(output)) = (graph.inputs.first(), graph.outputs.first()) else {
        return Err(GraphError::Interface(
            "the graph has no input or output".into(),
        ));
    };
    let mut slot_of: HashMap<&str, usize> = HashMap::new();
    slot_of.insert(input.name.as_str(), 0);
    let ctx = Ctx { graph };
    let mut steps = Vec::with_capacity(graph.nodes.len());
    let value = |slot_of: &HashMap<&str, usize>, node: &Node, idx: usize| {
        let name = node.inputs.get(idx).map_or("", String::as_str);
        slot_of
            .get(name)
            .copied()
            .ok_or_else(|| GraphError::MissingParameter {
                node: node.name.clone(),
                op: node.op_type.clone(),
                name: name.to_string(),
            })
    };
    for node in &graph.nodes {
        let op = match node.op_type.as_str() {
            "Conv" => PlanOp::Conv {
                w: Cow::Borrowed(ctx.weights(node, ctx.param(node, 1)?, 4, "weight")?),
                b: ctx.opt_param(node, 2).map(Cow::Borrowed),
                geometry: geometry(node)?,
                relu: false,
                x: value(&slot_of, node, 0)?,
            },
            "ConvTranspose" => PlanOp::ConvT {
                w: Cow::Borrowed(ctx.weights(node, ctx.param(node, 1)?, 4, "weight")?),
                b: ctx.opt_param(node, 2).map(Cow::Borrowed),
                geometry: geometry(node)?,
                output_padding: pair(node, "output_padding", 0, 0)?,
                relu: false,
                x: value(&slot_of, node, 0)?,
            },
            "BatchNormalization" => {
                let eps = node.float("epsilon", 1e-5);
                let (g, b, m, v) = (
                    ctx.param(node, 1)?,
                    ctx.param(node, 2)?,
                    ctx.param(node, 3)?,
                    ctx.param(node, 4)?,
                );
                let c = g.data.len();
                if [b.data.len(), m.data.len(), v.data.len()]
                    .iter()
                    .any(|n| *n != c)
                {
                    return Err(GraphError::BadShape {
                        node: node.name.clone(),
                        op: node.op_type.clone(),
                        name: "scale/bias/mean/var".into(),
                        dims: vec![g.data.len(), b.data.len(), m.data.len(), v.data.len()],
                        expected: "four vectors of one length".into(),
                    });
                }
                let scale: Vec<f32> = (0..c)
                    .map(|i| g.data[i] / (v.data[i] + eps).sqrt())
                    .collect();
                let shift: Vec<f32> = (0..c).map(|i| b.data[i] - m.data[i] * scale[i]).collect();
                PlanOp::Affine {
                    x: value(&slot_of, node, 0)?,
                    scale,
                    shift,
                }
            }
            "MatMul" => PlanOp::MatMul {
                w: ctx.weights(node, ctx.param(node, 1)?, 2, "weight")?,
                x: value(&slot_of, node, 0)?,
            },
            "Relu" => PlanOp::Relu {
                x: value(&slot_of, node, 0)?,
            },
            "Add" if ctx.opt_param(node, 1).is_some() => PlanOp::AddConst {
                x: value(&slot_of, node, 0)?,
                c: ctx.param(node, 1)?,
            },
            "Add" | "Mul" => {
                let a = value(&slot_of, node, 0)?;
                let b = value(&slot_of, node, 1)?;
                if node.op_type == "Add" {
                    PlanOp::Add { a, b }
                } else {
                    PlanOp::Mul { a, b }
                }
            }
            "Transpose" => {
                let p = node.ints("perm", &[0, 1, 3, 2]);
                let perm = match p.as_slice() {
                    [a, b, c, d] => {
                        [*a, *b, *c, *d].map(|i| usize::try_from(i).unwrap_or(usize::MAX))
                    }
                    _ => [usize::MAX; 4],
                };
                let mut seen = [false; 4];
                for i in perm {
                    match seen.get_mut(i) {
                        Some(s) if !*s => *s = true,
                        _ => {
                            return Err(GraphError::UnsupportedOp {
                                op: format!("Transpose with perm {p:?}"),
                                node: node.name.clone(),
                            });
                        }
                    }
                }
                PlanOp::Transpose {
                    x: value(&slot_of, node, 0)?,
                    perm,
                }
            }
            other => {
                return Err(GraphError::UnsupportedOp {
                    op: other.to_string(),
                    node: node.name.clone(),
                });
            }
        };
        let out = steps.len() + 1;
        slot_of.insert(node.outputs.first().map_or("", String::as_str), out);
        steps.push(PlanStep { op, out });
    }
    let output_slot = *slot_of.get(output.name.as_str()).ok_or_else(|| {
        GraphError::Interface(format!(
            "output {:?} is not produced by any node",
            output.name
        ))
    })?;
    let mut uses = vec![0usize; steps.len() + 1];
    for s in &steps {
        for i in s.op.inputs() {
            uses[i] += 1;
        }
    }
    uses[output_slot] += 1;
    Ok(Plan {
        steps,
        output: output_slot,
        uses,
        dim_f,
        dim_t,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mdx::onnx::{Attr, ValueInfo};
    use crate::mdx::synth::{Geometry, convtdfnet};

    const SMALL: Geometry = Geometry {
        dim_f: 32,
        dim_t: 8,
        g: 4,
        stages: 2,
        l: 1,
        bn: 2,
    };

    #[test]
    fn a_synthetic_convtdfnet_plans() {
        let g = convtdfnet(&SMALL, 1);
        let p = plan(&g).unwrap();
        assert_eq!((p.dim_f, p.dim_t), (32, 8));
        assert_eq!(p.steps.len(), g.nodes.len());
        assert_eq!(p.uses[p.output], 1);
        assert_eq!(interface(&g).unwrap(), (32, 8));
    }

    /// The exported reference graphs (the files `tests/mdx.rs` runs on Burn) pass the checks.
    #[test]
    fn the_reference_fixtures_plan() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mdx");
        for name in ["tiny", "small5"] {
            let bytes = std::fs::read(dir.join(format!("{name}.onnx"))).unwrap();
            let sidecar: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(dir.join(format!("{name}.json"))).unwrap(),
            )
            .unwrap();
            let g = crate::mdx::onnx::parse(&bytes).unwrap();
            let p = plan(&g).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(Some(p.dim_f as u64), sidecar["dim_f"].as_u64(), "{name}");
            assert_eq!(p.steps.len(), g.nodes.len(), "{name}");
        }
    }

    fn first(g: &Graph, op: &str) -> usize {
        g.nodes.iter().position(|n| n.op_type == op).unwrap()
    }

    #[test]
    fn bad_attributes_are_typed_errors() {
        let mut g = convtdfnet(&SMALL, 1);
        let i = first(&g, "Conv");
        g.nodes[i]
            .attrs
            .insert("strides".into(), Attr::Ints(vec![0, 1]));
        assert!(matches!(
            plan(&g),
            Err(GraphError::BadAttribute {
                name: "strides",
                ..
            })
        ));
        g.nodes[i]
            .attrs
            .insert("strides".into(), Attr::Ints(vec![1, 1]));
        g.nodes[i].attrs.insert("group".into(), Attr::Int(-3));
        assert!(matches!(
            plan(&g),
            Err(GraphError::BadAttribute { name: "group", .. })
        ));
        g.nodes[i].attrs.insert("group".into(), Attr::Int(1));
        g.nodes[i]
            .attrs
            .insert("pads".into(), Attr::Ints(vec![-1, -1, -1, -1]));
        assert!(matches!(
            plan(&g),
            Err(GraphError::BadAttribute { name: "pads", .. })
        ));

        let mut g = convtdfnet(&SMALL, 1);
        let i = first(&g, "Transpose");
        g.nodes[i]
            .attrs
            .insert("perm".into(), Attr::Ints(vec![0, 1, 1, 2]));
        assert!(matches!(plan(&g), Err(GraphError::UnsupportedOp { .. })));
        g.nodes[i]
            .attrs
            .insert("perm".into(), Attr::Ints(vec![0, 1, 9, 2]));
        assert!(matches!(plan(&g), Err(GraphError::UnsupportedOp { .. })));
    }

    #[test]
    fn weights_must_fill_their_shape() {
        let mut g = convtdfnet(&SMALL, 1);
        let i = first(&g, "Conv");
        let w = g.nodes[i].inputs[1].clone();
        // An INT64 initializer keeps its shape but no data.
        g.initializers.get_mut(&w).unwrap().data.clear();
        assert!(matches!(plan(&g), Err(GraphError::BadShape { .. })));
    }

    #[test]
    fn degenerate_interfaces_are_refused() {
        for dims in [
            vec![None, Some(4), Some(32), Some(1)],
            vec![None, Some(4), Some(0), Some(8)],
            vec![None, Some(4), Some(1 << 20), Some(1 << 20)],
            vec![None, Some(4), Some(usize::MAX), Some(usize::MAX)],
            vec![None, Some(4), None, Some(8)],
            vec![None, Some(2), Some(32), Some(8)],
        ] {
            let mut g = convtdfnet(&SMALL, 1);
            g.inputs[0] = ValueInfo {
                name: g.inputs[0].name.clone(),
                dims: dims.clone(),
            };
            assert!(
                matches!(plan(&g), Err(GraphError::Interface(_))),
                "{dims:?}"
            );
        }
    }
}
