//! Adaptive instance normalization (AdaIN), `y = g (x - mean) / sqrt(var +
//! eps) + s` over each channel of each item, as one operator of tayori's
//! own in place of the nine nodes ONNX Runtime runs one after another.
//!
//! Kokoro's decoder normalizes the input of each of its residual
//! convolutions by the statistics of each channel and scales and shifts it
//! by the voice's style (`g` and `s` of shape `[1, c, 1]`, computed from the
//! style as it runs). The export spells it out: `ReduceMean`, `Sub`,
//! `Mul(d, d)`, `ReduceMean`, `Add(eps)`, `Sqrt`, `Div`, `Mul(g, ·)`,
//! `Add(·, s)`, each a pass of its own over up to 128 x 30000 values (ONNX
//! Runtime's profile of a Kokoro run: some 150 ms of 1.5 s). [`fuse`]
//! rewrites each such chain as one `tayori.AdaIn(x, eps, g, s)` node and
//! [`AdaInOp`] computes it a channel at a time while the channel is in the
//! cache: its sum, the sum of its squared deviations, then the output; the
//! channels in parts on the session's own threads
//! ([`super::kernel::by_rows`]).
//!
//! The same operations in the same order and precision as the nodes, but
//! for the two sums, which are added in f64 here (ONNX Runtime adds them in
//! f32, in an order of its own): the mean and variance differ in their last
//! bits, the output by about 1e-6 where it is of order 1 (a few units in
//! the last place), more in a channel whose deviations are small against
//! its mean, where ONNX Runtime's f32 sums lose digits. Through Kokoro's
//! quantized layers such roundings move the waveform, not the sound: the
//! judges of benches/voices.rs give the five Japanese Kokoro voices the same
//! scores with and without it (issue 15's closing notes).
//!
//! Written here because no ONNX Runtime operator computes it (its
//! `InstanceNormalization` takes constant scales and would still leave two
//! passes for the style) and no crate has it.

use ort::operator::{BoxedKernel, ComputeContext, KernelContext, Operator, OperatorInput, OperatorOutput};
use ort::value::TensorElementType;

use super::kernel::{Operand, Par, each_row, rank3, session_threads};
use super::proto::{Attribute, Chain, Graph, ModelError, Node, Tensor, Wiring, dtype::FLOAT, fuse_chains};

/// The operator's name (in the [`super::DOMAIN`] domain).
const NAME: &str = "AdaIn";

/// `model` (the bytes of an .onnx file) with every AdaIN chain as one
/// `tayori.AdaIn` node, and the `tayori` domain imported. A model with none
/// is returned as it was.
pub fn fuse(model: &[u8]) -> Result<Vec<u8>, ModelError> {
    fuse_chains(model, (super::DOMAIN, NAME, "tayori_adain"), find)
}

/// Whether `t` (an initializer) is one float: the epsilon, of rank 3 at most
/// (a larger one would broadcast the output up to it).
fn is_scalar_float(t: &[u8]) -> Result<bool, ModelError> {
    let t = Tensor::parse(t)?;
    Ok(t.data_type == FLOAT
        && !t.external
        && t.dims.len() <= 3
        && t.dims.iter().all(|&d| d == 1)
        && t.f32_values().len() == 1)
}

/// Whether `n` (a ReduceMean) averages over axis 2 (the last of the three
/// the operator takes) and keeps it: axes `[2]` as an attribute (before
/// opset 18) or a constant input, and `keepdims` 1. (`[-1]` is left: it is
/// axis 2 only of a tensor of rank 3, which the graph need not say.)
fn over_last_axis(n: &Node, g: &Graph) -> Result<bool, ModelError> {
    let mut axes_attr = None;
    for a in &n.attrs {
        let a = Attribute::parse(a)?;
        match a.name {
            b"keepdims" if a.int != Some(1) => return Ok(false),
            b"keepdims" | b"noop_with_empty_axes" => {}
            b"axes" => axes_attr = Some(a.ints),
            _ => return Ok(false),
        }
    }
    match (&n.inputs[..], axes_attr) {
        ([_], Some(axes)) => Ok(axes == [2]),
        ([_, axes], None) => match g.constant(axes) {
            Some(t) => Ok(Tensor::parse(t)?.i64_values().is_some_and(|v| v == [2])),
            None => Ok(false),
        },
        _ => Ok(false),
    }
}

/// The AdaIN chain that ends at node `k` (its last Add), if one does: `(x,
/// eps, g, s)` and the eight nodes folded into it.
fn find<'g>(g: &Graph<'g>, wiring: &Wiring<'g>, k: usize) -> Result<Option<Chain<'g>>, ModelError> {
    let (nodes, add) = (&g.nodes, &g.nodes[k]);
    if add.op != b"Add" || !add.is_plain(2, false) {
        return Ok(None);
    }
    let constant = |v: &[u8]| g.constant(v);
    // (ReduceMean has attributes, checked by `over_last_axis`.)
    let step = |v: &[u8], op: &[u8], inputs| g.private_producer(wiring, v, (op, inputs, op == b"ReduceMean"));
    let mean_of = |v: &[u8]| -> Result<Option<(usize, &[u8])>, ModelError> {
        for inputs in [1, 2] {
            if let Some(r) = step(v, b"ReduceMean", inputs) {
                return Ok(over_last_axis(&nodes[r], g)?.then_some((r, nodes[r].inputs[0])));
            }
        }
        Ok(None)
    };
    for (scaled, shift) in [(add.inputs[0], add.inputs[1]), (add.inputs[1], add.inputs[0])] {
        let Some(mul) = step(scaled, b"Mul", 2) else { continue };
        let [p, q] = nodes[mul].inputs[..] else { continue };
        for (gain, normed) in [(p, q), (q, p)] {
            let Some(div) = step(normed, b"Div", 2) else { continue };
            let [d, sd] = nodes[div].inputs[..] else { continue };
            let Some(sqrt) = step(sd, b"Sqrt", 1) else { continue };
            let Some(plus) = step(nodes[sqrt].inputs[0], b"Add", 2) else { continue };
            let [u, v] = nodes[plus].inputs[..] else { continue };
            let (eps, var) = if constant(u).is_some() { (u, v) } else { (v, u) };
            if !constant(eps).map(is_scalar_float).transpose()?.unwrap_or(false) {
                continue;
            }
            let Some((mean_sq, sq)) = mean_of(var)? else { continue };
            let Some(square) = step(sq, b"Mul", 2).filter(|&n| nodes[n].inputs[..] == [d, d]) else { continue };
            // The deviation, read by the square (twice) and the Div alone.
            let sub = wiring.producer(d).filter(|_| wiring.reads(d) == 3 && !g.outputs.contains(d));
            let Some(sub) = sub.filter(|&s| nodes[s].op == b"Sub" && nodes[s].is_plain(2, false)) else { continue };
            let [x, mean] = nodes[sub].inputs[..] else { continue };
            let Some((mean_x, x1)) = mean_of(mean)? else { continue };
            if x1 == x && [x, gain, shift].iter().all(|v| !v.is_empty()) {
                let folded = vec![mean_x, sub, square, mean_sq, plus, sqrt, div, mul];
                return Ok(Some((vec![x, eps, gain, shift], folded)));
            }
        }
    }
    Ok(None)
}

/// `tayori.AdaIn(x float [n, c, l], eps float, g float, s float) -> float
/// [n, c, l]`: see the module's documentation.
pub struct AdaInOp;

impl Operator for AdaInOp {
    type Kernel<'attr> = BoxedKernel<'attr>;

    fn name(&self) -> &str {
        NAME
    }

    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        [const { OperatorInput::required(TensorElementType::Float32) }; 4]
    }

    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        [OperatorOutput::required(TensorElementType::Float32)]
    }

    fn create_kernel<'attr>(&self, _: &KernelContext<'attr>) -> ort::Result<Self::Kernel<'attr>> {
        Ok(Box::new(|ctx: &ComputeContext| {
            let missing = || ort::Error::new("AdaIn: an input is missing");
            let x = ctx.input(0)?.ok_or_else(missing)?;
            let eps = ctx.input(1)?.ok_or_else(missing)?;
            let gain = ctx.input(2)?.ok_or_else(missing)?;
            let shift = ctx.input(3)?.ok_or_else(missing)?;
            let (shape, x) = x.try_extract_tensor::<f32>()?;
            let (_, eps) = eps.try_extract_tensor::<f32>()?;
            let (gain_shape, gain) = gain.try_extract_tensor::<f32>()?;
            let (shift_shape, shift) = shift.try_extract_tensor::<f32>()?;
            let shape = shape.to_vec();
            let (n, c, l) = rank3(&shape, "AdaIn: x is not [n, c, l]")?;
            let &[eps] = eps else { return Err(ort::Error::new("AdaIn: eps is not one value")) };
            let unfit = || ort::Error::new("AdaIn: g or s does not broadcast to x");
            let gain = Operand::new(gain, gain_shape, [n, c, l]).ok_or_else(unfit)?;
            let shift = Operand::new(shift, shift_shape, [n, c, l]).ok_or_else(unfit)?;
            let mut y = ctx.output(0, shape)?.ok_or_else(|| ort::Error::new("AdaIn: no output"))?;
            let (_, y) = y.try_extract_tensor_mut::<f32>()?;
            adain(x, (n, c, l), eps, gain, shift, y, &session_threads(ctx))
        }))
    }
}

/// `y = g (x - mean) / sqrt(var + eps) + s` over `[n, c, l]`, mean and
/// variance per row (item and channel); the rows in parts run by `par`.
pub fn adain(
    x: &[f32],
    (n, c, l): (usize, usize, usize),
    eps: f32,
    gain: Operand<f32>,
    shift: Operand<f32>,
    y: &mut [f32],
    par: Par,
) -> ort::Result<()> {
    if l == 0 || n * c == 0 {
        return Ok(());
    }
    let row = row_fn();
    each_row(x, y, l, par, |r, x, y| row(x, eps, (r / c, r % c), gain, shift, y))
}

type Row = fn(&[f32], f32, (usize, usize), Operand<f32>, Operand<f32>, &mut [f32]);

/// The row function for this CPU: compiled for AVX2 when it has it (checked
/// once a call, not a row).
fn row_fn() -> Row {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        return |x, eps, at, gain, shift, y| {
            // SAFETY: returned only when the CPU has AVX2, checked just
            // above.
            unsafe { row_avx2(x, eps, at, gain, shift, y) }
        };
    }
    row_body
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn row_avx2(x: &[f32], eps: f32, at: (usize, usize), gain: Operand<f32>, shift: Operand<f32>, y: &mut [f32]) {
    row_body(x, eps, at, gain, shift, y);
}

/// Lanes of the f64 sums: enough independent sums for the compiler to
/// keep them in vector registers.
const LANES: usize = 8;

/// The sum of `f` over `x`, in f64, in [`LANES`] partial sums.
#[inline(always)]
fn sum(x: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    let mut acc = [0f64; LANES];
    let chunks = x.chunks_exact(LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (a, &v) in acc.iter_mut().zip(chunk) {
            *a += f64::from(f(v));
        }
    }
    acc.iter().sum::<f64>() + rest.iter().map(|&v| f64::from(f(v))).sum::<f64>()
}

#[inline(always)]
fn row_body(x: &[f32], eps: f32, (i, ch): (usize, usize), gain: Operand<f32>, shift: Operand<f32>, y: &mut [f32]) {
    let l = x.len() as f64;
    // As the nodes: the mean rounded to f32, the deviation and its square
    // in f32, the variance rounded to f32, then eps added and the root taken
    // in f32.
    let mean = (sum(x, |v| v) / l) as f32;
    let var = (sum(x, |v| (v - mean) * (v - mean)) / l) as f32;
    let sd = (var + eps).sqrt();
    if gain.steps[2] == 0 && shift.steps[2] == 0 {
        let (g, s) = (gain.at(i, ch, 0), shift.at(i, ch, 0));
        for (y, &v) in y.iter_mut().zip(x) {
            *y = g * ((v - mean) / sd) + s;
        }
    } else {
        for (t, (y, &v)) in y.iter_mut().zip(x).enumerate() {
            *y = gain.at(i, ch, t) * ((v - mean) / sd) + shift.at(i, ch, t);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::kernel::in_order;
    use crate::onnx::proto::{Attr, dtype::INT64, put_bytes_field, put_node, tensor};
    use crate::onnx::testing::{model_of, ops, replace_node, session, value, with_graph};

    /// x [n, c, l] → AdaIN as Kokoro's export spells it (g and s graph
    /// inputs) → y; the ReduceMean axes as an input (opset 18) or an
    /// attribute (17); with `swapped`, each two-input node's operands that
    /// may be the other way round are.
    fn model(opset: u64, swapped: bool) -> Vec<u8> {
        let order = |p: &'static [u8], q: &'static [u8]| if swapped { [q, p] } else { [p, q] };
        let mut g = Vec::new();
        let mean = |g: &mut Vec<u8>, name: &str, input: &'static [u8], out: &'static [u8]| {
            if opset >= 18 {
                put_node(g, "ReduceMean", name, &[input, b"axes"], &[out], &[Attr::Int("keepdims", 1)]);
            } else {
                put_node(
                    g,
                    "ReduceMean",
                    name,
                    &[input],
                    &[out],
                    &[Attr::Ints("axes", &[2]), Attr::Int("keepdims", 1)],
                );
            }
        };
        mean(&mut g, "m1", b"x", b"mean");
        put_node(&mut g, "Sub", "sub", &[b"x", b"mean"], &[b"d"], &[]);
        put_node(&mut g, "Mul", "sq", &[b"d", b"d"], &[b"d2"], &[]);
        mean(&mut g, "m2", b"d2", b"var");
        put_node(&mut g, "Add", "plus", &order(b"var", b"eps"), &[b"ve"], &[]);
        put_node(&mut g, "Sqrt", "sqrt", &[b"ve"], &[b"sd"], &[]);
        put_node(&mut g, "Div", "div", &[b"d", b"sd"], &[b"normed"], &[]);
        put_node(&mut g, "Mul", "mul", &order(b"g", b"normed"), &[b"scaled"], &[]);
        put_node(&mut g, "Add", "add", &order(b"scaled", b"s"), &[b"y"], &[]);
        put_bytes_field(&mut g, 5, &tensor("eps", FLOAT, &[], &1e-5f32.to_le_bytes()));
        put_bytes_field(&mut g, 5, &tensor("axes", INT64, &[1], &2i64.to_le_bytes()));
        put_bytes_field(&mut g, 5, &tensor("axis1", INT64, &[1], &1i64.to_le_bytes()));
        for v in ["x", "g", "s"] {
            put_bytes_field(&mut g, 11, &value(v, FLOAT));
        }
        put_bytes_field(&mut g, 12, &value("y", FLOAT));
        model_of(&g, opset)
    }

    type Input<'a> = (&'a [usize], Vec<f32>);

    fn run(s: &mut ort::session::Session, x: Input, g: Input, sh: Input) -> ort::Result<Vec<f32>> {
        let t = |(shape, v): Input| ort::value::Tensor::from_array((shape.to_vec(), v));
        let out = s.run(ort::inputs! {"x" => t(x)?, "g" => t(g)?, "s" => t(sh)?})?;
        Ok(out["y"].try_extract_tensor::<f32>()?.1.to_vec())
    }

    /// ONNX Runtime's nine nodes and the fused operator on the same input:
    /// the same values within float rounding (the sums are added in another
    /// order), for axes given either way, operands either way round, three
    /// items in two parts of work (the second from item 2's last channel),
    /// g and s per channel, one for all, or per element, a channel far from
    /// zero (its deviations small against its mean) and a constant one.
    #[test]
    fn the_fused_operator_computes_the_chain() {
        // 21 rows of 3200: parts of 20 rows.
        let (n, c, l) = (3usize, 7usize, 3200usize);
        let mut x: Vec<f32> = (0..n * c * l).map(|i| ((i * 7919 % 20011) as f32 - 10005.0) / 4000.0).collect();
        // Channel 1 of item 0: 1000 + small deviations; channel 2: constant.
        for t in 0..l {
            x[l + t] = 1000.0 + ((t * 31 % 17) as f32 - 8.0) / 64.0;
            x[2 * l + t] = 0.5;
        }
        let per_channel: Vec<f32> = (0..c).map(|i| 1.0 + i as f32 / 3.0).collect();
        let per_element: Vec<f32> = (0..n * c * l).map(|i| (i % 7) as f32 - 3.0).collect();
        let inputs: [(Input, Input); 3] = [
            ((&[1, c, 1], per_channel.clone()), (&[c, 1], per_channel.iter().map(|v| v - 2.0).collect())),
            ((&[1], vec![0.75]), (&[], vec![-0.5])),
            ((&[n, c, l], per_element.clone()), (&[1, c, 1], per_channel.clone())),
        ];
        for opset in [17, 18] {
            for swapped in [false, true] {
                let stored = model(opset, swapped);
                let fused = fuse(&stored).unwrap();
                assert_eq!(ops(&fused), ["AdaIn"], "opset {opset} swapped {swapped}");
                let (mut a, mut b) = (session(&stored).unwrap(), session(&fused).unwrap());
                for (g, sh) in &inputs {
                    let want = run(&mut a, (&[n, c, l], x.clone()), g.clone(), sh.clone()).unwrap();
                    let got = run(&mut b, (&[n, c, l], x.clone()), g.clone(), sh.clone()).unwrap();
                    assert_eq!(want.len(), got.len());
                    assert!(want.iter().any(|&v| v != want[0]), "the output varies");
                    for (i, (p, q)) in want.iter().zip(&got).enumerate() {
                        // Normalized values are of order 1; the far
                        // channel's deviations are known to a few 1e-5 of
                        // its mean (the f32 grid at 1000 is 6e-5).
                        let tolerance = if i / l % c == 1 && i < c * l { 2e-2 } else { 1e-4 };
                        assert!((p - q).abs() <= tolerance * p.abs().max(1.0), "at {i}: {p} against {q}");
                    }
                }
            }
        }
    }

    /// Operands that would make the output of a higher rank, or an x not of
    /// rank 3, fail the run with a plain message.
    #[test]
    fn operands_it_cannot_broadcast_fail_the_run() {
        let mut s = session(&fuse(&model(18, false)).unwrap()).unwrap();
        let x: Input = (&[1, 2, 8], (0..16).map(|v| v as f32).collect());
        let err = run(&mut s, x.clone(), (&[2, 1, 2, 1], vec![1.0; 4]), (&[], vec![0.0])).unwrap_err();
        assert!(err.to_string().contains("g or s does not broadcast"), "{err}");
        let err = run(&mut s, (&[1, 2, 2, 4], x.1.clone()), (&[], vec![1.0]), (&[], vec![0.0])).unwrap_err();
        assert!(err.to_string().contains("x is not [n, c, l]"), "{err}");
    }

    /// Chains that are not quite AdaIN are left: an intermediate value read
    /// elsewhere or a graph output, a mean over another axis (or axis -1)
    /// or not kept, an eps a caller may replace, a variance of another value
    /// than the deviation, a node with an attribute it does not know.
    /// Truncated models are refused.
    #[test]
    fn chains_it_does_not_fit_are_left() {
        let stored = model(18, false);
        let left = |m: &[u8]| {
            let out = fuse(m).unwrap();
            assert_eq!(out, m, "{:?}", ops(&out));
        };
        for v in ["mean", "d", "d2", "var", "ve", "sd", "normed", "scaled"] {
            left(&with_graph(&stored, 18, |g| put_node(g, "Neg", "r", &[v.as_bytes()], &[b"other"], &[])));
            left(&with_graph(&stored, 18, |g| put_bytes_field(g, 12, &value(v, FLOAT))));
        }
        left(&with_graph(&stored, 18, |g| put_bytes_field(g, 11, &value("eps", FLOAT))));
        let replaced = |name: &str, op: &str, inputs: &[&[u8]], output: &[u8], attrs: &[Attr]| {
            replace_node(&stored, 18, name, |g| put_node(g, op, name, inputs, &[output], attrs))
        };
        left(&replaced("m1", "ReduceMean", &[b"x", b"axis1"], b"mean", &[]));
        left(&replaced("m2", "ReduceMean", &[b"d2", b"axes"], b"var", &[Attr::Int("keepdims", 0)]));
        let minus_one =
            with_graph(&stored, 18, |g| put_bytes_field(g, 5, &tensor("last", INT64, &[1], &(-1i64).to_le_bytes())));
        left(&replace_node(&minus_one, 18, "m1", |g| {
            put_node(g, "ReduceMean", "m1", &[b"x", b"last"], &[b"mean"], &[])
        }));
        left(&replaced("sq", "Mul", &[b"d", b"x"], b"d2", &[]));
        left(&replaced("sub", "Sub", &[b"s", b"mean"], b"d", &[]));
        left(&replaced("sqrt", "Abs", &[b"ve"], b"sd", &[]));
        left(&replaced("div", "Div", &[b"d", b"sd"], b"normed", &[Attr::Int("broadcast", 1)]));
        for cut in [1, stored.len() / 2, stored.len() - 1] {
            assert!(fuse(&stored[..cut]).is_err(), "cut at {cut}");
        }
    }

    /// Speed of the operator against ONNX Runtime's nine nodes, on one of
    /// Kokoro's largest shapes (128 channels, 30000 steps), printed.
    #[test]
    fn the_fused_operator_time_is_printed() {
        let (c, l) = (128usize, 30_000usize);
        let stored = model(18, false);
        let fused = fuse(&stored).unwrap();
        assert_eq!(ops(&fused), ["AdaIn"]);
        let x: Vec<f32> = (0..c * l).map(|i| ((i * 7919 % 20011) as f32 - 10005.0) / 4000.0).collect();
        let g: Vec<f32> = (0..c).map(|i| 1.0 + i as f32 / 100.0).collect();
        let sh: Vec<f32> = (0..c).map(|i| i as f32 / 50.0 - 1.0).collect();
        let time = |m: &[u8]| {
            let mut s = session(m).unwrap();
            let mut best = f64::MAX;
            let mut out = Vec::new();
            for _ in 0..5 {
                let t = std::time::Instant::now();
                out = run(&mut s, (&[1, c, l], x.clone()), (&[1, c, 1], g.clone()), (&[1, c, 1], sh.clone())).unwrap();
                best = best.min(t.elapsed().as_secs_f64());
            }
            (best, out)
        };
        let ((a, want), (b, got)) = (time(&stored), time(&fused));
        let worst = want.iter().zip(&got).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max);
        println!("128 x 30000: {:.1} ms as nine nodes, {:.1} ms fused; largest difference {worst}", a * 1e3, b * 1e3);
        assert!(worst < 1e-5, "largest difference {worst}");
        let gain = Operand::new(&g, &[1, c as i64, 1], [1, c, l]).unwrap();
        let shift = Operand::new(&sh, &[1, c as i64, 1], [1, c, l]).unwrap();
        let mut y = vec![0f32; c * l];
        let alone = in_order;
        adain(&x, (1, c, l), 1e-5, gain, shift, &mut y, &alone).unwrap();
        let t = std::time::Instant::now();
        for _ in 0..20 {
            adain(&x, (1, c, l), 1e-5, gain, shift, &mut y, &alone).unwrap();
        }
        println!("the operator alone, one thread: {:.2} ms", t.elapsed().as_secs_f64() / 20.0 * 1e3);
    }
}
