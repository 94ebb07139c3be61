//! What tayori's operators ([`super::snake`], [`super::dequant`],
//! [`super::adain`]) share: operands broadcast against a tensor of rank 3,
//! and their rows of work run on the session's own threads.

use std::sync::{Mutex, PoisonError};

use ort::operator::ComputeContext;

/// Runs `f(0)`, .., `f(n - 1)`, in parallel or not; the operators take one
/// so that they run on ONNX Runtime's threads ([`session_threads`]) and
/// tests may call them without a session ([`in_order`]).
pub type Par<'a> = &'a dyn Fn(usize, &(dyn Fn(usize) + Sync + Send)) -> ort::Result<()>;

/// The session's intra-op threads (`KernelContext_ParallelFor`): as many
/// as the session was given, none spawned here.
pub fn session_threads(ctx: &ComputeContext) -> impl Fn(usize, &(dyn Fn(usize) + Sync + Send)) -> ort::Result<()> + '_ {
    move |n, f| ctx.par_for(n, n, f)
}

/// On this thread, in order.
pub fn in_order(n: usize, f: &(dyn Fn(usize) + Sync + Send)) -> ort::Result<()> {
    (0..n).for_each(f);
    Ok(())
}

/// About this many values a part of work: enough to be worth a thread's
/// wake-up, small enough to share a tensor of Kokoro's (4 million values)
/// evenly.
const PART: usize = 1 << 16;

/// `work(first, rows)` over `out` cut into parts of whole rows (`len`
/// values each), a multiple of `align` rows each but the last, `first` the
/// index of a part's first row; the parts run by `par`.
pub fn by_rows<T: Send>(
    out: &mut [T],
    len: usize,
    align: usize,
    par: Par,
    work: impl Fn(usize, &mut [T]) + Sync,
) -> ort::Result<()> {
    if len == 0 || out.is_empty() {
        return Ok(());
    }
    let rows = (PART / len).max(1).next_multiple_of(align.max(1));
    if out.len() <= rows * len {
        work(0, out);
        return Ok(());
    }
    // Each part behind its own lock, taken once by the one call that owns
    // it: disjoint mutable rows shared with the pool without unsafe code.
    let parts: Vec<Mutex<&mut [T]>> = out.chunks_mut(rows * len).map(Mutex::new).collect();
    par(parts.len(), &|i| {
        let mut part = parts[i].lock().unwrap_or_else(PoisonError::into_inner);
        work(i * rows, &mut part)
    })
}

/// `f(row, x, y)` for each row (`len` values) of `x` and of `y`, the same
/// shape, `row` counted from 0; the rows in parts run by `par`.
pub fn each_row(
    x: &[f32],
    y: &mut [f32],
    len: usize,
    par: Par,
    f: impl Fn(usize, &[f32], &mut [f32]) + Sync,
) -> ort::Result<()> {
    by_rows(y, len, 1, par, |first, y| {
        let x = &x[first * len..][..y.len()];
        for (r, (x, y)) in x.chunks_exact(len).zip(y.chunks_exact_mut(len)).enumerate() {
            f(first + r, x, y);
        }
    })
}

/// The three dimensions of a tensor of rank 3 (a negative one read as 0),
/// or the error `not_rank3`.
pub fn rank3(shape: &[i64], not_rank3: &'static str) -> ort::Result<(usize, usize, usize)> {
    let dim = |d: i64| usize::try_from(d).unwrap_or(0);
    match *shape {
        [a, b, c] => Ok((dim(a), dim(b), dim(c))),
        _ => Err(ort::Error::new(not_rank3)),
    }
}

/// A tensor broadcast against a tensor of rank 3 (`[n, c, l]`): its values and the step of each
/// of the three axes (0 where it has one element on that axis).
#[derive(Clone, Copy)]
pub struct Operand<'a, T> {
    values: &'a [T],
    /// The steps along each axis.
    pub steps: [usize; 3],
}

impl<'a, T: Copy> Operand<'a, T> {
    /// `values` of `shape` against `to`; `None` unless it broadcasts to
    /// exactly `to` (of rank 3 at most, each axis 1 or `to`'s).
    pub fn new(values: &'a [T], shape: &[i64], to: [usize; 3]) -> Option<Self> {
        let rank = shape.len();
        if rank > 3 {
            return None;
        }
        let mut dims = [1usize; 3];
        for (d, &s) in dims[3 - rank..].iter_mut().zip(shape) {
            *d = usize::try_from(s).ok()?;
        }
        let mut steps = [0usize; 3];
        let mut step = 1usize;
        for axis in (0..3).rev() {
            if dims[axis] != 1 && dims[axis] != to[axis] {
                return None;
            }
            if dims[axis] != 1 {
                steps[axis] = step;
            }
            step = step.checked_mul(dims[axis])?;
        }
        (step == values.len()).then_some(Operand { values, steps })
    }

    /// The value at `[i, c, t]` of the tensor it broadcasts against.
    #[inline(always)]
    pub fn at(&self, i: usize, c: usize, t: usize) -> T {
        self.values[i * self.steps[0] + c * self.steps[1] + t * self.steps[2]]
    }
}
