// mmca/core/labels.hpp - the label value of a token that is not supervised.
#pragma once

#include <cstdint>

namespace mmca {

/// Label of a row the loss skips (instructions, image rows, padding): PyTorch's ignore_index.
inline constexpr std::int32_t ignore_label = -100;

}  // namespace mmca
