//! Deterministic random bindings for a graph's inputs and weights: what equivalence checks
//! (a pass before vs. after, a backend vs. the interpreter) feed both sides.
//!
//! Floats are uniform in [-1, 1); integers are uniform in `0..int_bound` (so they are valid
//! indices into any axis at least that long); bools are fair coins. Symbols take the given
//! values.

use super::tensor::Tensor;
use super::TensorMap;
use crate::dim::Bindings;
use crate::error::IrError;
use crate::graph::Graph;
use crate::op::Op;

/// A small, fast, deterministic generator (SplitMix64).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Random inputs and weights for `g`, with symbols bound to `env`.
pub fn random_bindings(
    g: &Graph,
    env: &Bindings,
    int_bound: u64,
    seed: u64,
) -> Result<(TensorMap, TensorMap), IrError> {
    let mut rng = Rng::new(seed);
    let mut inputs = TensorMap::new();
    let mut weights = TensorMap::new();
    for &id in g.inputs().iter().chain(g.weights()) {
        let node = g.node(id);
        let shape = node
            .ty
            .shape
            .iter()
            .map(|d| d.eval(env))
            .collect::<Option<Vec<usize>>>()
            .ok_or_else(|| IrError::new(format!("type {} has an unbound symbol", node.ty)))?;
        let n: usize = shape.iter().product();
        let dtype = node.ty.dtype;
        let values = (0..n).map(|_| {
            if dtype.is_float() {
                rng.unit() * 2.0 - 1.0
            } else if dtype.is_int() {
                (rng.next_u64() % int_bound.max(1)) as f64
            } else {
                (rng.next_u64() & 1) as f64
            }
        });
        let t = Tensor::from_f64(dtype, &shape, values.collect::<Vec<_>>());
        match &node.op {
            Op::Input { name } => inputs.insert(name.clone(), t),
            Op::Weight { name } => weights.insert(name.clone(), t),
            _ => unreachable!("signature holds only inputs and weights"),
        };
    }
    Ok((inputs, weights))
}
