//! A tensor as ONNX broadcasts it against a tensor of rank 3, for tayori's
//! operators ([`super::dequant`], [`super::adain`]) whose other operands the
//! model computes as it runs.

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

    #[inline(always)]
    pub fn at(&self, i: usize, c: usize, t: usize) -> T {
        self.values[i * self.steps[0] + c * self.steps[1] + t * self.steps[2]]
    }
}
