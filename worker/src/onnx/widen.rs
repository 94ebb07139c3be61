//! An ONNX model stored in fp16 rewritten to fp32 before ONNX Runtime
//! loads it.
//!
//! On x86 ONNX Runtime has few fp16 kernels: it runs such a model by
//! casting around most nodes, so it holds activations in both types. For
//! IS-Net fp16 at 1024x1024 (onnxruntime 1.31.1, 2 threads, arena on,
//! memory pattern off) the widened model peaked at 1165 MB resident against
//! 1366 MB, and a run took about 7 % less CPU (1.90 against 2.05-2.28 s),
//! with outputs within 7e-5 of the fp16 model's. The weights are the same
//! numbers: every fp16 value is exact in fp32.
//!
//! The rewrite touches four fields (a tensor's type and data, a value's
//! declared type, a Cast's target), with the wire format of [`super::proto`].

use super::proto::{
    Field, Fields, ModelError, Value,
    dtype::{FLOAT, FLOAT16},
    packed, put_bytes_field, put_message, put_varint_field,
};

/// The messages on the paths to what is rewritten.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Model,
    Graph,
    Node,
    Attribute,
    Tensor,
    ValueInfo,
    Type,
    TensorType,
}

impl Kind {
    /// The kind of the message in field `field` of a `self`, if it is on a
    /// path to something rewritten.
    fn child(self, field: u64) -> Option<Kind> {
        use Kind::*;
        match (self, field) {
            (Model, 7) => Some(Graph),
            // node, initializer, input, output, value_info
            (Graph, 1) => Some(Node),
            (Graph, 5) => Some(Tensor),
            (Graph, 11..=13) => Some(ValueInfo),
            (Node, 5) => Some(Attribute),
            // t, g, tensors, graphs
            (Attribute, 5 | 10) => Some(Tensor),
            (Attribute, 6 | 11) => Some(Graph),
            (ValueInfo, 2) => Some(Type),
            (Type, 1) => Some(TensorType),
            _ => None,
        }
    }
}

/// Whether `model` (the bytes of an .onnx file) declares any fp16 tensor.
/// A cheap check before [`widen`]: false for an fp32 or quantized model.
pub fn has_fp16(model: &[u8]) -> Result<bool, ModelError> {
    fn walk(msg: &[u8], kind: Kind) -> Result<bool, ModelError> {
        for f in Fields(msg) {
            let f = f?;
            match (kind, f.number, f.value) {
                (Kind::Tensor, 2, Value::Varint(FLOAT16)) => return Ok(true),
                (_, n, Value::Bytes(b)) => {
                    if let Some(k) = kind.child(n)
                        && walk(b, k)?
                    {
                        return Ok(true);
                    }
                }
                _ => {}
            }
        }
        Ok(false)
    }
    walk(model, Kind::Model)
}

/// `model` with every fp16 tensor (weights, constants, attributes) stored
/// as fp32, every value declared fp16 declared fp32, and every Cast to fp16
/// made a Cast to fp32 (which ONNX Runtime then drops as a no-op).
pub fn widen(model: &[u8]) -> Result<Vec<u8>, ModelError> {
    let mut out = Vec::with_capacity(model.len() * 2);
    rewrite(model, Kind::Model, &mut out)?;
    Ok(out)
}

fn rewrite(msg: &[u8], kind: Kind, out: &mut Vec<u8>) -> Result<(), ModelError> {
    match kind {
        Kind::Tensor => return tensor(msg, out),
        Kind::Node => return node(msg, out),
        _ => {}
    }
    for f in Fields(msg) {
        let f = f?;
        match (kind, f.number, f.value) {
            // TypeProto.Tensor.elem_type
            (Kind::TensorType, 1, Value::Varint(FLOAT16)) => put_varint_field(out, 1, FLOAT),
            (_, n, Value::Bytes(b)) if kind.child(n).is_some() => {
                put_message(out, n, |o| rewrite(b, kind.child(n).expect("checked"), o))?
            }
            _ => out.extend_from_slice(f.raw),
        }
    }
    Ok(())
}

/// A NodeProto: its attributes rewritten, and a Cast's `to` = FLOAT16
/// made FLOAT.
fn node(msg: &[u8], out: &mut Vec<u8>) -> Result<(), ModelError> {
    let mut is_cast = false;
    for f in Fields(msg) {
        if let Field { number: 4, value: Value::Bytes(b"Cast"), .. } = f? {
            is_cast = true;
        }
    }
    for f in Fields(msg) {
        let f = f?;
        match (f.number, f.value) {
            (5, Value::Bytes(b)) if is_cast && attribute_is(b, b"to", FLOAT16)? => put_message(out, 5, |o| {
                for a in Fields(b) {
                    let a = a?;
                    match (a.number, a.value) {
                        (3, Value::Varint(FLOAT16)) => put_varint_field(o, 3, FLOAT),
                        _ => o.extend_from_slice(a.raw),
                    }
                }
                Ok(())
            })?,
            (5, Value::Bytes(b)) => put_message(out, 5, |o| rewrite(b, Kind::Attribute, o))?,
            _ => out.extend_from_slice(f.raw),
        }
    }
    Ok(())
}

/// Whether the AttributeProto `msg` is named `name` with integer `i`.
fn attribute_is(msg: &[u8], name: &[u8], i: u64) -> Result<bool, ModelError> {
    let (mut named, mut valued) = (false, false);
    for f in Fields(msg) {
        let f = f?;
        match (f.number, f.value) {
            (1, Value::Bytes(n)) => named = n == name,
            (3, Value::Varint(v)) => valued = v == i,
            _ => {}
        }
    }
    Ok(named && valued)
}

/// A TensorProto: fp16 data (raw little-endian, or one value per int32)
/// written as fp32 `raw_data`.
fn tensor(msg: &[u8], out: &mut Vec<u8>) -> Result<(), ModelError> {
    let mut fp16 = false;
    for f in Fields(msg) {
        if let Field { number: 2, value: Value::Varint(FLOAT16), .. } = f? {
            fp16 = true;
        }
    }
    if !fp16 {
        out.extend_from_slice(msg);
        return Ok(());
    }
    // The data as fp32, little-endian.
    let mut floats: Vec<u8> = Vec::new();
    let mut push = |h: u16| floats.extend_from_slice(&f16_to_f32(h).to_le_bytes());
    for f in Fields(msg) {
        let f = f?;
        match (f.number, f.value) {
            (2, _) => put_varint_field(out, 2, FLOAT),
            (9, Value::Bytes(b)) => {
                if b.len() % 2 != 0 {
                    return Err(ModelError("odd fp16 raw data"));
                }
                b.chunks_exact(2).for_each(|c| push(u16::from_le_bytes([c[0], c[1]])));
            }
            // int32_data, packed
            (5, Value::Bytes(b)) => packed(b)?.into_iter().for_each(|v| push(v as u16)),
            // int32_data, one per field
            (5, Value::Varint(v)) => push(v as u16),
            (13 | 14, _) => return Err(ModelError("fp16 tensor with external data")),
            _ => out.extend_from_slice(f.raw),
        }
    }
    put_bytes_field(out, 9, &floats);
    Ok(())
}

/// IEEE 754 half to single precision, exactly (normals, subnormals,
/// infinities, NaN payloads).
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let frac = u32::from(h & 0x3ff);
    let bits = match (exp, frac) {
        (0, 0) => sign,
        (0, _) => {
            // Subnormal: normalise the fraction.
            let shift = frac.leading_zeros() - 21;
            sign | ((113 - shift) << 23) | (((frac << shift) & 0x3ff) << 13)
        }
        (0x1f, _) => sign | 0x7f80_0000 | (frac << 13),
        _ => sign | ((exp + 112) << 23) | (frac << 13),
    };
    f32::from_bits(bits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::proto::bytes_fields;

    #[test]
    fn halves_widen_exactly() {
        for (h, f) in [
            (0x3c00u16, 1.0f32),
            (0xc000, -2.0),
            (0x3555, 0.333_251_95),
            (0x7bff, 65504.0),
            (0x0001, 5.960_464_5e-8),
            (0x03ff, 6.097_555e-5),
            (0x0400, 6.103_515_6e-5),
            (0x8000, -0.0),
        ] {
            assert_eq!(f16_to_f32(h).to_bits(), f.to_bits(), "{h:#06x}");
        }
        assert_eq!(f16_to_f32(0x7c00), f32::INFINITY);
        assert!(f16_to_f32(0x7e00).is_nan());
    }

    fn tensor_fp16(name: &str, halves: &[u16]) -> Vec<u8> {
        let mut t = Vec::new();
        put_varint_field(&mut t, 1, halves.len() as u64); // dims
        put_varint_field(&mut t, 2, FLOAT16);
        put_bytes_field(&mut t, 8, name.as_bytes());
        let raw: Vec<u8> = halves.iter().flat_map(|h| h.to_le_bytes()).collect();
        put_bytes_field(&mut t, 9, &raw);
        t
    }

    /// A model: one fp16 initializer, a Cast to fp16, a Relu with an
    /// unrelated `to` attribute, an fp16 output declaration.
    fn model() -> Vec<u8> {
        let attr = |name: &str, i: u64| {
            let mut a = Vec::new();
            put_bytes_field(&mut a, 1, name.as_bytes());
            put_varint_field(&mut a, 3, i);
            put_varint_field(&mut a, 20, 2); // type INT
            a
        };
        let node = |op: &str, a: &[u8]| {
            let mut n = Vec::new();
            put_bytes_field(&mut n, 1, b"x");
            put_bytes_field(&mut n, 2, b"y");
            put_bytes_field(&mut n, 4, op.as_bytes());
            put_bytes_field(&mut n, 5, a);
            n
        };
        let mut elem = Vec::new();
        put_varint_field(&mut elem, 1, FLOAT16);
        let mut ty = Vec::new();
        put_bytes_field(&mut ty, 1, &elem);
        let mut vi = Vec::new();
        put_bytes_field(&mut vi, 1, b"y");
        put_bytes_field(&mut vi, 2, &ty);
        let mut graph = Vec::new();
        put_bytes_field(&mut graph, 1, &node("Cast", &attr("to", FLOAT16)));
        put_bytes_field(&mut graph, 1, &node("Relu", &attr("to", FLOAT16)));
        put_bytes_field(&mut graph, 5, &tensor_fp16("w", &[0x3c00, 0xc000]));
        put_bytes_field(&mut graph, 12, &vi);
        let mut m = Vec::new();
        put_varint_field(&mut m, 1, 8); // ir_version
        put_bytes_field(&mut m, 7, &graph);
        m
    }

    fn varints(msg: &[u8], number: u64) -> Vec<u64> {
        Fields(msg)
            .filter_map(|f| match f.unwrap() {
                Field { number: n, value: Value::Varint(v), .. } if n == number => Some(v),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn fp16_weights_types_and_casts_become_fp32_and_nothing_else_changes() {
        let m = model();
        assert!(has_fp16(&m).unwrap());
        let w = widen(&m).unwrap();
        assert!(!has_fp16(&w).unwrap());
        assert_eq!(varints(&w, 1), [8], "other fields kept");
        let graph = bytes_fields(&w, 7)[0];
        let nodes = bytes_fields(graph, 1);
        let to = |n: &[u8]| varints(bytes_fields(n, 5)[0], 3)[0];
        assert_eq!(to(nodes[0]), FLOAT, "Cast to fp16 becomes a Cast to fp32");
        assert_eq!(to(nodes[1]), FLOAT16, "a `to` on another op is left alone");
        assert_eq!(bytes_fields(nodes[0], 4)[0], b"Cast");
        let t = bytes_fields(graph, 5)[0];
        assert_eq!(varints(t, 2), [FLOAT]);
        assert_eq!(varints(t, 1), [2], "dims kept");
        assert_eq!(bytes_fields(t, 8)[0], b"w", "name kept");
        let raw = bytes_fields(t, 9)[0];
        let floats: Vec<f32> = raw.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        assert_eq!(floats, [1.0, -2.0]);
        assert_eq!(
            varints(bytes_fields(bytes_fields(bytes_fields(graph, 12)[0], 2)[0], 1)[0], 1),
            [FLOAT],
            "declared fp32"
        );
        // Idempotent: an fp32 model comes back byte for byte.
        assert_eq!(widen(&w).unwrap(), w);
    }

    #[test]
    fn truncated_models_are_refused() {
        let m = model();
        for cut in [1, 5, m.len() / 2, m.len() - 1] {
            assert!(widen(&m[..cut]).is_err(), "cut at {cut}");
        }
    }
}
