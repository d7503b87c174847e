// consumer_cuda_main.cpp - the program of the find_package_cuda consumer: the compiled CUDA library
// used from plain C++. It needs no GPU: it asks for the device, then makes one call whose arguments
// are refused on the host (k's element type differs from q's), which must raise mmca's
// invalid_argument through the shared library with a message naming "k" and both types.
#include <mmca/backend/cuda/library.hpp>

#include <array>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <string>

int main() {
    namespace lib = mmca::cuda::lib;
    const bool available = lib::device_available();
    std::printf("CUDA device: %s\n", available ? lib::device_description().c_str() : "none");

    // Non-null pointers that are never dereferenced: the element types are checked first.
    float never_read[1] = {0.0f};
    const std::array<std::int64_t, 4> shape{1, 1, 4, 64};
    const lib::device_view q = lib::device_view::contiguous(never_read, lib::element::float32, shape);
    const lib::device_view k = lib::device_view::contiguous(never_read, lib::element::float16, shape);
    mmca::token_layout tokens;
    try {
        lib::attention_forward(q, k, q, tokens, mmca::attention_options{}, q, nullptr);
    } catch (const mmca::invalid_argument& e) {
        const std::string what = e.what();
        if (what.find("k") != std::string::npos && what.find("float16") != std::string::npos &&
            what.find("float32") != std::string::npos) {
            std::printf("refused as expected: %s\n", what.c_str());
            return 0;
        }
        std::printf("refused, but the message does not name k and both types: %s\n", what.c_str());
        return 1;
    } catch (const std::exception& e) {
        std::printf("wrong exception type: %s\n", e.what());
        return 1;
    }
    std::printf("a float16 k beside a float32 q was accepted\n");
    return 1;
}
