//! A checkpoint's tensors by name: `torch.save` files (zip or legacy pickle; the state dict
//! at the top or nested under `state_dict`, `model`, `state` or `model_state_dict`, keys
//! optionally prefixed `model.` or `module.`) and `.safetensors`; float32, float16,
//! bfloat16 and float64 are read as float32.

use std::collections::HashMap;
use std::path::Path;

use super::RoformerError;

/// One tensor: its shape and values (row-major).
#[derive(Debug, Clone, PartialEq)]
pub struct Array {
    /// Extents, outermost first.
    pub shape: Vec<usize>,
    /// Values.
    pub data: Vec<f32>,
}

/// The tensors of a checkpoint, taken one by one while the network is built.
#[derive(Debug, Default)]
pub struct Weights {
    tensors: HashMap<String, Array>,
}

/// Where state dicts are nested in the checkpoints people publish.
const NESTS: &[&str] = &["state_dict", "model_state_dict", "model", "state"];
/// Prefixes training wrappers put before every key.
const PREFIXES: &[&str] = &["model.", "module.", "_orig_mod."];
/// A key every Roformer state dict has, used to find where the state dict is.
const PROBE: &str = "band_split.to_features.0.0.gamma";

impl Weights {
    /// Reads the checkpoint at `path` (`.safetensors` by extension, anything else as a
    /// `torch.save` file).
    pub fn read(path: &Path) -> Result<Self, RoformerError> {
        let raw = if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"))
        {
            read_safetensors(path)?
        } else {
            read_torch(path)?
        };
        Ok(Self {
            tensors: unnest(raw),
        })
    }

    /// Tensors from memory (tests).
    pub fn from_map(tensors: HashMap<String, Array>) -> Self {
        Self {
            tensors: unnest(tensors),
        }
    }

    /// Whether a tensor named `name` is present.
    pub fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Removes and returns `name`, which must have `shape`.
    pub fn take(&mut self, name: &str, shape: &[usize]) -> Result<Array, RoformerError> {
        let a = self
            .tensors
            .remove(name)
            .ok_or_else(|| RoformerError::MissingTensor(name.to_string()))?;
        // A trailing or leading 1 is not a different tensor (e.g. `temperature` [h, 1, 1]).
        let squeeze = |s: &[usize]| s.iter().copied().filter(|&d| d != 1).collect::<Vec<_>>();
        if a.shape != shape && squeeze(&a.shape) != squeeze(shape) {
            return Err(RoformerError::TensorShape {
                name: name.to_string(),
                expected: shape.to_vec(),
                found: a.shape,
            });
        }
        Ok(a)
    }

    /// Names left over after the network took what it needs.
    pub fn remaining(&self) -> Vec<String> {
        let mut v: Vec<String> = self.tensors.keys().cloned().collect();
        v.sort();
        v
    }
}

/// Finds the state dict among nested dictionaries and strips wrapper prefixes.
fn unnest(mut t: HashMap<String, Array>) -> HashMap<String, Array> {
    if !t.contains_key(PROBE) {
        for nest in NESTS {
            let prefix = format!("{nest}.");
            if t.keys()
                .any(|k| k.strip_prefix(&prefix).is_some_and(ends_at_probe))
            {
                t = t
                    .into_iter()
                    .filter_map(|(k, v)| k.strip_prefix(&prefix).map(|k| (k.to_string(), v)))
                    .collect();
                break;
            }
        }
    }
    for prefix in PREFIXES {
        if !t.contains_key(PROBE) && t.contains_key(&format!("{prefix}{PROBE}")) {
            t = t
                .into_iter()
                .filter_map(|(k, v)| k.strip_prefix(prefix).map(|k| (k.to_string(), v)))
                .collect();
        }
    }
    t
}

fn ends_at_probe(rest: &str) -> bool {
    rest == PROBE
        || PREFIXES
            .iter()
            .any(|p| rest.strip_prefix(p).is_some_and(|r| r == PROBE))
}

fn unreadable(path: &Path, why: impl std::fmt::Display) -> RoformerError {
    RoformerError::Checkpoint(format!("{}: {why}", path.display()))
}

fn read_torch(path: &Path) -> Result<HashMap<String, Array>, RoformerError> {
    use pytorch_reader::DType;
    let reader = pytorch_reader::PytorchReader::new(path).map_err(|e| unreadable(path, e))?;
    let mut out = HashMap::new();
    for (name, t) in reader.into_tensors() {
        let kind = match t.dtype() {
            DType::F32 => Kind::F32,
            DType::F16 => Kind::F16,
            DType::BF16 => Kind::BF16,
            DType::F64 => Kind::F64,
            // Integer buffers (step counters, indices) are not weights.
            _ => continue,
        };
        let bytes = t.read().map_err(|e| unreadable(path, e))?;
        let data = decode(kind, &bytes);
        out.insert(
            name,
            Array {
                shape: t.shape().to_vec(),
                data,
            },
        );
    }
    Ok(out)
}

fn read_safetensors(path: &Path) -> Result<HashMap<String, Array>, RoformerError> {
    use safetensors::Dtype;
    let bytes = std::fs::read(path).map_err(|source| RoformerError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| unreadable(path, e))?;
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        let kind = match view.dtype() {
            Dtype::F32 => Kind::F32,
            Dtype::F16 => Kind::F16,
            Dtype::BF16 => Kind::BF16,
            Dtype::F64 => Kind::F64,
            _ => continue,
        };
        // safetensors is little-endian; pytorch-reader returns native order, which on the
        // platforms this builds for is little-endian too.
        out.insert(
            name,
            Array {
                shape: view.shape().to_vec(),
                data: decode(kind, view.data()),
            },
        );
    }
    Ok(out)
}

#[derive(Clone, Copy)]
enum Kind {
    F32,
    F16,
    BF16,
    F64,
}

fn decode(kind: Kind, b: &[u8]) -> Vec<f32> {
    match kind {
        Kind::F32 => b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Kind::F64 => b
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
            .collect(),
        Kind::F16 => b
            .chunks_exact(2)
            .map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]])))
            .collect(),
        Kind::BF16 => b
            .chunks_exact(2)
            .map(|c| f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16))
            .collect(),
    }
}

/// IEEE 754 half to single precision (exact).
fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let frac = u32::from(h & 0x3ff);
    let bits = match (exp, frac) {
        (0, 0) => sign,
        (0, f) => {
            // Subnormal: value = f · 2^-24.
            let v = f as f32 * f32::from_bits(0x3380_0000);
            return if sign != 0 { -v } else { v };
        }
        (31, 0) => sign | 0x7f80_0000,
        (31, f) => sign | 0x7f80_0000 | (f << 13),
        (e, f) => sign | ((e + 127 - 15) << 23) | (f << 13),
    };
    f32::from_bits(bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arr(shape: &[usize]) -> Array {
        Array {
            shape: shape.to_vec(),
            data: vec![0.0; shape.iter().product()],
        }
    }

    #[test]
    fn half_precision_decodes_exactly() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x3555), 0.333_251_95);
        assert_eq!(f16_to_f32(0x0001), 5.960_464_5e-8);
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert!(f16_to_f32(0x7c00).is_infinite());
    }

    #[test]
    fn nested_and_prefixed_state_dicts_are_found() {
        for prefix in [
            "",
            "state_dict.",
            "model.",
            "state_dict.model.",
            "model.module.",
        ] {
            let map = HashMap::from([
                (format!("{prefix}{PROBE}"), arr(&[8])),
                (format!("{prefix}final_norm.gamma"), arr(&[4])),
                ("epoch".to_string(), arr(&[])),
            ]);
            let mut w = Weights::from_map(map);
            assert!(w.has(PROBE), "prefix {prefix:?}: {:?}", w.remaining());
            w.take("final_norm.gamma", &[4]).unwrap();
        }
    }

    #[test]
    fn missing_and_ill_shaped_tensors_are_named() {
        let mut w = Weights::from_map(HashMap::from([(PROBE.to_string(), arr(&[8]))]));
        let e = w.take(PROBE, &[16]).unwrap_err();
        assert!(
            matches!(&e, RoformerError::TensorShape { name, .. } if name == PROBE),
            "{e}"
        );
        let e = w.take("final_norm.gamma", &[4]).unwrap_err();
        assert!(e.to_string().contains("final_norm.gamma"), "{e}");
    }
}
