//! ONNX Runtime, loaded once per process from the shared library named by
//! `TAYORI_ORT_LIB` (default `{data_dir}/runtime/libonnxruntime.so`, put
//! there by scripts/assets.sh), and sessions built the same way for every
//! model (Piper voices, segmentation).

pub mod adain;
pub mod any_side;
pub mod dequant;
pub mod int8_conv;
pub mod kernel;
mod proto;
pub mod prune;
pub mod snake;
pub mod stft;
#[cfg(test)]
mod testing;
pub mod widen;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::session::Session;

static RUNTIME: OnceLock<Result<ort::environment::Environment, String>> = OnceLock::new();

#[derive(Debug, Clone, thiserror::Error)]
pub enum OnnxError {
    #[error("ONNX Runtime could not be loaded from {path}: {reason}")]
    Runtime { path: String, reason: String },
    #[error("model {path}: {reason}")]
    Model { path: String, reason: String },
}

/// Where the ONNX Runtime library is.
pub fn runtime_path(data_dir: &Path) -> PathBuf {
    shared::env::var("TAYORI_ORT_LIB").map(PathBuf::from).unwrap_or_else(|| data_dir.join("runtime/libonnxruntime.so"))
}

fn runtime(lib: &Path) -> Result<&'static ort::environment::Environment, OnnxError> {
    RUNTIME
        .get_or_init(|| {
            ort::init_from(lib).map_err(|e| e.to_string())?.with_name("tayori").build().map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|reason| OnnxError::Runtime { path: lib.display().to_string(), reason: reason.clone() })
}

/// A session for `model`, using `threads` intra-op threads. Blocking (reads
/// and optimizes the model).
///
/// With `lean`, ONNX Runtime's memory pattern (one pre-planned block for
/// all activations) is off; the CPU arena stays on, reusing buffers from run
/// to run. For IS-Net at 1024x1024 (measured with benches/vision.rs): peak
/// resident 1.90 GB -> 0.96 GB, and a run 1.46 s -> 1.30 s. Without the arena
/// too it fell to 0.87 GB but a run took 2.8 s (fresh pages every run).
pub fn session(lib: &Path, model: &Path, threads: usize, lean: bool) -> Result<Session, OnnxError> {
    session_rewritten(lib, model, threads, lean, Rewrite::default())
}

/// How a model is rewritten before ONNX Runtime reads it (beyond widening
/// fp16, which is always done).
#[derive(Debug, Default, Clone, Copy)]
pub struct Rewrite {
    /// The model's one input is this many pixels square and its upsampling
    /// sizes are constants (IS-Net): made to run at any side ([`any_side`]).
    pub any_side: Option<u64>,
    /// Only the first output is read: the rest of the graph is removed
    /// ([`prune`]).
    pub first_output_only: bool,
    /// Integer convolutions with uint8 weights run as integer matrix
    /// products with int8 weights, exactly, in less time (Kokoro:
    /// [`int8_conv`]).
    pub int8_convs: bool,
    /// Snake activations (Kokoro's vocoder) computed by one operator of
    /// tayori's own instead of five ([`snake`]).
    pub snake: bool,
    /// The float output of integer products (after `int8_convs`) made by
    /// one operator of tayori's own instead of four, exactly ([`dequant`]).
    pub dequant: bool,
    /// Adaptive instance normalizations (Kokoro's decoder) computed by one
    /// operator of tayori's own instead of nine ([`adain`]).
    pub adain: bool,
    /// Short-time Fourier transforms of a constant window computed as a
    /// convolution ([`stft`]; the imaginary parts at 0 Hz and half the
    /// rate given as a tiny positive value, for Kokoro's phase).
    pub stft: bool,
}

/// The operator domain of tayori's own operators, which [`snake`],
/// [`dequant`] and [`adain`] write into models.
pub const DOMAIN: &str = "tayori";

/// Tayori's operators, for a session of a model [`snake`], [`dequant`] or
/// [`adain`] rewrote.
pub fn operators() -> ort::Result<ort::operator::OperatorDomain> {
    ort::operator::OperatorDomain::new(DOMAIN)?
        .add(snake::SnakeOp)?
        .add(dequant::TransposeDequantizeOp)?
        .add(adain::AdaInOp)
}

/// Held while a session with tayori's [`operators`] is made. ONNX Runtime
/// adds a session's custom domain to a process-wide table of domains
/// without a lock of its own: two such sessions made at the same moment can
/// both find the domain missing, and the second to add it fails the session
/// ("the domain is already exist"; seen in 4 of 25 runs of two operator
/// tests side by side). Made one at a time, the second finds it there.
fn operators_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// [`session`] for a model rewritten as `rewrite` says.
pub fn session_rewritten(
    lib: &Path,
    model: &Path,
    threads: usize,
    lean: bool,
    rewrite: Rewrite,
) -> Result<Session, OnnxError> {
    let env = runtime(lib)?;
    let fail = |reason: String| OnnxError::Model { path: model.display().to_string(), reason };
    let bad = |e: ort::Error| fail(e.to_string());
    let mut builder = Session::builder(env)
        .and_then(|b| Ok(b.with_intra_threads(threads.max(1))?))
        // Idle pool threads sleep instead of spinning: on a worker whose
        // branches share the cores, a spinning thread burns CPU the other
        // branch needs.
        .and_then(|b| Ok(b.with_intra_op_spinning(false)?))
        .and_then(|b| if lean { Ok(b.with_memory_pattern(false)?) } else { Ok(b) })
        .map_err(bad)?;
    // An fp16 model runs widened to fp32 (see widen.rs: less memory and CPU
    // on x86). A model not rewritten is left for ONNX Runtime to read
    // itself, so that it is not held twice while it loads. Each form is
    // dropped as soon as the next is made (IS-Net: 88 MB stored, 176 MB
    // widened).
    let mut bytes = std::fs::read(model).map_err(|e| fail(e.to_string()))?;
    let mut changed = false;
    if widen::has_fp16(&bytes).map_err(|e| fail(e.to_string()))? {
        bytes = widen::widen(&bytes).map_err(|e| fail(e.to_string()))?;
        changed = true;
    }
    if let Some(native) = rewrite.any_side {
        bytes = any_side::any_side(&bytes, native).map_err(|e| fail(e.to_string()))?;
        changed = true;
    }
    // The rewrites that take the model alone, in the order they run (the
    // fusions after the convolutions are products: dequant fuses their
    // output).
    type Pass = fn(&[u8]) -> Result<Vec<u8>, proto::ModelError>;
    let passes: [(bool, Pass); 6] = [
        (rewrite.first_output_only, prune::first_output_only),
        (rewrite.int8_convs, int8_conv::convs_as_matmuls),
        (rewrite.snake, snake::fuse),
        (rewrite.dequant, dequant::fuse),
        (rewrite.adain, adain::fuse),
        (rewrite.stft, stft::as_conv),
    ];
    for (_, pass) in passes.iter().filter(|(on, _)| *on) {
        bytes = pass(&bytes).map_err(|e| fail(e.to_string()))?;
        changed = true;
    }
    let _one_at_a_time = if rewrite.snake || rewrite.dequant || rewrite.adain {
        builder = builder.with_operators(operators().map_err(bad)?).map_err(|e| fail(e.to_string()))?;
        Some(operators_lock())
    } else {
        None
    };
    if changed {
        builder.commit_from_memory(&bytes).map_err(bad)
    } else {
        drop(bytes);
        builder.commit_from_file(model).map_err(bad)
    }
}

/// A model loaded once per process, on first use. A failed load is not
/// kept: the next call tries again (a file put in place later is found).
pub struct LoadOnce<T>(std::sync::Mutex<Option<std::sync::Arc<T>>>);

impl<T> Default for LoadOnce<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> LoadOnce<T> {
    pub const fn new() -> Self {
        LoadOnce(std::sync::Mutex::new(None))
    }

    /// The loaded value, made by `load` the first time. Blocking.
    pub fn get_or_load<E>(&self, load: impl FnOnce() -> Result<T, E>) -> Result<std::sync::Arc<T>, E> {
        let mut slot = self.0.lock().expect("model lock");
        if let Some(v) = slot.as_ref() {
            return Ok(v.clone());
        }
        let v = std::sync::Arc::new(load()?);
        *slot = Some(v.clone());
        Ok(v)
    }
}

/// Threads for inference: every core this process may use.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::cpu_seconds;

    /// IS-Net fp16 as stored and as widened: the same outputs, so the
    /// rewrite changed no weight or wiring. They differ only by the fp16
    /// rounding the stored model applies between some nodes (seen: at most
    /// 0.0016), under one step of the 8-bit mask.
    #[test]
    fn the_widened_isnet_computes_what_the_stored_fp16_one_does() {
        let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data");
        let model = data.join("models/isnet_fp16.onnx");
        let lib = runtime_path(&data);
        let stored = Session::builder(runtime(&lib).unwrap())
            .unwrap()
            .with_intra_threads(default_threads())
            .unwrap()
            .commit_from_file(&model)
            .unwrap();
        let widened = session(&lib, &model, default_threads(), true).unwrap();
        let n = 3 * 1024 * 1024;
        let input: Vec<f32> = (0..n).map(|i| ((i * 7919 % 256) as f32 - 128.0) / 256.0).collect();
        let run = |mut s: Session| -> Vec<f32> {
            let t = ort::value::Tensor::from_array(([1usize, 3, 1024, 1024], input.clone())).unwrap();
            let out = s.run(ort::inputs! {"input" => t}).unwrap();
            out["output"].try_extract_tensor::<f32>().unwrap().1.to_vec()
        };
        let (a, b) = (run(stored), run(widened));
        assert_eq!(a.len(), 1024 * 1024);
        let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        let spread = a.iter().fold(0f32, |m, &v| m.max(v)) - a.iter().fold(1f32, |m, &v| m.min(v));
        assert!(spread > 0.5, "the output varies ({spread}), so the comparison means something");
        assert!(worst < 1.0 / 255.0, "largest difference {worst}");
    }

    /// IS-Net as the worker runs it (any side, first output only): one
    /// output, the stored model's mask (within 1e-3, under one step of the
    /// 8-bit mask: the optimizer fuses more once the intermediate values are
    /// no longer outputs). The CPU of a run with and without the other
    /// outputs is printed, not asserted (this process's other tests share
    /// the count).
    #[test]
    fn isnet_cut_to_its_mask_computes_the_same_mask() {
        let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data");
        let model = data.join("models/isnet_fp16.onnx");
        let lib = runtime_path(&data);
        let side = 896usize;
        let input: Vec<f32> = (0..3 * side * side).map(|i| ((i * 7919 % 256) as f32 - 128.0) / 256.0).collect();
        let run = |s: &mut Session| -> (Vec<f32>, f64) {
            let t = ort::value::Tensor::from_array(([1usize, 3, side, side], input.clone())).unwrap();
            let cpu = cpu_seconds(false);
            let out = s.run(ort::inputs! {"input" => t}).unwrap();
            let mask = out["output"].try_extract_tensor::<f32>().unwrap().1.to_vec();
            (mask, cpu_seconds(false) - cpu)
        };
        let all = Rewrite { any_side: Some(1024), ..Rewrite::default() };
        let cut = Rewrite { first_output_only: true, ..all };
        let mut every = session_rewritten(&lib, &model, default_threads(), true, all).unwrap();
        let mut first = session_rewritten(&lib, &model, default_threads(), true, cut).unwrap();
        assert_eq!(every.outputs().len(), 12);
        assert_eq!(first.outputs().len(), 1);
        assert_eq!(first.outputs()[0].name(), "output");
        let (a, _) = run(&mut every);
        let (b, _) = run(&mut first);
        assert_eq!((a.len(), b.len()), (side * side, side * side));
        let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(worst < 1e-3, "largest difference {worst}");
        // CPU, best of three each, taken in turn.
        let (mut t_every, mut t_first) = (f64::MAX, f64::MAX);
        for _ in 0..3 {
            t_every = t_every.min(run(&mut every).1);
            t_first = t_first.min(run(&mut first).1);
        }
        println!("IS-Net at {side}: {t_every:.2} CPU-s with every output, {t_first:.2} with the mask alone");
    }

    /// Kokoro with its integer convolutions run as matrix products
    /// ([`int8_conv`]), and their float outputs made in one pass
    /// ([`dequant`]): the very samples the stored model makes, for a
    /// sentence's worth of tokens. The CPU of a run of each is printed, not
    /// asserted.
    #[test]
    fn kokoro_with_its_convolutions_as_products_speaks_the_same_samples() {
        let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data");
        let model = data.join("voices/system/kokoro/model.onnx");
        let lib = runtime_path(&data);
        let tokens: Vec<i64> =
            std::iter::once(0).chain((0..80).map(|i| [43, 16, 56, 135, 51, 158, 47, 3][i % 8])).chain([0]).collect();
        let style: Vec<f32> = (0..256).map(|i| ((i * 37 % 101) as f32 - 50.0) / 400.0).collect();
        let run = |s: &mut Session| speak(s, &tokens, &style);
        // 84 of its 87 convolutions are rewritten (two are strided, one
        // 2-D).
        let bytes = std::fs::read(&model).unwrap();
        let rewritten = int8_conv::convs_as_matmuls(&bytes).unwrap();
        assert_eq!((count_ops(&bytes, b"ConvInteger"), count_ops(&rewritten, b"ConvInteger")), (87, 3));
        assert_eq!(count_ops(&rewritten, b"MatMulInteger") - count_ops(&bytes, b"MatMulInteger"), 84);
        drop((bytes, rewritten));
        if !int8_conv::exact_here() {
            println!("no 8-bit dot products on this CPU: the worker does not rewrite Kokoro here");
            return;
        }
        let rewrite = Rewrite { int8_convs: true, ..Rewrite::default() };
        let with_dequant = Rewrite { dequant: true, ..rewrite };
        let mut stored = session(&lib, &model, default_threads(), false).unwrap();
        let mut products = session_rewritten(&lib, &model, default_threads(), false, rewrite).unwrap();
        let mut dequantized = session_rewritten(&lib, &model, default_threads(), false, with_dequant).unwrap();
        let ((a, _), (b, _), (c, _)) = (run(&mut stored), run(&mut products), run(&mut dequantized));
        // Timed on a second run each (the first fills the arena).
        let ((_, t_stored), (_, t_products)) = (run(&mut stored), run(&mut products));
        let (_, t_dequantized) = run(&mut dequantized);
        assert!(a.len() > 24_000, "{} samples", a.len());
        assert!(a.iter().any(|v| v.abs() > 0.05), "audible");
        let worst = |b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(a == b, "largest difference {}", worst(&b));
        assert!(a == c, "with the products dequantized in one pass: largest difference {}", worst(&c));
        println!(
            "Kokoro, {} s of speech: {t_stored:.2} CPU-s as stored, {t_products:.2} rewritten, {t_dequantized:.2} dequantized in one pass",
            a.len() / 24_000
        );
    }

    /// Kokoro's integer products made float by tayori's one operator
    /// ([`dequant`]): every rewritten convolution that has a bias (that its
    /// samples are unchanged is the test above).
    #[test]
    fn kokoro_dequantizes_each_product_with_a_bias_in_one_pass() {
        let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data");
        let bytes = std::fs::read(data.join("voices/system/kokoro/model.onnx")).unwrap();
        let products = int8_conv::convs_as_matmuls(&bytes).unwrap();
        drop(bytes);
        let fused = dequant::fuse(&products).unwrap();
        let n = count_ops(&fused, b"TransposeDequantize");
        assert_eq!(count_ops(&products, b"Transpose") - count_ops(&fused, b"Transpose"), n);
        assert_eq!(count_ops(&products, b"Cast") - count_ops(&fused, b"Cast"), n);
        // 77 of the 84 products: 7 convolutions have no bias (their
        // output is cast and scaled with no sum before).
        assert_eq!(n, 77);
    }

    /// Kokoro with its Snake activations as tayori's one operator
    /// ([`snake`]): 48 chains fused, and a sentence sounds the same, its
    /// loudness every 20 ms within a fraction of a decibel of the model's
    /// without it (the waveforms part: the sine is rounded once instead of
    /// twice, and a rounding moved shifts what follows through each
    /// quantized layer). The CPU of a run of each is printed.
    #[test]
    fn kokoro_with_snake_fused_sounds_the_same() {
        let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data");
        let bytes = std::fs::read(data.join("voices/system/kokoro/model.onnx")).unwrap();
        let fused = snake::fuse(&bytes).unwrap();
        assert_eq!(count_ops(&fused, b"Snake"), 48);
        assert_eq!(count_ops(&bytes, b"Sin") - count_ops(&fused, b"Sin"), 48);
        drop((bytes, fused));
        let plain = Rewrite { int8_convs: int8_conv::exact_here(), ..Rewrite::default() };
        sounds_the_same(plain, Rewrite { snake: true, ..plain }, "Snake fused");
    }

    /// Kokoro with its adaptive instance normalizations as tayori's one
    /// operator ([`adain`]): every one of its decoder's fused, and a
    /// sentence sounds the same (the sums are added in another order and
    /// precision). The CPU of a run of each is printed.
    #[test]
    fn kokoro_with_adain_fused_sounds_the_same() {
        let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data");
        let bytes = std::fs::read(data.join("voices/system/kokoro/model.onnx")).unwrap();
        let fused = adain::fuse(&bytes).unwrap();
        let n = count_ops(&fused, b"AdaIn");
        assert_eq!(count_ops(&bytes, b"Sqrt") - count_ops(&fused, b"Sqrt"), n);
        assert_eq!(count_ops(&bytes, b"ReduceMean") - count_ops(&fused, b"ReduceMean"), 2 * n);
        println!("AdaIN: {n} fused of {} Sqrt nodes", count_ops(&bytes, b"Sqrt"));
        assert_eq!(n, 62);
        drop((bytes, fused));
        let int8_convs = int8_conv::exact_here();
        let plain = Rewrite { int8_convs, dequant: int8_convs, snake: true, ..Rewrite::default() };
        sounds_the_same(plain, Rewrite { adain: true, ..plain }, "AdaIN fused");
    }

    /// Kokoro with its STFT as a convolution ([`stft`]): one rewritten, and
    /// a sentence sounds the same as with ONNX Runtime's STFT whose
    /// imaginary parts at 0 Hz and half the rate are replaced as the
    /// convolution gives them (so that both see the phase PyTorch gave in
    /// training there; as stored, ONNX Runtime's rounding flips it between
    /// +pi and -pi, which alone moves the loudness of 20 ms by 0.4 dB on
    /// average). The CPU of a run of each is printed.
    #[test]
    fn kokoro_with_its_stft_as_a_convolution_sounds_the_same() {
        let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data");
        let bytes = std::fs::read(data.join("voices/system/kokoro/model.onnx")).unwrap();
        let rewritten = stft::as_conv(&bytes).unwrap();
        assert_eq!((count_ops(&bytes, b"STFT"), count_ops(&rewritten, b"STFT")), (1, 0));
        drop(rewritten);
        let reference = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(reference.path(), stft::with_edges_as_trained(&bytes)).unwrap();
        drop(bytes);
        let int8_convs = int8_conv::exact_here();
        let plain = Rewrite { int8_convs, dequant: int8_convs, snake: true, adain: true, ..Rewrite::default() };
        sounds_the_same_as(reference.path(), plain, Rewrite { stft: true, ..plain }, "the STFT as a convolution");
    }

    /// Kokoro rewritten as `plain` and as `changed` speaks a real sentence
    /// (its phonemes, the default voice's style) the same: the same length,
    /// audible, the loudness of each 20 ms within 0.3 dB on average and 3
    /// dB at most (the waveforms may part: a rounding moved early shifts
    /// what follows through each quantized layer). Prints the CPU of a run
    /// of each and how far the waveforms are apart.
    fn sounds_the_same(plain: Rewrite, changed: Rewrite, what: &str) {
        let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data");
        sounds_the_same_as(&data.join("voices/system/kokoro/model.onnx"), plain, changed, what);
    }

    /// [`sounds_the_same`], the plain side's model read from `reference`.
    fn sounds_the_same_as(reference: &Path, plain: Rewrite, changed: Rewrite, what: &str) {
        let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data");
        let model = data.join("voices/system/kokoro/model.onnx");
        let lib = runtime_path(&data);
        let kokoro = crate::kokoro::dir(&data);
        let vocab = crate::kokoro::Vocab::load(&kokoro.join("vocab.json")).unwrap();
        let said = vocab.tokens("otaɲʥoːbʲi omedetoː ɡoʣaimasɨ. itsɨmo jasaɕikɯ mimamotte kɯɾete, hontoːni aɾiɡatoː.");
        let tokens: Vec<i64> = std::iter::once(0).chain(said.iter().copied()).chain([0]).collect();
        let style = crate::kokoro::Style::load(&kokoro.join("jf_alpha.npy")).unwrap().row(said.len()).to_vec();
        let run = |s: &mut Session| speak(s, &tokens, &style);
        let mut a_s = session_rewritten(&lib, reference, default_threads(), false, plain).unwrap();
        let mut b_s = session_rewritten(&lib, &model, default_threads(), false, changed).unwrap();
        let ((a, _), (b, _)) = (run(&mut a_s), run(&mut b_s));
        let ((_, t_a), (_, t_b)) = (run(&mut a_s), run(&mut b_s));
        assert_eq!(a.len(), b.len());
        let rms = |v: &mut dyn Iterator<Item = f32>, n: usize| {
            (v.map(|x| f64::from(x).powi(2)).sum::<f64>() / n as f64).sqrt()
        };
        let signal = rms(&mut a.iter().copied(), a.len());
        let diff = rms(&mut a.iter().zip(&b).map(|(x, y)| x - y), a.len());
        let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        println!(
            "Kokoro, {:.1} s of speech: {t_a:.2} CPU-s, {t_b:.2} with {what}; difference {:.1} dB under the signal (largest {worst:.5})",
            a.len() as f64 / 24_000.0,
            20.0 * (signal / diff.max(1e-12)).log10()
        );
        assert!(signal > 0.02, "audible: {signal}");
        let frames = |v: &[f32]| -> Vec<f64> {
            v.chunks_exact(480)
                .map(|f| 10.0 * (f.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>() / 480.0 + 1e-9).log10())
                .collect()
        };
        let (fa, fb) = (frames(&a), frames(&b));
        let loud = fa.iter().fold(f64::MIN, |m, &v| m.max(v));
        let heard: Vec<f64> =
            fa.iter().zip(&fb).filter(|(p, _)| **p > loud - 40.0).map(|(p, q)| (p - q).abs()).collect();
        let mean = heard.iter().sum::<f64>() / heard.len() as f64;
        let worst_db = heard.iter().fold(0f64, |m, &v| m.max(v));
        println!(
            "per 20 ms: {} frames heard, loudness differs by {mean:.3} dB on average, {worst_db:.2} dB at most",
            heard.len()
        );
        assert!(heard.len() > 100 && mean < 0.3 && worst_db < 3.0, "{mean} dB on average, {worst_db} dB at most");
    }

    /// Kokoro's audio for `tokens` with `style`, and the CPU seconds of the
    /// run.
    fn speak(s: &mut Session, tokens: &[i64], style: &[f32]) -> (Vec<f32>, f64) {
        let t = ort::value::Tensor::from_array(([1usize, tokens.len()], tokens.to_vec())).unwrap();
        let st = ort::value::Tensor::from_array(([1usize, 256], style.to_vec())).unwrap();
        let sp = ort::value::Tensor::from_array(([1usize], vec![1f32])).unwrap();
        let cpu = cpu_seconds(false);
        let out = s.run(ort::inputs! {"tokens" => t, "style" => st, "speed" => sp}).unwrap();
        let audio = out["audio"].try_extract_tensor::<f32>().unwrap().1.to_vec();
        (audio, cpu_seconds(false) - cpu)
    }

    /// How many nodes of `model`'s graph are `op`.
    fn count_ops(model: &[u8], op: &[u8]) -> usize {
        let graph = proto::bytes_fields(model, 7)[0];
        proto::bytes_fields(graph, 1).into_iter().filter(|n| proto::first_bytes(n, 4).unwrap() == Some(op)).count()
    }

    /// IS-Net rewritten to take any side: at 1024 it computes what the
    /// model as stored (widened) does, and it runs at 896 and at 512x896
    /// too, where the stored model refuses the input.
    #[test]
    fn isnet_any_side_runs_at_1024_as_before_and_at_896() {
        let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data");
        let model = data.join("models/isnet_fp16.onnx");
        let lib = runtime_path(&data);
        let run_hw = |s: &mut Session, h: usize, w: usize| -> ort::Result<Vec<f32>> {
            let input: Vec<f32> = (0..3 * h * w).map(|i| ((i * 7919 % 256) as f32 - 128.0) / 256.0).collect();
            let t = ort::value::Tensor::from_array(([1usize, 3, h, w], input))?;
            let out = s.run(ort::inputs! {"input" => t})?;
            Ok(out["output"].try_extract_tensor::<f32>()?.1.to_vec())
        };
        let run = |s: &mut Session, side: usize| run_hw(s, side, side);
        let mut fixed = session(&lib, &model, default_threads(), true).unwrap();
        let any_side = Rewrite { any_side: Some(1024), ..Rewrite::default() };
        let mut any = session_rewritten(&lib, &model, default_threads(), true, any_side).unwrap();
        let (a, b) = (run(&mut fixed, 1024).unwrap(), run(&mut any, 1024).unwrap());
        assert_eq!(a.len(), b.len());
        let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(worst < 1e-4, "largest difference at 1024: {worst}");
        assert!(run(&mut fixed, 896).is_err(), "the stored model takes 1024 only");
        let small = run(&mut any, 896).unwrap();
        assert_eq!(small.len(), 896 * 896);
        // Probabilities (what they are worth on a real photo is
        // vision::tests::isnet_at_896_cuts_out_what_1024_does).
        assert!(small.iter().all(|v| (0.0..=1.0).contains(v)));
        // Height and width free apart: a person's crop in its proportions.
        let tall = run_hw(&mut any, 896, 512).unwrap();
        assert_eq!(tall.len(), 896 * 512);
        assert!(tall.iter().all(|v| (0.0..=1.0).contains(v)));
    }
}
