//! Builds a ConvTDFNet graph with random weights in memory, in the layout UVR's exported
//! files have (BN folded into convs, kept after MatMul and ConvTranspose, MatMul weights
//! `[in, out]`). Used by the benchmark to run the real Kim_Vocal_2 geometry on machines where
//! the 67 MB ONNX file cannot be generated (no Python); the reference script produces the same
//! architecture as a file (`models/reference/generate_reference.py --real-geometry`).

use std::collections::HashMap;

use super::onnx::{Attr, Graph, Initializer, Node, ValueInfo};

/// A ConvTDFNet geometry.
#[derive(Debug, Clone, Copy)]
pub struct Geometry {
    /// Frequency bins.
    pub dim_f: usize,
    /// Frames.
    pub dim_t: usize,
    /// Channel growth per stage.
    pub g: usize,
    /// Encoder stages.
    pub stages: usize,
    /// Convolutions per TFC block.
    pub l: usize,
    /// TDF bottleneck factor.
    pub bn: usize,
}

impl Geometry {
    /// Kim_Vocal_2 / UVR-MDX-NET-Voc_FT: dim_f 3072, dim_t 256, 48 channels, 5 stages.
    pub const KIM_VOCAL_2: Geometry = Geometry {
        dim_f: 3072,
        dim_t: 256,
        g: 48,
        stages: 5,
        l: 3,
        bn: 8,
    };
}

struct Builder {
    g: Graph,
    rng: u64,
    n: usize,
}

impl Builder {
    fn rand(&mut self) -> f32 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }

    fn init(&mut self, dims: Vec<usize>, scale: f32) -> String {
        let n: usize = dims.iter().product();
        let data = (0..n).map(|_| self.rand() * scale).collect();
        self.n += 1;
        let name = format!("w{}", self.n);
        self.g
            .initializers
            .insert(name.clone(), Initializer { dims, data });
        name
    }

    fn constant(&mut self, len: usize, v: f32) -> String {
        self.n += 1;
        let name = format!("c{}", self.n);
        self.g.initializers.insert(
            name.clone(),
            Initializer {
                dims: vec![len],
                data: vec![v; len],
            },
        );
        name
    }

    fn node(&mut self, op: &str, inputs: Vec<String>, attrs: &[(&str, Attr)]) -> String {
        self.n += 1;
        let out = format!("v{}", self.n);
        self.g.nodes.push(Node {
            name: format!("{op}_{}", self.n),
            op_type: op.into(),
            inputs,
            outputs: vec![out.clone()],
            attrs: attrs
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect::<HashMap<_, _>>(),
        });
        out
    }

    fn conv(
        &mut self,
        x: String,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        pad: usize,
    ) -> String {
        let scale = (2.0 / (cin * k * k) as f32).sqrt();
        let w = self.init(vec![cout, cin, k, k], scale);
        let b = self.init(vec![cout], 0.1);
        let p = pad as i64;
        self.node(
            "Conv",
            vec![x, w, b],
            &[
                ("kernel_shape", Attr::Ints(vec![k as i64, k as i64])),
                ("strides", Attr::Ints(vec![stride as i64, stride as i64])),
                ("pads", Attr::Ints(vec![p, p, p, p])),
            ],
        )
    }

    fn bn(&mut self, x: String, c: usize) -> String {
        let s = self.constant(c, 1.0);
        let b = self.constant(c, 0.1);
        let m = self.constant(c, 0.0);
        let v = self.constant(c, 1.0);
        self.node(
            "BatchNormalization",
            vec![x, s, b, m, v],
            &[("epsilon", Attr::Float(1e-5))],
        )
    }

    fn relu(&mut self, x: String) -> String {
        self.node("Relu", vec![x], &[])
    }

    fn linear(&mut self, x: String, fin: usize, fout: usize, c: usize) -> String {
        let w = self.init(vec![fin, fout], (2.0 / fin as f32).sqrt());
        let y = self.node("MatMul", vec![x, w], &[]);
        let y = self.bn(y, c);
        self.relu(y)
    }

    fn tfc_tdf(&mut self, mut x: String, c: usize, f: usize, geo: &Geometry) -> String {
        for _ in 0..geo.l {
            x = self.conv(x, c, c, 3, 1, 1);
            x = self.relu(x);
        }
        let hidden = (f / geo.bn).max(1);
        let t = self.linear(x.clone(), f, hidden, c);
        let t = self.linear(t, hidden, f, c);
        self.node("Add", vec![x, t], &[])
    }
}

/// The ConvTDFNet graph of `geo` with random weights (`seed`).
pub fn convtdfnet(geo: &Geometry, seed: u64) -> Graph {
    let mut b = Builder {
        g: Graph::default(),
        rng: seed.max(1),
        n: 0,
    };
    b.g.inputs.push(ValueInfo {
        name: "input".into(),
        dims: vec![None, Some(4), Some(geo.dim_f), Some(geo.dim_t)],
    });
    let transpose = [("perm", Attr::Ints(vec![0, 1, 3, 2]))];
    let (g, n) = (geo.g, geo.stages);
    let x = b.conv("input".into(), 4, g, 1, 1, 0);
    let x = b.relu(x);
    let mut x = b.node("Transpose", vec![x], &transpose);
    let (mut f, mut c) = (geo.dim_f, g);
    let mut skips = Vec::new();
    for _ in 0..n {
        x = b.tfc_tdf(x, c, f, geo);
        skips.push(x.clone());
        x = b.conv(x, c, c + g, 2, 2, 0);
        x = b.relu(x);
        f /= 2;
        c += g;
    }
    x = b.tfc_tdf(x, c, f, geo);
    for i in 0..n {
        let w = b.init(vec![c, c - g, 2, 2], (2.0 / (c * 4) as f32).sqrt());
        let bias = b.init(vec![c - g], 0.1);
        x = b.node(
            "ConvTranspose",
            vec![x, w, bias],
            &[
                ("kernel_shape", Attr::Ints(vec![2, 2])),
                ("strides", Attr::Ints(vec![2, 2])),
            ],
        );
        x = b.bn(x, c - g);
        x = b.relu(x);
        f *= 2;
        c -= g;
        x = b.node("Mul", vec![x, skips[n - 1 - i].clone()], &[]);
        x = b.tfc_tdf(x, c, f, geo);
    }
    let x = b.node("Transpose", vec![x], &transpose);
    let out = b.conv(x, c, 4, 1, 1, 0);
    b.g.outputs.push(ValueInfo {
        name: out,
        dims: vec![None, Some(4), Some(geo.dim_f), Some(geo.dim_t)],
    });
    b.g
}

#[cfg(all(test, feature = "mdx"))]
mod tests {
    use super::*;

    #[test]
    fn a_small_synthetic_graph_compiles_and_keeps_its_shape() {
        let geo = Geometry {
            dim_f: 32,
            dim_t: 8,
            g: 4,
            stages: 2,
            l: 1,
            bn: 2,
        };
        let graph = convtdfnet(&geo, 1);
        let device = burn::tensor::Device::flex();
        let net = crate::mdx::MdxNet::compile(&graph, &device).unwrap();
        let x = burn::tensor::Tensor::<4>::zeros([2, 4, 32, 8], &device);
        assert_eq!(net.forward(x).dims(), [2, 4, 32, 8]);
    }
}
