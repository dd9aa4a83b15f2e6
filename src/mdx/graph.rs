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
//! load time. The checks live in [`super::plan`], which needs no device; this module only
//! puts the planned weights on one.

use burn::tensor::activation::relu;
use burn::tensor::module::{conv_transpose2d, conv2d};
use burn::tensor::ops::{ConvOptions, ConvTransposeOptions};
use burn::tensor::{Device, Tensor, TensorData};

pub use super::plan::GraphError;

use super::direct::{CpuConv, DirectConv};
use super::onnx::{Graph, Initializer};
use super::plan::{ConvGeometry, PlanOp};
use super::winograd::WinogradConv;

enum Op {
    Conv {
        x: usize,
        w: Tensor<4>,
        b: Option<Tensor<1>>,
        opts: ConvOptions<2>,
        relu: bool,
    },
    /// A (transposed) convolution run by [`CpuConv`] on the CPU backend.
    Direct {
        x: usize,
        conv: CpuConv,
    },
    ConvT {
        x: usize,
        w: Tensor<4>,
        b: Option<Tensor<1>>,
        opts: ConvTransposeOptions<2>,
        relu: bool,
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

impl Op {
    fn name(&self) -> &'static str {
        match self {
            Op::Conv { .. } => "Conv",
            Op::Direct { conv, .. } => match conv {
                CpuConv::Transposed { .. } => "ConvTranspose",
                CpuConv::Winograd(_) => "Conv 3x3 (Winograd)",
                CpuConv::Patches { .. } => "Conv (patches)",
                CpuConv::Direct(_) => "Conv",
            },
            Op::ConvT { .. } => "ConvTranspose",
            Op::Affine { .. } => "BatchNorm",
            Op::MatMul { .. } => "MatMul",
            Op::Relu { .. } => "Relu",
            Op::Add { .. } | Op::AddConst { .. } => "Add",
            Op::Mul { .. } => "Mul",
            Op::Transpose { .. } => "Transpose",
        }
    }
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

fn matrix(init: &Initializer, device: &Device) -> Tensor<2> {
    let d = &init.dims;
    Tensor::from_data(TensorData::new(init.data.clone(), [d[0], d[1]]), device)
}

/// The CPU's own kernel for a convolution it can run: one group, dilation 1, and stride 1
/// (3×3 "same" ones by Winograd F(2×2, 3×3)) or non-overlapping patches (stride = kernel, no
/// padding).
fn direct(
    cpu: bool,
    w: &Initializer,
    b: Option<&Initializer>,
    g: &ConvGeometry,
    relu: bool,
) -> Option<CpuConv> {
    if !cpu || g.dilation != [1, 1] || g.groups != 1 {
        return None;
    }
    let d = [w.dims[0], w.dims[1], w.dims[2], w.dims[3]];
    let b = b.map(|b| b.data.as_slice());
    if g.stride == [1, 1] && g.padding == [1, 1] && d[2..] == [3, 3] {
        WinogradConv::new(&w.data, d, b, relu).map(CpuConv::Winograd)
    } else if g.stride == [1, 1] {
        DirectConv::new(&w.data, d, b, g.padding, relu).map(CpuConv::Direct)
    } else if g.stride == [d[2], d[3]] && g.padding == [0, 0] {
        CpuConv::patches(&w.data, d, b, relu)
    } else {
        None
    }
}

/// The CPU's kernel for a transposed convolution whose stride equals its kernel (no
/// padding, no output padding, one group, dilation 1).
fn direct_transposed(
    cpu: bool,
    w: &Initializer,
    b: Option<&Initializer>,
    g: &ConvGeometry,
    output_padding: [usize; 2],
    relu: bool,
) -> Option<CpuConv> {
    let d = [w.dims[0], w.dims[1], w.dims[2], w.dims[3]];
    if !cpu
        || g.dilation != [1, 1]
        || g.groups != 1
        || g.padding != [0, 0]
        || output_padding != [0, 0]
        || g.stride != [d[2], d[3]]
    {
        return None;
    }
    CpuConv::transposed(&w.data, d, b.map(|b| b.data.as_slice()), relu)
}

fn conv_options(g: &ConvGeometry) -> ConvOptions<2> {
    ConvOptions::new(g.stride, g.padding, g.dilation, g.groups)
}

impl MdxNet {
    /// Compiles `graph` for `device`: [`super::plan::plan`] checks it, batch norms are folded
    /// into the convolutions before them, then the weights are
    /// put on the device.
    pub fn compile(graph: &Graph, device: &Device) -> Result<Self, GraphError> {
        let mut plan = super::plan::plan(graph)?;
        super::fold::fold_affines(&mut plan);
        super::fold::fuse_relus(&mut plan);
        let cpu = *device == Device::flex();
        let steps = plan
            .steps
            .into_iter()
            .map(|s| {
                let op = match s.op {
                    PlanOp::Conv {
                        x,
                        w,
                        b,
                        geometry,
                        relu,
                    } => match direct(cpu, &w, b.as_deref(), &geometry, relu) {
                        Some(conv) => Op::Direct { x, conv },
                        None => Op::Conv {
                            x,
                            w: tensor4(&w, device),
                            b: b.map(|b| tensor1(&b, device)),
                            opts: conv_options(&geometry),
                            relu,
                        },
                    },
                    PlanOp::ConvT {
                        x,
                        w,
                        b,
                        geometry,
                        output_padding,
                        relu,
                    } => match direct_transposed(
                        cpu,
                        &w,
                        b.as_deref(),
                        &geometry,
                        output_padding,
                        relu,
                    ) {
                        Some(conv) => Op::Direct { x, conv },
                        None => Op::ConvT {
                            x,
                            w: tensor4(&w, device),
                            b: b.map(|b| tensor1(&b, device)),
                            opts: ConvTransposeOptions::new(
                                geometry.stride,
                                geometry.padding,
                                output_padding,
                                geometry.dilation,
                                geometry.groups,
                            ),
                            relu,
                        },
                    },
                    PlanOp::Affine { x, scale, shift } => {
                        let c = scale.len();
                        Op::Affine {
                            x,
                            scale: Tensor::from_data(TensorData::new(scale, [1, c, 1, 1]), device),
                            shift: Tensor::from_data(TensorData::new(shift, [1, c, 1, 1]), device),
                        }
                    }
                    PlanOp::MatMul { x, w } => Op::MatMul {
                        x,
                        w: matrix(w, device),
                    },
                    PlanOp::Relu { x } => Op::Relu { x },
                    PlanOp::Add { a, b } => Op::Add { a, b },
                    PlanOp::AddConst { x, c } => Op::AddConst {
                        x,
                        c: Tensor::from_data(
                            TensorData::new(c.data.clone(), [1, 1, 1, c.data.len()]),
                            device,
                        ),
                    },
                    PlanOp::Mul { a, b } => Op::Mul { a, b },
                    PlanOp::Transpose { x, perm } => Op::Transpose { x, perm },
                };
                Step { op, out: s.out }
            })
            .collect();
        Ok(Self {
            steps,
            output: plan.output,
            uses: plan.uses,
            dim_f: plan.dim_f,
            dim_t: plan.dim_t,
            device: device.clone(),
        })
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Whether the device compiles (and tunes) kernels per input shape, so every forward pass
    /// should have the shape the warm-up ran: true on GPUs (cubecl), false on the CPU backend,
    /// where a smaller last batch is simply less work.
    pub fn fixed_shapes(&self) -> bool {
        self.device != Device::flex()
    }

    /// Runs the network on `[batch, 4, dim_f, dim_t]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.run(x, None)
    }

    /// [`forward`](Self::forward), waiting for each operation to finish and summing the
    /// seconds spent per operator type (for the benchmark's profile; slower than `forward`
    /// on a GPU, where it defeats fusion).
    pub fn forward_profiled(&self, x: Tensor<4>) -> (Tensor<4>, Vec<(&'static str, f64)>) {
        let mut times = Vec::new();
        let y = self.run(x, Some(&mut times));
        let mut sums: Vec<(&'static str, f64)> = Vec::new();
        for (op, t) in times {
            match sums.iter_mut().find(|(o, _)| *o == op) {
                Some((_, s)) => *s += t,
                None => sums.push((op, t)),
            }
        }
        sums.sort_by(|a, b| b.1.total_cmp(&a.1));
        (y, sums)
    }

    fn run(&self, x: Tensor<4>, mut times: Option<&mut Vec<(&'static str, f64)>>) -> Tensor<4> {
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
            let started = std::time::Instant::now();
            let y = match &s.op {
                Op::Conv {
                    x,
                    w,
                    b,
                    opts,
                    relu: fused,
                } => {
                    let y = conv2d(take(&mut values, *x), w.clone(), b.clone(), opts.clone());
                    if *fused { relu(y) } else { y }
                }
                Op::Direct { x, conv } => {
                    let x = take(&mut values, *x);
                    let dims = x.dims();
                    let out = conv
                        .out_dims(dims)
                        .expect("activations at least the kernel's size");
                    let data = x.into_data();
                    let input = data.as_slice::<f32>().expect("f32 activations");
                    Tensor::from_data(TensorData::new(conv.run(input, dims), out), &self.device)
                }
                Op::ConvT {
                    x,
                    w,
                    b,
                    opts,
                    relu: fused,
                } => {
                    let y =
                        conv_transpose2d(take(&mut values, *x), w.clone(), b.clone(), opts.clone());
                    if *fused { relu(y) } else { y }
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
            if let Some(times) = times.as_deref_mut() {
                let _ = self.device.sync();
                times.push((s.op.name(), started.elapsed().as_secs_f64()));
            }
            values[s.out] = Some(y);
        }
        values[self.output].take().expect("the output is computed")
    }
}
