/* cuda_compat.h: lets one kernel source build as CUDA (nvcc, PyCUDA) and as OpenCL C (PoCL on the CPU).
 *
 * The kernels in this folder are written as CUDA. When the OpenCL compiler reads them (it defines
 * __OPENCL_VERSION__), this header maps CUDA's built-ins onto OpenCL's, the way llama.cpp's ggml-cuda maps
 * CUDA onto HIP with a vendor header, so the kernels themselves carry no #ifdefs:
 *
 *   KERNEL, DEVICE, GLOBAL (the address space of a kernel's array arguments), SHARED / SHARED_PTR,
 *   threadIdx / blockIdx / blockDim, __syncthreads, expf / logf / fmaxf, FLOAT4 loads,
 *   WARP_SHFL_XOR and SYNC_WARP: OpenCL 1.2 on PoCL has no sub-group shuffles, so a warp shuffle is emulated
 *   through local memory (the WARP_SCRATCH array, one float per thread) between two barriers. Every thread
 *   of the block must therefore reach each shuffle: the kernels keep their control flow block-uniform.
 */
#ifndef CHORDLAB_CUDA_COMPAT_H
#define CHORDLAB_CUDA_COMPAT_H

#define WARP_SIZE 32

#ifdef __OPENCL_VERSION__ /* ---------------------------------------------------------- OpenCL C (PoCL) */

#define KERNEL __kernel
#define DEVICE static inline
#define GLOBAL __global
#define SHARED __local
#define SHARED_PTR __local
#define threadIdx ((uint3)(get_local_id(0), get_local_id(1), get_local_id(2)))
#define blockIdx ((uint3)(get_group_id(0), get_group_id(1), get_group_id(2)))
#define blockDim ((uint3)(get_local_size(0), get_local_size(1), get_local_size(2)))
#define __syncthreads() barrier(CLK_LOCAL_MEM_FENCE)
#define expf exp
#define logf log
#define fmaxf fmax
#define fabsf fabs
#define tanhf tanh
#define FLOAT4_LOAD(ptr, i) vload4((i), (ptr))
typedef long index_t;

/* one float of scratch per thread, declared at kernel scope */
#define WARP_SCRATCH_DECL(name, threads) __local float name[threads]
DEVICE float warp_shfl_xor_emulated(float v, int lane_mask, __local float *scratch) {
    const int t = (int)get_local_id(0);
    scratch[t] = v;
    barrier(CLK_LOCAL_MEM_FENCE);
    const float other = scratch[t ^ lane_mask];
    barrier(CLK_LOCAL_MEM_FENCE);
    return other;
}
#define WARP_SHFL_XOR(v, lane_mask, scratch) warp_shfl_xor_emulated((v), (lane_mask), (scratch))
#define SYNC_WARP() barrier(CLK_LOCAL_MEM_FENCE)

#else /* ------------------------------------------------------------------------------------- CUDA */

#define KERNEL extern "C" __global__
#define DEVICE static __device__ __forceinline__
#define GLOBAL
#define SHARED __shared__
#define SHARED_PTR
#define FLOAT4_LOAD(ptr, i) (reinterpret_cast<const float4 *>(ptr)[(i)])
typedef long long index_t;

#define WARP_SCRATCH_DECL(name, threads) float *const name = 0; (void)name
#define WARP_SHFL_XOR(v, lane_mask, scratch) __shfl_xor_sync(0xffffffffu, (v), (lane_mask))
#define SYNC_WARP() __syncwarp()

#endif

#endif
