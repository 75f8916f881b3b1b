//! The CPU backend's fused attention kernels against the interpreter's `flash_attention` and
//! its backward (`flash_attention_lse`, `flash_attention_grad_q/k/v`).
//!
//! Kernel cases cover each mask kind, group 1 and > 1, head sizes with scalar tails, query and
//! key counts that are not multiples of the tiles, decode (one query over 1 or more keys),
//! batches whose rows hold different positions, i32 positions and queries read through a
//! strided view. Each runs at several sizes one after another on one runner.

mod common;

use common::cpu::{check, Tol};
use kiln_ir::{Bindings, Graph};

/// Sums over up to 70 keys in f32 against the interpreter's f64, relative to the largest output
/// (an output is an average of values in [-1, 1)).
const ATTENTION: Tol = Tol::Norm(1e-5);

/// One kernel case: `flash_attention` with `attrs` over queries `[b, H, S, D]`, keys and values
/// `[b, KV, T, D|Dv]`, where `S` and `T` are `s` and `t` or fixed.
struct Case<'a> {
    name: &'a str,
    heads: usize,
    kv: usize,
    d: usize,
    dv: usize,
    seq: &'a str,
    keys: &'a str,
    attrs: &'a str,
    /// Position dtype; `None` for mask=none.
    positions: Option<&'a str>,
    /// Padding dtype, for `padding=left`.
    padding: Option<&'a str>,
    /// Queries as a permuted `[b, S, H, D]` input rather than a contiguous one.
    strided_q: bool,
    /// Also the log-sum-exp and the three gradients, for a cotangent input `%dy`.
    backward: bool,
}

impl Case<'_> {
    fn graph(&self) -> Graph {
        let (h, kv, d, dv, s, t) = (self.heads, self.kv, self.d, self.dv, self.seq, self.keys);
        let mut text = format!("graph {}\nsym b <= 4\n", self.name);
        for sym in ["s", "t"] {
            if s == sym || t == sym {
                text += &format!("sym {sym} <= 80\n");
            }
        }
        if self.strided_q {
            text += &format!("input %x : f32[b, {s}, {h}, {d}]\n");
        } else {
            text += &format!("input %q : f32[b, {h}, {s}, {d}]\n");
        }
        text += &format!("input %k : f32[b, {kv}, {t}, {d}]\ninput %v : f32[b, {kv}, {t}, {dv}]\n");
        let (operands, _) = kiln_ir::testing::attention_inputs(
            &mut text,
            s,
            self.positions.unwrap_or(""),
            self.padding.unwrap_or(""),
        );
        if self.strided_q {
            text += &format!("%q = permute %x perm=[0,2,1,3] : f32[b, {h}, {s}, {d}]\n");
        }
        text += &format!(
            "%y = flash_attention {operands} {} : f32[b, {h}, {s}, {dv}]\noutput y = %y\n",
            self.attrs
        );
        if self.backward {
            let a = self.attrs;
            text += &format!(
                "input %dy : f32[b, {h}, {s}, {dv}]\n\
                 %l = flash_attention_lse {operands} {a} : f32[b, {h}, {s}]\n\
                 %gq = flash_attention_grad_q {operands}, %y, %dy, %l {a} : f32[b, {h}, {s}, {d}]\n\
                 %gk = flash_attention_grad_k {operands}, %y, %dy, %l {a} : f32[b, {kv}, {t}, {d}]\n\
                 %gv = flash_attention_grad_v {operands}, %y, %dy, %l {a} : f32[b, {kv}, {t}, {dv}]\n\
                 output lse = %l\noutput dq = %gq\noutput dk = %gk\noutput dv = %gv\n"
            );
        }
        kiln_ir::text::parse(&text).unwrap_or_else(|e| panic!("{}: {e}\n{text}", self.name))
    }
}

fn envs(sizes: &[(usize, usize, usize)]) -> Vec<Bindings> {
    sizes
        .iter()
        .map(|&(b, s, t)| [("b".into(), b), ("s".into(), s), ("t".into(), t)].into())
        .collect()
}

/// Runs `case` at each `(b, s, t)`, positions uniform in `0..ints`.
fn run_case(case: Case, sizes: &[(usize, usize, usize)], ints: u64) {
    let g = case.graph();
    check(&g, &envs(sizes), ints, ATTENTION).unwrap_or_else(|e| panic!("{}: {e}", case.name));
}

fn prefill<'a>(name: &'a str, heads: usize, kv: usize, attrs: &'a str) -> Case<'a> {
    Case {
        name,
        heads,
        kv,
        d: 8,
        dv: 8,
        seq: "s",
        keys: "s",
        attrs,
        positions: Some("i64"),
        padding: None,
        strided_q: false,
        backward: false,
    }
}

/// Query counts around the tiles (4 queries, 8 keys): tails, one, several tiles.
const PREFILL_SIZES: &[(usize, usize, usize)] = &[(2, 5, 0), (1, 1, 0), (2, 12, 0), (3, 33, 0)];

#[test]
fn causal_multi_head() {
    let attrs = "mask=causal padding=none bias=none group=1 scale=0.35 tile_q=4 tile_k=8";
    run_case(prefill("causal", 2, 2, attrs), PREFILL_SIZES, 40);
}

#[test]
fn causal_grouped_query() {
    let attrs = "mask=causal padding=none bias=none group=3 scale=0.25 tile_q=3 tile_k=5";
    run_case(prefill("grouped", 6, 2, attrs), PREFILL_SIZES, 40);
}

#[test]
fn sliding_window() {
    let attrs = "mask=window(4) padding=none bias=none group=2 scale=0.5 tile_q=4 tile_k=3";
    run_case(prefill("window", 4, 2, attrs), PREFILL_SIZES, 40);
}

#[test]
fn causal_with_a_prefix() {
    let attrs = "mask=prefix(6) padding=none bias=none group=1 scale=0.5 tile_q=2 tile_k=4";
    run_case(prefill("prefix", 2, 2, attrs), PREFILL_SIZES, 40);
}

#[test]
fn no_mask() {
    let attrs = "mask=none padding=none bias=none group=2 scale=0.3 tile_q=4 tile_k=8";
    let case = Case {
        positions: None,
        ..prefill("none", 2, 1, attrs)
    };
    run_case(case, PREFILL_SIZES, 40);
}

#[test]
fn head_sizes_with_tails_and_i32_positions() {
    let attrs = "mask=causal padding=none bias=none group=1 scale=0.4 tile_q=4 tile_k=8";
    let case = Case {
        d: 6,
        dv: 5,
        positions: Some("i32"),
        ..prefill("tails", 1, 1, attrs)
    };
    run_case(case, PREFILL_SIZES, 40);
}

#[test]
fn strided_queries() {
    let attrs = "mask=causal padding=none bias=none group=2 scale=0.35 tile_q=16 tile_k=64";
    let case = Case {
        strided_q: true,
        ..prefill("strided", 4, 2, attrs)
    };
    run_case(case, PREFILL_SIZES, 40);
}

#[test]
fn decode_against_one_and_many_keys() {
    let attrs = "mask=causal padding=none bias=none group=2 scale=0.25 tile_q=1 tile_k=8";
    let case = Case {
        seq: "1",
        keys: "t",
        ..prefill("decode", 4, 2, attrs)
    };
    let sizes = [(2, 0, 1), (3, 0, 7), (1, 0, 70), (2, 0, 1)];
    // Positions past the last key see every key; positions 0 see only the first.
    run_case(case, &sizes, 80);
    let attrs = "mask=window(5) padding=none bias=none group=1 scale=0.25 tile_q=1 tile_k=4";
    let case = Case {
        seq: "1",
        keys: "t",
        ..prefill("decode_window", 2, 2, attrs)
    };
    run_case(case, &sizes, 80);
}

/// The backward kernels under every mask kind, grouped heads, head sizes with tails, i32
/// positions and strided queries, at query and key counts around the tiles.
#[test]
fn backward_of_every_mask_kind() {
    let cases = [
        prefill(
            "causal",
            2,
            2,
            "mask=causal padding=none bias=none group=1 scale=0.35 tile_q=4 tile_k=8",
        ),
        prefill(
            "grouped",
            6,
            2,
            "mask=causal padding=none bias=none group=3 scale=0.25 tile_q=3 tile_k=5",
        ),
        prefill(
            "window",
            4,
            2,
            "mask=window(4) padding=none bias=none group=2 scale=0.5 tile_q=4 tile_k=3",
        ),
        prefill(
            "prefix",
            2,
            2,
            "mask=prefix(6) padding=none bias=none group=1 scale=0.5 tile_q=2 tile_k=4",
        ),
        Case {
            positions: None,
            ..prefill(
                "none",
                2,
                1,
                "mask=none padding=none bias=none group=2 scale=0.3 tile_q=4 tile_k=8",
            )
        },
        Case {
            d: 6,
            dv: 5,
            positions: Some("i32"),
            ..prefill(
                "tails",
                1,
                1,
                "mask=causal padding=none bias=none group=1 scale=0.4 tile_q=4 tile_k=8",
            )
        },
        Case {
            strided_q: true,
            ..prefill(
                "strided",
                4,
                2,
                "mask=causal padding=none bias=none group=2 scale=0.35 tile_q=16 tile_k=64",
            )
        },
    ];
    for case in cases {
        run_case(
            Case {
                backward: true,
                ..case
            },
            PREFILL_SIZES,
            40,
        );
    }
}

/// Query and key counts for left-padded rows, large enough that most of the paddings drawn
/// from `0..40` leave some keys (a row padded past its last key sees none: NaN, as unfused).
const PADDED_SIZES: &[(usize, usize, usize)] = &[(2, 33, 0), (3, 45, 0), (1, 12, 0)];

/// Left-padded rows (`padding=left`): every mask kind, i64 and i32 paddings, prefill and decode,
/// forward and backward.
#[test]
fn left_padded_rows() {
    let padded = |name, heads, kv, attrs| Case {
        padding: Some("i64"),
        ..prefill(name, heads, kv, attrs)
    };
    let cases = [
        padded(
            "padded_causal",
            4,
            2,
            "mask=causal padding=left bias=none group=2 scale=0.35 tile_q=4 tile_k=8",
        ),
        padded(
            "padded_window",
            2,
            2,
            "mask=window(6) padding=left bias=none group=1 scale=0.5 tile_q=4 tile_k=3",
        ),
        padded(
            "padded_prefix",
            2,
            1,
            "mask=prefix(3) padding=left bias=none group=2 scale=0.5 tile_q=2 tile_k=4",
        ),
        Case {
            positions: None,
            padding: Some("i32"),
            ..padded(
                "padded_none",
                2,
                2,
                "mask=none padding=left bias=none group=1 scale=0.3 tile_q=4 tile_k=8",
            )
        },
    ];
    for case in cases {
        run_case(
            Case {
                backward: true,
                ..case
            },
            PADDED_SIZES,
            40,
        );
    }
    let decode = Case {
        seq: "1",
        keys: "t",
        padding: Some("i32"),
        ..prefill(
            "padded_decode",
            4,
            2,
            "mask=causal padding=left bias=none group=2 scale=0.25 tile_q=1 tile_k=8",
        )
    };
    run_case(decode, &[(3, 0, 45), (2, 0, 70), (1, 0, 1)], 40);
}
