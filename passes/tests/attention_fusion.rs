//! `attention-fusion` on small IR texts: multi-head and grouped-query attention (with the
//! KV-head repeat, and in the form `gqa-share` leaves), causal, sliding-window, prefix and no
//! mask, prefill and decode shapes, left-padded rows; and the refusals, each leaving a remark. Every case is run
//! by the interpreter before and after on random inputs (positions included).

use kiln_ir::{text, Bindings};
use kiln_passes::attention_fusion::AttentionFusion;
use kiln_passes::gqa_share::GqaShare;
use kiln_passes::{check_equivalent, Pass};

/// Runs `passes` on `input`, checks the result against the input in the interpreter and
/// returns its text.
fn check(input: &str, passes: &[&dyn Pass], env: &[(&str, usize)]) -> String {
    let before = text::parse(input).unwrap_or_else(|e| panic!("{e}\n{input}"));
    let mut after = before.clone();
    for pass in passes {
        pass.run(&mut after).unwrap();
        kiln_ir::verify(&after).unwrap();
    }
    let env: Bindings = env.iter().map(|(s, v)| (s.to_string(), *v)).collect();
    check_equivalent(&before, &after, &env, 7, 0..4, 1e-5).unwrap();
    text::print(&after)
}

fn fuse(input: &str, env: &[(&str, usize)]) -> String {
    check(input, &[&AttentionFusion], env)
}

const PREFILL: &[(&str, usize)] = &[("b", 2), ("s", 5)];
const DECODE: &[(&str, usize)] = &[("b", 2), ("p", 4)];

#[derive(Clone, Copy)]
enum Mask {
    None,
    Causal,
    Window(usize),
    Prefix(usize),
    /// Keys at or after the query: not a mask the pass knows.
    AntiCausal,
}

/// Attention of `heads` query heads over `kv` key/value heads (repeated when fewer), head size 8.
/// Prefill: `seq` queries over as many keys; decode: one query over `p` cached keys and a new one.
struct Case {
    heads: usize,
    kv: usize,
    decode: bool,
    mask: Mask,
    /// Key positions shifted by the rows' padding `%pad : i64[b]`.
    padded: bool,
}

impl Case {
    fn text(&self) -> String {
        let (h, kv) = (self.heads, self.kv);
        let (s, t) = if self.decode {
            ("1", "p+1")
        } else {
            ("s", "s")
        };
        let mut lines = vec![
            "graph attention".to_string(),
            "sym b <= 4".into(),
            "sym s <= 16".into(),
            "sym p <= 16".into(),
            format!("input %q : f32[b, {h}, {s}, 8]"),
        ];
        if self.decode {
            for x in ["k", "v"] {
                lines.push(format!("input %past_{x} : f32[b, {kv}, p, 8]"));
                lines.push(format!("input %new_{x} : f32[b, {kv}, 1, 8]"));
            }
        } else {
            lines.push(format!("input %k : f32[b, {kv}, s, 8]"));
            lines.push(format!("input %v : f32[b, {kv}, s, 8]"));
        }
        lines.push(format!("input %pos : i64[b, {s}]"));
        if self.padded {
            lines.push("input %pad : i64[b]".into());
        }
        for x in ["k", "v"] {
            if self.decode {
                lines.push(format!(
                    "%{x} = concat %past_{x}, %new_{x} axis=2 : f32[b, {kv}, {t}, 8]"
                ));
            }
            if h != kv {
                let g = h / kv;
                lines.push(format!("%{x}5 = reshape %{x} : f32[b, {kv}, 1, {t}, 8]"));
                lines.push(format!(
                    "%{x}b = broadcast %{x}5 : f32[b, {kv}, {g}, {t}, 8]"
                ));
                lines.push(format!("%{x}{x} = reshape %{x}b : f32[b, {h}, {t}, 8]"));
            }
        }
        let full = format!("[b, {h}, {s}, {t}]");
        let (keys, values) = if h == kv {
            ("%k", "%v")
        } else {
            ("%kk", "%vv")
        };
        lines.extend([
            format!("%kt = permute {keys} perm=[0,1,3,2] : f32[b, {h}, 8, {t}]"),
            format!("%scores = matmul %q, %kt : f32{full}"),
            format!("%scale = const 0.3535533905932738 : f32{full}"),
            format!("%scaled = mul %scores, %scale : f32{full}"),
        ]);
        let x = if let Mask::None = self.mask {
            "%scaled"
        } else {
            lines.extend(self.mask_lines(s, t));
            lines.extend([
                format!("%mask = broadcast %allowed : bool{full}"),
                format!("%fill = const -inf : f32{full}"),
                format!("%x = select %mask, %scaled, %fill : f32{full}"),
            ]);
            "%x"
        };
        lines.extend([
            format!("%max = reduce_max {x} axes=[3] : f32[b, {h}, {s}, 1]"),
            format!("%maxb = broadcast %max : f32{full}"),
            format!("%shifted = sub {x}, %maxb : f32{full}"),
            format!("%e = exp %shifted : f32{full}"),
            format!("%sum = reduce_sum %e axes=[3] : f32[b, {h}, {s}, 1]"),
            format!("%sumb = broadcast %sum : f32{full}"),
            format!("%probs = div %e, %sumb : f32{full}  // attn.probs"),
            format!("%y = matmul %probs, {values} : f32[b, {h}, {s}, 8]"),
            "output y = %y".into(),
        ]);
        lines.join("\n") + "\n"
    }

    /// `%allowed : bool[b, 1, S, T]` for the case's mask, written as the builders write it.
    fn mask_lines(&self, s: &str, t: &str) -> Vec<String> {
        let m = format!("[b, 1, {s}, {t}]");
        let mut lines = vec![format!("%kpos = iota axis=3 : i64[1, 1, 1, {t}]")];
        if self.padded {
            lines.extend([
                format!("%kposw = broadcast %kpos : i64[b, 1, 1, {t}]"),
                "%pad4 = reshape %pad : i64[b, 1, 1, 1]".into(),
                format!("%pad4b = broadcast %pad4 : i64[b, 1, 1, {t}]"),
                format!("%kshift = sub %kposw, %pad4b : i64[b, 1, 1, {t}]"),
                format!("%kposb = broadcast %kshift : i64{m}"),
            ]);
        } else {
            lines.push(format!("%kposb = broadcast %kpos : i64{m}"));
        }
        lines.extend([
            format!("%qpos = reshape %pos : i64[b, 1, {s}, 1]"),
            format!("%qposb = broadcast %qpos : i64{m}"),
        ]);
        let causal = format!("le %kposb, %qposb : bool{m}");
        lines.extend(match self.mask {
            Mask::None => Vec::new(),
            Mask::Causal => vec![format!("%allowed = {causal}")],
            Mask::Window(w) => vec![
                format!("%upper = {causal}"),
                format!("%w = const {w} : i64[b, 1, {s}, 1]"),
                format!("%lowest = sub %qpos, %w : i64[b, 1, {s}, 1]"),
                format!("%lowestb = broadcast %lowest : i64{m}"),
                format!("%inside = gt %kposb, %lowestb : bool{m}"),
                format!("%allowed = and %upper, %inside : bool{m}"),
            ],
            Mask::Prefix(n) => vec![
                format!("%upper = {causal}"),
                format!("%n = const {n} : i64{m}"),
                format!("%inprefix = lt %kposb, %n : bool{m}"),
                format!("%allowed = or %inprefix, %upper : bool{m}"),
            ],
            Mask::AntiCausal => vec![format!("%allowed = ge %kposb, %qposb : bool{m}")],
        });
        if self.padded {
            // The mask over key positions, then the filler keys (negative positions) excluded.
            let last = lines.last_mut().expect("a mask line");
            *last = last.replacen("%allowed =", "%inner =", 1);
            lines.extend([
                format!("%zero = const 0 : i64{m}"),
                format!("%real = ge %kposb, %zero : bool{m}"),
                format!("%allowed = and %inner, %real : bool{m}"),
            ]);
        }
        lines
    }
}

fn case(heads: usize, kv: usize, decode: bool, mask: Mask) -> String {
    Case {
        heads,
        kv,
        decode,
        mask,
        padded: false,
    }
    .text()
}

fn padded_case(heads: usize, kv: usize, decode: bool, mask: Mask) -> String {
    Case {
        heads,
        kv,
        decode,
        mask,
        padded: true,
    }
    .text()
}

fn assert_fused(out: &str, attrs: &str) {
    assert!(out.contains("= flash_attention"), "not fused:\n{out}");
    assert!(out.contains(attrs), "expected `{attrs}`:\n{out}");
    for gone in ["exp", "reduce_max", "select", "iota"] {
        assert!(
            !out.contains(&format!("= {gone} ")),
            "`{gone}` is left:\n{out}"
        );
    }
    assert!(out.contains("fused 1 of 1 attentions"), "{out}");
}

#[test]
fn multi_head_causal_prefill() {
    let out = fuse(&case(2, 2, false, Mask::Causal), PREFILL);
    assert_fused(
        &out,
        "mask=causal padding=none bias=none group=1 scale=0.3535533905932738",
    );
    insta::assert_snapshot!(out);
}

#[test]
fn grouped_query_with_the_kv_repeat() {
    let out = fuse(&case(4, 2, false, Mask::Causal), PREFILL);
    assert_fused(&out, "mask=causal padding=none bias=none group=2");
    assert!(
        !out.contains("f32[b, 2, 2, s, 8]"),
        "the repeat is gone:\n{out}"
    );
}

#[test]
fn grouped_query_after_gqa_share() {
    let input = case(6, 2, false, Mask::Causal);
    let shared = check(&input, &[&GqaShare], PREFILL);
    assert!(shared.contains("f32[b, 2, 3, s, s]"), "{shared}");
    let out = check(&input, &[&GqaShare, &AttentionFusion], PREFILL);
    assert_fused(&out, "mask=causal padding=none bias=none group=3");
    insta::assert_snapshot!(out);
}

#[test]
fn sliding_window() {
    let out = fuse(&case(2, 2, false, Mask::Window(3)), PREFILL);
    assert_fused(&out, "mask=window(3)");
    let out = check(
        &case(4, 2, true, Mask::Window(2)),
        &[&GqaShare, &AttentionFusion],
        DECODE,
    );
    assert_fused(&out, "mask=window(2) padding=none bias=none group=2");
}

#[test]
fn causal_with_a_prefix() {
    let out = fuse(&case(2, 1, false, Mask::Prefix(2)), PREFILL);
    assert_fused(&out, "mask=prefix(2) padding=none bias=none group=2");
}

#[test]
fn no_mask() {
    let out = fuse(&case(2, 2, false, Mask::None), PREFILL);
    assert_fused(&out, "mask=none");
    assert!(
        out.contains("flash_attention %q, %k, %v mask=none"),
        "no positions are read:\n{out}"
    );
}

#[test]
fn decode_one_query_against_the_cache() {
    let out = check(
        &case(4, 2, true, Mask::Causal),
        &[&GqaShare, &AttentionFusion],
        DECODE,
    );
    assert_fused(
        &out,
        "mask=causal padding=none bias=none group=2 scale=0.3535533905932738 tile_q=1",
    );
    insta::assert_snapshot!(out);
}

/// The output and the refusal remark when the pass leaves the attention alone.
fn refused(input: &str, reason: &str) -> String {
    let out = fuse(input, PREFILL);
    assert!(!out.contains("= flash_attention"), "fused:\n{out}");
    assert!(out.contains("fused 0 of 1 attentions"), "{out}");
    let remark = format!("remark attention-fusion: refused `attn.probs`: {reason}");
    assert!(out.contains(&remark), "expected `{remark}`:\n{out}");
    out
}

#[test]
fn probabilities_with_another_use_are_refused() {
    let input = case(2, 2, false, Mask::Causal)
        .replace("output y = %y", "output y = %y\noutput probs = %probs");
    refused(
        &input,
        "an intermediate `div` of the attention has another use",
    );
}

#[test]
fn an_unrecognized_mask_is_refused() {
    refused(
        &case(2, 2, false, Mask::AntiCausal),
        "unrecognized mask (not a causal comparison of key and query positions)",
    );
}

#[test]
fn left_padded_rows() {
    let out = fuse(&padded_case(2, 2, false, Mask::Causal), PREFILL);
    assert_fused(&out, "mask=causal padding=left bias=none group=1");
    assert!(
        out.contains("flash_attention %q, %k, %v, %pos, %pad mask=causal"),
        "the padding is read:\n{out}"
    );
    insta::assert_snapshot!(out);
    let out = fuse(&padded_case(2, 1, false, Mask::Prefix(2)), PREFILL);
    assert_fused(&out, "mask=prefix(2) padding=left bias=none group=2");
    let out = check(
        &padded_case(4, 2, true, Mask::Window(2)),
        &[&GqaShare, &AttentionFusion],
        DECODE,
    );
    assert_fused(&out, "mask=window(2) padding=left bias=none group=2");
}

#[test]
fn padded_positions_without_the_filler_excluded_are_refused() {
    let input = padded_case(2, 2, false, Mask::Causal).replace(
        "%allowed = and %inner, %real",
        "%allowed = or %inner, %real",
    );
    refused(
        &input,
        "unrecognized mask (`or` that is not causal with a prefix)",
    );
    let input = padded_case(2, 2, false, Mask::Causal).replace(
        "%allowed = and %inner, %real : bool[b, 1, s, s]",
        "%allowed = and %inner, %inner : bool[b, 1, s, s]",
    );
    refused(
        &input,
        "unrecognized mask (`and` that is not a causal sliding window)",
    );
}

#[test]
fn a_finite_fill_is_refused() {
    let input = case(2, 2, false, Mask::Causal).replace("const -inf", "const -1000000000.0");
    refused(&input, "masked scores are not filled with -inf");
}
