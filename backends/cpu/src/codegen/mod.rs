//! Code generation: each [`Kernel`] becomes one exported function of a Cranelift object module,
//! with the kernel ABI of `kiln_runtime::manifest`.

mod attention;
mod attention_grad;
mod builder;
mod epilogue;
mod expr;
mod gather;
mod map;
mod math;
mod matmul;
mod reduce;
mod scatter;
mod visibility;
mod widen;

use crate::error::Result;
use crate::kernel::Kernel;
use builder::{kernel_signature, KernelFn};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_module::{Linkage, Module};
use cranelift_object::ObjectModule;

/// Emits `kernel` as the exported function `name`.
pub fn define(module: &mut ObjectModule, name: &str, kernel: &Kernel) -> Result<()> {
    let call_conv = module.isa().default_call_conv();
    let sig = kernel_signature(call_conv);
    let id = module.declare_function(name, Linkage::Export, &sig)?;
    let mut ctx = module.make_context();
    ctx.func.signature = sig;
    let mut fctx = FunctionBuilderContext::new();
    let mut f = KernelFn::new(FunctionBuilder::new(&mut ctx.func, &mut fctx), call_conv);
    match kernel {
        Kernel::Map { out, leaves, expr } => map::emit(&mut f, out, leaves, expr),
        Kernel::Reduce {
            op,
            leaves,
            expr,
            axes,
            out,
        } => reduce::emit(&mut f, *op, leaves, expr, axes, out),
        Kernel::MatMul {
            a,
            b,
            out,
            tile_m,
            tile_n,
            gemm_min_rows,
            epilogue,
        } => matmul::emit(
            &mut f,
            a,
            b,
            out,
            (*tile_m, *tile_n),
            *gemm_min_rows,
            epilogue.as_ref(),
        ),
        Kernel::Gather {
            data,
            indices,
            axis,
            out,
        } => gather::emit(&mut f, data, indices, *axis, out),
        Kernel::Scatter {
            indices,
            updates,
            axis,
            mode,
            out,
        } => scatter::emit(&mut f, indices, updates, *axis, *mode, out),
        Kernel::Attention(a) => attention::emit(&mut f, a),
        Kernel::AttentionGrad(a) => attention_grad::emit(&mut f, a),
    }
    f.finish(module.target_config());
    module.define_function(id, &mut ctx)?;
    Ok(())
}
