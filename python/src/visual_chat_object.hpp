// python/src/visual_chat_object.hpp - the object behind mmca.VisualChatModel, shared by the files
// that bind it (bind_visual_chat.cpp) and take it as an argument (bind_trainer.cpp).
#pragma once

#include "mmca/core/dtype.hpp"
#include "mmca/model/visual_chat.hpp"

#include <memory>
#include <mutex>
#include <utility>
#include <variant>

namespace mmca::python {

/// A visual-chat model of a runtime-chosen KV cache dtype.
class visual_chat_object {
public:
    static constexpr const char* python_name = "mmca.VisualChatModel";

    template <class KV>
    explicit visual_chat_object(std::unique_ptr<mmca::visual_chat_model<KV>> m) : model_(std::move(m)) {}

    template <class F>
    decltype(auto) visit(F&& f) {
        return std::visit([&](auto& m) -> decltype(auto) { return f(*m); }, model_);
    }
    template <class F>
    decltype(auto) locked(F&& f) {
        std::lock_guard<std::mutex> lock(mutex_);
        return visit(std::forward<F>(f));
    }
    std::mutex& mutex() { return mutex_; }

private:
    std::variant<std::unique_ptr<mmca::visual_chat_model<float>>, std::unique_ptr<mmca::visual_chat_model<mmca::float16>>,
                 std::unique_ptr<mmca::visual_chat_model<mmca::bfloat16>>>
        model_;
    std::mutex mutex_;
};

}  // namespace mmca::python
