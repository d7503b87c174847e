// mmca/mmca.hpp - umbrella header of the mmca library (multi-modal causal attention).
#pragma once

#include "mmca/version.hpp"
#include "mmca/core/dtype.hpp"
#include "mmca/core/error.hpp"
#include "mmca/core/tensor.hpp"
#include "mmca/core/threading.hpp"
#include "mmca/attention/types.hpp"
#include "mmca/attention/problem.hpp"
#include "mmca/attention/row_plan.hpp"
#include "mmca/attention/reference.hpp"
#include "mmca/backend/cpu/attention_fused.hpp"
#include "mmca/attention/attention.hpp"
#include "mmca/attention/kv_cache.hpp"
#include "mmca/attention/kv_tokens.hpp"
