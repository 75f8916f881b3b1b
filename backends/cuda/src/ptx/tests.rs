//! The builder's text, instruction by instruction: what each typed method writes (suffixes
//! chosen from register types, float immediates by their bits, NaN-propagating `max`, explicit
//! rounding), the declarations a kernel gets, and the module header.

use super::*;

fn kernel(body: impl FnOnce(&mut KernelBuilder)) -> String {
    let mut b = KernelBuilder::new("k", &["bufs", "syms"]);
    body(&mut b);
    b.ret();
    let mut m = Module::default();
    m.push(b);
    m.text()
}

#[test]
fn arithmetic_picks_suffixes_from_register_types() {
    let text = kernel(|b| {
        let p = b.param("bufs");
        let g = b.to_global(p);
        let x = b.ld(Space::Global, "f32", Ty::F32, g, 8, true);
        let y = b.add(x, 1.5f32);
        let z = b.mad(y, x, 0.25f32);
        let w = b.max(z, f32::NEG_INFINITY);
        let i = b.mov(Ty::S64, 7i64);
        let j = b.mul(i, 3i64);
        let k = b.div(j, 2i64);
        let u = b.shr(k, 1);
        let n = b.cvt(Ty::F32, None, u, None, "rn");
        let q = b.div(w, n);
        b.st(Space::Global, "f32", g, 0, q);
    });
    insta::assert_snapshot!(text);
}

#[test]
fn predicates_branches_and_conversions() {
    let text = kernel(|b| {
        let tid = b.special(Special::Tid);
        let small = b.setp(Cmp::Lt, tid, 16i64);
        let x = b.mov(Ty::F32, 2.0f32);
        let nan = b.setp(Cmp::Nan, x, x);
        let ne = b.setp(Cmp::Ne, x, 0.0f32);
        let both = b.and(small, ne);
        let either = b.or(both, nan);
        let done = b.label();
        b.bra_if(either, true, done);
        let h = b.cvt(Ty::B16, Some("bf16"), x, None, "rn");
        let back = b.cvt(Ty::F32, None, h, Some("bf16"), "");
        let y = b.selp(back, 0.0f32, small, Ty::F32);
        let i = b.cvt(Ty::S32, None, y, None, "rzi");
        let one = b.pred_const(true);
        let flag = b.selp(1i64, 0i64, one, Ty::U32);
        b.assign(i, 3i64);
        let _ = flag;
        b.place(done);
    });
    insta::assert_snapshot!(text);
}

#[test]
fn shared_memory_shuffles_and_barriers() {
    let text = kernel(|b| {
        let smem = b.shared(128);
        let lane = b.special(Special::Lane);
        let x = b.mov(Ty::F32, 1.0f32);
        let y = b.shfl(Shuffle::Xor, x, 16i64);
        let z = b.shfl(Shuffle::Index, y, lane);
        b.st(Space::Shared, "f32", smem, 4, z);
        b.warp_sync();
        b.bar_sync();
        let w = b.ld(Space::Shared, "f32", Ty::F32, smem, 4, false);
        let big = b.cvt(Ty::S64, None, w, None, "rzi");
        let (lo, hi) = b.unpack(big);
        let lo = b.shfl(Shuffle::Xor, lo, 1i64);
        let back = b.pack(Ty::S64, lo, hi);
        let _ = back;
    });
    insta::assert_snapshot!(text);
}

/// The float function sequences, as reviewable text (the error bounds are in `math.rs`).
#[test]
fn exp_and_log_sequences() {
    let text = kernel(|b| {
        let x = b.mov(Ty::F32, 0.5f32);
        let e = math::exp(b, x);
        let _ = math::log(b, e);
    });
    insta::assert_snapshot!(text);
}

#[test]
fn vector_memory_packing_and_mma() {
    let text = kernel(|b| {
        let p = b.param("bufs");
        let g = b.to_global(p);
        let smem = b.shared(64);
        let words = b.ld_v4(Space::Global, g, 16, true);
        b.st_v4(Space::Shared, smem, 0, words);
        let (lo, hi) = b.unpack(words[0]);
        let both = b.pack(Ty::B32, hi, lo);
        let acc = [(); 4].map(|_| b.mov(Ty::F32, 0.0f32));
        b.mma_bf16(acc, [both, words[1], words[2], words[3]], [words[0], both]);
        // A warpgroup's product of a 64×16 tile in registers and a 16×16 one in (1024-byte
        // aligned) shared memory, after the copies' fence.
        let tile = b.shared_aligned(1024, 1024);
        let desc = b.or(tile, 1i64 << 62);
        let start = b.setp(Cmp::Eq, p, 0i64);
        b.fence_proxy_async();
        b.wgmma_fence();
        let wide: Vec<Reg> = (0..8).map(|_| b.reg(Ty::F32)).collect();
        b.wgmma_bf16(
            &wide,
            [both, words[1], words[2], words[3]],
            desc,
            start,
            true,
        );
        b.wgmma_commit();
        b.wgmma_wait(0);
    });
    insta::assert_snapshot!(text);
}
