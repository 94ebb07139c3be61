//! A short-time Fourier transform of a constant window (`STFT`, one-sided)
//! rewritten as a strided convolution with the window's DFT kernels.
//!
//! Kokoro's vocoder takes the STFT of its harmonic source (frames of 20
//! samples every 5, 11 bins) for the magnitude and phase it conditions on.
//! ONNX Runtime's CPU `STFT` runs on one thread and took 82-92 ms of a
//! 1.05 s Kokoro run (30117 frames); the same numbers as a `Conv` with 22
//! kernels (the real and imaginary part of each bin: `w[t] cos(2 pi k t /
//! n)`, `-w[t] sin(2 pi k t / n)`) take 0.3 ms. They agree within 2e-6 on
//! values up to 2.9 (rounding: the kernels are computed in f64 and rounded
//! once; the test allows 1e-5 of the largest value).
//!
//! The imaginary part at 0 Hz and at half the rate is zero for a real
//! signal. ONNX Runtime's STFT leaves some 1e-7 of rounding there, of
//! either sign, frame by frame; the convolution would give exact zeros.
//! Neither is what Kokoro was trained on: its exported graph takes the
//! phase as `atan(y / x)`, plus pi where `x < 0` and `y > 0`, minus pi where
//! `x < 0` and `y <= 0`, so that a zero `y` with a negative `x` gives -pi
//! (and ONNX Runtime's noise gives +pi or -pi at random), where PyTorch's
//! `angle`, which the model was trained with, gives +pi (Kokoro's own
//! conv-based STFT for export corrects that case to +pi for this reason).
//! A phase that flips by 2 pi is a different input to the vocoder: with
//! exact zeros the judges heard it (`ja_kumo_male` DNSMOS OVRL 3.45 ->
//! 3.22). So those two imaginary parts are given as `EDGE` (1e-30), a positive
//! value far under any rounding: the phase is then +pi where the real part
//! is negative and within 1e-30 of 0 where it is positive, as in training,
//! and the magnitude is unchanged (`EDGE` squared is zero in f32). This is
//! a choice for Kokoro: a model whose graph reads these imaginary parts
//! otherwise should be judged before it uses the rewrite.
//!
//! ```text
//! x3 = Reshape(Reshape(signal, [0, 0, 1]), [0, 1, -1])   [b, 1, L]
//! c  = Conv(x3, W, B, strides = [hop])             [b, 2 bins, frames]
//! y  = Transpose(Reshape(c, [0, 2, bins, -1]), [0, 3, 2, 1])   [b, frames, bins, 2]
//! ```
//!
//! Only an `STFT` of ONNX's own domain with its frame step, window and
//! frame length constants (no graph input naming them), the window as long
//! as the frame, `onesided` 1 (or absent: 1 is its default) and no other
//! attribute, in a graph without subgraphs; any other is left. A complex
//! signal (`[b, L, 2]`, which a one-sided transform may not take) fails at
//! the first `Reshape`.

use super::proto::{
    Attr, Fields, Graph, ModelError, Node, Tensor, Value,
    dtype::{FLOAT, INT64},
    put_initializer, put_node, raw_f32, raw_i64, rewrite_graph,
};

/// Names of what the rewrite adds.
const PREFIX: &str = "tayori_stft";

/// The imaginary part given at 0 Hz and at half the rate, where the exact
/// transform of a real signal has zero: a positive value far under any
/// rounding (see the module's notes).
const EDGE: f32 = 1e-30;

/// `model` (the bytes of an .onnx file) with every `STFT` this rewrite fits
/// computed as a convolution. A model with none is returned as it was.
pub fn as_conv(model: &[u8]) -> Result<Vec<u8>, ModelError> {
    let mut found = 0;
    let out = rewrite_graph(model, 0, |g, out| {
        found = graph(g, out)?;
        Ok(())
    })?;
    Ok(if found == 0 { model.to_vec() } else { out })
}

/// An STFT the rewrite fits: its hop and window.
struct Plan {
    hop: i64,
    window: Vec<f32>,
}

fn plan(node: &Node, g: &Graph) -> Result<Option<Plan>, ModelError> {
    // `onesided` is 1 when absent.
    if node.op != b"STFT"
        || !node.is_plain(4, true)
        || !node.attrs_are(|a| a.name == b"onesided" && a.int == Some(1))?
    {
        return Ok(None);
    }
    let scalar = |v: &[u8]| -> Result<Option<i64>, ModelError> {
        let Some(t) = g.constant(v) else { return Ok(None) };
        let t = Tensor::parse(t)?;
        Ok(match (t.dims.len(), t.i64_values()) {
            (0, Some(v)) if v.len() == 1 => Some(v[0]),
            _ => None,
        })
    };
    let (Some(hop), Some(len)) = (scalar(node.inputs[1])?, scalar(node.inputs[3])?) else { return Ok(None) };
    let Some(w) = g.constant(node.inputs[2]) else { return Ok(None) };
    let w = Tensor::parse(w)?;
    let window = w.f32_values();
    if w.data_type != FLOAT || w.external || w.dims.len() != 1 || hop < 1 || len < 1 || window.len() as i64 != len {
        return Ok(None);
    }
    Ok(Some(Plan { hop, window }))
}

/// The graph with each STFT that fits replaced; returns how many (none
/// in a graph with subgraphs, whose names this does not read).
fn graph(msg: &[u8], out: &mut Vec<u8>) -> Result<usize, ModelError> {
    let g = Graph::parse(msg)?;
    let plans = g.nodes.iter().map(|n| plan(n, &g)).collect::<Result<Vec<_>, _>>()?;
    if plans.iter().all(Option::is_none) || g.nodes.iter().any(|n| n.subgraph) {
        return Ok(0);
    }
    if g.names_start_with(PREFIX) {
        return Err(ModelError("the model already names values as this rewrite does"));
    }
    let mut k = 0;
    for f in Fields(msg) {
        let f = f?;
        match (f.number, f.value) {
            (1, Value::Bytes(_)) => {
                match &plans[k] {
                    Some(p) => replace(out, k, &g.nodes[k], p),
                    None => out.extend_from_slice(f.raw),
                }
                k += 1;
            }
            _ => out.extend_from_slice(f.raw),
        }
    }
    Ok(plans.iter().filter(|p| p.is_some()).count())
}

/// The nodes that compute `node` (the `at`-th) as a convolution, and their
/// constants.
fn replace(out: &mut Vec<u8>, at: usize, node: &Node, plan: &Plan) {
    let name = |s: &str| format!("{PREFIX}_{at}_{s}");
    let n = plan.window.len();
    let bins = n / 2 + 1;
    // Row k: the real part of bin k; row bins + k: its imaginary part. At
    // a multiple of a quarter turn the cosine and sine are exact (0, 1 or
    // -1), so the imaginary kernels of 0 Hz and of half the rate are zeros
    // and their bias is EDGE.
    let mut kernels = vec![0f32; 2 * bins * n];
    let mut bias = vec![0f32; 2 * bins];
    for k in 0..bins {
        for (t, &w) in plan.window.iter().enumerate() {
            let m = (k * t) % n;
            let (cos, sin) = if m == 0 {
                (1.0, 0.0)
            } else if 4 * m == n {
                (0.0, 1.0)
            } else if 2 * m == n {
                (-1.0, 0.0)
            } else if 4 * m == 3 * n {
                (0.0, -1.0)
            } else {
                let angle = 2.0 * std::f64::consts::PI * m as f64 / n as f64;
                (angle.cos(), angle.sin())
            };
            kernels[k * n + t] = (f64::from(w) * cos) as f32;
            kernels[(bins + k) * n + t] = (-f64::from(w) * sin) as f32;
        }
        if k == 0 || 2 * k == n {
            bias[bins + k] = EDGE;
        }
    }
    let (real_shape, real) = (name("real_shape"), name("real"));
    let (row_shape, row) = (name("row_shape"), name("row"));
    let (kernel, bias_name, conv) = (name("kernel"), name("bias"), name("conv"));
    let (bins_shape, by_bin) = (name("bins_shape"), name("by_bin"));
    put_initializer(out, &real_shape, INT64, &[3], &raw_i64(&[0, 0, 1]));
    put_initializer(out, &row_shape, INT64, &[3], &raw_i64(&[0, 1, -1]));
    put_initializer(out, &kernel, FLOAT, &[2 * bins as u64, 1, n as u64], &raw_f32(&kernels));
    put_initializer(out, &bias_name, FLOAT, &[2 * bins as u64], &raw_f32(&bias));
    put_initializer(out, &bins_shape, INT64, &[4], &raw_i64(&[0, 2, bins as i64, -1]));
    // [b, L] or [b, L, 1] to [b, L, 1] (a complex signal, [b, L, 2], fails
    // here rather than being read as a real one twice as long), then
    // [b, 1, L].
    put_node(out, "Reshape", &real, &[node.inputs[0], real_shape.as_bytes()], &[real.as_bytes()], &[]);
    put_node(out, "Reshape", &row, &[real.as_bytes(), row_shape.as_bytes()], &[row.as_bytes()], &[]);
    let attrs = [Attr::Ints("kernel_shape", &[n as i64]), Attr::Ints("strides", &[plan.hop])];
    let conv_inputs = [row.as_bytes(), kernel.as_bytes(), bias_name.as_bytes()];
    put_node(out, "Conv", &conv, &conv_inputs, &[conv.as_bytes()], &attrs);
    put_node(out, "Reshape", &by_bin, &[conv.as_bytes(), bins_shape.as_bytes()], &[by_bin.as_bytes()], &[]);
    let perm = [Attr::Ints("perm", &[0, 3, 2, 1])];
    put_node(out, "Transpose", &name("y"), &[by_bin.as_bytes()], &[node.outputs[0]], &perm);
}

/// `model`, whose one `STFT` this rewrite fits, with its output passed
/// through `Mul` and `Add` nodes that set the imaginary part at 0 Hz and at
/// half the rate to [`EDGE`] and leave every other value as ONNX Runtime
/// computed it: the reference the rewrite is compared with.
#[cfg(test)]
pub(super) fn with_edges_as_trained(model: &[u8]) -> Vec<u8> {
    rewrite_graph(model, 0, |g, out| {
        let parsed = Graph::parse(g)?;
        let plans: Vec<_> = parsed.nodes.iter().filter_map(|n| plan(n, &parsed).transpose()).collect();
        let [Ok(Plan { window, .. })] = &plans[..] else { panic!("one STFT this rewrite fits") };
        let (n, bins) = (window.len(), window.len() / 2 + 1);
        let (mut mask, mut edge) = (vec![1f32; 2 * bins], vec![0f32; 2 * bins]);
        for bin in (0..bins).filter(|k| *k == 0 || 2 * k == n) {
            (mask[2 * bin + 1], edge[2 * bin + 1]) = (0.0, EDGE);
        }
        for f in Fields(g) {
            let f = f?;
            let stft = match f.value {
                Value::Bytes(n) if f.number == 1 => Some(Node::parse(n)?).filter(|n| n.op == b"STFT"),
                _ => None,
            };
            let Some(node) = stft else {
                out.extend_from_slice(f.raw);
                continue;
            };
            put_node(out, "STFT", "edges_stft", &node.inputs, &[b"edges_raw"], &[Attr::Int("onesided", 1)]);
            put_initializer(out, "edges_mask", FLOAT, &[bins as u64, 2], &raw_f32(&mask));
            put_initializer(out, "edges_value", FLOAT, &[bins as u64, 2], &raw_f32(&edge));
            put_node(out, "Mul", "edges_mul", &[b"edges_raw", b"edges_mask"], &[b"edges_kept"], &[]);
            put_node(out, "Add", "edges_add", &[b"edges_kept", b"edges_value"], &[node.outputs[0]], &[]);
        }
        Ok(())
    })
    .expect("a model")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::proto::{put_bytes_field, tensor};
    use crate::onnx::testing::{model_of, ops, replace_node, session, value, with_graph};

    /// signal [b, L] (or [b, L, 1]) → STFT (hop 5, Hann window of 20) → y.
    fn model() -> Vec<u8> {
        let n = 20;
        let window: Vec<f32> =
            (0..n).map(|t| (0.5 - 0.5 * (2.0 * std::f64::consts::PI * t as f64 / n as f64).cos()) as f32).collect();
        let window = raw_f32(&window);
        let mut g = Vec::new();
        put_node(&mut g, "STFT", "stft", &[b"x", b"hop", b"win", b"len"], &[b"y"], &[Attr::Int("onesided", 1)]);
        put_bytes_field(&mut g, 5, &tensor("hop", INT64, &[], &5i64.to_le_bytes()));
        put_bytes_field(&mut g, 5, &tensor("win", FLOAT, &[n], &window));
        put_bytes_field(&mut g, 5, &tensor("len", INT64, &[], &(n as i64).to_le_bytes()));
        put_bytes_field(&mut g, 11, &value("x", FLOAT));
        put_bytes_field(&mut g, 12, &value("y", FLOAT));
        model_of(&g, 17)
    }

    fn run(m: &[u8], shape: &[usize], x: &[f32]) -> (Vec<i64>, Vec<f32>) {
        let mut s = session(m).unwrap();
        let t = ort::value::Tensor::from_array((shape.to_vec(), x.to_vec())).unwrap();
        let out = s.run(ort::inputs! {"x" => t}).unwrap();
        let (shape, y) = out["y"].try_extract_tensor::<f32>().unwrap();
        (shape.to_vec(), y.to_vec())
    }

    /// ONNX Runtime's STFT and the convolution give the same frames, bins
    /// and values (within 1e-5 of the largest), for a signal of two items
    /// given as [b, L] and as [b, L, 1].
    #[test]
    fn the_convolution_computes_the_transform() {
        let stored = model();
        let rewritten = as_conv(&stored).unwrap();
        assert_eq!(ops(&rewritten), ["Reshape", "Reshape", "Conv", "Reshape", "Transpose"]);
        let l = 6003;
        let x: Vec<f32> = (0..2 * l)
            .map(|i| {
                let t = (i % l) as f32 / 24_000.0;
                (0.3 * (2.0 * std::f32::consts::PI * 220.0 * t).sin()) + ((i * 7919 % 101) as f32 - 50.0) / 5000.0
            })
            .collect();
        for shape in [&[2, l][..], &[2, l, 1]] {
            let (want_shape, want) = run(&stored, shape, &x);
            let (got_shape, got) = run(&rewritten, shape, &x);
            assert_eq!(want_shape, [2, ((l - 20) / 5 + 1) as i64, 11, 2]);
            assert_eq!(want_shape, got_shape);
            let top = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            let worst = want.iter().zip(&got).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max);
            println!("largest value {top}, largest difference {worst}");
            assert!(top > 1.0 && worst < 1e-5 * top, "largest difference {worst} of {top}");
            // [b, frame, bin, (re, im)]: the imaginary part at 0 Hz and at
            // half the rate is EDGE in every frame (ONNX Runtime's is
            // rounding of either sign), so a negative real part has phase
            // +pi there, as PyTorch's angle gives for a zero.
            let imag = |v: &[f32], bin: usize| v.chunks_exact(22).map(|f| f[2 * bin + 1]).collect::<Vec<f32>>();
            for bin in [0, 10] {
                assert!(imag(&got, bin).iter().all(|v| *v == EDGE), "bin {bin}");
                assert!(imag(&want, bin).iter().all(|v| v.abs() < 1e-5 * top), "bin {bin}");
                let re: Vec<f32> = got.chunks_exact(22).map(|f| f[2 * bin]).collect();
                assert!(re.iter().any(|v| *v < -0.01) && re.iter().any(|v| *v > 0.01), "both signs at bin {bin}");
                let negative = re.iter().zip(imag(&got, bin)).filter(|(x, _)| **x < 0.0);
                assert!(negative.map(|(x, y)| y.atan2(*x)).all(|p| p == std::f32::consts::PI), "bin {bin}");
            }
            // The other bins' imaginary parts are real values, not EDGE.
            assert!(imag(&got, 3).iter().any(|v| v.abs() > 0.01));
        }
    }

    /// An STFT it does not fit is left: two-sided, a window a caller may
    /// replace, a frame length other than the window's, an unknown
    /// attribute. Truncated models are refused.
    #[test]
    fn what_it_does_not_fit_is_left() {
        let stored = model();
        let left = |m: &[u8]| assert_eq!(as_conv(m).unwrap(), m);
        let stft = |attrs: &[Attr], len: &'static [u8]| {
            let attrs = attrs.to_vec();
            replace_node(&stored, 17, "stft", move |g| {
                put_node(g, "STFT", "stft", &[b"x", b"hop", b"win", len], &[b"y"], &attrs)
            })
        };
        left(&stft(&[Attr::Int("onesided", 0)], b"len"));
        left(&stft(&[Attr::Int("onesided", 1), Attr::Int("other", 1)], b"len"));
        left(&with_graph(&stored, 17, |g| put_bytes_field(g, 11, &value("win", FLOAT))));
        let longer =
            with_graph(&stored, 17, |g| put_bytes_field(g, 5, &tensor("len2", INT64, &[], &21i64.to_le_bytes())));
        left(&replace_node(&longer, 17, "stft", |g| {
            put_node(g, "STFT", "stft", &[b"x", b"hop", b"win", b"len2"], &[b"y"], &[])
        }));
        for cut in [1, stored.len() / 2, stored.len() - 1] {
            assert!(as_conv(&stored[..cut]).is_err(), "cut at {cut}");
        }
        // Without `onesided` (1 by default) it is rewritten; a model
        // rewritten once has nothing left to rewrite.
        let default = stft(&[], b"len");
        assert_eq!(ops(&as_conv(&default).unwrap()), ["Reshape", "Reshape", "Conv", "Reshape", "Transpose"]);
        let once = as_conv(&stored).unwrap();
        assert_eq!(as_conv(&once).unwrap(), once);
    }

    /// A complex signal ([b, L, 2]) is refused when the rewritten model
    /// runs, not read as a real signal twice as long.
    #[test]
    fn a_complex_signal_is_refused() {
        let rewritten = as_conv(&model()).unwrap();
        let mut s = session(&rewritten).unwrap();
        let x = ort::value::Tensor::from_array((vec![1usize, 400, 2], vec![0.5f32; 800])).unwrap();
        assert!(s.run(ort::inputs! {"x" => x}).is_err());
    }
}
