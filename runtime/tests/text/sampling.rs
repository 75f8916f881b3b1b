//! Sampling: greedy is argmax with the lowest index on ties, over short and long rows; seeded draws repeat; top-k 1 and a
//! tiny top-p reduce to greedy; draws follow the softmax; top-k excludes the rest; invalid
//! parameters are errors naming the parameter.

use kiln_runtime::{Sampler, Sampling};

fn sample(temperature: f32, top_k: Option<usize>, top_p: Option<f32>, seed: u64) -> Sampling {
    Sampling::Sample {
        temperature,
        top_k,
        top_p,
        seed,
    }
}

/// Deterministic, varied logits: a fixed linear-congruential sequence in [-4, 4).
fn logits(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed;
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 8.0 - 4.0
        })
        .collect()
}

#[test]
fn greedy_is_argmax_lowest_index_on_ties() {
    let mut greedy = Sampler::new(Sampling::Greedy).unwrap();
    assert_eq!(greedy.next(&[0.1, 2.0, -1.0, 1.9]), 1);
    assert_eq!(greedy.next(&[1.0, 3.0, 3.0, 2.0]), 1);
    assert_eq!(greedy.next(&[f32::NAN, -5.0, f32::NAN]), 1);
    assert_eq!(greedy.next(&[f32::NEG_INFINITY; 3]), 0);
    assert_eq!(greedy.next(&[7.0]), 0);
}

/// Greedy over long rows (whole groups of 8 and a tail) agrees with a plain scan: the maximum
/// in every position, ties across positions, NaN and −∞ mixed in.
#[test]
fn greedy_over_long_rows_is_the_first_highest() {
    let plain = |row: &[f32]| {
        let rank = |x: f32| if x.is_nan() { f32::NEG_INFINITY } else { x };
        let mut best = 0;
        for (i, &x) in row.iter().enumerate() {
            if rank(x) > rank(row[best]) {
                best = i;
            }
        }
        best as u32
    };
    let mut greedy = Sampler::new(Sampling::Greedy).unwrap();
    for n in [8, 9, 37, 1000] {
        for at in [0, n / 2, n - 1] {
            let mut row = logits(n, n as u64);
            row[at] = 10.0;
            assert_eq!(greedy.next(&row), at as u32, "n = {n}, top at {at}");
            row[n - 1 - at] = 10.0;
            assert_eq!(greedy.next(&row), plain(&row), "n = {n}, tie");
            for i in (0..n).step_by(3) {
                row[i] = f32::NAN;
            }
            assert_eq!(greedy.next(&row), plain(&row), "n = {n}, NaN");
        }
        let mut low = vec![f32::NEG_INFINITY; n];
        low[0] = f32::NAN;
        assert_eq!(greedy.next(&low), plain(&low), "n = {n}, all −∞ or NaN");
    }
}

#[test]
fn same_seed_same_sequence() {
    let run = |seed| {
        let mut sampler = Sampler::new(sample(0.8, Some(50), Some(0.95), seed)).unwrap();
        (0..64)
            .map(|i| sampler.next(&logits(500, i)))
            .collect::<Vec<_>>()
    };
    assert_eq!(run(7), run(7));
    assert_ne!(run(7), run(8));
}

#[test]
fn top_k_one_and_tiny_top_p_are_greedy() {
    let mut greedy = Sampler::new(Sampling::Greedy).unwrap();
    let mut top_k = Sampler::new(sample(1.5, Some(1), None, 3)).unwrap();
    let mut top_p = Sampler::new(sample(1.5, None, Some(1e-6), 4)).unwrap();
    for i in 0..50 {
        let logits = logits(1000, i);
        let want = greedy.next(&logits);
        assert_eq!(top_k.next(&logits), want);
        assert_eq!(top_p.next(&logits), want);
    }
}

#[test]
fn draws_follow_the_softmax() {
    let probs = [0.1f32, 0.2, 0.7];
    let logits = probs.map(f32::ln);
    let mut sampler = Sampler::new(sample(1.0, None, None, 42)).unwrap();
    let draws = 20_000;
    let mut counts = [0usize; 3];
    for _ in 0..draws {
        counts[sampler.next(&logits) as usize] += 1;
    }
    for (count, p) in counts.iter().zip(probs) {
        let freq = *count as f32 / draws as f32;
        assert!((freq - p).abs() < 0.02, "{counts:?}");
    }
}

#[test]
fn top_k_two_never_draws_the_smallest() {
    let logits = [0.1f32, 0.2, 0.7].map(f32::ln);
    let mut sampler = Sampler::new(sample(1.0, Some(2), None, 5)).unwrap();
    let mut seen = [false; 3];
    for _ in 0..2000 {
        seen[sampler.next(&logits) as usize] = true;
    }
    assert_eq!(seen, [false, true, true]);
}

#[test]
fn top_p_keeps_the_fewest_tokens_reaching_the_mass() {
    // Probabilities 0.7, 0.2, 0.1: top_p 0.8 keeps the first two (0.9 ≥ 0.8).
    let logits = [0.1f32, 0.2, 0.7].map(f32::ln);
    let mut sampler = Sampler::new(sample(1.0, None, Some(0.8), 6)).unwrap();
    let mut seen = [false; 3];
    for _ in 0..2000 {
        seen[sampler.next(&logits) as usize] = true;
    }
    assert_eq!(seen, [false, true, true]);
}

#[test]
fn infinite_logits_fall_back_to_greedy() {
    let mut sampler = Sampler::new(sample(1.0, None, Some(0.9), 9)).unwrap();
    assert_eq!(sampler.next(&[0.0, f32::INFINITY, 1.0]), 1);
    assert_eq!(sampler.next(&[f32::NEG_INFINITY, f32::NAN]), 0);
    let mut tiny_temperature = Sampler::new(sample(1e-39, None, None, 9)).unwrap();
    assert_eq!(tiny_temperature.next(&[0.5, 2.0, 1.0]), 1);
    assert_eq!(tiny_temperature.next(&[-2.0, -0.5, -1.0]), 1);
}

#[test]
fn invalid_parameters_are_errors() {
    let cases = [
        (sample(0.0, None, None, 0), "temperature"),
        (sample(-1.0, None, None, 0), "temperature"),
        (sample(f32::NAN, None, None, 0), "temperature"),
        (sample(f32::INFINITY, None, None, 0), "temperature"),
        (sample(1.0, Some(0), None, 0), "top_k"),
        (sample(1.0, None, Some(0.0), 0), "top_p"),
        (sample(1.0, None, Some(1.5), 0), "top_p"),
        (sample(1.0, None, Some(f32::NAN), 0), "top_p"),
    ];
    for (sampling, field) in cases {
        let err = sampling.validate().unwrap_err();
        assert_eq!(err.field.as_deref(), Some(field), "{err}");
        assert!(err.message.contains("must be"), "{err}");
        assert!(Sampler::new(sampling).is_err());
    }
    assert!(Sampling::Greedy.validate().is_ok());
    assert!(sample(0.7, Some(1), Some(1.0), 0).validate().is_ok());
}
