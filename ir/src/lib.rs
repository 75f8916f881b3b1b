//! `kiln-ir`: the graph IR every other crate of kiln speaks.
//!
//! It owns the element types, symbolic shapes, the closed op set, the graph and its builder
//! helpers, the verifier, the canonical text form (print and parse), DOT export, the reference
//! interpreter, and random graphs for property tests (`testing`). It knows nothing of model
//! formats, passes, backends or runtimes.

pub mod attention;
pub mod builder;
pub mod dim;
pub mod dot;
pub mod dtype;
pub mod error;
pub mod graph;
pub mod infer;
pub mod interp;
pub mod op;
pub mod region;
pub mod testing;
pub mod text;
pub mod ty;
pub mod verify;

pub use attention::{Attention, AttentionBias, AttentionInput, AttentionMask, AttentionPadding};
pub use dim::{Bindings, Dim};
pub use dtype::DType;
pub use error::IrError;
pub use graph::{Graph, Node, NodeId};
pub use op::{BinaryOp, Literal, Op, ReduceOp, ScatterMode, UnaryOp};
pub use region::{Region, RegionKind, Step, StepOp};
pub use ty::TensorType;
pub use verify::verify;
