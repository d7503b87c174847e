// python/src/bindings.cpp - the private extension module mmca._core (re-exported by the mmca package).
#include "bindings.hpp"

#include "mmca/mmca.hpp"

#include <pybind11/pybind11.h>

#ifndef MMCA_PYTHON_VERSION
#error "MMCA_PYTHON_VERSION (the CMake project version) must be defined by the build"
#endif

namespace py = pybind11;

PYBIND11_MODULE(_core, m) {
    m.doc() = "Private extension module of the mmca package; use the public names re-exported by 'mmca'.";

    // The package version is the CMake project version; _header_version is the one compiled into
    // the C++ headers (mmca/version.hpp). A test checks that the two agree.
    m.attr("__version__") = MMCA_PYTHON_VERSION;
    m.attr("_header_version") = MMCA_VERSION_STRING;

    using mmca::attention_variant;
    using mmca::image_visibility;
    m.attr("variants") = py::make_tuple(mmca::to_string(attention_variant::causal),
                                        mmca::to_string(attention_variant::mmca),
                                        mmca::to_string(attention_variant::mmca_reference),
                                        mmca::to_string(attention_variant::causal_cross));
    m.attr("policies") = py::make_tuple(mmca::to_string(image_visibility::all),
                                        mmca::to_string(image_visibility::preceding),
                                        mmca::to_string(image_visibility::latest));
    m.attr("impls") = py::make_tuple(mmca::to_string(mmca::attention_impl::fused),
                                     mmca::to_string(mmca::attention_impl::reference));
    m.attr("kv_dtypes") = py::make_tuple(mmca::dtype_name(mmca::dtype::float32), mmca::dtype_name(mmca::dtype::float16),
                                         mmca::dtype_name(mmca::dtype::bfloat16));

    m.def("default_num_threads", &mmca::default_num_threads,
          "Number of threads a call with num_threads=0 uses (OpenMP's default; 1 without OpenMP).");

    mmca::python::register_attention(m);
    mmca::python::register_attention_backward(m);
    mmca::python::register_kv_cache(m);
    mmca::python::bind_llama(m);
    mmca::python::register_text(m);
    mmca::python::register_image(m);
    mmca::python::register_projector(m);
    mmca::python::register_visual_chat(m);
    mmca::python::register_data(m);
    mmca::python::register_vision(m);
    mmca::python::register_grad(m);
    mmca::python::register_train(m);
    mmca::python::register_trainer(m);
}
