//! The canonical text form of a graph: what `kiln ir` prints, what snapshots hold, and what
//! pass tests are written in. It parses back to an equivalent graph, and printing that graph
//! gives the same text (tested on generated graphs).
//!
//! ```text
//! graph decode
//! sym batch <= 4
//! sym past <= 63
//! input %input_ids : i64[batch, 1]
//! weight @model.embed_tokens.weight : f32[256, 64]
//! %0 = gather @model.embed_tokens.weight, %input_ids axis=0 : f32[batch, 1, 64]  // embed
//! %1 = const 0.125 : f32[]
//! output logits = %0
//! remark canonicalize: folded 3 constants
//! ```
//!
//! One line per item. Values are numbered `%0, %1, …` in the graph's canonical order
//! ([`crate::Graph::order`]), inputs are `%name` and weights `@name`. An op line is
//! `%N = OP OPERANDS ATTRS : TYPE` with an optional `// label`; operands are comma-separated,
//! attributes are space-separated `key=value` (lists without spaces, dims in affine form), and a
//! constant's value (a number or a `[…]` list) follows `const` directly, and a fused region's
//! steps follow its attributes in braces (`{ $2 = mul $0, $1; … }`, see [`crate::region`]).
//! The result type is always printed; for typed ops (`cast`, `reshape`, `broadcast`, sources)
//! it is the op's parameter. Lines starting with `#` and blank lines are ignored by the parser.

mod parse;
mod print;

pub use parse::parse;
pub use print::print;
