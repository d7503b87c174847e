// python/src/text_args.hpp - conversation arguments shared by the text, chat and trainer bindings.
#pragma once

#include "array_args.hpp"

#include "mmca/text/conversation.hpp"

#include <string>

namespace mmca::python {

/// The image numbering of the conversation template from its Python name ('string_level' or
/// 'token_level'); another name is a ValueError naming `numbering`.
inline mmca::text::image_numbering parse_image_numbering(const char* where, const std::string& numbering) {
    if (numbering == "string_level") return mmca::text::image_numbering::string_level;
    if (numbering == "token_level") return mmca::text::image_numbering::token_level;
    raise_value_error(where, "numbering", "'" + numbering + "'", "'string_level' or 'token_level'");
}

}  // namespace mmca::python
