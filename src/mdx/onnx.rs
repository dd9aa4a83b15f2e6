//! A small reader of ONNX files: just what UVR's MDX-Net graphs need (the graph's nodes,
//! inputs, outputs and float initializers), decoded straight from the protobuf wire format.
//!
//! Field numbers follow `onnx.proto` (ModelProto.graph = 7; GraphProto.node = 1,
//! initializer = 5, input = 11, output = 12; NodeProto.input = 1, output = 2, name = 3,
//! op_type = 4, attribute = 5; AttributeProto.name = 1, f = 2, i = 3, floats = 7,
//! ints = 8; TensorProto.dims = 1, data_type = 2, float_data = 4, name = 8, raw_data = 9,
//! external_data = 13; ValueInfoProto.name = 1, type = 2; TypeProto.tensor_type = 1;
//! Tensor.elem_type = 1, shape = 2; TensorShapeProto.dim = 1; Dimension.dim_value = 1,
//! dim_param = 2).

use std::collections::HashMap;

/// Why an ONNX file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    /// The bytes are not a valid protobuf message of the expected shape.
    #[error("not a valid ONNX file: {0}")]
    Malformed(String),
    /// A feature the loader does not support (external data, non-float weights...).
    #[error("unsupported ONNX content: {0}")]
    Unsupported(String),
}

/// An attribute value.
#[derive(Debug, Clone, PartialEq)]
pub enum Attr {
    /// A float.
    Float(f32),
    /// An integer.
    Int(i64),
    /// A list of integers.
    Ints(Vec<i64>),
    /// A list of floats.
    Floats(Vec<f32>),
    /// Something the loader keeps but does not interpret.
    Other,
}

/// A graph node.
#[derive(Debug, Clone)]
pub struct Node {
    /// The node name (may be empty).
    pub name: String,
    /// The operator (`Conv`, `MatMul`...).
    pub op_type: String,
    /// Input value names (empty string: optional input left out).
    pub inputs: Vec<String>,
    /// Output value names.
    pub outputs: Vec<String>,
    /// Attributes by name.
    pub attrs: HashMap<String, Attr>,
}

impl Node {
    /// An integer list attribute, or `default`.
    pub fn ints(&self, name: &str, default: &[i64]) -> Vec<i64> {
        match self.attrs.get(name) {
            Some(Attr::Ints(v)) => v.clone(),
            Some(Attr::Int(i)) => vec![*i],
            _ => default.to_vec(),
        }
    }

    /// An integer attribute, or `default`.
    pub fn int(&self, name: &str, default: i64) -> i64 {
        match self.attrs.get(name) {
            Some(Attr::Int(i)) => *i,
            _ => default,
        }
    }

    /// A float attribute, or `default`.
    pub fn float(&self, name: &str, default: f32) -> f32 {
        match self.attrs.get(name) {
            Some(Attr::Float(f)) => *f,
            _ => default,
        }
    }
}

/// A float tensor from the initializers.
#[derive(Debug, Clone)]
pub struct Initializer {
    /// Dimensions.
    pub dims: Vec<usize>,
    /// Values, row-major.
    pub data: Vec<f32>,
}

/// A graph input or output with its declared shape (`None` for symbolic dimensions).
#[derive(Debug, Clone)]
pub struct ValueInfo {
    /// The value name.
    pub name: String,
    /// Its dimensions.
    pub dims: Vec<Option<usize>>,
}

/// The parts of an ONNX model the MDX loader uses.
#[derive(Debug, Clone, Default)]
pub struct Graph {
    /// Nodes, in file order (topological in exported graphs).
    pub nodes: Vec<Node>,
    /// Float initializers by name.
    pub initializers: HashMap<String, Initializer>,
    /// Graph inputs that are not initializers.
    pub inputs: Vec<ValueInfo>,
    /// Graph outputs.
    pub outputs: Vec<ValueInfo>,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

enum Field<'a> {
    Varint(u64),
    Fixed64,
    Bytes(&'a [u8]),
    Fixed32(u32),
}

fn bad(what: &str) -> OnnxError {
    OnnxError::Malformed(what.to_string())
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn varint(&mut self) -> Result<u64, OnnxError> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = *self
                .buf
                .get(self.pos)
                .ok_or_else(|| bad("truncated varint"))?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(bad("varint too long"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], OnnxError> {
        let end = self
            .pos
            .checked_add(n)
            .ok_or_else(|| bad("length overflow"))?;
        let s = self
            .buf
            .get(self.pos..end)
            .ok_or_else(|| bad("truncated field"))?;
        self.pos = end;
        Ok(s)
    }

    fn next(&mut self) -> Result<Option<(u64, Field<'a>)>, OnnxError> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let (num, wire) = (key >> 3, key & 7);
        let field = match wire {
            0 => Field::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Field::Fixed64
            }
            2 => {
                let n = self.varint()? as usize;
                Field::Bytes(self.take(n)?)
            }
            5 => {
                let b = self.take(4)?;
                Field::Fixed32(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            }
            w => return Err(bad(&format!("wire type {w}"))),
        };
        Ok(Some((num, field)))
    }
}

fn string(b: &[u8]) -> Result<String, OnnxError> {
    String::from_utf8(b.to_vec()).map_err(|_| bad("non-UTF-8 string"))
}

fn packed_varints(b: &[u8]) -> Result<Vec<i64>, OnnxError> {
    let mut r = Reader::new(b);
    let mut out = Vec::new();
    while r.pos < b.len() {
        out.push(r.varint()? as i64);
    }
    Ok(out)
}

fn packed_floats(b: &[u8]) -> Result<Vec<f32>, OnnxError> {
    if b.len() % 4 != 0 {
        return Err(bad("packed floats length"));
    }
    Ok(b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// Parses an ONNX model.
pub fn parse(bytes: &[u8]) -> Result<Graph, OnnxError> {
    let mut r = Reader::new(bytes);
    let mut graph = None;
    while let Some((num, f)) = r.next()? {
        if let (7, Field::Bytes(b)) = (num, f) {
            graph = Some(parse_graph(b)?);
        }
    }
    graph.ok_or_else(|| bad("no graph"))
}

fn parse_graph(b: &[u8]) -> Result<Graph, OnnxError> {
    let mut g = Graph::default();
    let mut inputs = Vec::new();
    let mut r = Reader::new(b);
    while let Some((num, f)) = r.next()? {
        match (num, f) {
            (1, Field::Bytes(b)) => g.nodes.push(parse_node(b)?),
            (5, Field::Bytes(b)) => {
                let (name, t) = parse_tensor(b)?;
                g.initializers.insert(name, t);
            }
            (11, Field::Bytes(b)) => inputs.push(parse_value_info(b)?),
            (12, Field::Bytes(b)) => g.outputs.push(parse_value_info(b)?),
            _ => {}
        }
    }
    g.inputs = inputs
        .into_iter()
        .filter(|v| !g.initializers.contains_key(&v.name))
        .collect();
    Ok(g)
}

fn parse_node(b: &[u8]) -> Result<Node, OnnxError> {
    let mut n = Node {
        name: String::new(),
        op_type: String::new(),
        inputs: Vec::new(),
        outputs: Vec::new(),
        attrs: HashMap::new(),
    };
    let mut r = Reader::new(b);
    while let Some((num, f)) = r.next()? {
        match (num, f) {
            (1, Field::Bytes(b)) => n.inputs.push(string(b)?),
            (2, Field::Bytes(b)) => n.outputs.push(string(b)?),
            (3, Field::Bytes(b)) => n.name = string(b)?,
            (4, Field::Bytes(b)) => n.op_type = string(b)?,
            (5, Field::Bytes(b)) => {
                let (name, a) = parse_attr(b)?;
                n.attrs.insert(name, a);
            }
            _ => {}
        }
    }
    Ok(n)
}

fn parse_attr(b: &[u8]) -> Result<(String, Attr), OnnxError> {
    let mut name = String::new();
    let mut value = Attr::Other;
    let mut ints = Vec::new();
    let mut floats = Vec::new();
    let mut r = Reader::new(b);
    while let Some((num, f)) = r.next()? {
        match (num, f) {
            (1, Field::Bytes(b)) => name = string(b)?,
            (2, Field::Fixed32(v)) => value = Attr::Float(f32::from_bits(v)),
            (3, Field::Varint(v)) => value = Attr::Int(v as i64),
            (7, Field::Fixed32(v)) => floats.push(f32::from_bits(v)),
            (7, Field::Bytes(b)) => floats.extend(packed_floats(b)?),
            (8, Field::Varint(v)) => ints.push(v as i64),
            (8, Field::Bytes(b)) => ints.extend(packed_varints(b)?),
            _ => {}
        }
    }
    if !ints.is_empty() {
        value = Attr::Ints(ints);
    } else if !floats.is_empty() {
        value = Attr::Floats(floats);
    }
    Ok((name, value))
}

fn parse_tensor(b: &[u8]) -> Result<(String, Initializer), OnnxError> {
    let mut name = String::new();
    let mut dims = Vec::new();
    let mut data_type = 0;
    let mut floats = Vec::new();
    let mut raw: Option<&[u8]> = None;
    let mut r = Reader::new(b);
    while let Some((num, f)) = r.next()? {
        match (num, f) {
            (1, Field::Varint(v)) => dims.push(v as i64),
            (1, Field::Bytes(b)) => dims.extend(packed_varints(b)?),
            (2, Field::Varint(v)) => data_type = v,
            (4, Field::Fixed32(v)) => floats.push(f32::from_bits(v)),
            (4, Field::Bytes(b)) => floats.extend(packed_floats(b)?),
            (8, Field::Bytes(b)) => name = string(b)?,
            (9, Field::Bytes(b)) => raw = Some(b),
            (13, Field::Bytes(_)) => {
                return Err(OnnxError::Unsupported(format!(
                    "initializer {name:?} uses external data; export the model as one file"
                )));
            }
            _ => {}
        }
    }
    let dims: Vec<usize> = dims
        .into_iter()
        .map(|d| usize::try_from(d).map_err(|_| bad("negative dimension")))
        .collect::<Result<_, _>>()?;
    let data = match data_type {
        // FLOAT
        1 => match raw {
            Some(raw) => packed_floats(raw)?,
            None => floats,
        },
        // INT64 initializers (shape constants) are not weights: keep them empty.
        7 => Vec::new(),
        other => {
            return Err(OnnxError::Unsupported(format!(
                "initializer {name:?} has element type {other} (only float32 weights are supported)"
            )));
        }
    };
    let elements = dims.iter().try_fold(1usize, |n, d| n.checked_mul(*d));
    if data_type == 1 && elements != Some(data.len()) {
        return Err(bad(&format!(
            "initializer {name:?}: data does not match its shape"
        )));
    }
    Ok((name, Initializer { dims, data }))
}

fn parse_value_info(b: &[u8]) -> Result<ValueInfo, OnnxError> {
    let mut name = String::new();
    let mut dims = Vec::new();
    let mut r = Reader::new(b);
    while let Some((num, f)) = r.next()? {
        match (num, f) {
            (1, Field::Bytes(b)) => name = string(b)?,
            (2, Field::Bytes(t)) => {
                // TypeProto.tensor_type(1) -> Tensor.shape(2) -> dim(1) -> dim_value(1)
                let mut tr = Reader::new(t);
                while let Some((1, Field::Bytes(tt))) = tr.next()? {
                    let mut ttr = Reader::new(tt);
                    while let Some((n2, f2)) = ttr.next()? {
                        if let (2, Field::Bytes(shape)) = (n2, f2) {
                            let mut sr = Reader::new(shape);
                            while let Some((n3, f3)) = sr.next()? {
                                if let (1, Field::Bytes(dim)) = (n3, f3) {
                                    let mut dr = Reader::new(dim);
                                    let mut value = None;
                                    while let Some((n4, f4)) = dr.next()? {
                                        if let (1, Field::Varint(v)) = (n4, f4) {
                                            value = Some(v as usize);
                                        }
                                    }
                                    dims.push(value);
                                }
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
    Ok(ValueInfo { name, dims })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    /// A length-delimited field.
    fn bytes(num: u64, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        varint(num << 3 | 2, &mut out);
        varint(payload.len() as u64, &mut out);
        out.extend_from_slice(payload);
        out
    }

    /// A model whose graph holds one initializer with these fields.
    fn model_with_tensor(tensor: &[u8]) -> Vec<u8> {
        bytes(7, &bytes(5, tensor))
    }

    fn packed(values: &[u64]) -> Vec<u8> {
        let mut out = Vec::new();
        for v in values {
            varint(*v, &mut out);
        }
        out
    }

    #[test]
    fn a_tensor_shape_whose_size_overflows_is_malformed() {
        // dims [2^32, 2^32], FLOAT, no data: the element count overflows usize.
        let mut t = bytes(1, &packed(&[1 << 32, 1 << 32]));
        t.extend([2 << 3, 1]);
        let err = parse(&model_with_tensor(&t)).unwrap_err();
        assert!(matches!(err, OnnxError::Malformed(_)), "{err}");
    }

    /// Found by `cargo fuzz run onnx`: an initializer whose dims multiply past `usize::MAX`
    /// panicked ("attempt to multiply with overflow") while checking its data length.
    #[test]
    fn fuzz_regression_tensor_dims_overflow() {
        let input = include_bytes!("../../tests/fixtures/fuzz/onnx/tensor-dims-overflow.onnx");
        assert!(matches!(parse(input), Err(OnnxError::Malformed(_))));
    }

    #[test]
    fn float_data_must_fill_the_shape() {
        let mut t = bytes(1, &packed(&[2, 2]));
        t.extend([2 << 3, 1]);
        t.extend(bytes(9, &[0; 12]));
        assert!(matches!(
            parse(&model_with_tensor(&t)),
            Err(OnnxError::Malformed(_))
        ));
        let mut t = bytes(1, &packed(&[2, 2]));
        t.extend([2 << 3, 1]);
        t.extend(bytes(9, &[0; 16]));
        let g = parse(&model_with_tensor(&t)).unwrap();
        assert_eq!(g.initializers[""].data.len(), 4);
    }

    #[test]
    fn truncated_and_garbage_input_is_an_error() {
        for input in [
            &b""[..],
            b"\x3a",
            b"\x3a\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",
            b"\x3a\x05\x0a",
            b"\x0f",
            b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",
        ] {
            assert!(parse(input).is_err(), "{input:?}");
        }
    }
}
