//! Training state written in place: a training step's new weights and moments go over the old
//! ones instead of into buffers of their own, so the step holds one copy of its state, not two.
//!
//! The outputs considered are those the training programs name as the next value of a source
//! (`kiln_frontend`'s `build/train.rs`): `param.NAME` replaces weight `NAME`, `adam_m.NAME` and
//! `adam_v.NAME` the inputs of the same names. Such an output is moved into its source's buffer
//! when
//! - it is a temporary written by one kernel, a map over the whole buffer (`out` contiguous);
//! - the map reads the source only at the element it writes (every leaf on the source's buffer
//!   has the layout of `out`), so each element is read before it is overwritten, by the thread
//!   that overwrites it;
//! - no later kernel reads the source, so nothing sees the new value where it expects the old;
//! - the source has the output's dtype and element count, and no other output takes its buffer.
//!
//! Every view of the output's buffer then names the source's buffer, and the output's buffer is
//! removed. Anything else keeps its own buffer (the runtime swaps such outputs in, as before).
//! The caller of such a program hands over the storage of the sources it replaces
//! (`kiln_runtime::manifest`'s "state written in place").

use super::LoweredProgram;
use crate::kernel::Kernel;
use crate::view::{Source, View};
use kiln_runtime::manifest::{BufferKind, TensorDesc};

/// Moves every output of `program` that may replace its source into the source's buffer;
/// `weights` names the weights the buffers of kind `Weight` index.
pub(super) fn write_state_in_place(program: &mut LoweredProgram, weights: &[TensorDesc]) {
    for o in 0..program.outputs.len() {
        let Some(source) = source_buffer(program, weights, &program.outputs[o].name) else {
            continue;
        };
        let buffer = program.outputs[o].buffer;
        if replaceable(program, buffer, source) {
            move_buffer(program, buffer, source);
        }
    }
}

/// The buffer of the source output `name` is the next value of, by the training programs'
/// names.
fn source_buffer(program: &LoweredProgram, weights: &[TensorDesc], name: &str) -> Option<usize> {
    if let Some(weight) = name.strip_prefix("param.") {
        let index = weights.iter().position(|w| w.name == weight)?;
        return (program.buffers.iter()).position(|b| b.kind == BufferKind::Weight(index));
    }
    let moment = name.starts_with("adam_m.") || name.starts_with("adam_v.");
    let input = program.inputs.iter().find(|i| i.name == name && moment)?;
    Some(input.buffer).filter(|_| input.capacity.is_none())
}

/// Whether the output in `buffer` may be written over `source` (the module doc's conditions).
fn replaceable(program: &LoweredProgram, buffer: usize, source: usize) -> bool {
    let (out, source_desc) = (&program.buffers[buffer], &program.buffers[source]);
    let taken = program.outputs.iter().any(|o| o.buffer == source);
    if out.kind != BufferKind::Temp
        || taken
        || out.dtype != source_desc.dtype
        || out.numel != source_desc.numel
    {
        return false;
    }
    let kernels = &program.kernels;
    let writes = |k: &Kernel| k.written().iter().any(|v| v.buffer() == Some(buffer));
    let writers: Vec<usize> = (0..kernels.len())
        .filter(|&i| writes(&kernels[i].0))
        .collect();
    let [writer] = writers[..] else {
        return false;
    };
    let Kernel::Map { out, leaves, .. } = &kernels[writer].0 else {
        return false;
    };
    let whole = out.offset.is_constant(0)
        && out.is_contiguous()
        && out.numel() == program.buffers[buffer].numel;
    let same_element = |leaf: &View| {
        leaf.buffer() != Some(source)
            || (leaf.offset == out.offset && leaf.dims == out.dims && leaf.strides == out.strides)
    };
    let reads_source = |k: &Kernel| {
        let touched = k.operands().into_iter().chain(k.written());
        touched.into_iter().any(|v| v.buffer() == Some(source))
    };
    whole
        && leaves.iter().all(same_element)
        && !kernels[writer + 1..].iter().any(|(k, _)| reads_source(k))
}

/// Makes every view and output of `buffer` name `source`, and removes `buffer` (the buffers
/// after it move down by one).
fn move_buffer(program: &mut LoweredProgram, buffer: usize, source: usize) {
    let renumber = |b: usize| match b {
        b if b == buffer => source - usize::from(source > buffer),
        b if b > buffer => b - 1,
        b => b,
    };
    for (kernel, _) in &mut program.kernels {
        for view in kernel.views_mut() {
            if let Source::Buffer(b) = view.source {
                view.source = Source::Buffer(renumber(b));
            }
        }
    }
    for io in program.inputs.iter_mut().chain(&mut program.outputs) {
        io.buffer = renumber(io.buffer);
    }
    program.buffers.remove(buffer);
}

#[cfg(test)]
mod tests {
    use super::super::{lower, LowerOptions, SharedTables};
    use kiln_ir::text::parse;
    use kiln_runtime::manifest::BufferKind;

    /// The kind of the buffer each output of `text`'s program lies in, lowered with state in
    /// place.
    fn placed(text: &str) -> Vec<(String, BufferKind)> {
        let options = LowerOptions {
            state_in_place: true,
            ..LowerOptions::default()
        };
        let program = lower(
            &parse(text).unwrap(),
            &mut SharedTables::default(),
            &options,
        )
        .unwrap();
        let kinds = program.outputs.iter();
        kinds
            .map(|o| (o.name.clone(), program.buffers[o.buffer].kind.clone()))
            .collect()
    }

    #[test]
    fn updates_are_written_over_the_weight_and_the_moment() {
        let text = "graph train_step
input %adam_m.w : f32[4, 8]
input %g : f32[4, 8]
weight @w : f32[4, 8]
%m = add %adam_m.w, %g : f32[4, 8]
%p = sub @w, %m : f32[4, 8]
output adam_m.w = %m
output param.w = %p";
        let got = placed(text);
        assert_eq!(got[0], ("adam_m.w".into(), BufferKind::Input(0)));
        assert_eq!(got[1], ("param.w".into(), BufferKind::Weight(0)));
    }

    #[test]
    fn a_source_read_later_or_elsewhere_keeps_its_value() {
        // `adam_m.w` is read after its update (by `%later`); `@w` is read transposed by the
        // kernel that writes its update, so other elements than the one written.
        let text = "graph train_step
input %adam_m.w : f32[4, 4]
weight @w : f32[4, 4]
%m = mul %adam_m.w, %adam_m.w : f32[4, 4]
%later = add %m, %adam_m.w : f32[4, 4]
%t = permute @w perm=[1,0] : f32[4, 4]
%p = add @w, %t : f32[4, 4]
output adam_m.w = %m
output other = %later
output param.w = %p";
        let got = placed(text);
        assert_eq!(got[0].1, BufferKind::Temp);
        assert_eq!(got[2].1, BufferKind::Temp);
    }
}
