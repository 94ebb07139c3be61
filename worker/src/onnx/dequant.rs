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
//! bias) * scale`, in blocks of 8 x 8 (8 contiguous values read from each
//! of 8 rows of `y`, 8 written to each of 8 rows of the output: one AVX2
//! register each), the channels in parts on the session's own threads
//! ([`super::kernel::by_rows`]).
//!
//! The same arithmetic as the nodes it replaces, in the same order (a
//! wrapping int32 sum, one rounding to f32, one f32 product): the output is
//! identical to the last bit. `bias` and `scale` broadcast as ONNX does
//! against `[n, m, l]`; one that would make the output larger (of a higher
//! rank, or longer on an axis of one), as the nodes' output would be, fails
//! the run rather than guess.
//!
//! Written here because ONNX Runtime fuses none of these nodes and no crate
//! has it.

use ort::operator::{BoxedKernel, ComputeContext, KernelContext, Operator, OperatorInput, OperatorOutput};
use ort::value::TensorElementType;

use super::kernel::{Operand, Par, by_rows, rank3, session_threads};
use super::proto::{Attribute, Chain, Graph, ModelError, Wiring, default_domain, dtype::FLOAT, fuse_chains};

/// The operator's name (in the `tayori` domain).
const NAME: &str = "TransposeDequantize";

/// `model` (the bytes of an .onnx file) with every `Transpose` → `Add` →
/// `Cast` → `Mul` chain after an integer product as one
/// `tayori.TransposeDequantize` node, and the `tayori` domain imported. A
/// model with none is returned as it was.
pub fn fuse(model: &[u8]) -> Result<Vec<u8>, ModelError> {
    fuse_chains(model, (super::DOMAIN, NAME, "tayori_dequant"), find)
}

/// The chain that ends at node `k` (its Mul), if one does: `(y, bias,
/// scale)` and the three nodes folded into it.
fn find<'g>(g: &Graph<'g>, wiring: &Wiring<'g>, k: usize) -> Result<Option<Chain<'g>>, ModelError> {
    let (nodes, mul) = (&g.nodes, &g.nodes[k]);
    if mul.op != b"Mul" || !mul.is_plain(2, false) {
        return Ok(None);
    }
    // The node of `op` that makes `v` for this chain alone.
    // (Cast and Transpose have attributes, checked below.)
    let step = |v: &[u8], op: &[u8], inputs| g.private_producer(wiring, v, (op, inputs, op != b"Add"));
    for (cast_out, scale) in [(mul.inputs[0], mul.inputs[1]), (mul.inputs[1], mul.inputs[0])] {
        let Some(cast) = step(cast_out, b"Cast", 1) else { continue };
        // To float; `saturate` matters only for float8.
        let to_float = |a: &Attribute| match a.name {
            b"to" => a.int == Some(FLOAT as i64),
            b"saturate" => true,
            _ => false,
        };
        let has_to = nodes[cast].attrs.iter().any(|a| Attribute::parse(a).is_ok_and(|a| a.name == b"to"));
        if !has_to || !nodes[cast].attrs_are(to_float)? {
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
            if int32 {
                return Ok(Some((vec![y, bias, scale], vec![t, add, cast])));
            }
        }
    }
    Ok(None)
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
            let (n, l, m) = rank3(shape, "TransposeDequantize: y is not [n, l, m]")?;
            let unfit = || ort::Error::new("TransposeDequantize: bias or scale does not broadcast to [n, m, l]");
            let bias = Operand::new(bias, bias_shape, [n, m, l]).ok_or_else(unfit)?;
            let scale = Operand::new(scale, scale_shape, [n, m, l]).ok_or_else(unfit)?;
            let mut out = ctx
                .output(0, vec![n as i64, m as i64, l as i64])?
                .ok_or_else(|| ort::Error::new("TransposeDequantize: no output"))?;
            let (_, out) = out.try_extract_tensor_mut::<f32>()?;
            transpose_dequantize(y, (n, l, m), bias, scale, out, &session_threads(ctx))
        }))
    }
}

/// Side of the square blocks the transpose moves: 8 int32 or f32 are 32
/// bytes, one AVX2 register. Parts of the work are whole blocks of rows.
const BLOCK: usize = 8;

/// `out[i, c, t] = float(y[i, t, c] + bias) * scale` for `y` of `[n, l,
/// m]`; the rows of the output (item and channel) in parts run by `par`.
pub fn transpose_dequantize(
    y: &[i32],
    (n, l, m): (usize, usize, usize),
    bias: Operand<i32>,
    scale: Operand<f32>,
    out: &mut [f32],
    par: Par,
) -> ort::Result<()> {
    if n * m * l == 0 {
        return Ok(());
    }
    let tile = tile_fn();
    // Rows of the output (i, c) from `first`, one item at a time.
    by_rows(out, l, BLOCK, par, |first, out| {
        let rows = out.len() / l;
        let mut r = 0;
        while r < rows {
            let (i, c0) = ((first + r) / m, (first + r) % m);
            let count = (m - c0).min(rows - r);
            let item = Item { y: &y[i * l * m..(i + 1) * l * m], l, m, i, bias, scale };
            item.rows(c0, count, tile, &mut out[r * l..][..count * l]);
            r += count;
        }
    })
}

/// One item of the input (`y`, its `[l, m]`) and the operands.
struct Item<'a> {
    y: &'a [i32],
    l: usize,
    m: usize,
    i: usize,
    bias: Operand<'a, i32>,
    scale: Operand<'a, f32>,
}

impl Item<'_> {
    /// Channels `c0 .. c0 + count` into `out`, `count` rows of `l`: 8 x 8
    /// blocks by `tile` where the operands are one a row, the rest one
    /// value at a time.
    fn rows(&self, c0: usize, count: usize, tile: Tile, out: &mut [f32]) {
        let Item { y, l, m, i, bias, scale } = *self;
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
                while t0 + BLOCK <= l {
                    // 8 times 8 contiguous channels in, 8 channels of 8
                    // contiguous steps out.
                    let rows: [&[i32; BLOCK]; BLOCK] = std::array::from_fn(|dt| {
                        y[(t0 + dt) * m + c..][..BLOCK].try_into().expect("a block of channels")
                    });
                    let mut done = [[0f32; BLOCK]; BLOCK];
                    tile(&rows, &b, &s, &mut done);
                    for (j, vals) in done.iter().enumerate() {
                        out[(cb + j) * l + t0..][..BLOCK].copy_from_slice(vals);
                    }
                    t0 += BLOCK;
                }
            }
            // What whole blocks do not cover: the last steps, a narrower
            // block of channels, or operands that vary along l.
            for j in 0..width {
                let c = c0 + cb + j;
                for (t, o) in out[(cb + j) * l..][..l].iter_mut().enumerate().skip(t0) {
                    *o = value(t, c);
                }
            }
            cb += width;
        }
    }
}

/// One 8 x 8 block: `rows[t][c]` in, `out[c][t] = float(rows[t][c] +
/// b[c]) * s[c]`.
type Tile = fn(&[&[i32; BLOCK]; BLOCK], &[i32; BLOCK], &[f32; BLOCK], &mut [[f32; BLOCK]; BLOCK]);

/// The block function for this CPU: AVX2 registers where it has them
/// (checked once an operator call, not a block).
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
    use super::*;
    use crate::onnx::kernel::in_order;
    use crate::onnx::proto::{
        Attr,
        dtype::{INT8, INT32, UINT8},
        put_bytes_field, put_node, tensor,
    };
    use crate::onnx::testing::{model_of, ops, replace_node, session, value, with_graph};

    /// x (uint8 [n, l, k]) → MatMulInteger with int8 weights `[k, m]` →
    /// Transpose → Add(·, bias) → Cast → Mul(·, scale) → y; bias and scale
    /// are graph inputs (Kokoro computes them on the fly). With `swapped`,
    /// each two-input node's operands the other way round.
    fn model(k: usize, m: usize, swapped: bool) -> Vec<u8> {
        let order = |p: &'static [u8], q: &'static [u8]| if swapped { [q, p] } else { [p, q] };
        let weights: Vec<u8> = (0..k * m).map(|i| (i * 7919 % 251) as u8).collect();
        let mut g = Vec::new();
        put_node(&mut g, "MatMulInteger", "mm", &[b"x", b"w", b"xz", b"wz"], &[b"yt"], &[]);
        put_node(&mut g, "Transpose", "t", &[b"yt"], &[b"y32"], &[Attr::Ints("perm", &[0, 2, 1])]);
        put_node(&mut g, "Add", "add", &order(b"y32", b"bias"), &[b"biased"], &[]);
        put_node(&mut g, "Cast", "cast", &[b"biased"], &[b"f"], &[Attr::Int("to", FLOAT as i64)]);
        put_node(&mut g, "Mul", "mul", &order(b"f", b"scale"), &[b"y"], &[]);
        put_bytes_field(&mut g, 5, &tensor("w", INT8, &[k as u64, m as u64], &weights));
        put_bytes_field(&mut g, 5, &tensor("xz", UINT8, &[], &[131]));
        put_bytes_field(&mut g, 5, &tensor("wz", INT8, &[], &[3]));
        put_bytes_field(&mut g, 11, &value("x", UINT8));
        put_bytes_field(&mut g, 11, &value("bias", INT32));
        put_bytes_field(&mut g, 11, &value("scale", FLOAT));
        put_bytes_field(&mut g, 12, &value("y", FLOAT));
        model_of(&g, 17)
    }

    type Operands<'a> = ((&'a [i64], Vec<i32>), (&'a [i64], Vec<f32>));

    /// The model run by ONNX Runtime (two threads, tayori's operators) on
    /// `x` of `[n, l, k]`, bias and scale of the shapes given.
    fn run(model: &[u8], (n, l, k): (usize, usize, usize), (bias, scale): Operands) -> ort::Result<Vec<f32>> {
        let mut s = session(model)?;
        let x: Vec<u8> = (0..n * l * k).map(|i| (i * 31 % 253) as u8).collect();
        let x = ort::value::Tensor::from_array(([n, l, k], x))?;
        let b = ort::value::Tensor::from_array((bias.0.to_vec(), bias.1))?;
        let s_ = ort::value::Tensor::from_array((scale.0.to_vec(), scale.1))?;
        let out = s.run(ort::inputs! {"x" => x, "bias" => b, "scale" => s_})?;
        Ok(out["y"].try_extract_tensor::<f32>()?.1.to_vec())
    }

    /// ONNX Runtime's four nodes and the fused operator give the same
    /// floats to the last bit: two and three items, whole blocks of
    /// channels and a ragged last one, lengths that are not a multiple of 8,
    /// work in several parts (one starting inside an item, off a block of
    /// 8), the bias per channel, per step (along l) or one for all, the
    /// scale one or per channel, a bias sum that wraps, either operand
    /// order.
    #[test]
    fn the_fused_operator_computes_the_chain_exactly() {
        let k = 24usize;
        // (items, channels, steps): 3 x 20 rows of 2600 are parts of 32
        // rows, the second from item 1's channel 12.
        for (n, m, l) in [(2usize, 128usize, 3001usize), (3, 20, 2600), (2, 13, 77), (2, 8, 8), (2, 40, 1)] {
            let per_channel: Vec<i32> = (0..m as i32).map(|c| c * 977 - 40_000).collect();
            let mut wrapping = per_channel.clone();
            wrapping[m - 1] = i32::MAX - 5;
            let per_step: Vec<i32> = (0..l as i32).map(|t| t % 1000 - 500).collect();
            let (mi, li) = (m as i64, l as i64);
            let biases: [(&[i64], Vec<i32>); 5] = [
                (&[1, mi, 1], per_channel.clone()),
                (&[1, mi, 1], wrapping.clone()),
                (&[mi, 1], per_channel),
                (&[1], vec![-7]),
                (&[1, 1, li], per_step),
            ];
            let scales: [(&[i64], Vec<f32>); 2] =
                [(&[], vec![0.0041867]), (&[1, mi, 1], (0..m).map(|c| 1e-3 * (c as f32 + 0.5)).collect())];
            for swapped in [false, true] {
                let stored = model(k, m, swapped);
                let fused = fuse(&stored).unwrap();
                assert_eq!(ops(&fused), ["MatMulInteger", "TransposeDequantize"]);
                for bias in &biases {
                    for scale in &scales {
                        let operands = || (bias.clone(), scale.clone());
                        let want = run(&stored, (n, l, k), operands()).unwrap();
                        let got = run(&fused, (n, l, k), operands()).unwrap();
                        assert_eq!(want.len(), n * m * l);
                        assert!(want.iter().any(|&v| v != want[0]), "the output varies");
                        let same = want.iter().zip(&got).all(|(p, q)| p.to_bits() == q.to_bits());
                        assert!(same, "n {n} m {m} l {l} bias {:?} scale {:?} swapped {swapped}", bias.0, scale.0);
                    }
                }
            }
            // The wrapping bias does wrap (given steps enough): channel m -
            // 1's products are not all under 6, so some sums pass i32::MAX.
            let products = run(&model(k, m, false), (n, l, k), ((&[1], vec![0]), (&[], vec![1.0]))).unwrap();
            let wraps = products[(m - 1) * l..m * l].iter().any(|&v| v > 5.0);
            assert!(wraps || l < 8, "a sum wraps (m {m} l {l})");
        }
    }

    /// The AVX2 block and the plain one give the same floats, sums that
    /// wrap included.
    #[test]
    fn the_blocks_agree() {
        let y: Vec<[i32; BLOCK]> =
            (0..BLOCK).map(|t| std::array::from_fn(|c| (t * 7919 + c * 104_729) as i32 * 40_503)).collect();
        let rows: [&[i32; BLOCK]; BLOCK] = std::array::from_fn(|t| &y[t]);
        let b: [i32; BLOCK] = std::array::from_fn(|c| if c == 3 { i32::MAX } else { c as i32 * 1001 - 3000 });
        let s: [f32; BLOCK] = std::array::from_fn(|c| 1e-3 * (c as f32 + 0.25));
        let (mut plain, mut chosen) = ([[0f32; BLOCK]; BLOCK], [[0f32; BLOCK]; BLOCK]);
        tile_plain(&rows, &b, &s, &mut plain);
        tile_fn()(&rows, &b, &s, &mut chosen);
        assert_eq!(plain[5][2], (y[2][5].wrapping_add(b[5]) as f32) * s[5]);
        assert_eq!(plain.map(|r| r.map(f32::to_bits)), chosen.map(|r| r.map(f32::to_bits)));
    }

    /// A bias that would make the output of a higher rank fails the run
    /// with a plain message, rather than give something else.
    #[test]
    fn a_bias_it_cannot_broadcast_fails_the_run() {
        let fused = fuse(&model(4, 8, false)).unwrap();
        let err = run(&fused, (1, 16, 4), ((&[2, 1, 8, 1], vec![0; 16]), (&[], vec![1.0]))).unwrap_err();
        assert!(err.to_string().contains("bias or scale does not broadcast"), "{err}");
    }

    /// Chains that are not quite this are left: an intermediate value read
    /// elsewhere or a graph output, another permutation, a cast to another
    /// type or without one, a node with an attribute it does not know, a
    /// transpose of something not an integer product. Truncated models are
    /// refused.
    #[test]
    fn chains_it_does_not_fit_are_left() {
        let stored = model(4, 8, false);
        let left = |m: &[u8]| {
            let out = fuse(m).unwrap();
            assert_eq!(out, m, "{:?}", ops(&out));
        };
        left(&with_graph(&stored, 17, |g| put_node(g, "Relu", "r", &[b"f"], &[b"other"], &[])));
        left(&with_graph(&stored, 17, |g| put_node(g, "Neg", "r", &[b"y32"], &[b"other"], &[])));
        left(&with_graph(&stored, 17, |g| put_bytes_field(g, 12, &value("biased", INT32))));
        let replaced = |name: &str, op: &str, inputs: &[&[u8]], output: &[u8], attrs: &[Attr]| {
            replace_node(&stored, 17, name, |g| put_node(g, op, name, inputs, &[output], attrs))
        };
        left(&replaced("t", "Transpose", &[b"yt"], b"y32", &[Attr::Ints("perm", &[1, 0, 2])]));
        left(&replaced("t", "Transpose", &[b"yt"], b"y32", &[]));
        left(&replaced("cast", "Cast", &[b"biased"], b"f", &[Attr::Int("to", 11)]));
        left(&replaced("cast", "Cast", &[b"biased"], b"f", &[]));
        left(&replaced("cast", "Cast", &[b"biased"], b"f", &[Attr::Int("saturate", 1)]));
        left(&replaced("add", "Add", &[b"y32", b"bias"], b"biased", &[Attr::Int("broadcast", 1)]));
        // The Transpose of a value that is not an integer product's.
        left(&replaced("mm", "Identity", &[b"x"], b"yt", &[]));
        for cut in [1, stored.len() / 2, stored.len() - 1] {
            assert!(fuse(&stored[..cut]).is_err(), "cut at {cut}");
        }
    }

    /// Speed of the operator against ONNX Runtime's four nodes, on one of
    /// Kokoro's largest shapes (128 channels, 30000 steps), printed; the
    /// operator alone on one thread gives what the session gave.
    #[test]
    fn the_fused_operator_time_is_printed() {
        let (k, m, l) = (8usize, 128usize, 30_000usize);
        let stored = model(k, m, false);
        let fused = fuse(&stored).unwrap();
        let operands = || -> Operands { ((&[1, 128, 1], (0..128).collect()), (&[], vec![0.004])) };
        let time = |m: &[u8]| {
            let t = std::time::Instant::now();
            let mut out = Vec::new();
            for _ in 0..5 {
                out = run(m, (1, l, k), operands()).unwrap();
            }
            (t.elapsed().as_secs_f64() / 5.0, out)
        };
        let ((a, want), (b, got)) = (time(&stored), time(&fused));
        println!(
            "128 x 30000 (with the product and a session): {:.1} ms as four nodes, {:.1} ms fused",
            a * 1e3,
            b * 1e3
        );
        assert!(want.iter().zip(&got).all(|(p, q)| p.to_bits() == q.to_bits()));
        let y: Vec<i32> = (0..l * m).map(|i| (i as i32 % 5000) - 2500).collect();
        let ((bias_shape, bias), (scale_shape, scale)) = operands();
        let b = Operand::new(&bias, bias_shape, [1, m, l]).unwrap();
        let s = Operand::new(&scale, scale_shape, [1, m, l]).unwrap();
        let mut out = vec![0f32; l * m];
        let t = std::time::Instant::now();
        for _ in 0..20 {
            transpose_dequantize(&y, (1, l, m), b, s, &mut out, &in_order).unwrap();
        }
        println!("the operator alone, one thread: {:.2} ms", t.elapsed().as_secs_f64() / 20.0 * 1e3);
        assert_eq!(out[l + 3], ((y[3 * m + 1] + 1) as f32) * 0.004);
    }
}
