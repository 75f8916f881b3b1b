//! Device buffers at capacity (see [`crate::capacity`]): the copies between a dense device
//! tensor and a cache buffer at capacity, each one strided 2-D copy of the row blocks
//! (`cuMemcpy2DAsync`) on the model's stream, ordered with its kernels.
//!
//! Prefill's dense cache moves into decode's buffer this way once per generation; host data
//! goes through the host's copy ([`crate::capacity::store`]) and one upload.

use crate::capacity::Blocks;
use cudarc::driver::sys::{self, CUmemorytype};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DriverError};

/// Copies `blocks.count` blocks of `blocks.dense` bytes from `src`, one every `src_pitch` bytes,
/// to `dst`, one every `dst_pitch` bytes.
fn copy_blocks(
    stream: &CudaStream,
    (src, src_pitch): (sys::CUdeviceptr, usize),
    (dst, dst_pitch): (sys::CUdeviceptr, usize),
    blocks: Blocks,
) -> Result<(), DriverError> {
    if blocks.count == 0 || blocks.dense == 0 {
        return Ok(());
    }
    let copy = sys::CUDA_MEMCPY2D {
        srcXInBytes: 0,
        srcY: 0,
        srcMemoryType: CUmemorytype::CU_MEMORYTYPE_DEVICE,
        srcHost: std::ptr::null(),
        srcDevice: src,
        srcArray: std::ptr::null_mut(),
        srcPitch: src_pitch,
        dstXInBytes: 0,
        dstY: 0,
        dstMemoryType: CUmemorytype::CU_MEMORYTYPE_DEVICE,
        dstHost: std::ptr::null_mut(),
        dstDevice: dst,
        dstArray: std::ptr::null_mut(),
        dstPitch: dst_pitch,
        WidthInBytes: blocks.dense,
        Height: blocks.count,
    };
    // SAFETY: both ranges lie in live allocations of this stream's context (the callers check
    // the lengths), and the copy is ordered on the stream with every use of them.
    unsafe { sys::cuMemcpy2DAsync_v2(&copy, stream.cu_stream()) }.result()
}

/// The bytes the blocks span at `pitch`.
fn span(blocks: Blocks, pitch: usize) -> usize {
    blocks.count.saturating_sub(1) * pitch + blocks.dense
}

/// Checks that a dense buffer of `dense` bytes and one at capacity of `stored` bytes hold the
/// blocks.
fn assert_fits(dense: usize, stored: usize, blocks: Blocks) {
    assert!(dense >= span(blocks, blocks.dense) && stored >= span(blocks, blocks.pitch));
}

/// Copies the dense tensor in `dense` into `stored`, a buffer at capacity.
pub fn store(
    stream: &CudaStream,
    dense: &CudaSlice<u8>,
    stored: &mut CudaSlice<u8>,
    blocks: Blocks,
) -> Result<(), DriverError> {
    assert_fits(dense.len(), stored.len(), blocks);
    let (src, _) = dense.device_ptr(stream);
    let (dst, _) = stored.device_ptr_mut(stream);
    copy_blocks(stream, (src, blocks.dense), (dst, blocks.pitch), blocks)
}

/// Copies the tensor stored at capacity in `stored` into `dense`.
pub fn load(
    stream: &CudaStream,
    stored: &CudaSlice<u8>,
    dense: &mut CudaSlice<u8>,
    blocks: Blocks,
) -> Result<(), DriverError> {
    assert_fits(dense.len(), stored.len(), blocks);
    let (src, _) = stored.device_ptr(stream);
    let (dst, _) = dense.device_ptr_mut(stream);
    copy_blocks(stream, (src, blocks.pitch), (dst, blocks.dense), blocks)
}
