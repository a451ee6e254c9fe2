/* Compile-only check: every entry point of the simulated libcuda (libflexai/sim/cuda/api.def)
 * is declared with NVIDIA's cuda.h in scope, so any signature that differs from cuda.h is a
 * "conflicting types" error. Built twice: plain, and with __CUDA_API_VERSION_INTERNAL, under
 * which cuda.h declares the _ptds/_ptsz and legacy entry points as well. */
#ifdef SIM_CHECK_INTERNAL
#define __CUDA_API_VERSION_INTERNAL 1
#endif
#include <cuda.h>

#undef cuGetProcAddress /* the plain header maps it to cuGetProcAddress_v2 */
#undef cuGraphAddNode   /* and cuGraphAddNode to cuGraphAddNode_v2 (the 12.2 form is exported too) */

#define SIM_API(exp, base, ver, pt, params, args) CUresult CUDAAPI exp params;
#define SIM_API_ALIAS(exp, base, ver, pt)
#include "api.def"

int main(void) { return 0; }
