//! The Roformer network on Burn: band split, axial (time, frequency) transformers with
//! rotary attention, per-band mask estimators.
//!
//! Weights are taken by their state-dict names (MSST's layout) and checked against the
//! config's shapes. Linear weights are stored transposed (`[in, out]`) for Burn's `linear`;
//! RMSNorm gains carry their `sqrt(dim)` factor. Bands of similar width run as one batched
//! product ([`BandLayout::groups`]): their inputs, gains and weights are zero-padded to the
//! group's width, which changes no output (a zero column adds nothing to a norm or a
//! product, and a zero mask row is cut off again).

use burn::tensor::activation::{gelu, sigmoid, softmax};
use burn::tensor::module::{attention, linear};
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Device, Int, Tensor, TensorData};

use super::RoformerError;
use super::bands::BandLayout;
use super::config::{RoformerConfig, Variant};
use super::weights::{Array, Weights};

/// State-dict entries that are recomputed, not loaded.
const BUFFERS: &[&str] = &[
    "freq_indices",
    "freqs_per_band",
    "num_freqs_per_band",
    "num_bands_per_freq",
    "cached_freqs",
    "cached_scales",
    "dummy",
];

/// `F.normalize(x, dim=-1) * gain`, the gain already holding `sqrt(dim)`.
fn rms_norm<const D: usize>(x: Tensor<D>, gain: &Tensor<1>) -> Tensor<D> {
    let norm = x.clone().square().sum_dim(D - 1).sqrt().clamp_min(1e-12);
    x.div(norm).mul(gain.clone().unsqueeze())
}

/// `F.normalize(x, dim=-1)`.
fn l2_norm<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let norm = x.clone().square().sum_dim(D - 1).sqrt().clamp_min(1e-12);
    x.div(norm)
}

struct Loader<'a> {
    w: &'a mut Weights,
    device: &'a Device,
}

impl Loader<'_> {
    fn array(&mut self, name: &str, shape: &[usize]) -> Result<Array, RoformerError> {
        self.w.take(name, shape)
    }

    fn vector(&mut self, name: &str, n: usize) -> Result<Tensor<1>, RoformerError> {
        let a = self.array(name, &[n])?;
        Ok(Tensor::from_data(TensorData::new(a.data, [n]), self.device))
    }

    /// An RMSNorm gain times `sqrt(n)`.
    fn gain(&mut self, name: &str, n: usize) -> Result<Tensor<1>, RoformerError> {
        let a = self.array(name, &[n])?;
        let s = (n as f32).sqrt();
        let data: Vec<f32> = a.data.iter().map(|g| g * s).collect();
        Ok(Tensor::from_data(TensorData::new(data, [n]), self.device))
    }

    /// A torch `Linear` weight `[out, in]`, transposed to `[in, out]`.
    fn linear(&mut self, name: &str, inp: usize, out: usize) -> Result<Tensor<2>, RoformerError> {
        let a = self.array(name, &[out, inp])?;
        Ok(Tensor::from_data(
            TensorData::new(transpose(&a.data, out, inp), [inp, out]),
            self.device,
        ))
    }
}

fn transpose(data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0.0; data.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = data[r * cols + c];
        }
    }
    t
}

/// Rotary position embedding for one sequence length: `x·cos + rotate_half(x)·sin`, with
/// adjacent pairs rotated together.
#[derive(Clone)]
struct Rope {
    cos: Tensor<4>,
    sin: Tensor<4>,
}

impl Rope {
    fn new(freqs: &[f32], len: usize, device: &Device) -> Self {
        let d = 2 * freqs.len();
        let (mut cos, mut sin) = (Vec::with_capacity(len * d), Vec::with_capacity(len * d));
        for p in 0..len {
            for &f in freqs {
                // The angle is rounded to f32 as the reference computes it.
                let a = f64::from(p as f32 * f);
                for _ in 0..2 {
                    cos.push(a.cos() as f32);
                    sin.push(a.sin() as f32);
                }
            }
        }
        Self {
            cos: Tensor::from_data(TensorData::new(cos, [1, 1, len, d]), device),
            sin: Tensor::from_data(TensorData::new(sin, [1, 1, len, d]), device),
        }
    }

    fn apply(&self, x: Tensor<4>) -> Tensor<4> {
        let [b, h, n, d] = x.dims();
        let pairs = x.clone().reshape([b, h, n, d / 2, 2]);
        let even = pairs.clone().narrow(4, 0, 1);
        let odd = pairs.narrow(4, 1, 1);
        let rotated = Tensor::cat(vec![odd.neg(), even], 4).reshape([b, h, n, d]);
        x.mul(self.cos.clone()).add(rotated.mul(self.sin.clone()))
    }
}

/// The reference's default rotary frequencies for heads of width `d`.
fn rotary_freqs(d: usize) -> Vec<f32> {
    (0..d / 2)
        .map(|i| (1.0 / 10_000f64.powf((2 * i) as f64 / d as f64)) as f32)
        .collect()
}

enum Mixer {
    /// Softmax attention over the sequence, rotary positions, per-head sigmoid gates.
    Attention(Box<Attention>),
    /// Attention across features ("linear attention"): l2-normalised queries and keys,
    /// learned per-head temperature, scale 8.
    Linear(Box<LinearAttention>),
}

struct Attention {
    norm: Tensor<1>,
    qkv: Tensor<2>,
    gates: Tensor<2>,
    gates_bias: Tensor<1>,
    out: Tensor<2>,
}

struct LinearAttention {
    norm: Tensor<1>,
    qkv: Tensor<2>,
    temperature: Tensor<4>,
    out: Tensor<2>,
}

struct FeedForward {
    norm: Tensor<1>,
    w1: Tensor<2>,
    b1: Tensor<1>,
    w2: Tensor<2>,
    b2: Tensor<1>,
}

impl FeedForward {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let h = linear(
            rms_norm(x, &self.norm),
            self.w1.clone(),
            Some(self.b1.clone()),
        );
        linear(gelu(h), self.w2.clone(), Some(self.b2.clone()))
    }
}

struct Transformer {
    layers: Vec<(Mixer, FeedForward)>,
    norm: Option<Tensor<1>>,
    rope: Option<Rope>,
    heads: usize,
    dim_head: usize,
}

impl Transformer {
    fn forward(&self, mut x: Tensor<3>) -> Tensor<3> {
        for (mixer, ff) in &self.layers {
            x = self.mix(mixer, x.clone()).add(x);
            x = ff.forward(x.clone()).add(x);
        }
        match &self.norm {
            Some(g) => rms_norm(x, g),
            None => x,
        }
    }

    fn mix(&self, mixer: &Mixer, x: Tensor<3>) -> Tensor<3> {
        let [b, n, _] = x.dims();
        let (h, d) = (self.heads, self.dim_head);
        match mixer {
            Mixer::Attention(a) => {
                let Attention {
                    norm,
                    qkv,
                    gates,
                    gates_bias,
                    out,
                } = a.as_ref();
                let x = rms_norm(x, norm);
                let qkv = linear(x.clone(), qkv.clone(), None)
                    .reshape([b, n, 3, h, d])
                    .permute([2, 0, 3, 1, 4]);
                let part = |i: usize| qkv.clone().narrow(0, i, 1).reshape([b, h, n, d]);
                let (mut q, mut k, v) = (part(0), part(1), part(2));
                if let Some(rope) = &self.rope {
                    q = rope.apply(q);
                    k = rope.apply(k);
                }
                let o = attention(q, k, v, None, None, AttentionModuleOptions::default());
                let g = sigmoid(linear(x, gates.clone(), Some(gates_bias.clone())))
                    .swap_dims(1, 2)
                    .unsqueeze_dim::<4>(3);
                let o = o.mul(g).swap_dims(1, 2).reshape([b, n, h * d]);
                linear(o, out.clone(), None)
            }
            Mixer::Linear(a) => {
                let LinearAttention {
                    norm,
                    qkv,
                    temperature,
                    out,
                } = a.as_ref();
                let x = rms_norm(x, norm);
                let qkv = linear(x, qkv.clone(), None)
                    .reshape([b, n, 3, h, d])
                    .permute([2, 0, 3, 4, 1]);
                let part = |i: usize| qkv.clone().narrow(0, i, 1).reshape([b, h, d, n]);
                let q = l2_norm(part(0)).mul(temperature.clone().exp());
                let k = l2_norm(part(1));
                let sim = q.matmul(k.swap_dims(2, 3)).mul_scalar(8.0);
                let o = softmax(sim, 3).matmul(part(2));
                let o = o.permute([0, 3, 1, 2]).reshape([b, n, h * d]);
                linear(o, out.clone(), None)
            }
        }
    }
}

/// One group's batched weights.
struct GroupLinear {
    w: Tensor<3>,
    b: Tensor<3>,
}

impl GroupLinear {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        x.matmul(self.w.clone()).add(self.b.clone())
    }
}

/// The network, on a device.
pub struct RoformerNet {
    /// The config it was built from.
    pub config: RoformerConfig,
    /// Which rows each band reads.
    pub layout: BandLayout,
    /// Spectrogram frames per chunk.
    pub frames: usize,
    device: Device,
    split_gain: Vec<Tensor<3>>,
    split: Vec<GroupLinear>,
    /// Band order from group order.
    unpermute: Tensor<1, Int>,
    /// Each group's bands, for gathering them back.
    group_bands: Vec<Tensor<1, Int>>,
    blocks: Vec<Vec<Transformer>>,
    final_norm: Option<Tensor<1>>,
    /// Per stem, per group, the MLP layers (the last one laid out `[value | gate]`).
    masks: Vec<Vec<Vec<GroupLinear>>>,
}

impl std::fmt::Debug for RoformerNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoformerNet")
            .field("family", &self.config.variant.family())
            .field("dim", &self.config.dim)
            .field("depth", &self.config.depth)
            .field("bands", &self.layout.bands.len())
            .finish_non_exhaustive()
    }
}

/// What a traced forward pass saw (tests compare each against the reference).
pub struct Trace {
    /// Band split output `[b, t, bands, dim]`.
    pub band_split: Tensor<4>,
    /// Output of each (time, frequency) block.
    pub layers: Vec<Tensor<4>>,
}

impl RoformerNet {
    /// Builds the network of `config` from `weights` on `device`. Every tensor the network
    /// needs must be present with its shape; tensors left over are refused too (they mean
    /// the checkpoint is of another variant than the config says).
    pub fn new(
        config: RoformerConfig,
        mut weights: Weights,
        device: &Device,
    ) -> Result<Self, RoformerError> {
        if !config.stereo {
            return Err(RoformerError::Unsupported(
                "model.stereo false (mono models)".into(),
            ));
        }
        let layout = BandLayout::new(&config);
        let uncovered = layout.uncovered();
        if !uncovered.is_empty() {
            return Err(RoformerError::Config(format!(
                "{} spectrogram rows are in no band (num_bands too small for stft_n_fft)",
                uncovered.len()
            )));
        }
        let frames = config.chunk_size / config.hop + 1;
        let mel = matches!(config.variant, Variant::MelBand { .. });
        let (dim, h, dh) = (config.dim, config.heads, config.dim_head);
        let mut l = Loader {
            w: &mut weights,
            device,
        };

        let mut split_gain = Vec::new();
        let mut split = Vec::new();
        for g in &layout.groups {
            let (n, wd) = (g.bands.len(), g.width);
            let mut gain = vec![0.0f32; n * wd];
            let mut w = vec![0.0f32; n * wd * dim];
            let mut bias = vec![0.0f32; n * dim];
            for (k, &band) in g.bands.iter().enumerate() {
                let bw = layout.width(band);
                let p = format!("band_split.to_features.{band}");
                let gm = l.array(&format!("{p}.0.gamma"), &[bw])?;
                let s = (bw as f32).sqrt();
                for (i, v) in gm.data.iter().enumerate() {
                    gain[k * wd + i] = v * s;
                }
                let lw = l.array(&format!("{p}.1.weight"), &[dim, bw])?;
                for o in 0..dim {
                    for i in 0..bw {
                        w[(k * wd + i) * dim + o] = lw.data[o * bw + i];
                    }
                }
                let lb = l.array(&format!("{p}.1.bias"), &[dim])?;
                bias[k * dim..(k + 1) * dim].copy_from_slice(&lb.data);
            }
            split_gain.push(Tensor::from_data(TensorData::new(gain, [n, 1, wd]), device));
            split.push(GroupLinear {
                w: Tensor::from_data(TensorData::new(w, [n, wd, dim]), device),
                b: Tensor::from_data(TensorData::new(bias, [n, 1, dim]), device),
            });
        }
        let order: Vec<usize> = layout
            .groups
            .iter()
            .flat_map(|g| g.bands.iter().copied())
            .collect();
        let mut inverse = vec![0i64; order.len()];
        for (pos, &band) in order.iter().enumerate() {
            inverse[band] = pos as i64;
        }
        let unpermute = Tensor::from_data(TensorData::new(inverse, [order.len()]), device);
        let group_bands = layout
            .groups
            .iter()
            .map(|g| {
                let idx: Vec<i64> = g.bands.iter().map(|&b| b as i64).collect();
                Tensor::from_data(TensorData::new(idx, [g.bands.len()]), device)
            })
            .collect();

        // Rotary frequencies: the checkpoint's when it has them (all attention layers of the
        // time transformers share one embedding, as do those of the frequency transformers).
        let bands = layout.bands.len();
        let mut blocks = Vec::new();
        // One table per (frequencies, length): every block's time transformers share one,
        // as do its frequency transformers.
        let mut ropes: Vec<(Vec<f32>, usize, Rope)> = Vec::new();
        for i in 0..config.depth {
            let mut block = Vec::new();
            let linear_first = config.linear_transformer_depth > 0;
            let kinds: Vec<(usize, Option<usize>)> = [
                linear_first.then_some((config.linear_transformer_depth, None)),
                Some((config.time_transformer_depth, Some(frames))),
                Some((config.freq_transformer_depth, Some(bands))),
            ]
            .into_iter()
            .flatten()
            .collect();
            for (k, (layers_n, seq)) in kinds.into_iter().enumerate() {
                let p = format!("layers.{i}.{k}");
                let mut layers = Vec::new();
                let mut freqs: Option<Vec<f32>> = None;
                for j in 0..layers_n {
                    let a = format!("{p}.layers.{j}.0");
                    let mixer = if seq.is_some() {
                        let name = format!("{a}.rotary_embed.freqs");
                        if l.w.has(&name) {
                            let f = l.array(&name, &[dh / 2])?.data;
                            match &freqs {
                                Some(prev) if prev != &f => {
                                    return Err(RoformerError::Unsupported(format!(
                                        "{name}: rotary frequencies that differ between layers"
                                    )));
                                }
                                _ => freqs = Some(f),
                            }
                        }
                        Mixer::Attention(Box::new(Attention {
                            norm: l.gain(&format!("{a}.norm.gamma"), dim)?,
                            qkv: l.linear(&format!("{a}.to_qkv.weight"), dim, 3 * h * dh)?,
                            gates: l.linear(&format!("{a}.to_gates.weight"), dim, h)?,
                            gates_bias: l.vector(&format!("{a}.to_gates.bias"), h)?,
                            out: l.linear(&format!("{a}.to_out.0.weight"), h * dh, dim)?,
                        }))
                    } else {
                        let t = l.array(&format!("{a}.temperature"), &[h, 1, 1])?;
                        Mixer::Linear(Box::new(LinearAttention {
                            norm: l.gain(&format!("{a}.norm.gamma"), dim)?,
                            qkv: l.linear(&format!("{a}.to_qkv.0.weight"), dim, 3 * h * dh)?,
                            temperature: Tensor::from_data(
                                TensorData::new(t.data, [1, h, 1, 1]),
                                device,
                            ),
                            out: l.linear(&format!("{a}.to_out.1.weight"), h * dh, dim)?,
                        }))
                    };
                    let f = format!("{p}.layers.{j}.1.net");
                    let inner = 4 * dim;
                    let ff = FeedForward {
                        norm: l.gain(&format!("{f}.0.gamma"), dim)?,
                        w1: l.linear(&format!("{f}.1.weight"), dim, inner)?,
                        b1: l.vector(&format!("{f}.1.bias"), inner)?,
                        w2: l.linear(&format!("{f}.4.weight"), inner, dim)?,
                        b2: l.vector(&format!("{f}.4.bias"), dim)?,
                    };
                    layers.push((mixer, ff));
                }
                let norm = if mel {
                    Some(l.gain(&format!("{p}.norm.gamma"), dim)?)
                } else {
                    None
                };
                let rope = seq.map(|n| {
                    let f = freqs.clone().unwrap_or_else(|| rotary_freqs(dh));
                    if let Some((_, _, r)) = ropes.iter().find(|(g, m, _)| *g == f && *m == n) {
                        return r.clone();
                    }
                    let r = Rope::new(&f, n, device);
                    ropes.push((f, n, r.clone()));
                    r
                });
                block.push(Transformer {
                    layers,
                    norm,
                    rope,
                    heads: h,
                    dim_head: dh,
                });
            }
            blocks.push(block);
        }
        let final_norm = if mel || config.skip_final_norm {
            None
        } else {
            Some(l.gain("final_norm.gamma", dim)?)
        };

        let hidden = dim * config.mlp_expansion_factor;
        // BS-Roformer's MLP has `depth` linear layers, Mel-Band Roformer's `depth + 1`.
        let n_linear = config.mask_estimator_depth + usize::from(mel);
        let mut masks = Vec::new();
        for s in 0..config.num_stems {
            let mut groups = Vec::new();
            for g in &layout.groups {
                let (n, wd) = (g.bands.len(), g.width);
                let mut mlp = Vec::new();
                for j in 0..n_linear {
                    let inp = if j == 0 { dim } else { hidden };
                    let last = j + 1 == n_linear;
                    let out_pad = if last { 2 * wd } else { hidden };
                    let mut w = vec![0.0f32; n * inp * out_pad];
                    let mut bias = vec![0.0f32; n * out_pad];
                    for (k, &band) in g.bands.iter().enumerate() {
                        let bw = layout.width(band);
                        let out = if last { 2 * bw } else { hidden };
                        let p = format!("mask_estimators.{s}.to_freqs.{band}.0.{}", 2 * j);
                        let lw = l.array(&format!("{p}.weight"), &[out, inp])?;
                        let lb = l.array(&format!("{p}.bias"), &[out])?;
                        // The last layer's halves (value, gate) each go to their padded half.
                        let col = |o: usize| {
                            if last && o >= bw { o - bw + wd } else { o }
                        };
                        for o in 0..out {
                            let c = col(o);
                            for i in 0..inp {
                                w[(k * inp + i) * out_pad + c] = lw.data[o * inp + i];
                            }
                            bias[k * out_pad + c] = lb.data[o];
                        }
                    }
                    mlp.push(GroupLinear {
                        w: Tensor::from_data(TensorData::new(w, [n, inp, out_pad]), device),
                        b: Tensor::from_data(TensorData::new(bias, [n, 1, out_pad]), device),
                    });
                }
                groups.push(mlp);
            }
            masks.push(groups);
        }
        // Buffers some versions of the reference persist: recomputed here, not weights.
        let left: Vec<String> = weights
            .remaining()
            .into_iter()
            .filter(|k| {
                let last = k.rsplit('.').next().unwrap_or(k);
                !(BUFFERS.contains(&last) || k.ends_with("rotary_embed.freqs"))
            })
            .collect();
        if !left.is_empty() {
            return Err(RoformerError::UnexpectedTensors {
                family: config.variant.family(),
                names: left,
            });
        }
        Ok(Self {
            config,
            layout,
            frames,
            device: device.clone(),
            split_gain,
            split,
            unpermute,
            group_bands,
            blocks,
            final_norm,
            masks,
        })
    }

    /// The device the weights are on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Uploads one group's band inputs, `[bands, batch · frames, width]`.
    pub fn upload(&self, group: usize, data: Vec<f32>, n: usize) -> Tensor<3> {
        let g = &self.layout.groups[group];
        Tensor::from_data(
            TensorData::new(data, [g.bands.len(), n, g.width]),
            &self.device,
        )
    }

    /// The masks of every stem for every group, `[bands, batch · frames, width]` each (rows'
    /// real and imaginary parts interleaved, zero past a band's width), from the band inputs
    /// of `batch` chunks.
    pub fn forward(&self, inputs: Vec<Tensor<3>>, batch: usize) -> Vec<Vec<Tensor<3>>> {
        self.forward_inner(inputs, batch, None)
    }

    /// [`forward`](Self::forward), also returning the band-split output and each block's.
    pub fn forward_traced(
        &self,
        inputs: Vec<Tensor<3>>,
        batch: usize,
    ) -> (Vec<Vec<Tensor<3>>>, Trace) {
        let mut layers = Vec::new();
        let out = self.forward_inner(inputs, batch, Some(&mut layers));
        let band_split = layers.remove(0);
        (out, Trace { band_split, layers })
    }

    fn forward_inner(
        &self,
        inputs: Vec<Tensor<3>>,
        batch: usize,
        mut trace: Option<&mut Vec<Tensor<4>>>,
    ) -> Vec<Vec<Tensor<3>>> {
        let (t, nb, dim) = (self.frames, self.layout.bands.len(), self.config.dim);
        let n = batch * t;
        let split: Vec<Tensor<3>> = inputs
            .into_iter()
            .enumerate()
            .map(|(g, x)| self.split[g].forward(rms_norm_groups(x, &self.split_gain[g])))
            .collect();
        // [bands, b·t, dim] in band order -> [b, t, bands, dim]
        let mut x = Tensor::cat(split, 0)
            .select(0, self.unpermute.clone())
            .reshape([nb, batch, t, dim])
            .permute([1, 2, 0, 3]);
        if let Some(tr) = trace.as_deref_mut() {
            tr.push(x.clone());
        }
        let mut store: Vec<Tensor<4>> = Vec::new();
        for block in &self.blocks {
            let mut parts = block.iter();
            if self.config.linear_transformer_depth > 0 {
                let lin = parts.next().expect("linear transformer");
                x = lin
                    .forward(x.reshape([batch, t * nb, dim]))
                    .reshape([batch, t, nb, dim]);
            }
            if self.config.skip_connection {
                for s in &store {
                    x = x.add(s.clone());
                }
            }
            let time = parts.next().expect("time transformer");
            let freq = parts.next().expect("frequency transformer");
            let y = time
                .forward(x.permute([0, 2, 1, 3]).reshape([batch * nb, t, dim]))
                .reshape([batch, nb, t, dim])
                .permute([0, 2, 1, 3]);
            x = freq
                .forward(y.reshape([batch * t, nb, dim]))
                .reshape([batch, t, nb, dim]);
            if self.config.skip_connection {
                store.push(x.clone());
            }
            if let Some(tr) = trace.as_deref_mut() {
                tr.push(x.clone());
            }
        }
        if let Some(g) = &self.final_norm {
            x = rms_norm(x, g);
        }
        let by_band = x.permute([2, 0, 1, 3]).reshape([nb, n, dim]);
        self.masks
            .iter()
            .map(|groups| {
                groups
                    .iter()
                    .zip(&self.group_bands)
                    .map(|(mlp, idx)| {
                        let mut h = by_band.clone().select(0, idx.clone());
                        for (j, layer) in mlp.iter().enumerate() {
                            h = layer.forward(h);
                            if j + 1 < mlp.len() {
                                h = h.tanh();
                            }
                        }
                        burn::tensor::activation::glu(h, 2)
                    })
                    .collect()
            })
            .collect()
    }
}

/// RMSNorm of zero-padded band inputs `[bands, n, width]` with per-band gains
/// `[bands, 1, width]` (already times `sqrt(band width)`).
fn rms_norm_groups(x: Tensor<3>, gain: &Tensor<3>) -> Tensor<3> {
    let norm = x.clone().square().sum_dim(2).sqrt().clamp_min(1e-12);
    x.div(norm).mul(gain.clone())
}
