//! A dynamically quantized model's one-dimensional integer convolutions
//! (`ConvInteger` with uint8 weights) rewritten as an integer matrix product
//! (`MatMulInteger`) with int8 weights, which computes exactly the same
//! integers in far less time.
//!
//! Kokoro's int8 export quantizes each convolution's input on the fly
//! (`DynamicQuantizeLinear`) and its weights ahead of time, both as uint8.
//! ONNX Runtime's CPU `ConvInteger` takes only uint8 weights: it copies the
//! input into columns (im2col) and multiplies them with MLAS's uint8 x uint8
//! kernel, which on x86 widens both to 16 bits. Its `MatMulInteger` takes
//! int8 weights, held prepacked, and MLAS multiplies uint8 x int8 with the
//! CPU's 8-bit dot products (VNNI) at about three times the speed (a
//! 52800 x 1408 by 1408 x 128 product: 22 ms against 68 ms, 2 threads).
//! Only with VNNI ([`exact_here`]): without it MLAS's uint8 x int8 kernel
//! adds pairs of products into 16 bits, which saturate when both operands
//! use their whole range, as these do, and the result would no longer be the
//! convolution's.
//!
//! Per convolution of input `x` (`[n, c, l]`, uint8, zero point `xz`) and
//! weights `w` (`[m, c, k]`, uint8, zero point `wz`), dilation `d`, pads
//! `p0, p1`, stride 1, one group:
//!
//! ```text
//! xt  = Transpose(x, [0, 2, 1])                     [n, l, c]
//! xp  = Pad(xt, [0, p0, 0, 0, p1, 0], xz)           [n, l + p0 + p1, c]
//! idx = Range(0, l + p0 + p1 - d (k - 1))[:, None] + [0, d, .., d (k - 1)]
//! col = Reshape(Gather(xp, idx, axis 1), [0, 0, k c])  [n, l', k c]
//! y   = Transpose(MatMulInteger(col, w', xz, wz'), [0, 2, 1])   [n, m, l']
//! ```
//!
//! `w'` is `w` laid out as `[k c, m]` (row `j c + i` holds tap `j` of input
//! channel `i`) with 128 taken from every weight and from `wz`: the
//! differences `w - wz` that the product uses are unchanged, so the output is
//! the same integers. The input is padded with its own zero point, as
//! `ConvInteger` pads. A convolution of one tap needs no columns. Any other
//! `ConvInteger` (strided, grouped, of more than one spatial axis, its
//! weights or their zero point not constant, or a graph input that a caller
//! could replace, or the zero point per channel) is left as it is, and so is
//! a model whose default opset is older than 15 (`Shape` with `start` and
//! `end`); nothing else changes but the weights and zero points that only
//! the rewritten convolutions read, which are dropped.
//!
//! Measured on Kokoro-82M int8 (onnxruntime 1.31.1, 2 threads, 120 tokens,
//! 6.3 s of speech): 84 of its 87 convolutions rewritten, a run 2.31 s ->
//! 1.52 s (3.95 -> 2.47 CPU-seconds), `ConvInteger` having been 58 % of it;
//! the audio identical to the last bit.

use std::collections::{HashMap, HashSet};

use super::proto::{
    Attr, Attribute, Field, Fields, Graph, ModelError, Node, Tensor, Value, default_domain,
    dtype::{INT8, INT64, UINT8},
    first_bytes, put_initializer, put_node, raw_i64, rewrite_graph,
};

/// Names of what the rewrite adds.
const PREFIX: &str = "tayori_int8_conv";
/// The default domain's opset this needs: `Shape` with `start` and `end`.
const OPSET: u64 = 15;

/// Whether this machine's ONNX Runtime computes the rewritten product
/// exactly: an x86-64 CPU with 8-bit dot products (AVX512-VNNI or
/// AVX-VNNI), which MLAS's uint8 x int8 kernels use when present.
pub fn exact_here() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512vnni") || std::arch::is_x86_feature_detected!("avxvnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `model` (the bytes of an .onnx file) with every `ConvInteger` this
/// rewrite fits computed as a `MatMulInteger`. A model with none, or one
/// whose default opset is older than 15, is returned as it was. Only worth
/// it, and only exact, where [`exact_here`].
pub fn convs_as_matmuls(model: &[u8]) -> Result<Vec<u8>, ModelError> {
    if default_opset(model)?.is_none_or(|v| v < OPSET) {
        return Ok(model.to_vec());
    }
    rewrite_graph(model, 1 << 16, graph)
}

/// The version of the default domain (`""` or `ai.onnx`) the model imports.
fn default_opset(model: &[u8]) -> Result<Option<u64>, ModelError> {
    let mut version = None;
    for f in Fields(model) {
        // ModelProto.opset_import: OperatorSetIdProto { domain 1, version 2 }.
        if let Field { number: 8, value: Value::Bytes(b), .. } = f? {
            let (mut domain, mut v) = (&b""[..], None);
            for g in Fields(b) {
                match g? {
                    Field { number: 1, value: Value::Bytes(d), .. } => domain = d,
                    Field { number: 2, value: Value::Varint(n), .. } => v = Some(n),
                    _ => {}
                }
            }
            if default_domain(domain) {
                version = v;
            }
        }
    }
    Ok(version)
}

/// The one value of a uint8 scalar (or one-element) tensor.
fn uint8_scalar(t: &Tensor) -> Option<u8> {
    if t.data_type != UINT8 || t.external || t.dims.iter().any(|&d| d != 1) {
        return None;
    }
    match (t.raw, t.int32.as_slice()) {
        (Some(&[v]), _) => Some(v),
        (None, &[v]) => u8::try_from(v).ok(),
        _ => None,
    }
}

/// A convolution the rewrite fits: its weights (`[m, c, k]` uint8) and
/// their zero point, its dilation and pads.
struct Plan<'a> {
    weights: &'a [u8],
    m: usize,
    c: usize,
    k: usize,
    zero: u8,
    dilation: i64,
    pads: [i64; 2],
}

/// The ConvInteger `node` as a [`Plan`], if the rewrite fits it.
fn plan<'a>(
    node: &Node,
    initializers: &HashMap<&[u8], &'a [u8]>,
    kept: &HashSet<&[u8]>,
) -> Result<Option<Plan<'a>>, ModelError> {
    if node.op != b"ConvInteger" || !default_domain(node.domain) {
        return Ok(None);
    }
    let ([_, w, _, wz], [y]) = (node.inputs.as_slice(), node.outputs.as_slice()) else { return Ok(None) };
    if node.inputs.iter().any(|i| i.is_empty()) || y.is_empty() || kept.contains(w) || kept.contains(wz) {
        return Ok(None);
    }
    let (Some(w), Some(wz)) = (initializers.get(w), initializers.get(wz)) else { return Ok(None) };
    let (w, Some(zero)) = (Tensor::parse(w)?, uint8_scalar(&Tensor::parse(wz)?)) else { return Ok(None) };
    let (&[m, c, k], Some(raw), UINT8, false) = (w.dims.as_slice(), w.raw, w.data_type, w.external) else {
        return Ok(None);
    };
    let (m, c, k) = (m as usize, c as usize, k as usize);
    if m == 0 || c == 0 || k == 0 || m.checked_mul(c).and_then(|n| n.checked_mul(k)) != Some(raw.len()) {
        return Ok(None);
    }
    let (mut dilation, mut pads) = (1i64, [0i64; 2]);
    for a in &node.attrs {
        let Attribute { name, int: i, ints, string: s } = Attribute::parse(a)?;
        let fits = match name {
            b"auto_pad" => s.is_empty() || s == b"NOTSET",
            b"group" => i == Some(1),
            b"strides" => ints == [1],
            b"kernel_shape" => ints == [k as i64],
            b"dilations" => match ints.as_slice() {
                &[d] if d >= 1 => {
                    dilation = d;
                    true
                }
                _ => false,
            },
            b"pads" => match ints.as_slice() {
                &[a, b] if a >= 0 && b >= 0 => {
                    pads = [a, b];
                    true
                }
                _ => false,
            },
            _ => false,
        };
        if !fits {
            return Ok(None);
        }
    }
    // The reach of the kernel and the output's growth fit in an i64 (the
    // nodes written spell them out).
    let reach = dilation.checked_mul(k as i64 - 1);
    if reach.and_then(|r| pads[0].checked_add(pads[1])?.checked_sub(r)).is_none() {
        return Ok(None);
    }
    Ok(Some(Plan { weights: raw, m, c, k, zero, dilation, pads }))
}

fn graph(msg: &[u8], out: &mut Vec<u8>) -> Result<(), ModelError> {
    // Pass 1: the nodes, the initializers, who reads what; the plans.
    let g = Graph::parse(msg)?;
    if g.names_start_with(PREFIX) {
        return Err(ModelError("the model already names values as this rewrite does"));
    }
    let Graph { nodes, initializers, inputs, outputs, .. } = g;
    // A graph input (which a caller may replace) or output naming an
    // initializer keeps it.
    let kept: HashSet<&[u8]> = inputs.union(&outputs).copied().collect();
    let mut plans: Vec<Option<Plan>> = Vec::with_capacity(nodes.len());
    for n in &nodes {
        plans.push(plan(n, &initializers, &kept)?);
    }
    // The weights and zero points of the rewritten convolutions that no
    // other node reads are dropped (with a subgraph anywhere, whose reads
    // are not all listed, none is).
    let subgraphs = nodes.iter().any(|n| n.subgraph);
    let mut readers: HashSet<&[u8]> = HashSet::new();
    let mut replaced: HashSet<&[u8]> = HashSet::new();
    for (n, p) in nodes.iter().zip(&plans) {
        for (k, &i) in n.inputs.iter().enumerate() {
            if p.is_some() && (k == 1 || k == 3) {
                replaced.insert(i);
            } else {
                readers.insert(i);
            }
        }
    }
    let dropped = |name: &[u8]| !subgraphs && replaced.contains(name) && !readers.contains(name);

    // Pass 2: each planned node replaced (its constants written beside it),
    // the rest copied.
    let mut shared = false;
    let mut k = 0;
    for f in Fields(msg) {
        let f = f?;
        match (f.number, f.value) {
            (1, Value::Bytes(_)) => {
                let (node, plan) = (&nodes[k], &plans[k]);
                k += 1;
                match plan {
                    Some(p) => {
                        replace(out, k - 1, node, p);
                        shared |= p.k > 1;
                    }
                    None => out.extend_from_slice(f.raw),
                }
            }
            (5, Value::Bytes(b)) if dropped(first_bytes(b, 8)?.unwrap_or_default()) => {}
            _ => out.extend_from_slice(f.raw),
        }
    }
    if shared {
        put_initializer(out, &format!("{PREFIX}_zero"), INT64, &[], &raw_i64(&[0]));
        put_initializer(out, &format!("{PREFIX}_one"), INT64, &[], &raw_i64(&[1]));
        put_initializer(out, &format!("{PREFIX}_axis1"), INT64, &[1], &raw_i64(&[1]));
    }
    Ok(())
}

/// The nodes that compute convolution `node` (the `at`-th node) as `plan`
/// says, and their constants, written to `out` (a graph's fields may come
/// in any order).
fn replace(out: &mut Vec<u8>, at: usize, node: &Node, plan: &Plan) {
    let (x, xz, y) = (node.inputs[0], node.inputs[2], node.outputs[0]);
    let name = |s: &str| format!("{PREFIX}_{at}_{s}");
    let rows = (plan.k * plan.c) as i64;
    let [p0, p1] = plan.pads;
    let k = plan.k as i64;

    let xt = name("xt");
    put_node(out, "Transpose", &xt, &[x], &[xt.as_bytes()], &[Attr::Ints("perm", &[0, 2, 1])]);
    let mut cols = xt;
    if p0 > 0 || p1 > 0 {
        let (pads, xp) = (name("pads"), name("xp"));
        put_initializer(out, &pads, INT64, &[6], &raw_i64(&[0, p0, 0, 0, p1, 0]));
        put_node(out, "Pad", &xp, &[cols.as_bytes(), pads.as_bytes(), xz], &[xp.as_bytes()], &[]);
        cols = xp;
    }
    if plan.k > 1 {
        // The output's length: the input's, grown by the pads, less the
        // kernel's reach.
        let (len1, len) = (name("len1"), name("len"));
        put_node(out, "Shape", &len1, &[x], &[len1.as_bytes()], &[Attr::Int("start", 2), Attr::Int("end", 3)]);
        put_node(out, "Squeeze", &len, &[len1.as_bytes()], &[len.as_bytes()], &[]);
        let grow = p0 + p1 - plan.dilation * (k - 1);
        let mut out_len = len;
        if grow != 0 {
            let (g, grown) = (name("grow"), name("outlen"));
            put_initializer(out, &g, INT64, &[], &raw_i64(&[grow]));
            put_node(out, "Add", &grown, &[out_len.as_bytes(), g.as_bytes()], &[grown.as_bytes()], &[]);
            out_len = grown;
        }
        let (zero, one, axis1) = (format!("{PREFIX}_zero"), format!("{PREFIX}_one"), format!("{PREFIX}_axis1"));
        let (starts, starts2, taps, idx) = (name("starts"), name("starts2"), name("taps"), name("idx"));
        put_node(
            out,
            "Range",
            &starts,
            &[zero.as_bytes(), out_len.as_bytes(), one.as_bytes()],
            &[starts.as_bytes()],
            &[],
        );
        put_node(out, "Unsqueeze", &starts2, &[starts.as_bytes(), axis1.as_bytes()], &[starts2.as_bytes()], &[]);
        let offsets: Vec<i64> = (0..k).map(|j| j * plan.dilation).collect();
        put_initializer(out, &taps, INT64, &[1, plan.k as u64], &raw_i64(&offsets));
        put_node(out, "Add", &idx, &[starts2.as_bytes(), taps.as_bytes()], &[idx.as_bytes()], &[]);
        let (gathered, shape, col) = (name("gathered"), name("shape"), name("col"));
        put_node(
            out,
            "Gather",
            &gathered,
            &[cols.as_bytes(), idx.as_bytes()],
            &[gathered.as_bytes()],
            &[Attr::Int("axis", 1)],
        );
        // [n, l', k c] spelled out (not -1), so that an empty output reshapes.
        put_initializer(out, &shape, INT64, &[3], &raw_i64(&[0, 0, rows]));
        put_node(out, "Reshape", &col, &[gathered.as_bytes(), shape.as_bytes()], &[col.as_bytes()], &[]);
        cols = col;
    }
    // Row j c + i, column o: tap j of input channel i for output channel o,
    // 128 less (uint8 v is int8 v - 128: its top bit flipped).
    let (m, c) = (plan.m, plan.c);
    let mut weights = vec![0u8; plan.weights.len()];
    for (at, &v) in plan.weights.iter().enumerate() {
        let (o, i, j) = (at / (c * plan.k), at / plan.k % c, at % plan.k);
        weights[(j * c + i) * m + o] = v ^ 0x80;
    }
    let (w, wz, yt) = (name("w"), name("wz"), name("yt"));
    put_initializer(out, &w, INT8, &[rows as u64, m as u64], &weights);
    put_initializer(out, &wz, INT8, &[], &[plan.zero ^ 0x80]);
    put_node(out, "MatMulInteger", &yt, &[cols.as_bytes(), w.as_bytes(), xz, wz.as_bytes()], &[yt.as_bytes()], &[]);
    put_node(out, "Transpose", &name("y"), &[yt.as_bytes()], &[y], &[Attr::Ints("perm", &[0, 2, 1])]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::proto::{
        bytes_fields,
        dtype::{FLOAT, INT32},
        put_bytes_field, put_varint_field, tensor,
    };
    use crate::onnx::testing::{model_of, ops, session, value, with_graph};

    /// x (float [1, c, l]) → DynamicQuantizeLinear → ConvInteger of `m`
    /// outputs, kernel `k` → y (int32); `attrs` are the convolution's, the
    /// weights' zero point is `zero` (written as int32_data).
    fn model(c: usize, m: usize, k: usize, zero: u8, attrs: &[Attr], opset: u64) -> Vec<u8> {
        let weights: Vec<u8> = (0..m * c * k).map(|i| (i * 7919 % 251) as u8).collect();
        let mut g = Vec::new();
        put_node(&mut g, "DynamicQuantizeLinear", "q", &[b"x"], &[b"xq", b"xs", b"xz"], &[]);
        put_node(&mut g, "ConvInteger", "conv", &[b"xq", b"w", b"xz", b"wz"], &[b"y"], attrs);
        put_bytes_field(&mut g, 5, &tensor("w", UINT8, &[m as u64, c as u64, k as u64], &weights));
        let mut wz = Vec::new();
        put_varint_field(&mut wz, 2, UINT8);
        put_varint_field(&mut wz, 5, zero.into());
        put_bytes_field(&mut wz, 8, b"wz");
        put_bytes_field(&mut g, 5, &wz);
        put_bytes_field(&mut g, 11, &value("x", FLOAT));
        put_bytes_field(&mut g, 12, &value("y", INT32));
        model_of(&g, opset)
    }

    fn run(model: &[u8], c: usize, l: usize) -> Vec<i32> {
        let mut s = session(model).unwrap();
        let x: Vec<f32> = (0..c * l).map(|i| ((i * 31 % 97) as f32 - 40.0) / 17.0).collect();
        let x = ort::value::Tensor::from_array(([1usize, c, l], x)).unwrap();
        let out = s.run(ort::inputs! {"x" => x}).unwrap();
        out["y"].try_extract_tensor::<i32>().unwrap().1.to_vec()
    }

    /// Run by ONNX Runtime, the rewritten convolution gives the very
    /// integers `ConvInteger` gives: dilated, padded evenly, unevenly or not
    /// at all, of one tap or several, with a zero point above and below 128.
    #[test]
    fn the_product_computes_what_the_convolution_did() {
        let (c, m, l) = (5, 6, 40);
        let cases: [(usize, i64, [i64; 2], u8); 6] = [
            (3, 1, [1, 1], 131),
            (7, 3, [9, 9], 60),
            (11, 5, [25, 25], 255),
            (1, 1, [0, 0], 0),
            (3, 2, [0, 3], 128),
            (4, 1, [0, 0], 77),
        ];
        for (k, d, pads, zero) in cases {
            let attrs = [
                Attr::Ints("dilations", &[d]),
                Attr::Int("group", 1),
                Attr::Ints("kernel_shape", &[k as i64]),
                Attr::Ints("pads", &pads),
                Attr::Ints("strides", &[1]),
            ];
            let stored = model(c, m, k, zero, &attrs, 17);
            let rewritten = convs_as_matmuls(&stored).unwrap();
            let ops = ops(&rewritten);
            assert!(ops.contains(&"MatMulInteger".to_owned()) && !ops.contains(&"ConvInteger".to_owned()), "{ops:?}");
            assert_eq!(ops.contains(&"Gather".to_owned()), k > 1, "{ops:?}");
            // The uint8 weights and their zero point are gone.
            let graph = bytes_fields(&rewritten, 7)[0];
            let inits: Vec<&[u8]> =
                bytes_fields(graph, 5).into_iter().map(|t| first_bytes(t, 8).unwrap().unwrap()).collect();
            assert!(!inits.contains(&&b"w"[..]) && !inits.contains(&&b"wz"[..]), "{inits:?}");
            if !exact_here() {
                println!("no 8-bit dot products on this CPU: the products are not compared");
                continue;
            }
            let (a, b) = (run(&stored, c, l), run(&rewritten, c, l));
            let expected = m * (l + (pads[0] + pads[1]) as usize - d as usize * (k - 1));
            assert_eq!(a.len(), expected, "k {k} d {d} pads {pads:?}");
            assert!(a.iter().any(|&v| v != a[0]), "the output varies");
            assert_eq!(a, b, "k {k} d {d} pads {pads:?} zero {zero}");
        }
    }

    /// A convolution it does not fit is left as it was, with its weights;
    /// so is a model of an opset before `Shape`'s start and end. A model it
    /// cannot read is refused.
    #[test]
    fn what_it_does_not_fit_is_left_or_refused() {
        let k3 = Attr::Ints("kernel_shape", &[3]);
        let left = |m: &[u8]| {
            let out = convs_as_matmuls(m).unwrap();
            assert_eq!(ops(&out)[..2], ["DynamicQuantizeLinear", "ConvInteger"]);
            let graph = bytes_fields(&out, 7)[0];
            assert_eq!(bytes_fields(graph, 5).len(), 2, "its weights kept");
        };
        for attrs in [
            vec![Attr::Ints("strides", &[2]), Attr::Ints("pads", &[1, 1])],
            vec![Attr::Int("group", 5)],
            vec![Attr::Ints("dilations", &[1, 1])],
            vec![Attr::Ints("kernel_shape", &[4])],
            vec![Attr::Int("unknown", 1)],
            // A reach that does not fit in an i64.
            vec![Attr::Ints("dilations", &[i64::MAX / 2 + 1])],
        ] {
            let mut all = vec![Attr::Ints("kernel_shape", &[3])];
            all.extend(attrs);
            left(&model(5, 6, 3, 1, &all, 17));
        }
        let fits = model(5, 6, 3, 1, &[Attr::Ints("kernel_shape", &[3])], 17);
        left(&model(5, 6, 3, 1, &[k3], 14));
        // Weights a caller may replace (listed as a graph input).
        left(&with_graph(&fits, 17, |g| put_bytes_field(g, 11, &value("w", UINT8))));
        // A convolution without an output is left (the other, rewritten,
        // keeps the weights they share).
        let bad = with_graph(&fits, 17, |g| put_node(g, "ConvInteger", "bad", &[b"xq", b"w", b"xz", b"wz"], &[], &[]));
        let out = convs_as_matmuls(&bad).unwrap();
        assert_eq!(ops(&out).iter().filter(|o| *o == "ConvInteger").count(), 1, "{:?}", ops(&out));
        let inits = |m: &[u8]| -> Vec<Vec<u8>> {
            let graph = bytes_fields(m, 7)[0].to_vec();
            bytes_fields(&graph, 5).into_iter().map(|t| first_bytes(t, 8).unwrap().unwrap().to_vec()).collect()
        };
        assert!(inits(&out).contains(&b"w".to_vec()));
        // Weights another node reads too are kept for it.
        let shared =
            convs_as_matmuls(&with_graph(&fits, 17, |g| put_node(g, "Cast", "c", &[b"w"], &[b"wf"], &[]))).unwrap();
        assert!(!ops(&shared).contains(&"ConvInteger".to_owned()));
        let names = inits(&shared);
        assert!(names.contains(&b"w".to_vec()) && !names.contains(&b"wz".to_vec()), "{names:?}");
        for cut in [1, fits.len() / 2, fits.len() - 1] {
            assert!(convs_as_matmuls(&fits[..cut]).is_err(), "cut at {cut}");
        }
        // A model that already names a value as the rewrite would, by a
        // node or by a value's description.
        let clash = "the model already names values as this rewrite does";
        let named = format!("{PREFIX}_0_xt");
        let by_node = with_graph(&fits, 17, |g| put_node(g, "Relu", "r", &[b"x"], &[named.as_bytes()], &[]));
        assert_eq!(convs_as_matmuls(&by_node).unwrap_err().0, clash);
        let by_value = with_graph(&fits, 17, |g| put_bytes_field(g, 13, &value(&named, UINT8)));
        assert_eq!(convs_as_matmuls(&by_value).unwrap_err().0, clash);
    }
}
