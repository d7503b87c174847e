// Tests of the trainer infrastructure (include/mmca/train, io/safetensors_writer.hpp): AdamW against
// hand-computed updates, the schedule against its closed form, clipping, the safetensors writer read
// back by mmca's reader, the train-state loader's errors, atomic writes, bit-exact resume of a toy
// softmax regression, and thread-count independence.
#include "mmca/io/safetensors.hpp"
#include "mmca/io/safetensors_writer.hpp"
#include "mmca/train/adamw.hpp"
#include "mmca/train/grad_accumulation.hpp"
#include "mmca/train/lr_schedule.hpp"
#include "mmca/train/parameters.hpp"
#include "mmca/train/progress.hpp"
#include "mmca/train/train_state.hpp"

#include <gtest/gtest.h>

#include <dirent.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <sstream>
#include <string>
#include <vector>

namespace {

using mmca::train::adamw;
using mmca::train::adamw_options;
using mmca::train::parameter_registry;

// A fresh, empty folder under /tmp for one test, removed with its contents at the end of the test.
class temp_dir {
public:
    temp_dir() {
        char tmpl[] = "/tmp/mmca_train_test_XXXXXX";
        const char* d = ::mkdtemp(tmpl);
        if (!d) throw std::runtime_error("mkdtemp failed");
        path_ = d;
    }
    temp_dir(const temp_dir&) = delete;
    temp_dir& operator=(const temp_dir&) = delete;
    ~temp_dir() {
        std::error_code ec;
        std::filesystem::remove_all(path_, ec);
    }
    operator const std::string&() const { return path_; }  // NOLINT: used where a folder path is expected
    std::string operator+(const std::string& rest) const { return path_ + rest; }

private:
    std::string path_;
};

std::vector<std::string> list_dir(const std::string& dir) {
    std::vector<std::string> out;
    DIR* d = ::opendir(dir.c_str());
    if (!d) return out;
    while (dirent* e = ::readdir(d)) {
        const std::string n = e->d_name;
        if (n != "." && n != "..") out.push_back(n);
    }
    ::closedir(d);
    std::sort(out.begin(), out.end());
    return out;
}

std::string read_bytes(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    std::ostringstream os;
    os << f.rdbuf();
    return os.str();
}

void write_bytes(const std::string& path, const std::string& bytes) {
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

void expect_rel_near(double got, double want, double rel, const std::string& what) {
    EXPECT_LE(std::fabs(got - want), rel * std::fabs(want)) << what << ": got " << got << ", want " << want;
}

// Expects `body` to throw mmca::invalid_argument whose message contains every one of `parts`.
void expect_error(const std::function<void()>& body, const std::vector<std::string>& parts) {
    try {
        body();
        ADD_FAILURE() << "no exception; expected one mentioning '" << parts.front() << "'";
    } catch (const mmca::invalid_argument& e) {
        const std::string msg = e.what();
        for (const std::string& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "'" << p << "' not in: " << msg;
    }
}

// ------------------------------------------------------------------------------------------------
// AdamW
// ------------------------------------------------------------------------------------------------

TEST(TrainAdamW, ThreeHandComputedSteps) {
    // p0 = [1, -2, 0.5]; lr 0.1, weight decay 0.1, β = (0.9, 0.95), eps 1e-8.
    // Step 1, g = [0.5, -1, 2]: p·0.99 = [0.99, -1.98, 0.495]; m = 0.1 g, v = 0.05 g², so
    //   m̂ = g, √v̂ = |g| and the update is −lr·sign(g): p1 = [0.89, -1.88, 0.395] (eps moves it by ~1e-9).
    // Step 2, g = [1, 1, -1]: m = [0.145, 0.01, 0.08], v = [0.061875, 0.0975, 0.24],
    //   1 − β1² = 0.19, 1 − β2² = 0.0975; element 1: m̂ = 0.01/0.19 = 0.0526316, v̂ = 1,
    //   p = -1.88·0.99 − 0.1·0.0526316 = -1.8664632.
    // Step 3, g = [-0.5, 0.25, 0]: m = [0.0805, 0.034, 0.072], v = [0.07128125, 0.09575, 0.228],
    //   1 − β1³ = 0.271, 1 − β2³ = 0.142625.
    const double want[3][3] = {{0.890000002, -1.880000001, 0.3950000005},
                               {0.7853014162385277, -1.8664631588321052, 0.36421305585766955},
                               {0.7354302683815855, -1.8631107436478183, 0.33955765691897205}};
    const double want_m[3] = {0.0805, 0.034, 0.072}, want_v[3] = {0.07128125, 0.09575, 0.228};
    const float grads[3][3] = {{0.5f, -1.0f, 2.0f}, {1.0f, 1.0f, -1.0f}, {-0.5f, 0.25f, 0.0f}};
    const float init[3] = {1.0f, -2.0f, 0.5f};

    parameter_registry params;
    params.add("p", {3}, init);
    adamw_options o;
    o.lr = 0.1;
    o.weight_decay = 0.1;
    adamw opt(params, o);
    EXPECT_EQ(o.beta1, 0.9);
    EXPECT_EQ(o.beta2, 0.95);  // the reference's betas are the defaults
    for (int t = 0; t < 3; ++t) {
        std::memcpy(params[0].grad, grads[t], sizeof grads[t]);
        opt.step();
        for (int i = 0; i < 3; ++i)
            expect_rel_near(params[0].value[i], want[t][i], 1e-6, "step " + std::to_string(t + 1) + " element " + std::to_string(i));
    }
    EXPECT_EQ(opt.step_count(), 3);
    for (int i = 0; i < 3; ++i) {
        expect_rel_near(opt.exp_avg(0)[i], want_m[i], 1e-6, "m");
        expect_rel_near(opt.exp_avg_sq(0)[i], want_v[i], 1e-6, "v");
    }
}

TEST(TrainAdamW, NoWeightDecayFlagAndExplicitLr) {
    // With weight_decay off for a tensor, step 1 is exactly p − lr·g/(|g| + eps).
    const float init[2] = {1.0f, 1.0f};
    parameter_registry params;
    params.add("decayed", {1}, init);
    params.add("bias", {1}, init + 1).weight_decay = false;
    adamw_options o;
    o.weight_decay = 0.5;
    adamw opt(params, o);
    params[0].grad[0] = 2.0f;
    params[1].grad[0] = 2.0f;
    opt.step(0.01);
    expect_rel_near(params[0].value[0], 1.0 * (1 - 0.01 * 0.5) - 0.01, 1e-6, "decayed");
    expect_rel_near(params[1].value[0], 1.0 - 0.01, 1e-6, "bias");
}

TEST(TrainAdamW, EpsIsAddedToTheRootOfVHat) {
    // g = 2 at step 1: m̂ = 2, √v̂ = 2; with eps = 0.5 the update is lr·2/(2 + 0.5) = 0.8·lr
    // (eps inside the root would give lr·2/√4.5 = 0.943·lr).
    const float one = 1.0f;
    parameter_registry params;
    params.add("p", {1}, &one);
    adamw_options o;
    o.eps = 0.5;
    adamw opt(params, o);
    params[0].grad[0] = 2.0f;
    opt.step(0.1);
    expect_rel_near(params[0].value[0], 1.0 - 0.08, 1e-6, "eps outside the root");
}

TEST(TrainAdamW, Errors) {
    parameter_registry params;
    params.add("w", {2});
    adamw_options bad;
    bad.beta2 = 1.0;
    expect_error([&] { adamw a(params, bad); }, {"mmca::train::adamw", "'beta2'", "1", "[0, 1)"});
    bad = adamw_options{};
    bad.eps = -1;
    expect_error([&] { adamw a(params, bad); }, {"'eps'"});
    adamw opt(params);
    expect_error([&] { opt.step(std::nan("")); }, {"mmca::train::adamw::step", "'lr'", "nan"});
    params.add("late", {1});
    expect_error([&] { opt.step(); }, {"'parameters'", "2 parameters", "1 (the registry at the optimizer's construction)"});
    parameter_registry views;
    float value[2] = {0, 0};
    views.add_view("v", {2}, value, nullptr);
    adamw opt2(views);
    expect_error([&] { opt2.step(); }, {"parameter 'v' without a gradient buffer"});
}

// ------------------------------------------------------------------------------------------------
// Schedule
// ------------------------------------------------------------------------------------------------

TEST(TrainSchedule, ClosedForm) {
    mmca::train::cosine_schedule s;
    s.base_lr = 1e-3;
    s.warmup_steps = 10;
    s.total_steps = 110;
    s.validate();
    const double pi = std::acos(-1.0);
    EXPECT_EQ(s.lr(0), 0.0);                                  // warm-up start: the first update has lr 0
    expect_rel_near(s.lr(5), 0.5e-3, 1e-15, "mid warm-up");
    expect_rel_near(s.lr(9), 0.9e-3, 1e-15, "last warm-up step");
    EXPECT_EQ(s.lr(10), 1e-3);                                // warm-up end: cos(0) = 1
    expect_rel_near(s.lr(35), 1e-3 * 0.5 * (1 + std::cos(pi * 0.25)), 1e-14, "quarter of the cosine");
    expect_rel_near(s.lr(60), 0.5e-3, 1e-14, "mid cosine");
    EXPECT_NEAR(s.lr(110), 0.0, 1e-18);                       // end
    EXPECT_GT(s.lr(60), s.lr(61));
    // A floor: min_lr + (base − min)·factor in the cosine phase.
    s.min_lr = 1e-4;
    expect_rel_near(s.lr(60), 1e-4 + 0.9e-3 * 0.5, 1e-14, "mid cosine with a floor");
    expect_rel_near(s.lr(110), 1e-4, 1e-12, "end with a floor");
    expect_rel_near(s.lr(5), 0.5e-3, 1e-15, "warm-up ignores the floor");
    // No warm-up: full lr at step 0.
    mmca::train::cosine_schedule n;
    n.base_lr = 2.0;
    n.total_steps = 4;
    EXPECT_EQ(n.lr(0), 2.0);
    expect_rel_near(n.lr(2), 1.0, 1e-15, "half way");
    EXPECT_EQ(mmca::train::warmup_steps_from_ratio(0.1, 1000), 100);
    EXPECT_EQ(mmca::train::warmup_steps_from_ratio(0.1, 15), 2);  // ⌈1.5⌉
    EXPECT_EQ(mmca::train::warmup_steps_from_ratio(0.0, 15), 0);
    expect_error([&] { (void)s.lr(-1); }, {"'step'", "-1"});
    mmca::train::cosine_schedule b = s;
    b.min_lr = 1.0;
    expect_error([&] { b.validate(); }, {"'min_lr'", "[0, base_lr"});
    expect_error([&] { (void)mmca::train::warmup_steps_from_ratio(1.5, 10); }, {"'ratio'", "1.5"});
}

// ------------------------------------------------------------------------------------------------
// Gradient norm and clipping
// ------------------------------------------------------------------------------------------------

TEST(TrainClip, GlobalNormAndClipping) {
    parameter_registry params;
    params.add("a", {2});
    params.add("b", {1, 1});
    params[0].grad[0] = 3.0f;
    params[0].grad[1] = 0.0f;
    params[1].grad[0] = 4.0f;
    EXPECT_EQ(params.grad_norm(), 5.0);
    // Not clipped when max_norm / (norm + 1e-6) >= 1: the gradients keep their bits.
    EXPECT_EQ(params.clip_grad_norm(5.0 + 2e-6), 5.0);
    EXPECT_EQ(params[0].grad[0], 3.0f);
    EXPECT_EQ(params[1].grad[0], 4.0f);
    // Clipped to max_norm = 4: scale 4 / (5 + 1e-6).
    EXPECT_EQ(params.clip_grad_norm(4.0), 5.0);
    expect_rel_near(params[0].grad[0], 3.0 * 4.0 / (5.0 + 1e-6), 1e-7, "clipped to 4");
    params[0].grad[0] = 3.0f;
    params[1].grad[0] = 4.0f;
    // Clipped to max_norm = 1: scale 1 / (5 + 1e-6).
    EXPECT_EQ(params.clip_grad_norm(1.0), 5.0);
    expect_rel_near(params[0].grad[0], 0.6 * 5.0 / (5.0 + 1e-6), 1e-7, "clipped a");
    expect_rel_near(params[1].grad[0], 0.8 * 5.0 / (5.0 + 1e-6), 1e-7, "clipped b");
    EXPECT_EQ(params[0].grad[1], 0.0f);
    expect_rel_near(params.grad_norm(), 1.0, 1e-6, "norm after clipping");
    params.zero_grad();
    EXPECT_EQ(params.grad_norm(), 0.0);
    EXPECT_EQ(params.clip_grad_norm(1.0), 0.0);  // zero gradients stay zero
    // A non-finite norm leaves the gradients alone.
    params[0].grad[0] = INFINITY;
    params[0].grad[1] = 1.0f;
    EXPECT_TRUE(std::isinf(params.clip_grad_norm(1.0)));
    EXPECT_EQ(params[0].grad[1], 1.0f);
    expect_error([&] { params.clip_grad_norm(0.0); }, {"mmca::train::clip_grad_norm", "'max_norm'", "> 0"});
}

TEST(TrainRegistry, OwnedAndViewedBuffers) {
    parameter_registry params;
    const float init[3] = {1, 2, 3};
    auto& a = params.add("a", {3}, init);
    EXPECT_EQ(a.value[2], 3.0f);
    EXPECT_EQ(a.grad[2], 0.0f);
    float model_value[4] = {0}, model_grad[4] = {0};
    auto& v = params.add_view("v", {2, 2}, model_value, model_grad);
    EXPECT_EQ(v.value, model_value);
    EXPECT_EQ(v.grad, model_grad);
    auto& w = params.add_view_with_own_grad("w", {4}, model_value);
    EXPECT_NE(w.grad, nullptr);
    EXPECT_EQ(params.numel(), 11);
    EXPECT_EQ(&params.get("v"), &v);
    EXPECT_EQ(params.find("x"), nullptr);
    // References stay valid as parameters are added.
    for (int i = 0; i < 100; ++i) params.add("extra" + std::to_string(i), {1});
    EXPECT_EQ(&params.get("a"), &a);
    expect_error([&] { params.add("a", {1}); }, {"'name'", "'a', which is already registered"});
    expect_error([&] { params.add("neg", {-1}); }, {"'shape'", "[-1]"});
    expect_error([&] { params.add_view("o", {4}, model_value, model_value + 1); }, {"'grad'", "overlapping"});
    expect_error([&] { params.get("zz"); }, {"'name'", "'zz'"});
}

// ------------------------------------------------------------------------------------------------
// Gradient accumulation and the progress log
// ------------------------------------------------------------------------------------------------

TEST(TrainAccumulation, MicroBatchMeanAndTokenMean) {
    // Two micro-batches: S = 6 over 2 tokens, S = 2 over 4 tokens.
    mmca::train::grad_accumulation mb(2);
    EXPECT_DOUBLE_EQ(mb.loss_scale(2), 1.0 / 4.0);
    EXPECT_DOUBLE_EQ(mb.loss_scale(4), 1.0 / 8.0);
    EXPECT_FALSE(mb.add(6.0, 2));
    EXPECT_EQ(mb.micro_batch(), 1);
    EXPECT_TRUE(mb.add(2.0, 4));
    EXPECT_EQ(mb.micro_batch(), 0);
    EXPECT_DOUBLE_EQ(mb.step_loss(), (3.0 + 0.5) / 2.0);  // mean of token means
    EXPECT_EQ(mb.step_tokens(), 6);
    mmca::train::grad_accumulation tm(2, mmca::train::loss_averaging::token_mean);
    EXPECT_DOUBLE_EQ(tm.loss_scale(2, 6), 1.0 / 6.0);
    EXPECT_FALSE(tm.add(6.0, 2));
    EXPECT_TRUE(tm.add(2.0, 4));
    EXPECT_DOUBLE_EQ(tm.step_loss(), 8.0 / 6.0);
    EXPECT_EQ(mb.loss_scale(0), 0.0);
    expect_error([&] { mmca::train::grad_accumulation z(0); }, {"'micro_batches_per_step'", "0"});
    expect_error([&] { (void)tm.loss_scale(5, 4); }, {"'step_tokens'", "4"});
}

TEST(TrainProgress, PlainLinesAndBar) {
    std::FILE* f = std::tmpfile();
    ASSERT_NE(f, nullptr);
    mmca::train::progress_options o;
    o.total_steps = 5;
    o.log_every = 2;
    o.stream = f;
    mmca::train::progress_logger log(o);
    EXPECT_FALSE(log.uses_bar());  // a file is not a terminal
    for (int s = 1; s <= 5; ++s) log.record(s, 1.0 / s, 1e-3, 8);
    log.finish();
    std::rewind(f);
    std::string text(4096, '\0');
    text.resize(std::fread(&text[0], 1, text.size(), f));
    std::fclose(f);
    EXPECT_EQ(std::count(text.begin(), text.end(), '\n'), 3) << text;  // steps 2, 4 and the last
    EXPECT_NE(text.find("step 2/5 |"), std::string::npos) << text;
    EXPECT_NE(text.find("step 4/5 |"), std::string::npos) << text;
    EXPECT_NE(text.find("step 5/5 |"), std::string::npos) << text;
    EXPECT_EQ(text.find("step 3/5"), std::string::npos) << text;
    EXPECT_NE(text.find("loss 0.2500 (mean of 2: 0.2917)"), std::string::npos) << text;  // (1/3 + 1/4) / 2
    EXPECT_NE(text.find("lr 1.000e-03"), std::string::npos) << text;
    EXPECT_EQ(log.history().size(), 5u);
    EXPECT_EQ(log.history()[2].samples, 8);

    std::FILE* g = std::tmpfile();
    o.stream = g;
    o.display = mmca::train::progress_options::mode::bar;
    mmca::train::progress_logger bar(o);
    bar.record(1, 2.0, 1e-4, 4);
    bar.finish();
    std::rewind(g);
    std::string btext(4096, '\0');
    btext.resize(std::fread(&btext[0], 1, btext.size(), g));
    std::fclose(g);
    EXPECT_EQ(btext.front(), '\r');
    EXPECT_NE(btext.find("1/5 |"), std::string::npos) << btext;
    EXPECT_NE(btext.find("[======>"), std::string::npos) << btext;  // 1/5 of 30 columns
    EXPECT_EQ(btext.back(), '\n');
}

// ------------------------------------------------------------------------------------------------
// safetensors writer
// ------------------------------------------------------------------------------------------------

TEST(TrainSafetensorsWriter, ReadBackByMmcaReader) {
    const temp_dir dir;
    const std::string path = dir + "/t.safetensors";
    const float f32[6] = {1.5f, -2.0f, 3.25f, 0.0f, -0.0f, 1e-30f};
    const std::uint16_t f16[3] = {0x3c00, 0xc000, 0x7bff};     // 1, -2, 65504
    const std::uint16_t bf16[2] = {0x3f80, 0x4049};            // 1, 3.140625
    const std::int64_t i64[2] = {-5, std::int64_t(1) << 40};
    const std::int64_t scalar = 42;
    const std::uint8_t u8[3] = {1, 2, 3};
    mmca::io::safetensors_writer w;
    w.add("z_f32", {2, 3}, f32);
    w.add("a_f16", mmca::io::st_dtype::F16, {3}, f16);
    w.add("b_bf16", mmca::io::st_dtype::BF16, {1, 2}, bf16);
    w.add("c_u8", mmca::io::st_dtype::U8, {3}, u8);  // 3 bytes: the F32 data after it would be misaligned
    w.add("i64", {2}, i64);
    w.add("scalar", {}, &scalar);
    w.add("empty", mmca::io::st_dtype::F32, {0, 4}, nullptr);
    {
        const float tmp[1] = {7.0f};
        w.add_copy("copied", mmca::io::st_dtype::F32, {1}, tmp);
    }
    w.set_metadata("format", "pt");
    w.set_metadata("note", "quote \" and ünïcode");
    w.write(path);

    const std::string bytes = read_bytes(path);
    std::uint64_t n = 0;
    std::memcpy(&n, bytes.data(), 8);
    EXPECT_EQ((8 + n) % 8, 0u);
    const std::string header = bytes.substr(8, n);
    EXPECT_EQ(header.front(), '{');
    EXPECT_EQ(header.find_last_not_of(' '), header.rfind('}'));  // padding: spaces after the object
    EXPECT_LT(header.find("\"__metadata__\""), header.find("\"a_f16\""));  // keys sorted by byte value
    EXPECT_LT(header.find("\"a_f16\""), header.find("\"z_f32\""));

    mmca::io::safetensors_file f(path);
    EXPECT_EQ(f.tensors().size(), 8u);
    EXPECT_EQ(f.metadata().at("format"), "pt");
    EXPECT_EQ(f.metadata().at("note"), "quote \" and ünïcode");
    auto check = [&](const char* name, mmca::io::st_dtype t, std::vector<std::int64_t> shape, const void* data,
                     std::size_t size) {
        const mmca::io::tensor_info* i = f.find(name);
        ASSERT_NE(i, nullptr) << name;
        EXPECT_EQ(i->type, t) << name;
        EXPECT_EQ(i->shape, shape) << name;
        EXPECT_EQ(i->end - i->begin, size) << name;
        EXPECT_TRUE(i->aligned()) << name;
        if (size) {
            EXPECT_EQ(std::memcmp(i->data, data, size), 0) << name;
        }
    };
    check("z_f32", mmca::io::st_dtype::F32, {2, 3}, f32, sizeof f32);
    check("a_f16", mmca::io::st_dtype::F16, {3}, f16, sizeof f16);
    check("b_bf16", mmca::io::st_dtype::BF16, {1, 2}, bf16, sizeof bf16);
    check("c_u8", mmca::io::st_dtype::U8, {3}, u8, sizeof u8);
    check("i64", mmca::io::st_dtype::I64, {2}, i64, sizeof i64);
    check("scalar", mmca::io::st_dtype::I64, {}, &scalar, 8);
    check("empty", mmca::io::st_dtype::F32, {0, 4}, nullptr, 0);
    const float seven = 7.0f;
    check("copied", mmca::io::st_dtype::F32, {1}, &seven, 4);
    // Data order: 8-byte types first, then 4, 2, 1.
    EXPECT_LT(f.find("scalar")->begin, f.find("z_f32")->begin);
    EXPECT_LT(f.find("z_f32")->begin, f.find("a_f16")->begin);
    EXPECT_LT(f.find("b_bf16")->begin, f.find("c_u8")->begin);
    EXPECT_EQ(list_dir(dir), std::vector<std::string>{"t.safetensors"});

    // Errors at add().
    expect_error([&] { w.add("z_f32", {1}, f32); }, {"mmca::io::safetensors_writer::add", "'name'", "already added"});
    expect_error([&] { w.add("__metadata__", {1}, f32); }, {"'name'", "'__metadata__'"});
    expect_error([&] { w.add("", {1}, f32); }, {"'name'", "''"});
    expect_error([&] { w.add("neg", {2, -1}, f32); }, {"'shape'", "[2, -1]"});
    expect_error([&] { w.add("null", {2}, static_cast<const float*>(nullptr)); }, {"'data'", "null pointer"});
    mmca::io::safetensors_writer bad_utf8;
    bad_utf8.add("\xff", {1}, f32);
    expect_error([&] { bad_utf8.write(dir + "/u.safetensors"); }, {"not valid UTF-8"});
    EXPECT_EQ(list_dir(dir), std::vector<std::string>{"t.safetensors"});
}

TEST(TrainSafetensorsWriter, AtomicWriteKeepsThePreviousFile) {
    const temp_dir dir;
    const std::string path = dir + "/ckpt.safetensors";
    const std::vector<float> small(16, 1.0f);
    mmca::io::safetensors_writer old_w;
    old_w.add("w", {16}, small.data());
    old_w.write(path);
    const std::string old_bytes = read_bytes(path);

    // A write that fails mid-way: the file-size limit stops it after 64 KiB of a 4 MiB file.
    const std::vector<float> big(1 << 20, 2.0f);
    mmca::io::safetensors_writer new_w;
    new_w.add("w", {1 << 20}, big.data());
    struct rlimit saved {};
    ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &saved), 0);
    auto* previous = ::signal(SIGXFSZ, SIG_IGN);
    struct rlimit limited = saved;
    limited.rlim_cur = 1 << 16;
    ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &limited), 0);
    bool threw = false;
    std::string message;
    try {
        new_w.write(path);
    } catch (const mmca::invalid_argument& e) {
        threw = true;
        message = e.what();
    }
    ::setrlimit(RLIMIT_FSIZE, &saved);
    ::signal(SIGXFSZ, previous);
    EXPECT_TRUE(threw);
    EXPECT_NE(message.find("writing tensor 'w'"), std::string::npos) << message;
    EXPECT_EQ(read_bytes(path), old_bytes);                                 // the old checkpoint is intact
    EXPECT_EQ(list_dir(dir), std::vector<std::string>{"ckpt.safetensors"});  // and no temporary file is left
    mmca::io::safetensors_file still(path);
    EXPECT_EQ(still.find("w")->shape, std::vector<std::int64_t>{16});

    // A folder that does not exist: nothing is created.
    expect_error([&] { new_w.write(dir + "/missing/ckpt.safetensors"); }, {"'path'", "cannot create", "No such file"});
    // A destination that is a folder: the rename fails and the temporary file is removed.
    ASSERT_EQ(::mkdir((dir + "/as_dir").c_str(), 0755), 0);
    ASSERT_EQ(::mkdir((dir + "/as_dir/x").c_str(), 0755), 0);
    expect_error([&] { old_w.write(dir + "/as_dir"); }, {"'path'", "renaming"});
    EXPECT_EQ(list_dir(dir), (std::vector<std::string>{"as_dir", "ckpt.safetensors"}));
    // Success replaces the file.
    new_w.write(path);
    EXPECT_EQ(mmca::io::safetensors_file(path).find("w")->shape, std::vector<std::int64_t>{1 << 20});
    EXPECT_EQ(list_dir(dir), (std::vector<std::string>{"as_dir", "ckpt.safetensors"}));
}

// ------------------------------------------------------------------------------------------------
// Train state: a toy softmax regression with an analytic gradient
// ------------------------------------------------------------------------------------------------

constexpr int kFeatures = 5, kClasses = 3, kSamples = 64, kMicroBatch = 4, kAccum = 2, kTotalSteps = 12;

struct toy_data {
    std::vector<float> x;   // (kSamples, kFeatures)
    std::vector<int> y;     // (kSamples)
    toy_data() {
        std::mt19937_64 gen(1234);
        for (int i = 0; i < kSamples * kFeatures; ++i) x.push_back(static_cast<float>((gen() % 2001) / 1000.0 - 1.0));
        for (int i = 0; i < kSamples; ++i) {
            // Labels from a fixed linear rule, so the problem is learnable.
            const float* r = &x[static_cast<std::size_t>(i) * kFeatures];
            const double s0 = r[0] + r[1], s1 = r[2] - r[0], s2 = r[3] + 0.5 * r[4];
            y.push_back(s0 >= s1 && s0 >= s2 ? 0 : (s1 >= s2 ? 1 : 2));
        }
    }
};

// Everything a run holds: parameters W (C, F) and b (C), AdamW, schedule, RNG and data position.
struct toy_run {
    parameter_registry params;
    std::unique_ptr<adamw> opt;
    mmca::train::train_state state;
    mmca::train::cosine_schedule schedule;
    mmca::train::grad_accumulation acc{kAccum};
    double max_norm = 0.05;
    int clipped = 0;
    std::vector<double> losses;

    explicit toy_run(int num_threads = 1, float init_scale = 0.1f) {
        std::vector<float> w(kClasses * kFeatures), b(kClasses);
        for (std::size_t i = 0; i < w.size(); ++i) w[i] = init_scale * static_cast<float>(static_cast<int>(i % 7) - 3);
        params.add("linear.weight", {kClasses, kFeatures}, w.data());
        params.add("linear.bias", {kClasses}, b.data()).weight_decay = false;
        adamw_options o;
        o.lr = 0.05;
        o.weight_decay = 0.01;
        opt = std::make_unique<adamw>(params, o, num_threads);
        schedule.base_lr = 0.05;
        schedule.warmup_steps = 3;
        schedule.total_steps = kTotalSteps;
        state.rng.seed(99);
        state.config["model"] = "toy softmax regression";
    }

    // Adds the gradient of scale · Σ_i CE(softmax(W x_i + b), y_i) over one micro-batch; returns Σ CE.
    double micro_batch(const toy_data& d) {
        const float* W = params[0].value;
        const float* B = params[1].value;
        float* gW = params[0].grad;
        float* gB = params[1].grad;
        const double scale = acc.loss_scale(kMicroBatch);
        double loss = 0.0;
        for (int k = 0; k < kMicroBatch; ++k) {
            const int i = static_cast<int>(state.rng() % kSamples);
            ++state.data_position;
            const float* x = &d.x[static_cast<std::size_t>(i) * kFeatures];
            double z[kClasses], zmax = -1e300, sum = 0.0;
            for (int c = 0; c < kClasses; ++c) {
                z[c] = B[c];
                for (int f = 0; f < kFeatures; ++f) z[c] += static_cast<double>(W[c * kFeatures + f]) * x[f];
                zmax = std::max(zmax, z[c]);
            }
            for (int c = 0; c < kClasses; ++c) sum += std::exp(z[c] - zmax);
            loss += std::log(sum) + zmax - z[d.y[static_cast<std::size_t>(i)]];
            for (int c = 0; c < kClasses; ++c) {
                const double dz = (std::exp(z[c] - zmax) / sum - (c == d.y[static_cast<std::size_t>(i)] ? 1.0 : 0.0)) * scale;
                gB[c] += static_cast<float>(dz);
                for (int f = 0; f < kFeatures; ++f) gW[c * kFeatures + f] += static_cast<float>(dz * x[f]);
            }
        }
        return loss;
    }

    void train_steps(const toy_data& d, int steps) {
        for (int s = 0; s < steps; ++s) {
            bool done = false;
            while (!done) done = acc.add(micro_batch(d), kMicroBatch);
            if (params.clip_grad_norm(max_norm) > max_norm) ++clipped;
            opt->step(schedule.lr(opt->step_count()));
            params.zero_grad();
            losses.push_back(acc.step_loss());
        }
    }
};

void expect_same_bits(const float* a, const float* b, std::int64_t n, const std::string& what) {
    EXPECT_EQ(std::memcmp(a, b, static_cast<std::size_t>(n) * sizeof(float)), 0) << what << " differs";
}

TEST(TrainState, ResumeIsBitExact) {
    const toy_data data;
    toy_run straight;
    straight.train_steps(data, kTotalSteps);
    EXPECT_GT(straight.clipped, 0);                                // clipping was active
    EXPECT_LT(straight.losses.back(), straight.losses.front());     // and the model learned

    const temp_dir dir;
    const std::string path = dir + "/state.safetensors";
    const int k = 5;
    {
        toy_run first;
        first.train_steps(data, k);
        mmca::train::save_train_state(path, first.params, *first.opt, first.state);
    }
    toy_run resumed(1, 0.7f);  // fresh objects with other initial values, overwritten by the load
    mmca::train::load_train_state(path, resumed.params, *resumed.opt, resumed.state);
    EXPECT_EQ(resumed.opt->step_count(), k);
    EXPECT_EQ(resumed.state.data_position, k * kAccum * kMicroBatch);
    EXPECT_EQ(resumed.state.config.at("model"), "toy softmax regression");
    resumed.train_steps(data, kTotalSteps - k);

    EXPECT_EQ(resumed.opt->step_count(), straight.opt->step_count());
    EXPECT_EQ(resumed.state.data_position, straight.state.data_position);
    for (std::size_t i = 0; i < 2; ++i) {
        const auto n = straight.params[i].numel;
        expect_same_bits(resumed.params[i].value, straight.params[i].value, n, straight.params[i].name);
        expect_same_bits(resumed.opt->exp_avg(i), straight.opt->exp_avg(i), n, "exp_avg " + straight.params[i].name);
        expect_same_bits(resumed.opt->exp_avg_sq(i), straight.opt->exp_avg_sq(i), n, "exp_avg_sq " + straight.params[i].name);
    }
    EXPECT_EQ(resumed.state.rng(), straight.state.rng());
    for (int s = 0; s < kTotalSteps - k; ++s) EXPECT_EQ(resumed.losses[static_cast<std::size_t>(s)], straight.losses[static_cast<std::size_t>(s + k)]);

    // Without the RNG state the continuation differs (the test can see a broken resume).
    toy_run broken(1, 0.7f);
    mmca::train::load_train_state(path, broken.params, *broken.opt, broken.state);
    broken.state.rng.seed(7);
    broken.train_steps(data, kTotalSteps - k);
    EXPECT_NE(std::memcmp(broken.params[0].value, straight.params[0].value, sizeof(float) * kClasses * kFeatures), 0);
}

TEST(TrainState, FileLayout) {
    const temp_dir dir;
    const std::string path = dir + "/state.safetensors";
    toy_run run;
    run.state.epoch = 2;
    run.train_steps(toy_data(), 1);
    mmca::train::save_train_state(path, run.params, *run.opt, run.state);
    mmca::io::safetensors_file f(path);
    EXPECT_EQ(f.tensors().size(), 9u);
    EXPECT_EQ(f.metadata().at("format"), "mmca.train_state");
    EXPECT_EQ(f.metadata().at("format_version"), "1");
    EXPECT_EQ(f.metadata().at("adamw.beta2"), "0.94999999999999996");
    EXPECT_EQ(f.metadata().at("config.model"), "toy softmax regression");
    const auto* w = f.find("linear.weight");
    ASSERT_NE(w, nullptr);
    EXPECT_EQ(w->shape, (std::vector<std::int64_t>{kClasses, kFeatures}));
    EXPECT_EQ(std::memcmp(w->data, run.params[0].value, sizeof(float) * kClasses * kFeatures), 0);
    ASSERT_NE(f.find("optimizer.exp_avg_sq.linear.bias"), nullptr);
    std::int64_t v = 0;
    std::memcpy(&v, f.find("train.step")->data, 8);
    EXPECT_EQ(v, 1);
    std::memcpy(&v, f.find("train.epoch")->data, 8);
    EXPECT_EQ(v, 2);
    EXPECT_TRUE(f.find("train.step")->shape.empty());
}

// Re-writes a train-state file with `edit` applied to its list of tensors.
struct st_entry {
    std::string name;
    mmca::io::st_dtype type;
    std::vector<std::int64_t> shape;
    std::string bytes;
};
void rewrite(const std::string& from, const std::string& to,
             const std::function<void(std::vector<st_entry>&, std::map<std::string, std::string>&)>& edit) {
    std::vector<st_entry> entries;
    std::map<std::string, std::string> meta;
    {
        mmca::io::safetensors_file f(from);
        for (const auto& t : f.tensors())
            entries.push_back({t.name, t.type, t.shape,
                               std::string(reinterpret_cast<const char*>(t.data), static_cast<std::size_t>(t.end - t.begin))});
        meta = f.metadata();
    }
    edit(entries, meta);
    mmca::io::safetensors_writer w;
    for (const auto& e : entries) w.add_copy(e.name, e.type, e.shape, e.bytes.data());
    for (const auto& kv : meta) w.set_metadata(kv.first, kv.second);
    w.write(to);
}

TEST(TrainState, LoaderErrors) {
    const temp_dir dir;
    const std::string good = dir + "/good.safetensors", bad = dir + "/bad.safetensors";
    {
        toy_run run;
        run.train_steps(toy_data(), 2);
        mmca::train::save_train_state(good, run.params, *run.opt, run.state);
    }
    toy_run target(1, 0.3f);
    const std::vector<float> before(target.params[0].value, target.params[0].value + kClasses * kFeatures);
    auto load = [&](const std::string& p) { mmca::train::load_train_state(p, target.params, *target.opt, target.state); };
    auto erase = [](std::vector<st_entry>& e, const std::string& name) {
        e.erase(std::remove_if(e.begin(), e.end(), [&](const st_entry& x) { return x.name == name; }), e.end());
    };

    rewrite(good, bad, [&](auto& e, auto&) { erase(e, "optimizer.exp_avg.linear.bias"); });
    expect_error([&] { load(bad); }, {"mmca::train::load_train_state", "'path'", "no tensor 'optimizer.exp_avg.linear.bias'"});
    rewrite(good, bad, [&](auto& e, auto&) { erase(e, "linear.weight"); });
    expect_error([&] { load(bad); }, {"no tensor 'linear.weight'"});
    rewrite(good, bad, [&](auto& e, auto&) {
        for (auto& x : e) if (x.name == "linear.weight") x.shape = {kFeatures, kClasses};
    });
    expect_error([&] { load(bad); }, {"tensor 'linear.weight' of shape [5, 3]", "shape [3, 5] (the registry's)"});
    rewrite(good, bad, [&](auto& e, auto&) {
        for (auto& x : e) if (x.name == "linear.bias") x.type = mmca::io::st_dtype::I32;
    });
    expect_error([&] { load(bad); }, {"tensor 'linear.bias' of dtype I32", "dtype F32"});
    rewrite(good, bad, [&](auto& e, auto&) {
        for (auto& x : e) if (x.name == "train.step") x.type = mmca::io::st_dtype::F64;
    });
    expect_error([&] { load(bad); }, {"tensor 'train.step' of dtype F64", "dtype I64"});
    rewrite(good, bad, [&](auto& e, auto&) { e.push_back({"other.weight", mmca::io::st_dtype::F32, {1}, std::string(4, '\0')}); });
    expect_error([&] { load(bad); }, {"tensor 'other.weight', which is not a parameter of the registry"});
    rewrite(good, bad, [&](auto& e, auto&) {
        for (auto& x : e) if (x.name == "train.step") { const std::int64_t neg = -3; std::memcpy(&x.bytes[0], &neg, 8); }
    });
    expect_error([&] { load(bad); }, {"train.step = -3", "a count >= 0"});
    rewrite(good, bad, [&](auto&, auto& m) { m["format"] = "pt"; });
    expect_error([&] { load(bad); }, {"metadata format = 'pt'", "'mmca.train_state'"});
    rewrite(good, bad, [&](auto&, auto& m) { m.erase("rng.mt19937_64"); });
    expect_error([&] { load(bad); }, {"no metadata 'rng.mt19937_64'"});
    rewrite(good, bad, [&](auto&, auto& m) { m["rng.mt19937_64"] = "1 2 3"; });
    expect_error([&] { load(bad); }, {"rng.mt19937_64 that is not a std::mt19937_64 state"});
    rewrite(good, bad, [&](auto&, auto& m) { m["adamw.beta2"] = "0.999"; });
    expect_error([&] { load(bad); }, {"adamw.beta2 = 0.999 in the file", "the optimizer's value 0.94999999999999996"});
    rewrite(good, bad, [&](auto&, auto& m) { m["format_version"] = "2"; });
    expect_error([&] { load(bad); }, {"format_version '2'", "version 1"});
    // Truncated files: the reader's checks.
    const std::string bytes = read_bytes(good);
    write_bytes(bad, bytes.substr(0, bytes.size() - 100));
    expect_error([&] { load(bad); }, {"truncated file?"});
    write_bytes(bad, bytes.substr(0, 20));
    expect_error([&] { load(bad); }, {"truncated file?"});
    write_bytes(bad, bytes.substr(0, 4));
    expect_error([&] { load(bad); }, {"a file of 4 bytes"});
    expect_error([&] { load(dir + "/absent.safetensors"); }, {"'path'", "absent.safetensors"});
    // A registry with another shape.
    {
        parameter_registry other;
        other.add("linear.weight", {kClasses, kFeatures});
        adamw_options same;
        same.weight_decay = 0.01;
        adamw o(other, same);
        mmca::train::train_state s;
        expect_error([&] { mmca::train::load_train_state(good, other, o, s); },
                     {"tensor 'linear.bias', which is not a parameter"});  // the file has a bias the registry lacks
    }
    // Nothing was changed by the failed loads.
    EXPECT_EQ(std::memcmp(before.data(), target.params[0].value, before.size() * sizeof(float)), 0);
    EXPECT_EQ(target.opt->step_count(), 0);
    EXPECT_EQ(target.state.data_position, 0);
    // The good file loads.
    load(good);
    EXPECT_EQ(target.opt->step_count(), 2);
    // Reserved names at save.
    parameter_registry reserved;
    reserved.add("train.x", {1});
    adamw ro(reserved);
    expect_error([&] { mmca::train::save_train_state(dir + "/r.safetensors", reserved, ro, mmca::train::train_state{}); },
                 {"mmca::train::save_train_state", "parameter 'train.x'", "reserved"});
}

// ------------------------------------------------------------------------------------------------
// Thread-count independence
// ------------------------------------------------------------------------------------------------

TEST(TrainThreads, OneAndTwoThreadsGiveTheSameBits) {
    const std::int64_t n = 100003;  // several chunks and a ragged tail
    auto run = [&](int threads, std::vector<float>& value, std::vector<float>& m, double& norm) {
        parameter_registry params;
        std::vector<float> init(static_cast<std::size_t>(n));
        std::mt19937_64 gen(5);
        for (auto& x : init) x = static_cast<float>(static_cast<double>(gen() % 100000) / 50000.0 - 1.0);
        params.add("big", {n}, init.data());
        params.add("small", {3}, init.data());
        adamw_options o;
        o.weight_decay = 0.1;
        adamw opt(params, o, threads);
        for (int step = 0; step < 3; ++step) {
            for (auto& p : params)
                for (std::int64_t i = 0; i < p.numel; ++i)
                    p.grad[i] = static_cast<float>(static_cast<double>(gen() % 100000) / 1e4 - 5.0);
            norm = params.clip_grad_norm(10.0, threads);
            opt.step(1e-2);
            params.zero_grad(threads);
        }
        value.assign(params[0].value, params[0].value + n);
        m.assign(opt.exp_avg(0), opt.exp_avg(0) + n);
    };
    std::vector<float> v1, v2, m1, m2;
    double n1 = 0, n2 = 0;
    run(1, v1, m1, n1);
    run(2, v2, m2, n2);
    EXPECT_EQ(n1, n2);
    EXPECT_GT(n1, 10.0);  // clipping happened
    EXPECT_EQ(std::memcmp(v1.data(), v2.data(), v1.size() * sizeof(float)), 0);
    EXPECT_EQ(std::memcmp(m1.data(), m2.data(), m1.size() * sizeof(float)), 0);
}

}  // namespace
