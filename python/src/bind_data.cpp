// python/src/bind_data.cpp - mmca.synthetic_sample: the procedurally drawn multi-image task
// (mmca/data/synthetic_task.hpp) for the data-efficiency comparison of the attention variants.
#include "array_args.hpp"
#include "bindings.hpp"

#include "mmca/data/synthetic_task.hpp"

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

namespace mmca::python {

namespace {

mmca::data::synthetic_options options_of(int image_size, int grid, int max_images, int max_shapes, int max_rounds) {
    mmca::data::synthetic_options o;
    o.image_size = image_size;
    o.grid = grid;
    o.max_images = max_images;
    o.max_shapes = max_shapes;
    o.max_rounds = max_rounds;
    return o;
}

py::dict sample(std::uint64_t seed, std::uint64_t index, int image_size, int grid, int max_images, int max_shapes,
                int max_rounds) {
    const char* where = "mmca.synthetic_sample";
    const auto o = options_of(image_size, grid, max_images, max_shapes, max_rounds);
    const auto s = rethrow_as(where, [&] { return mmca::data::make_synthetic_sample(seed, index, o); });
    py::list images, specs, rounds;
    for (const auto& im : s.images) {
        auto px = mmca::data::render_image(im, o);
        py::array_t<std::uint8_t> a({static_cast<py::ssize_t>(image_size), static_cast<py::ssize_t>(image_size),
                                     py::ssize_t{3}});
        std::copy(px.begin(), px.end(), a.mutable_data());
        images.append(a);
        py::list shapes;
        for (const auto& sh : im.shapes)
            shapes.append(py::dict(py::arg("shape") = mmca::data::to_string(sh.kind),
                                   py::arg("colour") = mmca::data::colour_names[static_cast<std::size_t>(sh.colour)],
                                   py::arg("row") = sh.row, py::arg("col") = sh.col));
        specs.append(shapes);
    }
    for (const auto& r : s.rounds)
        rounds.append(py::dict(py::arg("question") = r.question, py::arg("answer") = r.answer,
                               py::arg("images") = r.images, py::arg("kind") = r.kind, py::arg("about") = r.about));
    return py::dict(py::arg("images") = images, py::arg("shapes") = specs, py::arg("rounds") = rounds);
}

}  // namespace

void register_data(py::module_& m) {
    m.def("synthetic_sample", &sample, py::arg("seed"), py::arg("index"), py::kw_only(), py::arg("image_size") = 56,
          py::arg("grid") = 2, py::arg("max_images") = 4, py::arg("max_shapes") = 3, py::arg("max_rounds") = 3,
          R"doc(Sample `index` of the synthetic multi-image task with seed `seed` (docs/training.md): a dict with
images (list of (S, S, 3) uint8 arrays), shapes (per image: shape, colour, row, col) and rounds
(question, answer, images shown with it, kind, about: the 0-based images it asks about).)doc");
}

}  // namespace mmca::python
