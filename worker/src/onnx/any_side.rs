//! A square-input model whose upsampling sizes are constants made to run at
//! other input sides, one session for all of them.
//!
//! IS-Net's export fixes its input at 1024x1024, and each of its Resize nodes
//! gets its target size as `Concat(Shape(x)[0:2], Constant [h, w])`, the
//! `[h, w]` worked out for 1024. The rewrite declares the input's height and
//! width free and gives each such Resize a constant scale instead of the
//! size: `[1, 1, h / ih, w / iw]`, `ih` and `iw` being the height and width
//! the model declares for the Resize's input (every Resize of IS-Net doubles
//! its input, or scales a side output up to the input's size). The model then
//! runs at any side its pooling divides exactly, height and width apart (each
//! a multiple of 64 for IS-Net,
//! whose deepest feature map is 1/64 of the side), where the doubled maps
//! are exactly the sizes the model asked for. The declared shapes of outputs
//! and intermediate values, which name the 1024 sizes, are dropped: ONNX
//! Runtime infers them. The size computations left unused cost nothing
//! measurable (and `prune` removes them).
//!
//! A constant scale, unlike a size computed from the input, lets ONNX
//! Runtime keep the upsampling in its blocked (NCHWc) layout, between the
//! convolutions that use it, instead of converting to and from that layout
//! around every Resize. Measured on IS-Net fp16 widened and cut to its mask
//! (onnxruntime 1.31.1, 2 threads, its profile of one run at 896): with sizes
//! computed from the input, Resize took 51-59 ms a run and the conversions
//! around it 52 ms, of 1.0-1.2 s; with constant scales, the blocked Upsample
//! took 18 ms and the one conversion left 3 ms. The outputs agree within
//! 3e-7, and at 1024 they are the stored model's (within 4e-5).

use std::collections::{BTreeMap, HashMap};

use super::proto::{
    Field, Fields, Graph, ModelError, Node, Tensor, Value, Wiring, dtype::FLOAT, first_bytes, put_bytes_field,
    put_message, raw_f32, rewrite_graph, tensor,
};

/// Names of what the rewrite adds.
const PREFIX: &str = "tayori_any_side";

/// `model` (the bytes of an .onnx file whose one input is `native` pixels
/// square) rewritten to take any side. Fails on a model without constant
/// Resize sizes, one with a Resize whose input has no declared 4-D shape or
/// is not scaled by a whole factor, or whose input is not `native` square.
pub fn any_side(model: &[u8], native: u64) -> Result<Vec<u8>, ModelError> {
    rewrite_graph(model, 4096, |g, out| graph(g, native, out))
}

fn graph(msg: &[u8], native: u64, out: &mut Vec<u8>) -> Result<(), ModelError> {
    // Pass 1: the nodes, the input, the declared sizes of values, and which
    // Resize nodes take a constant size (with the scales that replace it).
    let g = Graph::parse(msg)?;
    if g.inputs.is_empty() {
        return Err(ModelError("the graph has no input"));
    }
    let mut declared: HashMap<&[u8], [u64; 2]> = HashMap::new();
    for f in Fields(msg) {
        if let Field { number: 11..=13, value: Value::Bytes(b), .. } = f?
            && let Some(hw) = spatial(b)?
        {
            declared.insert(name(b)?, hw);
        }
    }
    let wiring = Wiring::new(&g.nodes);
    let producer = |v: &[u8]| wiring.producer(v).map(|k| &g.nodes[k]);
    if g.names_start_with(PREFIX) {
        return Err(ModelError("the model already names values as this rewrite does"));
    }
    // Each Resize whose sizes are `Concat(<from the input>, Constant [h, w])`
    // and whose input is declared `[n, c, h / a, w / b]` for whole `a` and
    // `b`, that input being a map that scales with the model's input (of more
    // than one pixel a side, and dividing `native`: the feature maps of a
    // U-Net like IS-Net's; a map of a fixed size, such as a global pool's,
    // would be scaled wrong at other sides); any other Resize with a
    // constant in its sizes is refused rather than left fixed.
    let mut scales: HashMap<&[u8], [u64; 2]> = HashMap::new();
    for resize in g.nodes.iter().filter(|n| n.op == b"Resize" && n.inputs.len() >= 4) {
        let Some(concat) = producer(resize.inputs[3]).filter(|n| n.op == b"Concat") else {
            continue;
        };
        let constant = |name: &[u8]| producer(name).filter(|n| n.op == b"Constant");
        if !concat.inputs.iter().any(|i| constant(i).is_some()) {
            continue;
        }
        let size = match concat.inputs.as_slice() {
            [first, last] if constant(first).is_none() => constant(last).map(constant_pair).transpose()?.flatten(),
            _ => None,
        };
        let scale = match (size, declared.get(resize.inputs[0])) {
            (Some([h, w]), Some(&[ih, iw]))
                if ih > 1
                    && iw > 1
                    && native.is_multiple_of(ih)
                    && native.is_multiple_of(iw)
                    && h.is_multiple_of(ih)
                    && w.is_multiple_of(iw)
                    && native.is_multiple_of(h)
                    && native.is_multiple_of(w) =>
            {
                [h / ih, w / iw]
            }
            _ => return Err(ModelError("a Resize's constant size is not one this rewrite knows")),
        };
        scales.insert(resize.outputs.first().ok_or(ModelError("a Resize has no output"))?, scale);
    }
    if scales.is_empty() {
        return Err(ModelError("no Resize takes a constant size"));
    }

    // Pass 2: each of those Resize nodes given its scales instead of the
    // size, the input's height and width freed, the declared shapes dropped.
    let mut scale_names: BTreeMap<[u64; 2], String> = BTreeMap::new();
    let (mut inputs_seen, mut at) = (0, 0);
    for f in Fields(msg) {
        let f = f?;
        match (f.number, f.value) {
            (1, Value::Bytes(b)) => {
                let node = &g.nodes[at];
                at += 1;
                match node.outputs.first().and_then(|o| scales.get(o)).filter(|_| node.op == b"Resize") {
                    Some(&k) => {
                        let name = scale_names.entry(k).or_insert_with(|| format!("{PREFIX}_scales_{}_{}", k[0], k[1]));
                        put_bytes_field(out, 1, &with_scales(b, node.inputs[0], node.inputs[1], name.as_bytes())?);
                    }
                    None => out.extend_from_slice(f.raw),
                }
            }
            (11, Value::Bytes(b)) => {
                inputs_seen += 1;
                if inputs_seen == 1 {
                    put_message(out, 11, |o| free_input(b, native, o))?;
                } else {
                    out.extend_from_slice(f.raw);
                }
            }
            (12 | 13, Value::Bytes(b)) => put_message(out, f.number, |o| drop_shape(b, o))?,
            _ => out.extend_from_slice(f.raw),
        }
    }
    for (k, name) in &scale_names {
        put_bytes_field(out, 5, &float_tensor(name, &[1.0, 1.0, k[0] as f32, k[1] as f32]));
    }
    Ok(())
}

/// A Resize NodeProto with its inputs made `[x, roi, scales]` (no sizes),
/// everything else (name, attributes, domain) kept.
fn with_scales(node: &[u8], x: &[u8], roi: &[u8], scales: &[u8]) -> Result<Vec<u8>, ModelError> {
    let mut out = Vec::new();
    for i in [x, roi, scales] {
        put_bytes_field(&mut out, 1, i);
    }
    for f in Fields(node) {
        let f = f?;
        if f.number != 1 {
            out.extend_from_slice(f.raw);
        }
    }
    Ok(out)
}

/// The height and width a ValueInfoProto declares for a 4-D value, when
/// both are numbers.
fn spatial(vi: &[u8]) -> Result<Option<[u64; 2]>, ModelError> {
    // ValueInfoProto.type → TypeProto.tensor_type → .shape → .dim
    let Some(shape) = first_bytes(vi, 2)?
        .map(|t| first_bytes(t, 1))
        .transpose()?
        .flatten()
        .map(|t| first_bytes(t, 2))
        .transpose()?
        .flatten()
    else {
        return Ok(None);
    };
    let mut dims = Vec::new();
    for f in Fields(shape) {
        if let Field { number: 1, value: Value::Bytes(dim), .. } = f? {
            let mut v = None;
            for d in Fields(dim) {
                if let Field { number: 1, value: Value::Varint(n), .. } = d? {
                    v = Some(n);
                }
            }
            dims.push(v);
        }
    }
    Ok(match dims.as_slice() {
        [_, _, Some(h), Some(w)] => Some([*h, *w]),
        _ => None,
    })
}

/// A ValueInfoProto's name.
fn name(vi: &[u8]) -> Result<&[u8], ModelError> {
    first_bytes(vi, 1)?.ok_or(ModelError("a declared value has no name"))
}

/// The `[a, b]` of a Constant node whose value is a two-element int64
/// tensor; `None` for any other.
fn constant_pair(node: &Node) -> Result<Option<[u64; 2]>, ModelError> {
    for attr in &node.attrs {
        // AttributeProto.name (1) and .t (5).
        if first_bytes(attr, 1)? == Some(b"value".as_slice())
            && let Some(t) = first_bytes(attr, 5)?
        {
            return int64_pair(t);
        }
    }
    Ok(None)
}

/// The values of a TensorProto of type int64 and shape `[2]`.
fn int64_pair(t: &[u8]) -> Result<Option<[u64; 2]>, ModelError> {
    let t = Tensor::parse(t)?;
    Ok(match (t.dims.as_slice(), t.i64_values().as_deref()) {
        ([2], Some(&[a, b])) => Some([a as u64, b as u64]),
        _ => None,
    })
}

/// The input's ValueInfoProto with its last two dimensions (height, width)
/// named instead of fixed; they must have been `native`.
fn free_input(vi: &[u8], native: u64, out: &mut Vec<u8>) -> Result<(), ModelError> {
    let mut freed = 0;
    map_shape(vi, out, |shape, o| {
        let fields: Vec<Field> = Fields(shape).collect::<Result<_, _>>()?;
        let n = fields.iter().filter(|d| d.number == 1).count();
        let mut k = 0;
        for d in &fields {
            let last_two = d.number == 1 && k + 2 >= n;
            if d.number == 1 {
                k += 1;
            }
            match (d.number, d.value) {
                (1, Value::Bytes(dim)) if last_two => {
                    if !Fields(dim)
                        .any(|f| matches!(f, Ok(Field { number: 1, value: Value::Varint(v), .. }) if v == native))
                    {
                        return Err(ModelError("the input is not the side it was said to be"));
                    }
                    let mut free = Vec::new();
                    put_bytes_field(&mut free, 2, if k + 1 == n { b"height" } else { b"width" });
                    put_bytes_field(o, 1, &free);
                    freed += 1;
                }
                _ => o.extend_from_slice(d.raw),
            }
        }
        Ok(())
    })?;
    if freed != 2 {
        return Err(ModelError("the input has no height and width"));
    }
    Ok(())
}

/// A ValueInfoProto without its declared shape (its element type kept).
fn drop_shape(vi: &[u8], out: &mut Vec<u8>) -> Result<(), ModelError> {
    map_shape(vi, out, |_, _| Ok(()))
}

/// A ValueInfoProto copied, the TensorShapeProto of its tensor type
/// replaced by what `shape` writes (nothing: no shape).
fn map_shape<F>(vi: &[u8], out: &mut Vec<u8>, mut shape: F) -> Result<(), ModelError>
where
    F: FnMut(&[u8], &mut Vec<u8>) -> Result<(), ModelError>,
{
    for f in Fields(vi) {
        let f = f?;
        match (f.number, f.value) {
            // ValueInfoProto.type → TypeProto.tensor_type → .shape
            (2, Value::Bytes(ty)) => put_message(out, 2, |o| {
                for t in Fields(ty) {
                    let t = t?;
                    match (t.number, t.value) {
                        (1, Value::Bytes(tensor)) => put_message(o, 1, |o| {
                            for s in Fields(tensor) {
                                let s = s?;
                                match (s.number, s.value) {
                                    (2, Value::Bytes(b)) => {
                                        let mut inner = Vec::new();
                                        shape(b, &mut inner)?;
                                        if !inner.is_empty() {
                                            put_bytes_field(o, 2, &inner);
                                        }
                                    }
                                    _ => o.extend_from_slice(s.raw),
                                }
                            }
                            Ok(())
                        })?,
                        _ => o.extend_from_slice(t.raw),
                    }
                }
                Ok(())
            })?,
            _ => out.extend_from_slice(f.raw),
        }
    }
    Ok(())
}

/// A NodeProto body.
#[cfg(test)]
fn node_body(op: &str, inputs: &[&[u8]], outputs: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for i in inputs {
        put_bytes_field(&mut out, 1, i);
    }
    for o in outputs {
        put_bytes_field(&mut out, 2, o);
    }
    put_bytes_field(&mut out, 3, format!("{PREFIX}_{op}_{}", String::from_utf8_lossy(outputs[0])).as_bytes());
    put_bytes_field(&mut out, 4, op.as_bytes());
    out
}

/// A TensorProto body: a one-dimensional int64 tensor.
#[cfg(test)]
fn int64_tensor(name: &str, values: &[u64]) -> Vec<u8> {
    let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    tensor(name, super::proto::dtype::INT64, &[values.len() as u64], &raw)
}

/// A TensorProto body: a one-dimensional float tensor.
fn float_tensor(name: &str, values: &[f32]) -> Vec<u8> {
    tensor(name, FLOAT, &[values.len() as u64], &raw_f32(values))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::proto::{bytes_fields, put_varint_field};

    fn msg(fields: &[(u64, &[u8])]) -> Vec<u8> {
        let mut m = Vec::new();
        for (n, b) in fields {
            put_bytes_field(&mut m, *n, b);
        }
        m
    }

    fn node(op: &str, inputs: &[&str], outputs: &[&str], attr: Option<&[u8]>) -> Vec<u8> {
        let mut n = node_body(
            op,
            &inputs.iter().map(|s| s.as_bytes()).collect::<Vec<_>>(),
            &outputs.iter().map(|s| s.as_bytes()).collect::<Vec<_>>(),
        );
        if let Some(a) = attr {
            put_bytes_field(&mut n, 5, a);
        }
        n
    }

    /// A value declared float with these dimensions.
    fn value(name: &str, dims: &[u64]) -> Vec<u8> {
        let mut shape = Vec::new();
        for &d in dims {
            let mut dim = Vec::new();
            put_varint_field(&mut dim, 1, d);
            put_bytes_field(&mut shape, 1, &dim);
        }
        let mut tensor = Vec::new();
        put_varint_field(&mut tensor, 1, 1);
        put_bytes_field(&mut tensor, 2, &shape);
        msg(&[(1, name.as_bytes()), (2, &msg(&[(1, &tensor)]))])
    }

    /// x (1x3xSxS) → Conv → y (declared `y_side` square, or not declared);
    /// `Concat(Shape(y), Constant size)` sizes a Resize of y to z. With
    /// `shared`, the constant feeds another node too.
    fn model_with(side: u64, y_side: Option<u64>, size: [u64; 2], shared: bool) -> Vec<u8> {
        let size = int64_tensor("c", &size);
        let attr = msg(&[(1, b"value"), (5, &size)]);
        let mode = msg(&[(1, b"mode"), (4, b"linear")]);
        let mut resize = node("Resize", &["y", "", "", "sizes"], &["z"], Some(&mode));
        put_bytes_field(&mut resize, 7, b"ai.onnx");
        let mut graph = msg(&[
            (1, &node("Conv", &["x", "w"], &["y"], None)),
            (1, &node("Shape", &["y"], &["s"], None)),
            (1, &node("Constant", &[], &["double"], Some(&attr))),
            (1, &node("Concat", &["s", "double"], &["sizes"], None)),
            (1, &resize),
            (11, &value("x", &[1, 3, side, side])),
            (12, &value("z", &[1, 3, side, side])),
        ]);
        if let Some(y) = y_side {
            put_bytes_field(&mut graph, 13, &value("y", &[1, 3, y, y]));
        }
        if shared {
            put_bytes_field(&mut graph, 1, &node("Identity", &["double"], &["other"], None));
        }
        let mut m = Vec::new();
        put_varint_field(&mut m, 1, 8);
        put_bytes_field(&mut m, 7, &graph);
        m
    }

    fn model(side: u64) -> Vec<u8> {
        model_with(side, Some(side / 2), [side, side], false)
    }

    #[test]
    fn the_size_becomes_a_constant_scale() {
        let out = any_side(&model(64), 64).unwrap();
        let graph = bytes_fields(&out, 7)[0];
        let nodes: Vec<Node> = bytes_fields(graph, 1).into_iter().map(|b| Node::parse(b).unwrap()).collect();
        let ops: Vec<&[u8]> = nodes.iter().map(|n| n.op).collect();
        assert_eq!(ops, [&b"Conv"[..], b"Shape", b"Constant", b"Concat", b"Resize"], "no node added");
        let resize = &nodes[4];
        assert_eq!(resize.outputs, [b"z"]);
        assert_eq!(resize.inputs.len(), 3, "x, roi, scales: no sizes");
        assert_eq!((resize.inputs[0], resize.inputs[1]), (&b"y"[..], &b""[..]));
        // Its attributes and domain kept.
        assert_eq!(bytes_fields(resize.attrs[0], 4), [b"linear"]);
        assert_eq!(resize.domain, b"ai.onnx");
        // The scales, [1, 1, 2, 2]: a float initializer.
        let init = bytes_fields(graph, 5);
        assert_eq!(init.len(), 1);
        assert_eq!(bytes_fields(init[0], 8), [resize.inputs[2]]);
        let values: Vec<f32> =
            bytes_fields(init[0], 9)[0].chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        assert_eq!(values, [1.0, 1.0, 2.0, 2.0]);
        // The input's height and width named, the other shapes dropped.
        let input = bytes_fields(graph, 11)[0];
        let dims = bytes_fields(bytes_fields(bytes_fields(bytes_fields(input, 2)[0], 1)[0], 2)[0], 1);
        assert_eq!(dims.len(), 4);
        assert_eq!(bytes_fields(dims[2], 2), [b"height"]);
        assert_eq!(bytes_fields(dims[3], 2), [b"width"]);
        for declared in [bytes_fields(graph, 12)[0], bytes_fields(graph, 13)[0]] {
            assert!(bytes_fields(bytes_fields(bytes_fields(declared, 2)[0], 1)[0], 2).is_empty());
        }
    }

    #[test]
    fn models_it_does_not_fit_are_refused() {
        let refused = |m: &[u8], native: u64| any_side(m, native).err().map(|e| e.0).unwrap_or("accepted");
        assert_eq!(refused(&model(64), 128), "the input is not the side it was said to be");
        // A size that is not a whole multiple of the Resize's input (a
        // downscale), one the side does not divide, an input of no declared
        // size or of a fixed one pixel: refused, not left fixed or scaled
        // wrong at other sides.
        let unknown = "a Resize's constant size is not one this rewrite knows";
        assert_eq!(refused(&model_with(64, Some(32), [16, 16], false), 64), unknown);
        assert_eq!(refused(&model_with(64, Some(12), [24, 24], false), 64), unknown);
        assert_eq!(refused(&model_with(64, None, [64, 64], false), 64), unknown);
        assert_eq!(refused(&model_with(64, Some(1), [64, 64], false), 64), unknown);
        // A size constant another node reads too is left as it is for it.
        assert_eq!(refused(&model_with(64, Some(32), [64, 64], true), 64), "accepted");
        assert_eq!(refused(&model_with(64, Some(16), [64, 64], false), 64), "accepted");
        // A model that already names a value as the rewrite would.
        let m = model(64);
        let mut graph = bytes_fields(&m, 7)[0].to_vec();
        put_bytes_field(&mut graph, 1, &node("Relu", &["x"], &[&format!("{PREFIX}_scales")], None));
        let mut clash = Vec::new();
        put_bytes_field(&mut clash, 7, &graph);
        assert_eq!(refused(&clash, 64), "the model already names values as this rewrite does");
        let mut graph = bytes_fields(&m, 7)[0].to_vec();
        put_bytes_field(&mut graph, 5, &int64_tensor(&format!("{PREFIX}_scales_2_2"), &[1]));
        let mut clash = Vec::new();
        put_bytes_field(&mut clash, 7, &graph);
        assert_eq!(refused(&clash, 64), "the model already names values as this rewrite does");
        // No Resize at all.
        let mut plain = Vec::new();
        put_bytes_field(
            &mut plain,
            7,
            &msg(&[(1, &node("Relu", &["x"], &["y"], None)), (11, &value("x", &[1, 3, 64, 64]))]),
        );
        assert_eq!(refused(&plain, 64), "no Resize takes a constant size");
        // Truncated.
        for cut in [1, m.len() / 2, m.len() - 1] {
            assert!(any_side(&m[..cut], 64).is_err(), "cut at {cut}");
        }
    }
}
