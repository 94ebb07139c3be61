//! The Snake activation, `y = x + b sin²(a x)` per channel, as one operator
//! of tayori's own in place of the five ONNX Runtime runs one after another.
//!
//! Kokoro's vocoder (iSTFTNet) applies Snake before each of its 48
//! residual convolutions, exported as `Mul(a, x)`, `Sin`, `Pow(·, 2)`,
//! `Mul(b, ·)`, `Add(x, ·)` with `a` and `b` constants of shape `[1, c, 1]`.
//! ONNX Runtime runs `Sin` on one thread at about 2 ns an element (its own
//! measure: 248 ms of a 1.52 s run, 125 million elements), and each of the
//! other four is a pass of its own over tensors of up to 128 x 30000
//! values. [`fuse`] rewrites each such chain as one `tayori.Snake(x, a, b)`
//! node and [`SnakeOp`] computes it: one pass, the rows in parts on the
//! session's own threads ([`super::kernel::by_rows`]), `sin` by a polynomial
//! the compiler vectorizes.
//!
//! Written here because no ONNX Runtime operator fuses it and no crate has
//! it. The result is not bit-for-bit ONNX Runtime's: the sine is computed
//! in f64 (reduced by pi, an odd polynomial of degree 13; error under 1e-9
//! while |a x| < 1e6, which activations are, growing with |a x| beyond as
//! the reduction loses digits; past 1e15 the square is taken as 0, and an
//! infinite or NaN `a x` gives NaN, as `Sin` does)
//! and its square rounded once to f32, where ONNX Runtime rounds the sine
//! and its square to f32 each; the two differ by about one unit in the last
//! place (the chain against the operator: 1.9e-6 at most for |x| up to 25).
//! Through Kokoro's quantized layers such roundings move the waveform (21
//! dB under the signal) but not the sound: the loudness of each 20 ms of a
//! sentence within 0.09 dB on average, and the judges of benches/voices.rs
//! on the five Japanese messages of `ja_alpha_female` give the same scores
//! (DNSMOS P.808 4.03 both, P.835 OVRL 3.19 against 3.20, Whisper's
//! character error rate 0.007 both; mixed with music P.808 3.05 against
//! 3.02). Kokoro a run: 2.71 -> 2.31 CPU-seconds for 7 s of speech; the
//! voices bench's long message (13.7 s of speech) 3.88 -> 3.55 s.

use ort::operator::{BoxedKernel, ComputeContext, KernelContext, Operator, OperatorInput, OperatorOutput};
use ort::value::TensorElementType;

use super::DOMAIN;
use super::kernel::{Par, each_row, rank3, session_threads};
use super::proto::{Chain, Graph, ModelError, Node, Tensor, Wiring, dtype::FLOAT, fuse_chains};

/// The operator's name (in the [`super::DOMAIN`] domain).
const NAME: &str = "Snake";

/// `model` (the bytes of an .onnx file) with every Snake chain as one
/// `tayori.Snake` node, and the `tayori` domain imported. A model with none
/// is returned as it was.
pub fn fuse(model: &[u8]) -> Result<Vec<u8>, ModelError> {
    fuse_chains(model, (DOMAIN, NAME, "tayori_snake"), find)
}

/// A `[1, c, 1]` float constant's values.
fn per_channel(t: &[u8]) -> Result<Option<Vec<f32>>, ModelError> {
    let t = Tensor::parse(t)?;
    if t.data_type != FLOAT || t.external || t.dims.len() != 3 || t.dims[0] != 1 || t.dims[2] != 1 {
        return Ok(None);
    }
    let values = t.f32_values();
    Ok((values.len() as u64 == t.dims[1] && !values.is_empty()).then_some(values))
}

/// Whether `t` is the float constant 2.
fn is_two(t: &[u8]) -> Result<bool, ModelError> {
    let t = Tensor::parse(t)?;
    let values = t.f32_values();
    // Of rank 3 at most: a larger one would broadcast x up to it.
    Ok(t.data_type == FLOAT && !t.external && t.dims.len() <= 3 && t.dims.iter().all(|&d| d == 1) && values == [2.0])
}

/// The Snake chain that ends at node `k` (its Add), if one does: `(x, a,
/// b)` and the four nodes folded into it.
fn find<'g>(g: &Graph<'g>, wiring: &Wiring<'g>, k: usize) -> Result<Option<Chain<'g>>, ModelError> {
    let (nodes, add) = (&g.nodes, &g.nodes[k]);
    if add.op != b"Add" || !add.is_plain(2, false) {
        return Ok(None);
    }
    // Graph inputs: an initializer a caller may replace is no constant.
    let constant = |v: &[u8]| g.constant(v);
    // The node of `op` that makes `v` for this chain alone.
    let step = |v: &[u8], op: &[u8], inputs| g.private_producer(wiring, v, (op, inputs, false));
    for (x, scaled) in [(add.inputs[0], add.inputs[1]), (add.inputs[1], add.inputs[0])] {
        let Some(m2) = step(scaled, b"Mul", 2) else { continue };
        let Some((b, pow_out)) = with_constant(&nodes[m2], &constant) else { continue };
        let Some(pow) = step(pow_out, b"Pow", 2) else { continue };
        let [sin_out, two] = nodes[pow].inputs[..] else { continue };
        if !constant(two).map(is_two).transpose()?.unwrap_or(false) {
            continue;
        }
        let Some(sin) = step(sin_out, b"Sin", 1) else { continue };
        let Some(m1) = step(nodes[sin].inputs[0], b"Mul", 2) else { continue };
        let Some((a, x1)) = with_constant(&nodes[m1], &constant) else { continue };
        if x1 != x {
            continue;
        }
        let (Some(av), Some(bv)) =
            (constant(a).map(per_channel).transpose()?.flatten(), constant(b).map(per_channel).transpose()?.flatten())
        else {
            continue;
        };
        if av.len() == bv.len() {
            return Ok(Some((vec![x, a, b], vec![m1, sin, pow, m2])));
        }
    }
    Ok(None)
}

/// `(the constant, the other input)` of a two-input node whose one input is
/// an initializer.
fn with_constant<'a>(n: &Node<'a>, constant: &impl Fn(&[u8]) -> Option<&'a [u8]>) -> Option<(&'a [u8], &'a [u8])> {
    match n.inputs[..] {
        [p, q] if constant(p).is_some() && constant(q).is_none() => Some((p, q)),
        [p, q] if constant(q).is_some() && constant(p).is_none() => Some((q, p)),
        _ => None,
    }
}

/// `tayori.Snake(x, a, b)`: see [`snake`].
pub struct SnakeOp;

impl Operator for SnakeOp {
    type Kernel<'attr> = BoxedKernel<'attr>;

    fn name(&self) -> &str {
        NAME
    }

    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        [const { OperatorInput::required(TensorElementType::Float32) }; 3]
    }

    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        [OperatorOutput::required(TensorElementType::Float32)]
    }

    fn create_kernel<'attr>(&self, _: &KernelContext<'attr>) -> ort::Result<Self::Kernel<'attr>> {
        Ok(Box::new(|ctx: &ComputeContext| {
            let missing = || ort::Error::new("Snake: an input is missing");
            let x = ctx.input(0)?.ok_or_else(missing)?;
            let a = ctx.input(1)?.ok_or_else(missing)?;
            let b = ctx.input(2)?.ok_or_else(missing)?;
            let (shape, x) = x.try_extract_tensor::<f32>()?;
            let (a_shape, a) = a.try_extract_tensor::<f32>()?;
            let (b_shape, b) = b.try_extract_tensor::<f32>()?;
            let shape = shape.to_vec();
            let (n, c, l) = rank3(&shape, "Snake: x is not [n, c, l]")?;
            let per_channel = [1, c as i64, 1];
            if a_shape[..] != per_channel || b_shape[..] != per_channel {
                return Err(ort::Error::new("Snake: a and b are not [1, c, 1]"));
            }
            let mut y = ctx.output(0, shape.clone())?.ok_or_else(|| ort::Error::new("Snake: no output"))?;
            let (_, y) = y.try_extract_tensor_mut::<f32>()?;
            snake(x, a, b, (n, c, l), y, &session_threads(ctx))
        }))
    }
}

/// `y = x + b sin²(a x)` over `[n, c, l]`, `a` and `b` per channel; the rows
/// in parts run by `par`.
pub fn snake(
    x: &[f32],
    a: &[f32],
    b: &[f32],
    (n, c, l): (usize, usize, usize),
    y: &mut [f32],
    par: Par,
) -> ort::Result<()> {
    if l == 0 || n * c == 0 {
        return Ok(());
    }
    let row = row_fn();
    each_row(x, y, l, par, |r, x, y| row(x, a[r % c], b[r % c], y))
}

/// The row function for this CPU: compiled for AVX-512 (eight f64 lanes)
/// or AVX2 and FMA (four) when it has them (checked once a call, not a
/// row). Each lane does the same IEEE operations in the same order, so
/// every form gives the same bits (NaNs aside: which NaN an add of two
/// keeps may differ); AVX-512 1.6 times as fast as AVX2 on 128 rows of
/// 33601 (one thread, 6.7 -> 4.1 ms).
fn row_fn() -> fn(&[f32], f32, f32, &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
    {
        return |x, a, b, y| {
            // SAFETY: returned only when the CPU has AVX-512F and the AVX2
            // and FMA that enabling it lets the compiler use, checked just
            // above.
            unsafe { row_avx512(x, a, b, y) }
        };
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        return |x, a, b, y| {
            // SAFETY: returned only when the CPU has AVX2 and FMA, checked
            // just above.
            unsafe { row_avx2(x, a, b, y) }
        };
    }
    row_body
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn row_avx512(x: &[f32], a: f32, b: f32, y: &mut [f32]) {
    row_body(x, a, b, y);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn row_avx2(x: &[f32], a: f32, b: f32, y: &mut [f32]) {
    row_body(x, a, b, y);
}

/// 1.5 x 2^52: added and taken away, it rounds an f64 under 2^51 to an
/// integer (in any vector lane, unlike a call to `round`).
const ROUND: f64 = 6_755_399_441_055_744.0;

#[inline(always)]
fn row_body(x: &[f32], a: f32, b: f32, y: &mut [f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        // a x rounded to f32, as the model's Mul does.
        let t = f64::from(a * x);
        // sin² has period pi: r = t - k pi lies in [-pi/2, pi/2]. Past
        // 1e15 (never an activation) the reduction means nothing: 0; an
        // infinite or NaN t gives NaN, as sin does.
        let k = (t * std::f64::consts::FRAC_1_PI + ROUND) - ROUND;
        let far = if t.is_finite() { 0.0 } else { f64::NAN };
        let r = if t.abs() < 1e15 { t - k * std::f64::consts::PI } else { far };
        let r2 = r * r;
        // Taylor to r^13: the next term is under 7e-10 at pi/2.
        let s = r
            * (1.0
                + r2 * (-1.0 / 6.0
                    + r2 * (1.0 / 120.0
                        + r2 * (-1.0 / 5040.0
                            + r2 * (1.0 / 362_880.0 + r2 * (-1.0 / 39_916_800.0 + r2 * (1.0 / 6_227_020_800.0)))))));
        *y = x + b * ((s * s) as f32);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::proto::{Fields, Value, bytes_fields, first_bytes, put_bytes_field, put_node, raw_f32, tensor};
    use crate::onnx::testing::{model_of, ops, session, with_graph};

    fn value(name: &str) -> Vec<u8> {
        crate::onnx::testing::value(name, FLOAT)
    }

    /// x [n, c, l] → Mul(a, x) → Sin → Pow 2 → Mul(b, ·) → Add(x, ·) → y
    /// (with `swapped`, each two-input node's operands the other way round).
    fn model_with(c: usize, a: &[f32], b: &[f32], swapped: bool) -> Vec<u8> {
        let order = |p: &'static [u8], q: &'static [u8]| if swapped { [q, p] } else { [p, q] };
        let mut g = Vec::new();
        put_node(&mut g, "Mul", "m1", &order(b"a", b"x"), &[b"ax"], &[]);
        put_node(&mut g, "Sin", "s", &[b"ax"], &[b"sin"], &[]);
        put_node(&mut g, "Pow", "p", &[b"sin", b"two"], &[b"sq"], &[]);
        put_node(&mut g, "Mul", "m2", &order(b"sq", b"b"), &[b"scaled"], &[]);
        put_node(&mut g, "Add", "add", &order(b"x", b"scaled"), &[b"y"], &[]);
        put_bytes_field(&mut g, 5, &tensor("a", FLOAT, &[1, c as u64, 1], &raw_f32(a)));
        put_bytes_field(&mut g, 5, &tensor("b", FLOAT, &[1, c as u64, 1], &raw_f32(b)));
        put_bytes_field(&mut g, 5, &tensor("two", FLOAT, &[], &raw_f32(&[2.0])));
        put_bytes_field(&mut g, 11, &value("x"));
        put_bytes_field(&mut g, 12, &value("y"));
        model_of(&g, 17)
    }

    fn model(c: usize, a: &[f32], b: &[f32]) -> Vec<u8> {
        model_with(c, a, b, false)
    }

    /// ONNX Runtime's chain and the fused operator on the same input, two
    /// batches, either operand order: the same values within float
    /// rounding, NaN where the chain gives NaN (an infinite or NaN x).
    #[test]
    fn the_fused_operator_computes_the_chain() {
        let (n, c, l) = (2usize, 3usize, 40_000usize);
        let a = [0.7f32, 3.1, 12.0];
        let b = [1.0 / 0.7f32, 1.0 / 3.1, 1.0 / 12.0];
        let mut x: Vec<f32> = (0..n * c * l).map(|i| ((i * 7919 % 20011) as f32 - 10005.0) / 400.0).collect();
        x[17] = f32::INFINITY;
        x[18] = f32::NEG_INFINITY;
        x[19] = f32::NAN;
        for swapped in [false, true] {
            let stored = model_with(c, &a, &b, swapped);
            let fused = fuse(&stored).unwrap();
            assert_eq!(ops(&fused), ["Snake"]);
            let run = |m: &[u8]| -> Vec<f32> {
                let mut s = session(m).unwrap();
                let t = ort::value::Tensor::from_array(([n, c, l], x.clone())).unwrap();
                let out = s.run(ort::inputs! {"x" => t}).unwrap();
                out["y"].try_extract_tensor::<f32>().unwrap().1.to_vec()
            };
            let (want, got) = (run(&stored), run(&fused));
            assert_eq!(want.len(), got.len());
            for (i, (p, q)) in want.iter().zip(&got).enumerate() {
                assert_eq!(p.is_nan(), q.is_nan(), "at {i}: {p} against {q}");
            }
            let worst =
                want.iter().zip(&got).filter(|(p, _)| !p.is_nan()).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max);
            println!("largest difference {worst}");
            assert!(worst < 1e-5, "largest difference {worst}");
        }
    }

    /// Every form of the row this CPU can run gives the same bits as the
    /// plain one (NaN where it gives NaN), on values across the
    /// reduction's range and past it, signed zeros, subnormals and
    /// non-finite x, at every length around the vector widths.
    #[test]
    fn every_compiled_row_gives_the_same_bits() {
        let mut x: Vec<f32> = (0..4200).map(|i| ((i * 7919 % 20011) as f32 - 10005.0) / 37.0).collect();
        let odd =
            [f32::INFINITY, f32::NEG_INFINITY, f32::NAN, 3e20, -0.0, 0.0, 1e-40, -1e-40, 1e3, 1e9, 1e14, 9e14, 2e15];
        for (k, v) in odd.iter().enumerate() {
            x[5 + 7 * k] = *v;
        }
        let plain = |x: &[f32]| {
            let mut y = vec![0f32; x.len()];
            row_body(x, 0.7, 1.3, &mut y);
            y
        };
        let same = |got: &[f32], want: &[f32]| {
            got.iter().zip(want).all(|(p, q)| if q.is_nan() { p.is_nan() } else { p.to_bits() == q.to_bits() })
        };
        let lengths = (0..=130).chain([4096, 4104, 4127, 4159, 4200]);
        for len in lengths {
            let want = plain(&x[..len]);
            #[cfg(target_arch = "x86_64")]
            {
                use std::arch::is_x86_feature_detected as has;
                let mut y = vec![f32::NAN; len];
                if has!("avx512f") && has!("avx2") && has!("fma") {
                    // SAFETY: the CPU has AVX-512F, AVX2 and FMA, checked just above.
                    unsafe { row_avx512(&x[..len], 0.7, 1.3, &mut y) };
                    assert!(same(&y, &want), "AVX-512, {len}");
                }
                if has!("avx2") && has!("fma") {
                    // A fresh output: the AVX-512 form's values cannot stand
                    // in for any the AVX2 form leaves unwritten.
                    let mut y = vec![f32::NAN; len];
                    // SAFETY: the CPU has AVX2 and FMA, checked just above.
                    unsafe { row_avx2(&x[..len], 0.7, 1.3, &mut y) };
                    assert!(same(&y, &want), "AVX2, {len}");
                }
            }
            let mut y = vec![f32::NAN; len];
            row_fn()(&x[..len], 0.7, 1.3, &mut y);
            assert!(same(&y, &want), "the chosen form, {len}");
        }
    }

    /// A chain that is not quite Snake is left as it is: an intermediate
    /// value read elsewhere or a graph output, another exponent, constants
    /// not one a channel, a different x in the Add. Truncated models are
    /// refused.
    #[test]
    fn chains_it_does_not_fit_are_left() {
        let stored = model(2, &[1.0, 2.0], &[1.0, 0.5]);
        let edit = |f: &dyn Fn(&mut Vec<u8>)| with_graph(&stored, 17, f);
        let left = |m: &[u8]| {
            let ops = ops(&fuse(m).unwrap());
            assert!(ops.contains(&"Sin".to_owned()) && !ops.contains(&"Snake".to_owned()), "{ops:?}");
        };
        left(&edit(&|g| put_node(g, "Relu", "r", &[b"sin"], &[b"other"], &[])));
        left(&edit(&|g| put_bytes_field(g, 12, &value("sq"))));
        // Constants a caller may replace.
        left(&edit(&|g| put_bytes_field(g, 11, &value("a"))));
        left(&edit(&|g| put_bytes_field(g, 11, &value("two"))));
        // Another exponent, or a 2 of rank 4 (it would broadcast x).
        let with_two = |dims: &'static [u64], v: f32| {
            move |g: &mut Vec<u8>| {
                let kept: Vec<Vec<u8>> = Fields(&g[..])
                    .map(|f| f.unwrap())
                    .filter(|f| {
                        !(f.number == 5
                            && matches!(f.value, Value::Bytes(t) if first_bytes(t, 8).unwrap() == Some(b"two")))
                    })
                    .map(|f| f.raw.to_vec())
                    .collect();
                *g = kept.concat();
                put_bytes_field(g, 5, &tensor("two", FLOAT, dims, &raw_f32(&[v])));
            }
        };
        left(&edit(&with_two(&[], 3.0)));
        left(&edit(&with_two(&[1, 1, 1, 1], 2.0)));
        // A Sin with no input, or of another domain.
        left(&edit(&|g| {
            let kept: Vec<Vec<u8>> = Fields(&g[..])
                .map(|f| f.unwrap())
                .map(|f| match f.value {
                    Value::Bytes(n) if f.number == 1 && first_bytes(n, 4).unwrap() == Some(b"Sin") => {
                        let mut m = Vec::new();
                        put_node(&mut m, "Sin", "s", &[], &[b"sin"], &[]);
                        m
                    }
                    _ => f.raw.to_vec(),
                })
                .collect();
            *g = kept.concat();
        }));
        left(&edit(&|g| {
            let kept: Vec<Vec<u8>> = Fields(&g[..])
                .map(|f| f.unwrap())
                .map(|f| match f.value {
                    Value::Bytes(n) if f.number == 1 && first_bytes(n, 4).unwrap() == Some(b"Sin") => {
                        let mut body = n.to_vec();
                        put_bytes_field(&mut body, 7, b"elsewhere");
                        let mut m = Vec::new();
                        put_bytes_field(&mut m, 1, &body);
                        m
                    }
                    _ => f.raw.to_vec(),
                })
                .collect();
            *g = kept.concat();
        }));
        // a given as [c] (not [1, c, 1]).
        let flat = {
            let mut g = Vec::new();
            for n in bytes_fields(bytes_fields(&stored, 7)[0], 1) {
                put_bytes_field(&mut g, 1, n);
            }
            put_bytes_field(&mut g, 5, &tensor("a", FLOAT, &[2], &raw_f32(&[1.0, 2.0])));
            put_bytes_field(&mut g, 5, &tensor("b", FLOAT, &[1, 2, 1], &raw_f32(&[1.0, 0.5])));
            put_bytes_field(&mut g, 5, &tensor("two", FLOAT, &[], &raw_f32(&[2.0])));
            let mut m = Vec::new();
            put_bytes_field(&mut m, 7, &g);
            m
        };
        left(&flat);
        // The Add of another value than the one scaled.
        let other_x = {
            let mut g = Vec::new();
            for n in bytes_fields(bytes_fields(&stored, 7)[0], 1) {
                if first_bytes(n, 4).unwrap() == Some(b"Add") {
                    put_node(&mut g, "Add", "add", &[b"z", b"scaled"], &[b"y"], &[]);
                } else {
                    put_bytes_field(&mut g, 1, n);
                }
            }
            for t in bytes_fields(bytes_fields(&stored, 7)[0], 5) {
                put_bytes_field(&mut g, 5, t);
            }
            let mut m = Vec::new();
            put_bytes_field(&mut m, 7, &g);
            m
        };
        left(&other_x);
        for cut in [1, stored.len() / 2, stored.len() - 1] {
            assert!(fuse(&stored[..cut]).is_err(), "cut at {cut}");
        }
    }
}
