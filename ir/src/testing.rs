//! Random valid graphs for property tests: the text round trip here, a backend against the
//! interpreter elsewhere; and [`attention_inputs`], the optional inputs of the `flash_attention`
//! graphs that attention tests write as text.
//!
//! [`random_graph`] builds a graph from a seed: inputs of a few types, then ops drawn from every
//! group of the op set, each applied to earlier values of fitting types (an op whose operands do
//! not fit is skipped — the graph's own type checks decide). A [`Profile`] leaves out the parts
//! of the op set a consumer does not handle, so a backend's test states its gaps explicitly.
//!
//! Generated graphs declare `batch <= 4` and `seq <= 6`; inputs are `x`, `y` (`f32[batch, seq,
//! 4]`) and `ids` (`i64[batch, seq]`, used as gather indices clamped into range), and the weight
//! `w.0` (`f32[4, 4]`). Outputs are the last three values. Bind both symbols to at least 1: a
//! gather may index axis 0 of a symbolic length.

use crate::interp::random::Rng;
use crate::{BinaryOp, DType, Dim, Graph, Literal, Op, ReduceOp, ScatterMode, TensorType, UnaryOp};

/// Which parts of the op set a generated graph may use.
#[derive(Clone, Copy, Debug)]
pub struct Profile {
    /// `scatter` and `scatter_add`.
    pub scatter: bool,
    /// Casts through `f16` and `bf16`.
    pub half_floats: bool,
}

impl Profile {
    /// The whole op set.
    pub const FULL: Profile = Profile {
        scatter: true,
        half_floats: true,
    };
}

/// A random valid graph drawn from `seed`, using only what `profile` allows.
pub fn random_graph(seed: u64, profile: Profile) -> Graph {
    let mut rng = Rng::new(seed);
    let mut pick = |n: usize| (rng.next_u64() % n as u64) as usize;
    let mut g = Graph::new("generated");
    let b = g.symbol("batch", 4).unwrap();
    let s = g.symbol("seq", 6).unwrap();
    let f = |shape: Vec<Dim>| TensorType::new(DType::F32, shape);
    let mut values = vec![
        g.input("x", f(vec![b.clone(), s.clone(), Dim::fixed(4)]))
            .unwrap(),
        g.input("y", f(vec![b.clone(), s.clone(), Dim::fixed(4)]))
            .unwrap(),
        g.weight("w.0", f(vec![Dim::fixed(4), Dim::fixed(4)]))
            .unwrap(),
    ];
    let ids = g
        .input(
            "ids",
            TensorType::new(DType::I64, vec![b.clone(), s.clone()]),
        )
        .unwrap();
    let casts: &[DType] = if profile.half_floats {
        &[DType::F16, DType::BF16, DType::I32]
    } else {
        &[DType::I32]
    };
    let steps = 6 + pick(20);
    for step in 0..steps {
        let x = values[pick(values.len())];
        let y = values[pick(values.len())];
        let ty = g.ty(x).clone();
        let rank = ty.rank();
        let result = match pick(16) {
            0 => g.unary(UnaryOp::ALL[pick(UnaryOp::ALL.len() - 1)], x),
            1 => g.binary(BinaryOp::ALL[pick(7)], x, y),
            2 => {
                let c = g.binary(BinaryOp::ALL[9 + pick(6)], x, y);
                c.and_then(|c| g.select(c, x, y))
            }
            3 => g
                .cast(x, casts[pick(casts.len())])
                .and_then(|c| g.cast(c, DType::F32)),
            4 => g.reduce(ReduceOp::ALL[pick(3)], x, &[pick(rank)]),
            5 => g.matmul(x, values[2]),
            6 if ty.shape.last() == Some(&Dim::fixed(4)) => {
                let mut shape = ty.shape[..rank - 1].to_vec();
                shape.extend([Dim::fixed(2), Dim::fixed(2)]);
                g.reshape(x, shape)
            }
            7 => {
                let mut perm: Vec<usize> = (0..rank).collect();
                perm.swap(pick(rank), pick(rank));
                g.permute(x, &perm)
            }
            8 => {
                let mut shape = vec![Dim::fixed(2)];
                shape.extend(ty.shape.iter().cloned());
                g.broadcast_to(x, &shape)
            }
            9 => {
                let axis = pick(rank);
                let end = ty.shape[axis].clone();
                g.slice(x, axis, Dim::fixed(0), end)
            }
            10 => g.concat(&[x, x], pick(rank)),
            11 => {
                // Indices clamped into axis 0 (a symbolic axis is at least 1 long here).
                let last = ty.shape[0].as_fixed().unwrap_or(1).max(1) - 1;
                g.binary_scalar(BinaryOp::Min, ids, last as f64)
                    .and_then(|i| g.gather(x, i, 0))
            }
            12 => g
                .scalar(DType::F32, [0.5, -2.0, f64::INFINITY, 1e-5][pick(4)])
                .and_then(|c| g.mul(x, c)),
            13 => g
                .constant(
                    TensorType::fixed(DType::F32, &[4]),
                    Literal::Dense(vec![0.25, -1.5, 3.0, 1e-3]),
                )
                .and_then(|c| g.add(x, c)),
            14 => g
                .iota(
                    TensorType::new(DType::F32, vec![Dim::fixed(1), s.clone(), Dim::fixed(1)]),
                    1,
                )
                .and_then(|i| g.add(x, i)),
            _ if profile.scatter => {
                let zeros = g
                    .scalar(DType::F32, 0.0)
                    .and_then(|z| g.broadcast_to(z, &[Dim::fixed(5), Dim::fixed(4)]));
                let idx = g.iota(TensorType::fixed(DType::I64, &[2, 3]), 1);
                match (zeros, idx) {
                    (Ok(z), Ok(i)) => g.gather(values[2], i, 0).and_then(|u| {
                        g.push(
                            Op::Scatter {
                                axis: 0,
                                mode: ScatterMode::ALL[pick(2)],
                            },
                            &[z, i, u],
                        )
                    }),
                    (Err(e), _) | (_, Err(e)) => Err(e),
                }
            }
            _ => continue,
        };
        if let Ok(id) = result {
            if pick(3) == 0 {
                g.set_label(id, format!("step.{step}"));
            }
            values.push(id);
        }
    }
    let n = values.len();
    for (i, &v) in values[n.saturating_sub(3)..].iter().enumerate() {
        let _ = g.output(&format!("out{i}"), v);
    }
    g
}

/// Declares the optional inputs of a `flash_attention` test graph in `text`: `%pos :
/// POSITIONS[b, SEQ]` unless `positions` is empty, and `%pad : PADDING[b]` unless `padding` is
/// empty (each the name of an integer type). Returns the op's operand list, `%q, %k, %v[, %pos][,
/// %pad]`, and the value of its `padding=` attribute.
pub fn attention_inputs(
    text: &mut String,
    seq: &str,
    positions: &str,
    padding: &str,
) -> (String, &'static str) {
    let mut operands = "%q, %k, %v".to_string();
    if !positions.is_empty() {
        *text += &format!("input %pos : {positions}[b, {seq}]\n");
        operands += ", %pos";
    }
    if padding.is_empty() {
        return (operands, "none");
    }
    *text += &format!("input %pad : {padding}[b]\n");
    (operands + ", %pad", "left")
}

/// One bf16 attention test shape: mask, positions type (empty: none), heads, KV heads, head
/// sizes `d` and `dv`, queries `s`, keys `t`, padding type (empty: none).
pub type Bf16AttentionCase = (
    &'static str,
    &'static str,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
    &'static str,
);

/// The shapes the tensor-core attention kernels are checked on (in the PTX emulator and on the
/// GPU): every mask kind, GQA, head sizes 16 to 128 (80 and 128 past a tile), rows and columns
/// past whole blocks and tiles (80 × 32 keys is a tile whose chunks do not divide among the
/// threads), left padding; random positions make some tiles inside every row's run, some cross
/// it, and some rows see no key; head sizes that are multiples of 64 (`wgmma`'s swizzled tiles)
/// with 64 and 128 columns on either side.
pub const BF16_ATTENTION_CASES: [Bf16AttentionCase; 8] = [
    ("causal", "i64", 4, 2, 64, 64, 70, 100, ""),
    ("window(20)", "i64", 2, 1, 32, 16, 70, 90, ""),
    ("prefix(9)", "i32", 2, 2, 16, 32, 20, 70, ""),
    ("none", "", 3, 1, 80, 128, 17, 66, ""),
    ("causal", "i64", 2, 1, 64, 64, 70, 100, "i64"),
    ("window(20)", "i32", 2, 2, 32, 32, 40, 70, "i32"),
    ("none", "", 2, 2, 128, 64, 33, 70, ""),
    ("causal", "i64", 2, 1, 64, 128, 40, 70, ""),
];

/// The declarations of a bf16 attention test graph (`graph attention`, symbols `b <= 2`,
/// `s <= 80`, `t <= 128`): f32 inputs `%{name}x` cast to bf16 `%{name}` for each of `names`
/// (from `q`, `k`, `v`, `dy`), positions and padding; returns the text, the operand list and
/// the op's attributes.
fn bf16_attention_text(case: Bf16AttentionCase, names: &[&str]) -> (String, String, String) {
    let (mask, positions, heads, kv, d, dv, _, _, padding) = case;
    let mut text = "graph attention\nsym b <= 2\nsym s <= 80\nsym t <= 128\n".to_string();
    for (name, h, len, width) in [
        ("q", heads, "s", d),
        ("k", kv, "t", d),
        ("v", kv, "t", dv),
        ("dy", heads, "s", dv),
    ] {
        if names.contains(&name) {
            text += &format!(
                "input %{name}x : f32[b, {h}, {len}, {width}]\n\
                 %{name} = cast %{name}x : bf16[b, {h}, {len}, {width}]\n"
            );
        }
    }
    let (operands, padding) = attention_inputs(&mut text, "s", positions, padding);
    let attrs = format!(
        "mask={mask} padding={padding} bias=none group={} scale=0.125 tile_q=64 tile_k=64",
        heads / kv
    );
    (text, operands, attrs)
}

/// The IR text of `flash_attention` at bf16 ([`bf16_attention_text`]'s graph) and its
/// log-sum-exp over the same operands (as a training step recomputes them): outputs `y` and
/// `lse`, f32.
pub fn bf16_attention_forward(case: Bf16AttentionCase) -> String {
    let (_, _, heads, _, _, dv, _, _, _) = case;
    let (mut text, operands, attrs) = bf16_attention_text(case, &["q", "k", "v"]);
    text += &format!(
        "%y = flash_attention {operands} {attrs} : f32[b, {heads}, s, {dv}]\n\
         %l = flash_attention_lse {operands} {attrs} : f32[b, {heads}, s]\n\
         output y = %y\noutput lse = %l\n"
    );
    text
}

/// The IR text of `flash_attention`'s backward at bf16 ([`bf16_attention_text`]'s graph, with
/// the output gradient `%dy`): the forward's result `%y` an f32 input, so that a kernel and the
/// interpreter read the same `Δ`; outputs the log-sum-exp `lse` and the gradients `dq`, `dk`,
/// `dv` (f32), and the values' gradient rounded to bf16 by a cast (`dv_cast`) and declared bf16
/// (`dv_bf16`, the same value).
pub fn bf16_attention_backward(case: Bf16AttentionCase) -> String {
    let (_, _, heads, kv, d, dv, _, _, _) = case;
    let (mut text, operands, attrs) = bf16_attention_text(case, &["q", "k", "v", "dy"]);
    text += &format!(
        "input %y : f32[b, {heads}, s, {dv}]\n\
         %l = flash_attention_lse {operands} {attrs} : f32[b, {heads}, s]\n\
         %gq = flash_attention_grad_q {operands}, %y, %dy, %l {attrs} : f32[b, {heads}, s, {d}]\n\
         %gk = flash_attention_grad_k {operands}, %y, %dy, %l {attrs} : f32[b, {kv}, t, {d}]\n\
         %gv = flash_attention_grad_v {operands}, %y, %dy, %l {attrs} : f32[b, {kv}, t, {dv}]\n\
         %gvc = cast %gv : bf16[b, {kv}, t, {dv}]\n\
         %gvn = flash_attention_grad_v {operands}, %y, %dy, %l {attrs} : bf16[b, {kv}, t, {dv}]\n\
         output lse = %l\noutput dq = %gq\noutput dk = %gk\noutput dv = %gv\n\
         output dv_cast = %gvc\noutput dv_bf16 = %gvn\n"
    );
    text
}
