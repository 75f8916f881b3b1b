//! Dimensions: affine expressions over named symbols.
//!
//! A dimension is `c + Σ kᵢ·symᵢ`: a constant (`64`), a symbol (`seq`), or a sum such as
//! `past+1` (the key length of a decode step). Symbols are declared on the graph with a maximum
//! (`sym seq <= 2048`), so one graph serves every size up to it with no respecialization.
//!
//! Invariants: terms are sorted by symbol name, no coefficient is zero, and two equal expressions
//! have equal representations, so `==` is semantic equality of affine forms.

use std::collections::BTreeMap;
use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Dim {
    terms: Vec<(String, i64)>,
    constant: i64,
}

/// Values of symbols during one execution.
pub type Bindings = BTreeMap<String, usize>;

impl Dim {
    pub fn fixed(n: usize) -> Dim {
        Dim {
            terms: Vec::new(),
            constant: n as i64,
        }
    }

    pub fn sym(name: &str) -> Dim {
        Dim {
            terms: vec![(name.to_string(), 1)],
            constant: 0,
        }
    }

    /// The value when the dimension does not depend on any symbol.
    pub fn as_fixed(&self) -> Option<usize> {
        if self.terms.is_empty() && self.constant >= 0 {
            Some(self.constant as usize)
        } else {
            None
        }
    }

    /// The symbol's name when the dimension is exactly one symbol.
    pub fn as_symbol(&self) -> Option<&str> {
        match self.terms.as_slice() {
            [(name, 1)] if self.constant == 0 => Some(name),
            _ => None,
        }
    }

    pub fn is_one(&self) -> bool {
        self.as_fixed() == Some(1)
    }

    /// The `(symbol, coefficient)` terms, sorted by symbol.
    pub fn terms(&self) -> &[(String, i64)] {
        &self.terms
    }

    /// The constant term.
    pub fn constant(&self) -> i64 {
        self.constant
    }

    pub fn symbols(&self) -> impl Iterator<Item = &str> {
        self.terms.iter().map(|(s, _)| s.as_str())
    }

    pub fn plus(&self, other: &Dim) -> Dim {
        self.combine(other, 1)
    }

    pub fn minus(&self, other: &Dim) -> Dim {
        self.combine(other, -1)
    }

    fn combine(&self, other: &Dim, sign: i64) -> Dim {
        let mut terms: BTreeMap<String, i64> = self.terms.iter().cloned().collect();
        for (s, k) in &other.terms {
            *terms.entry(s.clone()).or_insert(0) += sign * k;
        }
        Dim {
            terms: terms.into_iter().filter(|(_, k)| *k != 0).collect(),
            constant: self.constant + sign * other.constant,
        }
    }

    /// Builds `constant + Σ k·sym` from parts, normalizing them.
    pub fn affine(terms: impl IntoIterator<Item = (String, i64)>, constant: i64) -> Dim {
        let zero = Dim::fixed(0);
        let mut acc = Dim { constant, ..zero };
        for (s, k) in terms {
            acc = acc.plus(&Dim {
                terms: vec![(s, k)],
                constant: 0,
            });
        }
        acc
    }

    /// The value under the given symbol bindings; `None` when a symbol is unbound or the
    /// result is negative.
    pub fn eval(&self, env: &Bindings) -> Option<usize> {
        let mut v = self.constant;
        for (s, k) in &self.terms {
            v += k * (*env.get(s)? as i64);
        }
        usize::try_from(v).ok()
    }

    /// The largest value the dimension can take, given each symbol's declared maximum (symbols
    /// range over `0..=max`); `None` when a symbol is undeclared or the value is negative.
    pub fn max_value(&self, maxima: &BTreeMap<String, usize>) -> Option<usize> {
        let mut v = self.constant;
        for (s, k) in &self.terms {
            let bound = if *k > 0 { *maxima.get(s)? as i64 } else { 0 };
            v += k * bound;
        }
        usize::try_from(v).ok()
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (s, k) in &self.terms {
            let sign = if *k < 0 {
                "-"
            } else if first {
                ""
            } else {
                "+"
            };
            let mag = k.abs();
            if mag == 1 {
                write!(f, "{sign}{s}")?;
            } else {
                write!(f, "{sign}{mag}*{s}")?;
            }
            first = false;
        }
        if first {
            write!(f, "{}", self.constant)
        } else if self.constant > 0 {
            write!(f, "+{}", self.constant)
        } else if self.constant < 0 {
            write!(f, "{}", self.constant)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn affine_arithmetic_normalizes() {
        let past = Dim::sym("past");
        let d = past.plus(&Dim::fixed(1));
        assert_eq!(d.to_string(), "past+1");
        assert_eq!(d.minus(&Dim::sym("past")), Dim::fixed(1));
        let two = Dim::affine([("seq".into(), 2), ("batch".into(), -1)], -3);
        assert_eq!(two.to_string(), "-batch+2*seq-3");
        let env: Bindings = [("seq".into(), 5), ("batch".into(), 2)].into();
        assert_eq!(two.eval(&env), Some(5));
    }
}
