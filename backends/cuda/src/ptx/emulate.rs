//! A one-thread emulator of straight-line PTX, for testing the float function sequences of
//! `math.rs` against f64 references on the CPU: it runs the instruction forms those sequences
//! use (moves, integer and float arithmetic with their rounding, `setp`, `selp`, `cvt`,
//! `ex2.approx`), and refuses anything else by name.
//!
//! `ex2.approx.f32` is emulated correctly rounded; the hardware's is within 2 ulp, which the
//! error bounds in `math.rs` include.

use std::collections::HashMap;

/// One parsed instruction: opcode parts (`["fma", "rn", "f32"]`), destination and sources.
struct Inst {
    parts: Vec<String>,
    dst: String,
    srcs: Vec<String>,
}

/// A parsed entry body, ready to run many times.
pub struct Program {
    insts: Vec<Inst>,
}

impl Program {
    /// The instructions of `text` (an entry's text or a bare body).
    pub fn parse(text: &str) -> Program {
        let insts = text
            .lines()
            .map(str::trim)
            .filter(|l| l.ends_with(';') && !l.starts_with('.') && !l.starts_with("ret"))
            .map(|l| {
                let l = l.trim_end_matches(';');
                let (op, rest) = l.split_once(' ').expect("an instruction has operands");
                let mut operands = rest.split(", ").map(str::to_string);
                Inst {
                    parts: op.split('.').map(str::to_string).collect(),
                    dst: operands.next().unwrap(),
                    srcs: operands.collect(),
                }
            })
            .collect();
        Program { insts }
    }

    /// Runs with the registers `inputs` set (as bits) and returns every register's bits.
    pub fn run(&self, inputs: &[(String, u64)]) -> HashMap<String, u64> {
        let mut regs: HashMap<String, u64> = inputs.iter().cloned().collect();
        for inst in &self.insts {
            let value = step(inst, &regs);
            regs.insert(inst.dst.clone(), value);
        }
        regs
    }
}

fn f32_of(bits: u64) -> f32 {
    f32::from_bits(bits as u32)
}

fn f64_of(bits: u64) -> f64 {
    f64::from_bits(bits)
}

fn of_f32(v: f32) -> u64 {
    v.to_bits() as u64
}

/// The bits of operand `s`: a register, `0f…`/`0d…` float bits, or a decimal integer.
fn operand(s: &str, regs: &HashMap<String, u64>) -> u64 {
    if let Some(hex) = s.strip_prefix("0f") {
        return u32::from_str_radix(hex, 16).unwrap() as u64;
    }
    if let Some(hex) = s.strip_prefix("0d") {
        return u64::from_str_radix(hex, 16).unwrap();
    }
    if s.starts_with('%') {
        return *regs
            .get(s)
            .unwrap_or_else(|| panic!("register {s} read before it is written"));
    }
    s.parse::<i64>()
        .unwrap_or_else(|_| panic!("bad operand {s}")) as u64
}

fn nan_min_max(a: f32, b: f32, max: bool) -> f32 {
    if a.is_nan() || b.is_nan() {
        f32::NAN
    } else if max {
        a.max(b)
    } else {
        a.min(b)
    }
}

fn step(inst: &Inst, regs: &HashMap<String, u64>) -> u64 {
    let s: Vec<u64> = inst.srcs.iter().map(|x| operand(x, regs)).collect();
    let parts: Vec<&str> = inst.parts.iter().map(String::as_str).collect();
    let ty = *parts.last().unwrap();
    let op = parts[0];
    let (fa, fb, fc) = (
        f32_of(s[0]),
        s.get(1).map_or(0.0, |&b| f32_of(b)),
        s.get(2).map_or(0.0, |&c| f32_of(c)),
    );
    let (da, db, dc) = (
        f64_of(s[0]),
        s.get(1).map_or(0.0, |&b| f64_of(b)),
        s.get(2).map_or(0.0, |&c| f64_of(c)),
    );
    let int = |v: u64| -> i64 {
        match ty {
            "s32" | "b32" | "u32" => v as u32 as i32 as i64,
            _ => v as i64,
        }
    };
    let wrap = |v: i64| -> u64 {
        match ty {
            "s32" | "b32" | "u32" => v as u32 as u64,
            _ => v as u64,
        }
    };
    match (op, ty) {
        ("mov", _) => s[0],
        ("add", "f32") => of_f32(fa + fb),
        ("sub", "f32") => of_f32(fa - fb),
        ("mul", "f32") => of_f32(fa * fb),
        ("div", "f32") => of_f32(fa / fb),
        ("fma", "f32") => of_f32(fa.mul_add(fb, fc)),
        ("mul", "f64") => (da * db).to_bits(),
        ("fma", "f64") => da.mul_add(db, dc).to_bits(),
        ("neg", "f32") => of_f32(-fa),
        ("neg", "f64") => (-da).to_bits(),
        ("abs", "f32") => of_f32(fa.abs()),
        ("min", "f32") => of_f32(nan_min_max(fa, fb, false)),
        ("max", "f32") => of_f32(nan_min_max(fa, fb, true)),
        ("rcp", "f32") => of_f32(1.0 / fa),
        ("sqrt", "f32") => of_f32(fa.sqrt()),
        ("ex2", "f32") => of_f32((fa as f64).exp2() as f32),
        ("add", _) => wrap(int(s[0]).wrapping_add(int(s[1]))),
        ("sub", _) => wrap(int(s[0]).wrapping_sub(int(s[1]))),
        ("neg", _) => wrap(int(s[0]).wrapping_neg()),
        ("shl", _) => wrap(int(s[0]) << s[1]),
        ("shr", _) => wrap(int(s[0]) >> s[1]),
        ("and", "pred") => s[0] & s[1],
        ("or", "pred") => s[0] | s[1],
        ("and", _) => wrap(int(s[0]) & int(s[1])),
        ("or", _) => wrap(int(s[0]) | int(s[1])),
        ("selp", _) => {
            if s[2] != 0 {
                s[0]
            } else {
                s[1]
            }
        }
        ("setp", _) => setp(parts[1], ty, &s, int) as u64,
        ("cvt", _) => cvt(&parts, s[0]),
        _ => panic!("the emulator does not run `{}`", parts.join(".")),
    }
}

fn setp(cmp: &str, ty: &str, s: &[u64], int: impl Fn(u64) -> i64) -> bool {
    if ty == "f32" {
        let (a, b) = (f32_of(s[0]), f32_of(s[1]));
        return match cmp {
            "eq" => a == b,
            "neu" => a != b,
            "lt" => a < b,
            "le" => a <= b,
            "gt" => a > b,
            "ge" => a >= b,
            "nan" => a.is_nan() || b.is_nan(),
            _ => panic!("setp.{cmp}.f32"),
        };
    }
    let (a, b) = (int(s[0]), int(s[1]));
    match cmp {
        "eq" => a == b,
        "ne" => a != b,
        "lt" => a < b,
        "gt" => a > b,
        _ => panic!("setp.{cmp}.{ty}"),
    }
}

/// `cvt[.round].to.from`.
fn cvt(parts: &[&str], x: u64) -> u64 {
    let (round, to, from) = match parts.len() {
        4 => (parts[1], parts[2], parts[3]),
        _ => ("", parts[1], parts[2]),
    };
    let float = match from {
        "f32" => f32_of(x) as f64,
        "f64" => f64_of(x),
        "s32" => x as u32 as i32 as f64,
        "s64" => x as i64 as f64,
        other => panic!("cvt from {other}"),
    };
    let rounded = match round {
        "rni" => float.round_ties_even(),
        "rzi" => float.trunc(),
        _ => float,
    };
    match to {
        "f32" if from == "s64" => of_f32(x as i64 as f32),
        "f32" => of_f32(rounded as f32),
        "f64" => rounded.to_bits(),
        // Float to integer saturates, NaN becomes 0 (Rust's `as` does both).
        "s32" => rounded as i32 as u32 as u64,
        "s64" => rounded as i64 as u64,
        other => panic!("cvt to {other}"),
    }
}
