// python/src/bindings.hpp - the parts of the private extension module mmca._core.
#pragma once

#include <pybind11/pybind11.h>

namespace mmca::python {

/// mmca.attention (attention_bindings.cpp).
void register_attention(pybind11::module_& m);

/// mmca.KVCache (kv_cache_bindings.cpp).
void register_kv_cache(pybind11::module_& m);

/// mmca.LlamaModel, mmca.SafetensorsFile, presets and memory estimates (bind_llama.cpp).
void bind_llama(pybind11::module_& m);

}  // namespace mmca::python
