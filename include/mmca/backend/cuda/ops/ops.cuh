// mmca/backend/cuda/ops/ops.cuh - every CUDA model op (norms, RoPE, activations, embedding,
// residual add, the cuBLAS linear layer, patch unfold / embedding, dense attention) in one include.
#pragma once

#include "mmca/backend/cuda/ops/activation.cuh"
#include "mmca/backend/cuda/ops/dense_attention.cuh"
#include "mmca/backend/cuda/ops/embedding.cuh"
#include "mmca/backend/cuda/ops/gemm.cuh"
#include "mmca/backend/cuda/ops/layernorm.cuh"
#include "mmca/backend/cuda/ops/patch_embedding.cuh"
#include "mmca/backend/cuda/ops/patch_unfold.cuh"
#include "mmca/backend/cuda/ops/residual.cuh"
#include "mmca/backend/cuda/ops/rmsnorm.cuh"
#include "mmca/backend/cuda/ops/rope.cuh"
