//! Integer polynomials over a program's size symbols (`batch`, `seq`, `past`, …).
//!
//! Sizes, strides and offsets of every buffer are polynomials, not just affine forms: the
//! batch stride of a `[batch, heads, seq, past]` tensor is `heads·seq·past`. The compiler builds
//! them; the runtime and the generated code evaluate them once per call with the bound symbols.
//!
//! Invariant: terms are sorted by monomial, each monomial's symbol indices are sorted, no
//! coefficient is zero and no monomial repeats, so `==` is equality of polynomials.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// `coeff · Π symbols[i]` (an empty product is the constant term).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Term {
    pub coeff: i64,
    pub symbols: Vec<u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Poly {
    pub terms: Vec<Term>,
}

impl Poly {
    pub fn constant(c: i64) -> Poly {
        Poly::from_map(BTreeMap::from([(Vec::new(), c)]))
    }

    pub fn symbol(index: u32) -> Poly {
        Poly::from_map(BTreeMap::from([(vec![index], 1)]))
    }

    fn from_map(map: BTreeMap<Vec<u32>, i64>) -> Poly {
        Poly {
            terms: map
                .into_iter()
                .filter(|(_, c)| *c != 0)
                .map(|(symbols, coeff)| Term { coeff, symbols })
                .collect(),
        }
    }

    fn to_map(&self) -> BTreeMap<Vec<u32>, i64> {
        self.terms
            .iter()
            .map(|t| (t.symbols.clone(), t.coeff))
            .collect()
    }

    pub fn add(&self, other: &Poly) -> Poly {
        let mut map = self.to_map();
        for t in &other.terms {
            *map.entry(t.symbols.clone()).or_insert(0) += t.coeff;
        }
        Poly::from_map(map)
    }

    pub fn scale(&self, k: i64) -> Poly {
        self.mul(&Poly::constant(k))
    }

    pub fn sub(&self, other: &Poly) -> Poly {
        self.add(&other.scale(-1))
    }

    pub fn mul(&self, other: &Poly) -> Poly {
        let mut map = BTreeMap::new();
        for a in &self.terms {
            for b in &other.terms {
                let mut symbols = [a.symbols.as_slice(), b.symbols.as_slice()].concat();
                symbols.sort_unstable();
                *map.entry(symbols).or_insert(0) += a.coeff * b.coeff;
            }
        }
        Poly::from_map(map)
    }

    pub fn product<'a>(factors: impl IntoIterator<Item = &'a Poly>) -> Poly {
        factors
            .into_iter()
            .fold(Poly::constant(1), |acc, f| acc.mul(f))
    }

    /// The polynomial divided by `n` where every coefficient is a multiple of `n` (so the value
    /// is, whatever the symbols).
    pub fn div_exact(&self, n: i64) -> Option<Poly> {
        self.terms.iter().all(|t| t.coeff % n == 0).then(|| Poly {
            terms: self
                .terms
                .iter()
                .map(|t| Term {
                    coeff: t.coeff / n,
                    symbols: t.symbols.clone(),
                })
                .collect(),
        })
    }

    /// The value when the polynomial has no symbol.
    pub fn as_constant(&self) -> Option<i64> {
        match self.terms.as_slice() {
            [] => Some(0),
            [t] if t.symbols.is_empty() => Some(t.coeff),
            _ => None,
        }
    }

    pub fn is_constant(&self, c: i64) -> bool {
        self.as_constant() == Some(c)
    }

    /// The value at `symbols` (indexed as the program's symbol list).
    pub fn eval(&self, symbols: &[i64]) -> i64 {
        self.terms
            .iter()
            .map(|t| {
                t.symbols
                    .iter()
                    .fold(t.coeff, |acc, &s| acc * symbols[s as usize])
            })
            .sum()
    }
}

impl fmt::Display for Poly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.terms.is_empty() {
            return write!(f, "0");
        }
        for (i, t) in self.terms.iter().enumerate() {
            if i > 0 {
                write!(f, " + ")?;
            }
            let factors: Vec<String> = t.symbols.iter().map(|s| format!("s{s}")).collect();
            match (t.coeff, factors.is_empty()) {
                (c, true) => write!(f, "{c}")?,
                (1, false) => write!(f, "{}", factors.join("·"))?,
                (c, false) => write!(f, "{c}·{}", factors.join("·"))?,
            }
        }
        Ok(())
    }
}
