//! UVR's MDX-Net (KUIELab's ConvTDFNet) on Burn, built from the ONNX graph itself.
//!
//! The exported UVR graphs use eight operator types — Conv, ConvTranspose,
//! BatchNormalization, MatMul, Relu, Add, Mul, Transpose — over rank-4 activations
//! `[batch, channels, frames, bins]` (or `[batch, channels, bins, frames]` around the
//! transposes). Rather than a fixed module whose layers must line up with the file's naming,
//! the loader compiles the graph into a list of Burn operations with their weights already on
//! the device, so every geometry of the family (dim_f 2048/2560/3072, 32 or 48 channels, 4 or
//! 5 stages) loads without configuration, and a graph with anything else is refused with a
//! typed error naming the operator. Batch norms are folded into per-channel affine maps at
//! load time.

use std::collections::HashMap;

use burn::tensor::activation::relu;
use burn::tensor::module::{conv_transpose2d, conv2d};
use burn::tensor::ops::{ConvOptions, ConvTransposeOptions};
use burn::tensor::{Device, Tensor, TensorData};

use super::onnx::{Graph, Initializer, Node};

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
    /// The graph's input or output is not the MDX-Net `[batch, 4, dim_f, dim_t]`.
    #[error("graph interface: {0}")]
    Interface(String),
}

enum Op {
    Conv {
        x: usize,
        w: Tensor<4>,
        b: Option<Tensor<1>>,
        opts: ConvOptions<2>,
    },
    ConvT {
        x: usize,
        w: Tensor<4>,
        b: Option<Tensor<1>>,
        opts: ConvTransposeOptions<2>,
    },
    Affine {
        x: usize,
        scale: Tensor<4>,
        shift: Tensor<4>,
    },
    MatMul {
        x: usize,
        w: Tensor<2>,
    },
    Relu {
        x: usize,
    },
    Add {
        a: usize,
        b: usize,
    },
    /// Adds a constant along the last axis (a bias after a MatMul).
    AddConst {
        x: usize,
        c: Tensor<4>,
    },
    Mul {
        a: usize,
        b: usize,
    },
    Transpose {
        x: usize,
        perm: [usize; 4],
    },
}

struct Step {
    op: Op,
    out: usize,
}

/// A compiled MDX-Net graph on one device.
pub struct MdxNet {
    steps: Vec<Step>,
    output: usize,
    /// Uses left of each slot (one slot per value; slot 0 is the graph input), so values are dropped as soon as they are consumed.
    uses: Vec<usize>,
    /// Frequency bins the model takes (`dim_f`).
    pub dim_f: usize,
    /// Frames per chunk (`dim_t`).
    pub dim_t: usize,
    device: Device,
}

impl std::fmt::Debug for MdxNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MdxNet")
            .field("steps", &self.steps.len())
            .field("dim_f", &self.dim_f)
            .field("dim_t", &self.dim_t)
            .finish()
    }
}

fn tensor1(init: &Initializer, device: &Device) -> Tensor<1> {
    Tensor::from_data(
        TensorData::new(init.data.clone(), [init.data.len()]),
        device,
    )
}

fn tensor4(init: &Initializer, device: &Device) -> Tensor<4> {
    let d = &init.dims;
    Tensor::from_data(
        TensorData::new(init.data.clone(), [d[0], d[1], d[2], d[3]]),
        device,
    )
}

struct Ctx<'a> {
    graph: &'a Graph,
}

impl Ctx<'_> {
    fn param(&self, node: &Node, idx: usize) -> Result<&Initializer, GraphError> {
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

    fn opt_param(&self, node: &Node, idx: usize) -> Option<&Initializer> {
        node.inputs
            .get(idx)
            .filter(|n| !n.is_empty())
            .and_then(|n| self.graph.initializers.get(n))
    }

    fn shape(
        &self,
        node: &Node,
        init: &Initializer,
        rank: usize,
        what: &str,
    ) -> Result<(), GraphError> {
        if init.dims.len() == rank {
            Ok(())
        } else {
            Err(GraphError::BadShape {
                node: node.name.clone(),
                op: node.op_type.clone(),
                name: what.into(),
                dims: init.dims.clone(),
                expected: format!("rank {rank}"),
            })
        }
    }
}

fn pair(v: &[i64], default: usize) -> [usize; 2] {
    match v {
        [a, b] => [*a as usize, *b as usize],
        [a] => [*a as usize, *a as usize],
        _ => [default, default],
    }
}

fn symmetric_pads(node: &Node) -> Result<[usize; 2], GraphError> {
    let p = node.ints("pads", &[0, 0, 0, 0]);
    if p.len() == 4 && (p[0] != p[2] || p[1] != p[3]) {
        return Err(GraphError::UnsupportedOp {
            op: format!("{} with asymmetric pads {p:?}", node.op_type),
            node: node.name.clone(),
        });
    }
    Ok(pair(&p[..p.len().min(2)], 0))
}

impl MdxNet {
    /// Compiles `graph` for `device`.
    pub fn compile(graph: &Graph, device: &Device) -> Result<Self, GraphError> {
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
        let output = graph
            .outputs
            .first()
            .ok_or_else(|| GraphError::Interface("the graph has no output".into()))?;
        let mut slot_of: HashMap<String, usize> = HashMap::new();
        slot_of.insert(input.name.clone(), 0);
        let ctx = Ctx { graph };
        let mut steps = Vec::with_capacity(graph.nodes.len());
        let mut next_slot = 1;
        let value = |slot_of: &HashMap<String, usize>, node: &Node, idx: usize| {
            let name = node.inputs.get(idx).cloned().unwrap_or_default();
            slot_of
                .get(&name)
                .copied()
                .ok_or_else(|| GraphError::MissingParameter {
                    node: node.name.clone(),
                    op: node.op_type.clone(),
                    name,
                })
        };
        for node in &graph.nodes {
            let op = match node.op_type.as_str() {
                "Conv" => {
                    let w = ctx.param(node, 1)?;
                    ctx.shape(node, w, 4, "weight")?;
                    let b = ctx.opt_param(node, 2).map(|b| tensor1(b, device));
                    let opts = ConvOptions::new(
                        pair(&node.ints("strides", &[1, 1]), 1),
                        symmetric_pads(node)?,
                        pair(&node.ints("dilations", &[1, 1]), 1),
                        node.int("group", 1) as usize,
                    );
                    Op::Conv {
                        x: value(&slot_of, node, 0)?,
                        w: tensor4(w, device),
                        b,
                        opts,
                    }
                }
                "ConvTranspose" => {
                    let w = ctx.param(node, 1)?;
                    ctx.shape(node, w, 4, "weight")?;
                    let b = ctx.opt_param(node, 2).map(|b| tensor1(b, device));
                    let opts = ConvTransposeOptions::new(
                        pair(&node.ints("strides", &[1, 1]), 1),
                        symmetric_pads(node)?,
                        pair(&node.ints("output_padding", &[0, 0]), 0),
                        pair(&node.ints("dilations", &[1, 1]), 1),
                        node.int("group", 1) as usize,
                    );
                    Op::ConvT {
                        x: value(&slot_of, node, 0)?,
                        w: tensor4(w, device),
                        b,
                        opts,
                    }
                }
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
                    let shift: Vec<f32> =
                        (0..c).map(|i| b.data[i] - m.data[i] * scale[i]).collect();
                    Op::Affine {
                        x: value(&slot_of, node, 0)?,
                        scale: Tensor::from_data(TensorData::new(scale, [1, c, 1, 1]), device),
                        shift: Tensor::from_data(TensorData::new(shift, [1, c, 1, 1]), device),
                    }
                }
                "MatMul" => {
                    let w = ctx.param(node, 1)?;
                    ctx.shape(node, w, 2, "weight")?;
                    Op::MatMul {
                        x: value(&slot_of, node, 0)?,
                        w: Tensor::from_data(
                            TensorData::new(w.data.clone(), [w.dims[0], w.dims[1]]),
                            device,
                        ),
                    }
                }
                "Relu" => Op::Relu {
                    x: value(&slot_of, node, 0)?,
                },
                "Add" if ctx.opt_param(node, 1).is_some() => {
                    let c = ctx.param(node, 1)?;
                    let n = c.data.len();
                    Op::AddConst {
                        x: value(&slot_of, node, 0)?,
                        c: Tensor::from_data(TensorData::new(c.data.clone(), [1, 1, 1, n]), device),
                    }
                }
                "Add" | "Mul" => {
                    let a = value(&slot_of, node, 0)?;
                    let b = value(&slot_of, node, 1)?;
                    if node.op_type == "Add" {
                        Op::Add { a, b }
                    } else {
                        Op::Mul { a, b }
                    }
                }
                "Transpose" => {
                    let p = node.ints("perm", &[0, 1, 3, 2]);
                    if p.len() != 4 {
                        return Err(GraphError::UnsupportedOp {
                            op: format!("Transpose with perm {p:?}"),
                            node: node.name.clone(),
                        });
                    }
                    Op::Transpose {
                        x: value(&slot_of, node, 0)?,
                        perm: [p[0] as usize, p[1] as usize, p[2] as usize, p[3] as usize],
                    }
                }
                other => {
                    return Err(GraphError::UnsupportedOp {
                        op: other.to_string(),
                        node: node.name.clone(),
                    });
                }
            };
            let out_name = node.outputs.first().cloned().unwrap_or_default();
            slot_of.insert(out_name, next_slot);
            steps.push(Step { op, out: next_slot });
            next_slot += 1;
        }
        let output_slot = *slot_of.get(&output.name).ok_or_else(|| {
            GraphError::Interface(format!(
                "output {:?} is not produced by any node",
                output.name
            ))
        })?;
        let mut uses = vec![0usize; next_slot];
        for s in &steps {
            for i in s.op.inputs() {
                uses[i] += 1;
            }
        }
        uses[output_slot] += 1;
        Ok(Self {
            steps,
            output: output_slot,
            uses,
            dim_f,
            dim_t,
            device: device.clone(),
        })
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Runs the network on `[batch, 4, dim_f, dim_t]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut values: Vec<Option<Tensor<4>>> = vec![None; self.uses.len()];
        let mut left = self.uses.clone();
        values[0] = Some(x);
        let mut take = |values: &mut Vec<Option<Tensor<4>>>, i: usize| -> Tensor<4> {
            left[i] -= 1;
            if left[i] == 0 {
                values[i].take().expect("value computed before use")
            } else {
                values[i].clone().expect("value computed before use")
            }
        };
        for s in &self.steps {
            let y = match &s.op {
                Op::Conv { x, w, b, opts } => {
                    conv2d(take(&mut values, *x), w.clone(), b.clone(), opts.clone())
                }
                Op::ConvT { x, w, b, opts } => {
                    conv_transpose2d(take(&mut values, *x), w.clone(), b.clone(), opts.clone())
                }
                Op::Affine { x, scale, shift } => {
                    take(&mut values, *x) * scale.clone() + shift.clone()
                }
                Op::MatMul { x, w } => {
                    let x = take(&mut values, *x);
                    let [b, c, t, f] = x.dims();
                    let out = w.dims()[1];
                    x.reshape([b * c * t, f])
                        .matmul(w.clone())
                        .reshape([b, c, t, out])
                }
                Op::Relu { x } => relu(take(&mut values, *x)),
                Op::AddConst { x, c } => take(&mut values, *x) + c.clone(),
                Op::Add { a, b } => {
                    let a = take(&mut values, *a);
                    a + take(&mut values, *b)
                }
                Op::Mul { a, b } => {
                    let a = take(&mut values, *a);
                    a * take(&mut values, *b)
                }
                Op::Transpose { x, perm } => take(&mut values, *x).permute(*perm),
            };
            values[s.out] = Some(y);
        }
        values[self.output].take().expect("the output is computed")
    }
}

impl Op {
    fn inputs(&self) -> Vec<usize> {
        match self {
            Op::Conv { x, .. }
            | Op::ConvT { x, .. }
            | Op::Affine { x, .. }
            | Op::MatMul { x, .. }
            | Op::Relu { x }
            | Op::AddConst { x, .. }
            | Op::Transpose { x, .. } => vec![*x],
            Op::Add { a, b } | Op::Mul { a, b } => vec![*a, *b],
        }
    }
}
