// The visual-chat trainer (mmca/train/trainer.hpp) with the vit and perceiver projectors: the
// projector's tensors are registered under the names the checkpoint loader reads them from; the
// trainer's gradient matches central finite differences of the model's loss; the first AdamW step
// is -lr · g / (|g| + eps) of an independently computed gradient and changes exactly the
// registered tensors; saved weights load back into a model with the trained model's loss; a
// resumed run equals the uninterrupted one bit for bit.
#include "mmca/train/trainer.hpp"

#include "test_llama_util.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <random>
#include <set>

namespace {

using mmca::vision::projector_kind;

constexpr std::int32_t kImage = 60;
constexpr std::int64_t kS = 56;
constexpr std::int64_t kDv = 16;  // width of the QWen ViT's output tokens (4 per image)
constexpr std::int64_t kQ = 4;    // perceiver queries (a 2 × 2 grid)
constexpr std::int64_t kM = 24;   // MLP width of the vit projector's encoder layer

/// The tensors of a visual-chat checkpoint with a projector of `kind`: a small QWen ViT (4 tokens of
/// width 16), the projector and a LLaMa (F32). The vit projector has every optional bias; the
/// perceiver has no kv_proj bias and stores its query positions (pos_embed, the sin-cos table).
const std::vector<mmca_test::st_tensor>& checkpoint_tensors(projector_kind kind) {
    static std::map<projector_kind, std::vector<mmca_test::st_tensor>> cache;
    auto found = cache.find(kind);
    if (found != cache.end()) return found->second;
    const mmca::llama_config c = mmca_test::tiny_config();
    auto r = mmca_test::make_random_llama(c, 7);
    mmca_test::random_tensor_list t(kind == projector_kind::vit ? 13u : 17u);
    mmca_test::add_visual_chat_language(t, r);
    const std::int64_t H = c.hidden_size;
    mmca_test::add_tiny_qwen_vit(t, kDv);
    const std::string q = "projection.";
    if (kind == projector_kind::vit) {
        const std::string l = q + "vis_layer.";
        t.norm(l + "layer_norm1", kDv);
        for (const char* proj : {"q_proj", "k_proj", "v_proj", "out_proj"}) {
            t.rnd(l + "self_attn." + proj + ".weight", {kDv, kDv}, 0.25f);
            t.rnd(l + "self_attn." + proj + ".bias", {kDv}, 0.1f);
        }
        t.norm(l + "layer_norm2", kDv);
        t.rnd(l + "mlp.fc1.weight", {kM, kDv}, 0.2f);
        t.rnd(l + "mlp.fc1.bias", {kM}, 0.1f);
        t.rnd(l + "mlp.fc2.weight", {kDv, kM}, 0.2f);
        t.rnd(l + "mlp.fc2.bias", {kDv}, 0.1f);
        t.rnd(q + "projection.0.weight", {H, kDv}, 0.2f);
        t.rnd(q + "projection.0.bias", {H}, 0.1f);
        t.norm(q + "projection.1", H);
    } else {
        t.rnd(q + "query", {kQ, H}, 0.5f);
        t.put(q + "pos_embed", {kQ, H}, mmca::vision::sincos_2d(2, H));
        t.rnd(q + "kv_proj.weight", {H, kDv}, 0.2f);
        t.norm(q + "ln_q", H);
        t.norm(q + "ln_kv", H);
        t.rnd(q + "attn.in_proj_weight", {3 * H, H}, 0.2f);
        t.rnd(q + "attn.in_proj_bias", {3 * H}, 0.1f);
        t.rnd(q + "attn.out_proj.weight", {H, H}, 0.2f);
        t.rnd(q + "attn.out_proj.bias", {H}, 0.1f);
        t.norm(q + "projection.0", H);
        t.rnd(q + "projection.1.weight", {H, H}, 0.2f);
        t.rnd(q + "projection.1.bias", {H}, 0.1f);
    }
    return cache[kind] = std::move(t.tensors);
}

/// Writes a checkpoint folder of these tensors (with the LLaMa config.json).
std::string write_folder(const std::string& name, const std::vector<mmca_test::st_tensor>& tensors) {
    const std::string dir = mmca_test::temp_path(name);
    ::mkdir(dir.c_str(), 0755);
    mmca_test::write_safetensors(dir + "/model.safetensors", tensors);
    std::ofstream(dir + "/config.json") << mmca_test::config_json(mmca_test::tiny_config());
    return dir;
}

std::string checkpoint(projector_kind kind) {
    static std::map<projector_kind, std::string> dirs;
    auto it = dirs.find(kind);
    if (it != dirs.end()) return it->second;
    return dirs[kind] = write_folder(std::string("trainer_proj_") + mmca::vision::to_string(kind), checkpoint_tensors(kind));
}

std::unique_ptr<mmca::visual_chat_model<float>> load_dir(const std::string& dir) {
    mmca::visual_chat_load_options o;
    o.qwen.image_size = kS;
    o.qwen.heads = 4;
    o.qwen.pool_heads = 2;
    o.projector.heads = 4;        // perceiver
    o.projector.layer.heads = 4;  // vit
    o.options.image_token_id = kImage;
    o.options.language.batch = 2;
    o.options.language.num_threads = 1;
    return mmca::load_visual_chat_model<float>(dir, o);
}

std::unique_ptr<mmca::visual_chat_model<float>> load(projector_kind kind) { return load_dir(checkpoint(kind)); }

mmca::encoder_projector_tower& tower_of(mmca::visual_chat_model<float>& m) {
    return dynamic_cast<mmca::encoder_projector_tower&>(m.tower());
}

/// Nine examples: a prefix, 0..2 images, a question and a supervised answer.
mmca::train::example_list make_data() {
    mmca::train::example_list d;
    std::mt19937 gen(11);
    std::uniform_int_distribution<int> tok(3, 50);
    std::normal_distribution<float> px(0.0f, 1.0f);
    for (int i = 0; i < 9; ++i) {
        mmca::train::training_example e;
        e.images = i % 3;
        e.ids = {1, tok(gen)};
        for (int k = 0; k < e.images; ++k) e.ids.push_back(kImage), e.ids.push_back(tok(gen));
        e.ids.push_back(tok(gen));
        e.labels.assign(e.ids.size(), mmca::ignore_label);
        for (int k = 0; k < 3; ++k) {
            const int a = 51 + (i + k) % 8;
            e.ids.push_back(a);
            e.labels.push_back(a);
        }
        e.ids.push_back(2), e.labels.push_back(2);
        e.pixels.resize(static_cast<std::size_t>(e.images * 3 * kS * kS));
        for (auto& x : e.pixels) x = px(gen);
        d.add(std::move(e));
    }
    return d;
}

/// Examples 1 and 2 of make_data (one and two images): one micro-batch of the model's batch size.
mmca::train::example_list image_pair() {
    const auto d = make_data();
    mmca::train::example_list out;
    out.add(d.example(1));
    out.add(d.example(2));
    return out;
}

std::vector<mmca::visual_sample> samples_of(const std::vector<mmca::train::training_example>& ex) {
    std::vector<mmca::visual_sample> s;
    for (const auto& e : ex)
        s.push_back({e.ids, e.labels, mmca::tensor_ref<const float, 4>(e.pixels.data(), {e.images, 3, kS, kS})});
    return s;
}

/// The token-mean loss of the model's own forward over all examples of d (at most one batch).
double model_loss(mmca::visual_chat_model<float>& m, const mmca::train::example_list& d) {
    std::vector<mmca::train::training_example> ex;
    for (std::int64_t i = 0; i < d.size(); ++i) ex.push_back(d.example(i));
    std::vector<float> logits;
    std::int64_t L = 0;
    mmca::loss_result r;
    m.clear_image_cache();
    m.forward(samples_of(ex), logits, L, &r);
    return r.mean();
}

/// One micro-batch of the whole (two-example) data set, in order, without clipping.
mmca::train::trainer_options single_batch_options() {
    mmca::train::trainer_options o;
    o.embedding = false;
    o.micro_batch = 2;
    o.accumulation = 1;
    o.total_steps = 1;
    o.max_grad_norm = 0.0;
    o.shuffle = false;
    o.num_threads = 1;
    return o;
}

std::vector<std::string> names_of(const mmca::train::parameter_registry& params) {
    std::vector<std::string> n;
    for (const auto& p : params) n.push_back(p.name);
    return n;
}

/// The F32 values of a checkpoint tensor.
std::vector<float> stored(const std::vector<mmca_test::st_tensor>& tensors, const std::string& name,
                          std::vector<std::int64_t>* shape = nullptr) {
    for (const auto& t : tensors)
        if (t.name == name) {
            if (shape) *shape = t.shape;
            std::vector<float> v(t.bytes.size() / 4);
            std::memcpy(v.data(), t.bytes.data(), t.bytes.size());
            return v;
        }
    ADD_FAILURE() << "no tensor " << name;
    return {};
}

/// The checkpoint's projector tensors (the trainable ones: every one but the fixed pos_embed).
std::set<std::string> stored_projector_names(projector_kind kind) {
    std::set<std::string> n;
    for (const auto& t : checkpoint_tensors(kind))
        if (t.name.rfind("projection.", 0) == 0 && t.name != "projection.pos_embed") n.insert(t.name);
    return n;
}

bool same_bits(const float* a, const float* b, std::int64_t n) {
    return std::memcmp(a, b, static_cast<std::size_t>(n) * sizeof(float)) == 0;
}

// ---------------------------------------------------------------------------------------------
// (a) names and gradients

void check_gradients(projector_kind kind) {
    const auto data = image_pair();
    auto model = load(kind);
    auto o = single_batch_options();
    o.warmup_steps = 1;  // the first step's rate is 0: the step computes the gradient and changes nothing
    o.adamw.lr = 1e-2;
    mmca::train::visual_chat_trainer<float> t(*model, data.size(), o);
    auto& params = t.parameters();

    // The names: those of the loader (every stored projector tensor but the fixed positions), in the
    // order of named_projector_gradients.
    const auto names = names_of(params);
    EXPECT_EQ(std::set<std::string>(names.begin(), names.end()), stored_projector_names(kind));
    EXPECT_EQ(names.size(), stored_projector_names(kind).size());
    mmca::vision::projector_grads pg = mmca::vision::make_projector_grads(tower_of(*model).projector());
    std::vector<std::string> expected;
    for (const auto& n : mmca::vision::named_projector_gradients(tower_of(*model).projector(), pg))
        expected.push_back("projection." + n.name);
    EXPECT_EQ(names, expected);
    for (const auto& p : params) {
        const bool matrix = p.shape.size() == 2;
        EXPECT_EQ(p.weight_decay, matrix) << p.name;  // norms and biases are not decayed
    }
    if (kind == projector_kind::perceiver) {
        EXPECT_EQ(std::find(names.begin(), names.end(), "projection.kv_proj.bias"), names.end());
    }

    std::vector<std::vector<float>> before;
    for (const auto& p : params) before.emplace_back(p.value, p.value + p.numel);
    const double loss0 = model_loss(*model, data);
    const auto rec = t.step(data);
    EXPECT_EQ(rec.lr, 0.0);
    for (std::size_t i = 0; i < params.size(); ++i)
        EXPECT_TRUE(same_bits(params[i].value, before[i].data(), params[i].numel)) << params[i].name;
    EXPECT_NEAR(rec.loss, loss0, 1e-5 * std::abs(loss0));

    int checked = 0;
    for (auto& p : params) {
        const std::vector<float> g(p.grad, p.grad + p.numel);
        std::int64_t big = 0;
        for (std::int64_t i = 1; i < p.numel; ++i)
            if (std::abs(g[static_cast<std::size_t>(i)]) > std::abs(g[static_cast<std::size_t>(big)])) big = i;
        EXPECT_GT(std::abs(g[static_cast<std::size_t>(big)]), 0.0f) << p.name;
        std::set<std::int64_t> picks{big, 0, p.numel / 2, p.numel - 1};
        for (std::int64_t i : picks) {
            float& v = p.value[i];
            const float v0 = v;
            const float h = 1e-2f * std::max(std::abs(v0), 1.0f);
            const float up = v0 + h, down = v0 - h;
            v = up;
            t.sync_to_model();
            const double lp = model_loss(*model, data);
            v = down;
            t.sync_to_model();
            const double lm = model_loss(*model, data);
            v = v0;
            const double fd = (lp - lm) / (static_cast<double>(up) - static_cast<double>(down));
            const double gi = g[static_cast<std::size_t>(i)];
            EXPECT_NEAR(gi, fd, 3e-5 + 1e-2 * std::abs(fd)) << p.name << "[" << i << "]";
            ++checked;
        }
    }
    t.sync_to_model();
    EXPECT_EQ(model_loss(*model, data), loss0);
    EXPECT_GE(checked, 3 * static_cast<int>(params.size()));
}

// ---------------------------------------------------------------------------------------------
// (b) the first AdamW step

void check_first_update(projector_kind kind) {
    const auto data = image_pair();
    const double lr = 1e-2, eps = 1e-8;

    // The gradient, computed on a model of its own.
    std::map<std::string, std::vector<float>> grad;
    {
        auto ref = load(kind);
        mmca::visual_chat_grads g = mmca::make_visual_chat_grads(*ref, false, true);
        std::vector<mmca::train::training_example> ex{data.example(0), data.example(1)};
        mmca::visual_chat_loss_and_gradients(*ref, samples_of(ex), g, 0.0, 1);
        for (const auto& n : mmca::vision::named_projector_gradients(tower_of(*ref).projector(), g.projector))
            grad["projection." + n.name] = *n.values;
    }

    auto model = load(kind);
    auto& tower = tower_of(*model);
    std::vector<float> features_before(static_cast<std::size_t>(2 * 4 * kDv)), features_after(features_before.size());
    const auto e = data.example(1);
    tower.encode(mmca::tensor_ref<const float, 4>(e.pixels.data(), {2, 3, kS, kS}),
                 mmca::tensor_ref<float, 3>(features_before.data(), {2, 4, kDv}), 1);
    const void* embed_before = model->language().weights().embed.data;
    const auto q_pos_before = tower.projector().weights().pool.q_pos;
    const auto k_pos_before = tower.projector().weights().pool.k_pos;

    auto o = single_batch_options();
    o.warmup_steps = 0;
    o.adamw.lr = lr;
    o.adamw.eps = eps;
    mmca::train::visual_chat_trainer<float> t(*model, data.size(), o);
    const auto rec = t.step(data);
    EXPECT_EQ(rec.lr, lr);
    EXPECT_FALSE(rec.skipped);

    // Every registered tensor moved by -lr · g / (|g| + eps), from its stored value.
    const auto& tensors = checkpoint_tensors(kind);
    EXPECT_EQ(grad.size(), t.parameters().size());
    for (const auto& p : t.parameters()) {
        std::vector<std::int64_t> shape;
        const std::vector<float> v0 = stored(tensors, p.name, &shape);
        EXPECT_EQ(p.shape, shape) << p.name;
        ASSERT_EQ(static_cast<std::int64_t>(v0.size()), p.numel) << p.name;
        ASSERT_EQ(grad.count(p.name), 1u) << p.name;
        const std::vector<float>& g = grad[p.name];
        std::int64_t moved = 0;
        for (std::int64_t i = 0; i < p.numel; ++i) {
            const double gi = g[static_cast<std::size_t>(i)];
            const double want = v0[static_cast<std::size_t>(i)] - lr * gi / (std::abs(gi) + eps);
            EXPECT_NEAR(p.value[i], want, 2e-6) << p.name << "[" << i << "]";
            moved += p.value[i] != v0[static_cast<std::size_t>(i)];
        }
        EXPECT_EQ(moved, p.numel) << p.name;
    }

    // The model uses the updated values: vectors synced, matrices pointed at the float32 copies.
    const auto& w = tower.projector().weights();
    auto& params = t.parameters();
    auto same_vector = [&](const std::vector<float>& v, const std::string& name) {
        const auto& p = params.get(name);
        EXPECT_EQ(static_cast<std::int64_t>(v.size()), p.numel) << name;
        EXPECT_TRUE(same_bits(v.data(), p.value, p.numel)) << name;
    };
    auto same_matrix = [&](const mmca::nn::matrix_ref& m, const std::string& name) {
        EXPECT_EQ(m.type, mmca::dtype::float32) << name;
        EXPECT_EQ(m.data, static_cast<const void*>(params.get(name).value)) << name;
    };
    if (kind == projector_kind::vit) {
        same_vector(w.layer.ln1_b, "projection.vis_layer.layer_norm1.bias");
        same_vector(w.layer.fc2_bias, "projection.vis_layer.mlp.fc2.bias");
        same_vector(w.norm_w, "projection.projection.1.weight");
        same_matrix(w.layer.q, "projection.vis_layer.self_attn.q_proj.weight");
        same_matrix(w.layer.fc1, "projection.vis_layer.mlp.fc1.weight");
        same_matrix(w.linear, "projection.projection.0.weight");
    } else {
        same_vector(w.pool.query, "projection.query");
        same_vector(w.pool.ln_kv_w, "projection.ln_kv.weight");
        same_vector(w.norm_b, "projection.projection.0.bias");
        same_matrix(w.pool.in_proj, "projection.attn.in_proj_weight");
        same_matrix(w.pool.kv_proj, "projection.kv_proj.weight");
        same_matrix(w.linear, "projection.projection.1.weight");
    }
    // Nothing else changed: the fixed positions, the encoder, the (frozen) embedding.
    EXPECT_EQ(w.pool.q_pos, q_pos_before);
    EXPECT_EQ(w.pool.k_pos, k_pos_before);
    if (kind == projector_kind::perceiver) {
        EXPECT_EQ(w.pool.q_pos, stored(tensors, "projection.pos_embed"));
        EXPECT_EQ(w.pool.k_pos, w.pool.q_pos);  // the 2 × 2 grid of image tokens is that of the queries
    }
    tower.encode(mmca::tensor_ref<const float, 4>(e.pixels.data(), {2, 3, kS, kS}),
                 mmca::tensor_ref<float, 3>(features_after.data(), {2, 4, kDv}), 1);
    EXPECT_EQ(features_after, features_before);
    EXPECT_EQ(model->language().weights().embed.data, embed_before);
}

// ---------------------------------------------------------------------------------------------
// (c) saved weights load back

void check_saved_weights(projector_kind kind) {
    const auto data = make_data();
    const auto pair = image_pair();
    auto model = load(kind);
    mmca::train::trainer_options o;
    o.adamw.lr = 2e-2;
    o.micro_batch = 2;
    o.total_steps = 3;
    o.seed = 4;
    o.num_threads = 1;
    std::vector<std::string> names;
    const std::string path =
        mmca_test::temp_path(std::string("trainer_proj_weights_") + mmca::vision::to_string(kind) + ".safetensors");
    const double loss_before = model_loss(*model, pair);
    {
        mmca::train::visual_chat_trainer<float> t(*model, data.size(), o);
        names = names_of(t.parameters());
        t.run(data);
        t.save_weights(path);
    }
    // The trained model stays usable after the trainer is gone.
    const double trained = model_loss(*model, pair);
    EXPECT_NE(trained, loss_before);

    // The checkpoint with the saved tensors in place of the stored ones.
    const mmca::io::safetensors_file f(path);
    ASSERT_EQ(f.tensors().size(), names.size());
    std::vector<mmca_test::st_tensor> tensors = checkpoint_tensors(kind);
    std::set<std::string> replaced;
    for (const auto& info : f.tensors()) {
        EXPECT_EQ(info.type, mmca::io::st_dtype::F32) << info.name;
        auto it = std::find_if(tensors.begin(), tensors.end(), [&](const auto& s) { return s.name == info.name; });
        ASSERT_NE(it, tensors.end()) << info.name << " is not a checkpoint tensor";
        EXPECT_EQ(it->shape, info.shape) << info.name;
        it->bytes.assign(info.data, info.data + info.numel() * 4);
        replaced.insert(info.name);
    }
    std::set<std::string> want = stored_projector_names(kind);
    want.insert("lang_embed.weight");
    EXPECT_EQ(replaced, want);
    auto reloaded = load_dir(write_folder(std::string("trainer_proj_rt_") + mmca::vision::to_string(kind), tensors));
    EXPECT_EQ(tower_of(*reloaded).projector().kind(), kind);
    const double again = model_loss(*reloaded, pair);
    EXPECT_NEAR(again, trained, 1e-6 * std::abs(trained));
}

// ---------------------------------------------------------------------------------------------
// (d) resume

struct snapshot {
    std::vector<double> losses;
    std::vector<std::vector<float>> values, m, v;
};

snapshot take(const mmca::train::visual_chat_trainer<float>& t, std::vector<double> losses) {
    snapshot s;
    s.losses = std::move(losses);
    for (std::size_t i = 0; i < t.parameters().size(); ++i) {
        const auto& p = t.parameters()[i];
        s.values.emplace_back(p.value, p.value + p.numel);
        s.m.emplace_back(t.optimizer().exp_avg(i), t.optimizer().exp_avg(i) + p.numel);
        s.v.emplace_back(t.optimizer().exp_avg_sq(i), t.optimizer().exp_avg_sq(i) + p.numel);
    }
    return s;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
    return a.size() == b.size() && same_bits(a.data(), b.data(), static_cast<std::int64_t>(a.size()));
}

void check_resume(projector_kind kind) {
    const auto data = make_data();
    mmca::train::trainer_options o;
    o.adamw.lr = 2e-2;
    o.micro_batch = 2;
    o.accumulation = 2;
    o.total_steps = 4;
    o.max_grad_norm = 0.5;
    o.seed = 5;
    o.num_threads = 1;
    snapshot full;
    double full_eval = 0.0;
    {
        auto model = load(kind);
        mmca::train::visual_chat_trainer<float> t(*model, data.size(), o);
        std::vector<double> losses;
        for (const auto& r : t.run(data)) losses.push_back(r.loss);
        ASSERT_EQ(losses.size(), 4u);
        full = take(t, losses);
        full_eval = t.evaluate(data).loss();
    }
    const std::string path =
        mmca_test::temp_path(std::string("trainer_proj_state_") + mmca::vision::to_string(kind) + ".safetensors");
    std::vector<double> losses;
    {
        auto model = load(kind);
        mmca::train::visual_chat_trainer<float> t(*model, data.size(), o);
        for (const auto& r : t.run(data, 2)) losses.push_back(r.loss);
        t.save(path);
    }
    auto model = load(kind);
    mmca::train::visual_chat_trainer<float> t(*model, data.size(), o);
    t.load(path);
    EXPECT_EQ(t.step_count(), 2);
    for (const auto& r : t.run(data)) losses.push_back(r.loss);
    const snapshot resumed = take(t, losses);
    ASSERT_EQ(resumed.losses.size(), full.losses.size());
    for (std::size_t i = 0; i < full.losses.size(); ++i) EXPECT_EQ(resumed.losses[i], full.losses[i]) << "step " << i;
    ASSERT_EQ(resumed.values.size(), full.values.size());
    for (std::size_t i = 0; i < full.values.size(); ++i) {
        const std::string& name = t.parameters()[i].name;
        EXPECT_TRUE(same_bits(resumed.values[i], full.values[i])) << name;
        EXPECT_TRUE(same_bits(resumed.m[i], full.m[i])) << name;
        EXPECT_TRUE(same_bits(resumed.v[i], full.v[i])) << name;
    }
    EXPECT_EQ(t.evaluate(data).loss(), full_eval);
}

}  // namespace

TEST(VisualChatTrainerProjectors, VitGradientsMatchFiniteDifferences) { check_gradients(projector_kind::vit); }

TEST(VisualChatTrainerProjectors, PerceiverGradientsMatchFiniteDifferences) {
    check_gradients(projector_kind::perceiver);
}

TEST(VisualChatTrainerProjectors, VitFirstAdamWStep) { check_first_update(projector_kind::vit); }

TEST(VisualChatTrainerProjectors, PerceiverFirstAdamWStep) { check_first_update(projector_kind::perceiver); }

TEST(VisualChatTrainerProjectors, VitSavedWeightsLoadBack) { check_saved_weights(projector_kind::vit); }

TEST(VisualChatTrainerProjectors, PerceiverSavedWeightsLoadBack) { check_saved_weights(projector_kind::perceiver); }

TEST(VisualChatTrainerProjectors, PerceiverResumeIsBitExact) { check_resume(projector_kind::perceiver); }

TEST(VisualChatTrainerProjectors, VitResumeIsBitExact) { check_resume(projector_kind::vit); }

TEST(VisualChatTrainerProjectors, VitWithFusedQkvIsRefusedWhenTheProjectorTrains) {
    // A vit projector made by hand with one fused [3W, W] q/k/v matrix: no checkpoint names.
    auto model = load(projector_kind::vit);
    auto& tower = tower_of(*model);
    mmca::vision::projector_weights w = tower.projector().weights();
    std::vector<float> qkv(static_cast<std::size_t>(3 * kDv * kDv), 0.01f);
    w.layer.layout = mmca::vision::qkv_layout::fused_blocked;
    w.layer.qkv = mmca::nn::make_matrix(static_cast<const float*>(qkv.data()), 3 * kDv, kDv);
    w.layer.q = w.layer.k = w.layer.v = mmca::nn::matrix_ref{};
    w.layer.q_bias.clear(), w.layer.k_bias.clear(), w.layer.v_bias.clear();
    tower.mutable_projector() = mmca::vision::projector(tower.projector().config(), w);
    const auto data = make_data();
    try {
        mmca::train::visual_chat_trainer<float> t(*model, data.size());
        FAIL() << "a fused vit layer was registered";
    } catch (const mmca::invalid_argument& e) {
        EXPECT_NE(std::string(e.what()).find("fused q/k/v"), std::string::npos) << e.what();
    }
    mmca::train::trainer_options o;
    o.projector = false;
    mmca::train::visual_chat_trainer<float> t(*model, data.size(), o);
    EXPECT_EQ(names_of(t.parameters()), std::vector<std::string>{"lang_embed.weight"});
}
