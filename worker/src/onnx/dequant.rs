//! The float output of each integer matrix product that [`super::int8_conv`]
//! writes, made in one pass by an operator of tayori's own.
//!
//! Kokoro's int8 export turns each convolution's int32 result into floats
//! with three nodes: `Add` the bias (quantized on the fly, int32), `Cast` to
//! float, `Mul` by the product of the input's and the weights' scales; the
//! int8 rewrite puts a `Transpose` (`[n, l, m]` to `[n, m, l]`) before them.
//! ONNX Runtime runs each as a pass of its own over up to 128 x 30000 values
//! (its profile of one Kokoro run: the int32 `Transpose` 99 ms, `Cast` 47,
//! the bias `Add` 28, the `Mul` 24: 13 % of the run). [`fuse`] rewrites each
//! such chain as one `tayori.TransposeDequantize(y, bias, scale)` node and
//! [`TransposeDequantizeOp`] computes it: `out[i, c, t] = float(y[i, t, c] +
//! bias) * scale`, in blocks of 8 x 8 so that both sides are read and
//! written in whole cache lines, the channels split between two threads.
//!
//! The same arithmetic as the nodes it replaces, in the same order (a
//! wrapping int32 sum, one rounding to f32, one f32 product): the output is
//! identical to the last bit. `bias` and `scale` broadcast as ONNX does
//! against `[n, m, l]`; of a higher rank (the nodes' output would be too),
//! the operator fails the run rather than guess.
//!
//! Written here because ONNX Runtime fuses none of these nodes and no crate
//! has it.

use std::collections::{HashMap, HashSet};

use ort::operator::{BoxedKernel, ComputeContext, KernelContext, Operator, OperatorInput, OperatorOutput};
use ort::value::TensorElementType;

use super::broadcast::Operand;
use super::proto::{Attribute, Graph, ModelError, Wiring, default_domain, import_domain, put_fused, rewrite_graph};

/// The operator's name (in the `tayori` domain).
const NAME: &str = "TransposeDequantize";
/// `TensorProto.DataType` FLOAT.
const FLOAT: i64 = 1;

/// `model` (the bytes of an .onnx file) with every `Transpose` → `Add` →
/// `Cast` → `Mul` chain after an integer product as one
/// `tayori.TransposeDequantize` node, and the `tayori` domain imported. A
/// model with none is returned as it was.
pub fn fuse(model: &[u8]) -> Result<Vec<u8>, ModelError> {
    let mut found = 0;
    let out = rewrite_graph(model, 0, |g, out| {
        found = graph(g, out)?;
        Ok(())
    })?;
    if found == 0 {
        return Ok(model.to_vec());
    }
    import_domain(out, super::DOMAIN)
}

/// The graph with each chain fused; returns how many.
fn graph(msg: &[u8], out: &mut Vec<u8>) -> Result<usize, ModelError> {
    let g = Graph::parse(msg)?;
    if g.nodes.iter().any(|n| n.subgraph) {
        return Ok(0);
    }
    let (nodes, wiring) = (&g.nodes, Wiring::new(&g.nodes));
    // The node of `op` that makes `v` for this chain alone.
    let step = |v: &[u8], op: &[u8], inputs| g.private_producer(&wiring, v, op, inputs);
    // Per chain, keyed by the Mul's index: (y, bias, scale), and the three
    // nodes folded into it.
    let mut fused: HashMap<usize, Vec<&[u8]>> = HashMap::new();
    let mut folded: HashSet<usize> = HashSet::new();
    for (k, mul) in nodes.iter().enumerate() {
        if mul.op != b"Mul" || !default_domain(mul.domain) || mul.inputs.len() != 2 || mul.outputs.len() != 1 {
            continue;
        }
        let mut chain = None;
        'orders: for (cast_out, scale) in [(mul.inputs[0], mul.inputs[1]), (mul.inputs[1], mul.inputs[0])] {
            let Some(cast) = step(cast_out, b"Cast", 1) else { continue };
            // To float; `saturate` matters only for float8.
            let to_float = |a: &Attribute| match a.name {
                b"to" => a.int == Some(FLOAT),
                b"saturate" => true,
                _ => false,
            };
            if nodes[cast].attrs.is_empty() || !nodes[cast].attrs_are(to_float)? {
                continue;
            }
            let Some(add) = step(nodes[cast].inputs[0], b"Add", 2) else { continue };
            let [p, q] = nodes[add].inputs[..] else { continue };
            for (t_out, bias) in [(p, q), (q, p)] {
                let Some(t) = step(t_out, b"Transpose", 1) else { continue };
                let perm = |a: &Attribute| a.name == b"perm" && a.ints == [0, 2, 1];
                if nodes[t].attrs.len() != 1 || !nodes[t].attrs_are(perm)? {
                    continue;
                }
                // The int32 result of an integer product.
                let y = nodes[t].inputs[0];
                let int32 = wiring.producer(y).is_some_and(|p| {
                    let n = &nodes[p];
                    default_domain(n.domain) && (n.op == b"MatMulInteger" || n.op == b"ConvInteger")
                });
                if !int32 {
                    continue;
                }
                chain = Some((vec![y, bias, scale], [t, add, cast]));
                break 'orders;
            }
        }
        if let Some((io, parts)) = chain {
            fused.insert(k, io);
            folded.extend(parts);
        }
    }
    // Each Mul of a chain becomes the fused node, the rest of the chain
    // goes, everything else is copied.
    put_fused(msg, out, nodes, &fused, &folded, (super::DOMAIN, NAME, "tayori_dequant"))?;
    Ok(fused.len())
}

/// `tayori.TransposeDequantize(y int32 [n, l, m], bias int32, scale float)
/// -> float [n, m, l]`.
pub struct TransposeDequantizeOp;

impl Operator for TransposeDequantizeOp {
    type Kernel<'attr> = BoxedKernel<'attr>;

    fn name(&self) -> &str {
        NAME
    }

    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        [
            OperatorInput::required(TensorElementType::Int32),
            OperatorInput::required(TensorElementType::Int32),
            OperatorInput::required(TensorElementType::Float32),
        ]
    }

    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        [OperatorOutput::required(TensorElementType::Float32)]
    }

    fn create_kernel<'attr>(&self, _: &KernelContext<'attr>) -> ort::Result<Self::Kernel<'attr>> {
        Ok(Box::new(|ctx: &ComputeContext| {
            let missing = || ort::Error::new("TransposeDequantize: an input is missing");
            let y = ctx.input(0)?.ok_or_else(missing)?;
            let bias = ctx.input(1)?.ok_or_else(missing)?;
            let scale = ctx.input(2)?.ok_or_else(missing)?;
            let (shape, y) = y.try_extract_tensor::<i32>()?;
            let (bias_shape, bias) = bias.try_extract_tensor::<i32>()?;
            let (scale_shape, scale) = scale.try_extract_tensor::<f32>()?;
            let dims: Vec<usize> = shape.iter().map(|&d| usize::try_from(d).unwrap_or(0)).collect();
            let [n, l, m] = dims[..] else { return Err(ort::Error::new("TransposeDequantize: y is not [n, l, m]")) };
            let unfit = || ort::Error::new("TransposeDequantize: bias or scale does not broadcast to [n, m, l]");
            let bias = Operand::new(bias, bias_shape, [n, m, l]).ok_or_else(unfit)?;
            let scale = Operand::new(scale, scale_shape, [n, m, l]).ok_or_else(unfit)?;
            let mut out = ctx
                .output(0, vec![n as i64, m as i64, l as i64])?
                .ok_or_else(|| ort::Error::new("TransposeDequantize: no output"))?;
            let (_, out) = out.try_extract_tensor_mut::<f32>()?;
            transpose_dequantize(y, (n, l, m), bias, scale, out);
            Ok(())
        }))
    }
}

/// Side of the square blocks the transpose moves: 8 int32 or f32 are 32
/// bytes, half a cache line, one AVX2 register.
const BLOCK: usize = 8;

/// `out[i, c, t] = float(y[i, t, c] + bias) * scale` for `y` of `[n, l,
/// m]`; the channels split between two threads when there are many.
pub fn transpose_dequantize(
    y: &[i32],
    (n, l, m): (usize, usize, usize),
    bias: Operand<i32>,
    scale: Operand<f32>,
    out: &mut [f32],
) {
    if n * m * l == 0 {
        return;
    }
    // Rows of the output (i, c), from `first`: one batch at a time.
    let work = |first: usize, out: &mut [f32]| {
        let rows = out.len() / l;
        let mut r = 0;
        while r < rows {
            let (i, c0) = ((first + r) / m, (first + r) % m);
            let count = (m - c0).min(rows - r);
            block_rows(
                &y[i * l * m..(i + 1) * l * m],
                (l, m),
                i,
                c0,
                count,
                bias,
                scale,
                &mut out[r * l..][..count * l],
            );
            r += count;
        }
    };
    let rows = n * m;
    if rows * l < 1 << 16 || rows < 2 * BLOCK {
        return work(0, out);
    }
    // Whole blocks of channels to each thread.
    let half = (rows / 2).div_ceil(BLOCK) * BLOCK;
    let (out0, out1) = out.split_at_mut(half * l);
    std::thread::scope(|s| {
        s.spawn(|| work(0, out0));
        work(half, out1);
    });
}

/// Channels `c0 .. c0 + count` of batch `i` (`y` that batch's `[l, m]`)
/// into `out`, `count` rows of `l`.
#[allow(clippy::too_many_arguments)]
fn block_rows(
    y: &[i32],
    (l, m): (usize, usize),
    i: usize,
    c0: usize,
    count: usize,
    bias: Operand<i32>,
    scale: Operand<f32>,
    out: &mut [f32],
) {
    let value = |t: usize, c: usize| (y[t * m + c].wrapping_add(bias.at(i, c, t)) as f32) * scale.at(i, c, t);
    let per_row = bias.steps[2] == 0 && scale.steps[2] == 0;
    let mut cb = 0;
    while cb < count {
        let width = BLOCK.min(count - cb);
        let mut t0 = 0;
        if per_row && width == BLOCK {
            let c = c0 + cb;
            let b: [i32; BLOCK] = std::array::from_fn(|j| bias.at(i, c + j, 0));
            let s: [f32; BLOCK] = std::array::from_fn(|j| scale.at(i, c + j, 0));
            let tile = tile_fn();
            while t0 + BLOCK <= l {
                // 8 times 8 contiguous channels in, 8 channels of 8
                // contiguous steps out.
                let rows: [&[i32; BLOCK]; BLOCK] =
                    std::array::from_fn(|dt| y[(t0 + dt) * m + c..][..BLOCK].try_into().expect("a block of channels"));
                let mut done = [[0f32; BLOCK]; BLOCK];
                tile(&rows, &b, &s, &mut done);
                for (j, vals) in done.iter().enumerate() {
                    out[(cb + j) * l + t0..][..BLOCK].copy_from_slice(vals);
                }
                t0 += BLOCK;
            }
        }
        // What whole blocks do not cover: the last steps, a narrower block
        // of channels, or operands that vary along l.
        for j in 0..width {
            let c = c0 + cb + j;
            for (t, o) in out[(cb + j) * l..][..l].iter_mut().enumerate().skip(t0) {
                *o = value(t, c);
            }
        }
        cb += width;
    }
}

/// One 8 x 8 block: `rows[t][c]` in, `out[c][t] = float(rows[t][c] +
/// b[c]) * s[c]`.
type Tile = fn(&[&[i32; BLOCK]; BLOCK], &[i32; BLOCK], &[f32; BLOCK], &mut [[f32; BLOCK]; BLOCK]);

/// The block function for this CPU: AVX2 registers where it has them
/// (checked once a call, not a block).
fn tile_fn() -> Tile {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        return |rows, b, s, out| {
            // SAFETY: returned only when the CPU has AVX2, checked just
            // above.
            unsafe { tile_avx2(rows, b, s, out) }
        };
    }
    tile_plain
}

fn tile_plain(rows: &[&[i32; BLOCK]; BLOCK], b: &[i32; BLOCK], s: &[f32; BLOCK], out: &mut [[f32; BLOCK]; BLOCK]) {
    for (t, row) in rows.iter().enumerate() {
        for c in 0..BLOCK {
            out[c][t] = (row[c].wrapping_add(b[c]) as f32) * s[c];
        }
    }
}

/// [`tile_plain`] in AVX2 registers: each row's sum, conversion and
/// product as one vector (the same wrapping sum, rounding and product),
/// then the 8 x 8 transpose in three rounds of shuffles.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn tile_avx2(
    rows: &[&[i32; BLOCK]; BLOCK],
    b: &[i32; BLOCK],
    s: &[f32; BLOCK],
    out: &mut [[f32; BLOCK]; BLOCK],
) {
    use std::arch::x86_64::*;
    // SAFETY: every load and store is of 8 lanes from or to an array of
    // 8 (unaligned forms); AVX2 is enabled for this function.
    unsafe {
        let bv = _mm256_loadu_si256(b.as_ptr().cast());
        let sv = _mm256_loadu_ps(s.as_ptr());
        let v: [__m256; BLOCK] = std::array::from_fn(|t| {
            let r = _mm256_loadu_si256(rows[t].as_ptr().cast());
            _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(r, bv)), sv)
        });
        // Pairs of rows interleaved, then pairs of pairs, then halves.
        let a0 = _mm256_unpacklo_ps(v[0], v[1]);
        let a1 = _mm256_unpackhi_ps(v[0], v[1]);
        let a2 = _mm256_unpacklo_ps(v[2], v[3]);
        let a3 = _mm256_unpackhi_ps(v[2], v[3]);
        let a4 = _mm256_unpacklo_ps(v[4], v[5]);
        let a5 = _mm256_unpackhi_ps(v[4], v[5]);
        let a6 = _mm256_unpacklo_ps(v[6], v[7]);
        let a7 = _mm256_unpackhi_ps(v[6], v[7]);
        let b0 = _mm256_shuffle_ps::<0x44>(a0, a2);
        let b1 = _mm256_shuffle_ps::<0xEE>(a0, a2);
        let b2 = _mm256_shuffle_ps::<0x44>(a1, a3);
        let b3 = _mm256_shuffle_ps::<0xEE>(a1, a3);
        let b4 = _mm256_shuffle_ps::<0x44>(a4, a6);
        let b5 = _mm256_shuffle_ps::<0xEE>(a4, a6);
        let b6 = _mm256_shuffle_ps::<0x44>(a5, a7);
        let b7 = _mm256_shuffle_ps::<0xEE>(a5, a7);
        let cols = [
            _mm256_permute2f128_ps::<0x20>(b0, b4),
            _mm256_permute2f128_ps::<0x20>(b1, b5),
            _mm256_permute2f128_ps::<0x20>(b2, b6),
            _mm256_permute2f128_ps::<0x20>(b3, b7),
            _mm256_permute2f128_ps::<0x31>(b0, b4),
            _mm256_permute2f128_ps::<0x31>(b1, b5),
            _mm256_permute2f128_ps::<0x31>(b2, b6),
            _mm256_permute2f128_ps::<0x31>(b3, b7),
        ];
        for (o, c) in out.iter_mut().zip(cols) {
            _mm256_storeu_ps(o.as_mut_ptr(), c);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::onnx::proto::{
        Attr, bytes_fields, first_bytes, put_bytes_field, put_message, put_node, put_varint_field, tensor,
    };

    /// `TensorProto.DataType` UINT8, INT8, INT32.
    const UINT8: u64 = 2;
    const INT8: u64 = 3;
    const INT32: u64 = 6;

    /// A value of element type `elem` (no shape).
    fn value(name: &str, elem: u64) -> Vec<u8> {
        let mut tensor = Vec::new();
        put_varint_field(&mut tensor, 1, elem);
        let mut ty = Vec::new();
        put_bytes_field(&mut ty, 1, &tensor);
        let mut v = Vec::new();
        put_bytes_field(&mut v, 1, name.as_bytes());
        put_bytes_field(&mut v, 2, &ty);
        v
    }

    fn wrap(g: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        put_varint_field(&mut m, 1, 8);
        put_message(&mut m, 8, |o| {
            put_varint_field(o, 2, 17);
            Ok(())
        })
        .unwrap();
        put_bytes_field(&mut m, 7, g);
        m
    }

    /// x (uint8 [n, l, k]) → MatMulInteger with int8 weights `[k, m]` →
    /// Transpose → Add(·, bias) → Cast → Mul(·, scale) → y; bias and scale
    /// are graph inputs (Kokoro computes them on the fly). With `swapped`,
    /// each two-input node's operands the other way round. `extra` adds
    /// nodes to the graph.
    fn model(k: usize, m: usize, swapped: bool, extra: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let order = |p: &'static [u8], q: &'static [u8]| if swapped { [q, p] } else { [p, q] };
        let weights: Vec<u8> = (0..k * m).map(|i| (i * 7919 % 251) as u8).collect();
        let mut g = Vec::new();
        put_node(&mut g, "MatMulInteger", "mm", &[b"x", b"w", b"xz", b"wz"], &[b"yt"], &[]);
        put_node(&mut g, "Transpose", "t", &[b"yt"], &[b"y32"], &[Attr::Ints("perm", &[0, 2, 1])]);
        put_node(&mut g, "Add", "add", &order(b"y32", b"bias"), &[b"biased"], &[]);
        put_node(&mut g, "Cast", "cast", &[b"biased"], &[b"f"], &[Attr::Int("to", 1)]);
        put_node(&mut g, "Mul", "mul", &order(b"f", b"scale"), &[b"y"], &[]);
        extra(&mut g);
        put_bytes_field(&mut g, 5, &tensor("w", INT8, &[k as u64, m as u64], &weights));
        put_bytes_field(&mut g, 5, &tensor("xz", UINT8, &[], &[131]));
        put_bytes_field(&mut g, 5, &tensor("wz", INT8, &[], &[3]));
        put_bytes_field(&mut g, 11, &value("x", UINT8));
        put_bytes_field(&mut g, 11, &value("bias", INT32));
        put_bytes_field(&mut g, 11, &value("scale", 1));
        put_bytes_field(&mut g, 12, &value("y", 1));
        wrap(&g)
    }

    fn ops(model: &[u8]) -> Vec<String> {
        bytes_fields(bytes_fields(model, 7)[0], 1)
            .into_iter()
            .map(|n| String::from_utf8_lossy(first_bytes(n, 4).unwrap().unwrap()).into_owned())
            .collect()
    }

    /// The model run by ONNX Runtime on `x` of `[n, l, k]`, bias and scale
    /// of the shapes given; with tayori's operators registered.
    fn run(
        model: &[u8],
        (n, l, k): (usize, usize, usize),
        bias: (&[i64], Vec<i32>),
        scale: (&[i64], Vec<f32>),
    ) -> ort::Result<Vec<f32>> {
        let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data");
        let env = crate::onnx::runtime(&crate::onnx::runtime_path(&data)).unwrap();
        let mut s = ort::session::Session::builder(env)?
            .with_intra_threads(2)?
            .with_operators(crate::onnx::operators()?)?
            .commit_from_memory(model)?;
        let x: Vec<u8> = (0..n * l * k).map(|i| (i * 31 % 253) as u8).collect();
        let x = ort::value::Tensor::from_array(([n, l, k], x))?;
        let b = ort::value::Tensor::from_array((bias.0.to_vec(), bias.1))?;
        let s_ = ort::value::Tensor::from_array((scale.0.to_vec(), scale.1))?;
        let out = s.run(ort::inputs! {"x" => x, "bias" => b, "scale" => s_})?;
        Ok(out["y"].try_extract_tensor::<f32>()?.1.to_vec())
    }

    /// ONNX Runtime's four nodes and the fused operator give the same
    /// floats to the last bit: two batches, whole blocks of channels and a
    /// ragged last one, lengths that are not a multiple of 8, the bias per
    /// channel, per step (along l) or one for all, the scale one or per
    /// channel, a bias sum that wraps, either operand order.
    #[test]
    fn the_fused_operator_computes_the_chain_exactly() {
        let (n, k) = (2usize, 24usize);
        for (m, l) in [(128usize, 3001usize), (13, 77), (8, 8), (40, 1)] {
            let per_channel: Vec<i32> = (0..m as i32).map(|c| c * 977 - 40_000).collect();
            let mut wrapping = per_channel.clone();
            wrapping[m - 1] = i32::MAX - 5;
            let per_step: Vec<i32> = (0..l as i32).map(|t| t % 1000 - 500).collect();
            let (mi, li) = (m as i64, l as i64);
            let biases: [(&[i64], Vec<i32>); 5] = [
                (&[1, mi, 1], per_channel.clone()),
                (&[1, mi, 1], wrapping),
                (&[mi, 1], per_channel),
                (&[1], vec![-7]),
                (&[1, 1, li], per_step),
            ];
            let scales: [(&[i64], Vec<f32>); 2] =
                [(&[], vec![0.0041867]), (&[1, mi, 1], (0..m).map(|c| 1e-3 * (c as f32 + 0.5)).collect())];
            for swapped in [false, true] {
                let stored = model(k, m, swapped, |_| {});
                let fused = fuse(&stored).unwrap();
                assert_eq!(ops(&fused), ["MatMulInteger", "TransposeDequantize"]);
                for bias in &biases {
                    for scale in &scales {
                        let want = run(&stored, (n, l, k), bias.clone(), scale.clone()).unwrap();
                        let got = run(&fused, (n, l, k), bias.clone(), scale.clone()).unwrap();
                        assert_eq!(want.len(), n * m * l);
                        assert!(want.iter().any(|&v| v != want[0]), "the output varies");
                        let same = want.iter().zip(&got).all(|(p, q)| p.to_bits() == q.to_bits());
                        assert!(same, "m {m} l {l} bias {:?} scale {:?} swapped {swapped}", bias.0, scale.0);
                    }
                }
            }
        }
    }

    /// A bias that would make the output of a higher rank fails the run
    /// with a plain message, rather than give something else.
    #[test]
    fn a_bias_it_cannot_broadcast_fails_the_run() {
        let fused = fuse(&model(4, 8, false, |_| {})).unwrap();
        let err = run(&fused, (1, 16, 4), (&[2, 1, 8, 1], vec![0; 16]), (&[], vec![1.0])).unwrap_err();
        assert!(err.to_string().contains("bias or scale does not broadcast"), "{err}");
    }

    /// Chains that are not quite this are left: an intermediate value read
    /// elsewhere or a graph output, another permutation, a cast to another
    /// type, a transpose of something not an integer product. Truncated
    /// models are refused.
    #[test]
    fn chains_it_does_not_fit_are_left() {
        let left = |m: &[u8]| {
            let out = fuse(m).unwrap();
            assert_eq!(out, m, "{:?}", ops(&out));
        };
        left(&model(4, 8, false, |g| put_node(g, "Relu", "r", &[b"f"], &[b"other"], &[])));
        left(&model(4, 8, false, |g| put_node(g, "Neg", "r", &[b"y32"], &[b"other"], &[])));
        left(&model(4, 8, false, |g| put_bytes_field(g, 12, &value("biased", INT32))));
        let replaced = |op: &str, node: Vec<u8>| {
            let stored = model(4, 8, false, |_| {});
            let mut g = Vec::new();
            for n in bytes_fields(bytes_fields(&stored, 7)[0], 1) {
                if first_bytes(n, 4).unwrap() == Some(op.as_bytes()) {
                    g.extend_from_slice(&node);
                } else {
                    put_bytes_field(&mut g, 1, n);
                }
            }
            for t in bytes_fields(bytes_fields(&stored, 7)[0], 5) {
                put_bytes_field(&mut g, 5, t);
            }
            wrap(&g)
        };
        let node = |op: &str, inputs: &[&[u8]], outputs: &[&[u8]], attrs: &[Attr]| {
            let mut g = Vec::new();
            put_node(&mut g, op, "n", inputs, outputs, attrs);
            g
        };
        left(&replaced("Transpose", node("Transpose", &[b"yt"], &[b"y32"], &[Attr::Ints("perm", &[1, 0, 2])])));
        left(&replaced("Transpose", node("Transpose", &[b"yt"], &[b"y32"], &[])));
        left(&replaced("Cast", node("Cast", &[b"biased"], &[b"f"], &[Attr::Int("to", 11)])));
        left(&replaced("Cast", node("Cast", &[b"biased"], &[b"f"], &[])));
        // The Transpose of a value that is not an integer product's.
        left(&replaced("MatMulInteger", node("Identity", &[b"x"], &[b"yt"], &[])));
        let stored = model(4, 8, false, |_| {});
        for cut in [1, stored.len() / 2, stored.len() - 1] {
            assert!(fuse(&stored[..cut]).is_err(), "cut at {cut}");
        }
    }

    /// Speed of the operator against ONNX Runtime's four nodes, on one of
    /// Kokoro's largest shapes (128 channels, 30000 steps), printed.
    #[test]
    fn the_fused_operator_time_is_printed() {
        let (k, m, l) = (8usize, 128usize, 30_000usize);
        let stored = model(k, m, false, |_| {});
        let fused = fuse(&stored).unwrap();
        let bias: (&[i64], Vec<i32>) = (&[1, 128, 1], (0..128).collect());
        let scale: (&[i64], Vec<f32>) = (&[], vec![0.004]);
        let time = |m: &[u8]| {
            let t = std::time::Instant::now();
            for _ in 0..5 {
                run(m, (1, l, k), bias.clone(), scale.clone()).unwrap();
            }
            t.elapsed().as_secs_f64() / 5.0
        };
        let (a, b) = (time(&stored), time(&fused));
        println!(
            "128 x 30000 (with the product and a session): {:.1} ms as four nodes, {:.1} ms fused",
            a * 1e3,
            b * 1e3
        );
        let y: Vec<i32> = (0..l * m).map(|i| (i as i32 % 5000) - 2500).collect();
        let b = Operand::new(&bias.1, bias.0, [1, m, l]).unwrap();
        let s = Operand::new(&scale.1, scale.0, [1, m, l]).unwrap();
        let mut out = vec![0f32; l * m];
        let t = std::time::Instant::now();
        for _ in 0..20 {
            transpose_dequantize(&y, (1, l, m), b, s, &mut out);
        }
        println!("the operator alone: {:.2} ms", t.elapsed().as_secs_f64() / 20.0 * 1e3);
        assert_eq!(out[l + 3], ((y[3 * m + 1] + 1) as f32) * 0.004);
    }
}
