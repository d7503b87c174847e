// The safetensors reader, the sharded index, config.json and the weight loader: a valid file is
// viewed in place, and every kind of bad input (truncated or corrupted file, a header that lies,
// missing tensor, wrong shape, unsupported dtype, bad config) is a clear mmca::invalid_argument.
// These tests are also built with AddressSanitizer/UBSan (tests/sanitize), which turns any read
// outside the mapping into a failure.
#include "test_llama_util.hpp"

#include "mmca/io/checkpoint.hpp"
#include "mmca/io/llama_config_json.hpp"
#include "mmca/io/llama_loader.hpp"
#include "mmca/io/safetensors.hpp"

#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <string>
#include <vector>

namespace {

using mmca_test::st_tensor;
using mmca_test::temp_path;
using mmca_test::write_raw;

std::vector<unsigned char> bytes_of(std::size_t n, unsigned char seed = 1) {
    std::vector<unsigned char> v(n);
    for (std::size_t i = 0; i < n; ++i) v[i] = static_cast<unsigned char>(seed + 7 * i);
    return v;
}

/// Expects opening `path` to fail with a message containing `needle`.
void expect_bad(const std::string& path, const std::string& needle) {
    try {
        mmca::io::safetensors_file f(path);
        ADD_FAILURE() << "opened a bad file; expected an error containing '" << needle << "'";
    } catch (const mmca::invalid_argument& e) {
        EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
}

void write_header(const std::string& name, const std::string& header, std::size_t data_bytes, bool pad = true) {
    write_raw(temp_path(name), header, bytes_of(data_bytes), pad);
}

TEST(Safetensors, ViewsTensorsInPlace) {
    const std::vector<float> a = {1.5f, -2.0f, 3.25f, 0.0f, 7.0f, -0.5f};
    std::vector<st_tensor> ts = {{"a", "F32", {2, 3}, mmca_test::float_bytes(a, "F32")},
                                 {"b", "BF16", {3}, mmca_test::float_bytes({1.0f, -3.0f, 0.15625f}, "BF16")},
                                 {"c", "F16", {1, 2}, mmca_test::float_bytes({0.5f, 2.0f}, "F16")},
                                 {"idx", "I64", {2}, bytes_of(16)},
                                 {"empty", "F32", {0, 4}, {}}};
    nlohmann::json h = mmca_test::st_header(ts);
    h["__metadata__"] = {{"format", "pt"}};
    std::vector<unsigned char> data;
    for (auto& t : ts) data.insert(data.end(), t.bytes.begin(), t.bytes.end());
    const std::string path = temp_path("ok.safetensors");
    write_raw(path, h.dump(), data);
    mmca::io::safetensors_file f(path);
    ASSERT_EQ(f.tensors().size(), 5u);
    EXPECT_EQ(f.metadata().at("format"), "pt");
    const auto* ta = f.find("a");
    ASSERT_TRUE(ta);
    EXPECT_EQ(ta->shape, (std::vector<std::int64_t>{2, 3}));
    const float* pa = reinterpret_cast<const float*>(ta->data);
    for (int i = 0; i < 6; ++i) EXPECT_EQ(pa[i], a[i]);
    // In place: the tensor's bytes are inside the mapping, right after the header.
    const auto* base = f.mapping()->data();
    EXPECT_GE(ta->data, base);
    EXPECT_LE(ta->data + 24, base + f.mapping()->size());
    const auto* tb = f.find("b");
    const auto* pb = reinterpret_cast<const mmca::bfloat16*>(tb->data);
    EXPECT_EQ(float(pb[1]), -3.0f);
    EXPECT_EQ(float(pb[2]), 0.15625f);
    EXPECT_EQ(float(reinterpret_cast<const mmca::float16*>(f.find("c")->data)[1]), 2.0f);
    EXPECT_FALSE(f.find("idx")->supported());
    EXPECT_EQ(f.find("nope"), nullptr);
}

TEST(Safetensors, RejectsTruncatedAndCorruptedFiles) {
    // Too short for the length field.
    {
        std::ofstream(temp_path("zero.st"), std::ios::binary | std::ios::trunc);
    }
    expect_bad(temp_path("zero.st"), "at least 8 bytes");
    {
        std::ofstream f(temp_path("five.st"), std::ios::binary | std::ios::trunc);
        f << "abcde";
    }
    expect_bad(temp_path("five.st"), "at least 8 bytes");
    // A valid file cut short: the header fits but the data does not.
    const std::string good = R"({"w":{"dtype":"F32","shape":[4,4],"data_offsets":[0,64]}})";
    write_header("cut.st", good, 40);
    expect_bad(temp_path("cut.st"), "past the end");
    // Header length larger than the file.
    {
        std::ofstream f(temp_path("longhdr.st"), std::ios::binary | std::ios::trunc);
        const unsigned char len[8] = {0x00, 0x10, 0, 0, 0, 0, 0, 0};
        f.write(reinterpret_cast<const char*>(len), 8);
        f << "{}";
    }
    expect_bad(temp_path("longhdr.st"), "fits in the file");
    // Header length over 100 MB (the check happens before anything is read).
    {
        std::ofstream f(temp_path("huge.st"), std::ios::binary | std::ios::trunc);
        const unsigned char len[8] = {0x00, 0xe1, 0xf5, 0x05, 0x01, 0, 0, 0};
        f.write(reinterpret_cast<const char*>(len), 8);
        f << "{}";
    }
    expect_bad(temp_path("huge.st"), "at most 100000000 bytes");
    // Not JSON / not an object / garbage.
    write_header("notjson.st", "{\"w\": [1, 2", 0);
    expect_bad(temp_path("notjson.st"), "not valid JSON");
    write_header("array.st", "[1, 2, 3]", 0);
    expect_bad(temp_path("array.st"), "does not start with '{'");
    write_header("nested.st", std::string(20, '{') + std::string(20, '}'), 0);
    expect_bad(temp_path("nested.st"), "header");
    // Duplicate names: a JSON parser would silently keep one of them.
    write_header("dup.st",
                 R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                 8);
    expect_bad(temp_path("dup.st"), "the key 'w' twice");
}

TEST(Safetensors, RejectsHeadersThatLie) {
    struct bad_case {
        const char* name;
        std::string header;
        std::size_t data;
        const char* needle;
    };
    const std::vector<bad_case> cases = {
        {"past_end", R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", 12, "past the end"},
        {"begin_gt_end", R"({"w":{"dtype":"F32","shape":[0],"data_offsets":[8,4]}})", 8, "begin <= end"},
        {"overlap",
         R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
         12, "overlapping"},
        {"gap",
         R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
         12, "gap of 4 bytes"},
        {"trailing", R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 12, "cover the whole data buffer"},
        {"wrong_size", R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8, "3 elements"},
        {"wrong_size_bf16", R"({"a":{"dtype":"BF16","shape":[2,2],"data_offsets":[0,16]}})", 16, "4 elements × 2 bytes"},
        {"bad_dtype", R"({"a":{"dtype":"F12","shape":[1],"data_offsets":[0,4]}})", 4, "dtype \"F12\""},
        {"neg_shape", R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", 4, "non-negative integers"},
        {"float_shape", R"({"a":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}})", 4, "non-negative integers"},
        {"neg_offset", R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[-4,0]}})", 4, "unsigned integers"},
        {"three_offsets", R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4,8]}})", 4, "[begin, end]"},
        {"missing_key", R"({"a":{"dtype":"F32","shape":[1]}})", 4, "exactly 'dtype', 'shape' and 'data_offsets'"},
        {"extra_key", R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":1}})", 4, "exactly"},
        {"overflow", R"({"a":{"dtype":"F64","shape":[4294967296,4294967296],"data_offsets":[0,8]}})", 8, "overflows"},
        {"overflow_bytes", R"({"a":{"dtype":"F64","shape":[2305843009213693952,2],"data_offsets":[0,8]}})", 8,
         "bytes for dtype F64"},
        {"metadata", R"({"__metadata__":{"a":1}})", 0, "not a string"},
        {"huge_offset", R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[18446744073709551615,18446744073709551615]}})",
         1, "past the end"},
    };
    for (const auto& c : cases) {
        SCOPED_TRACE(c.name);
        write_header(std::string(c.name) + ".st", c.header, c.data);
        expect_bad(temp_path(std::string(c.name) + ".st"), c.needle);
    }
}

TEST(Safetensors, MisalignedDataIsReportedNotRead) {
    // No padding: the data starts at 8 + an odd header length, so the F32 tensor is misaligned.
    // The format allows that; the reader reports it and the loader copies such tensors.
    std::string h = R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})";
    if ((8 + h.size()) % 2 == 0) h += " ";
    write_header("misaligned.st", h, 4, false);
    mmca::io::safetensors_file f(temp_path("misaligned.st"));
    EXPECT_FALSE(f.find("a")->aligned());
}

TEST(Safetensors, CheckpointIndexAndShards) {
    const std::string dir = temp_path("sharded");
    ::mkdir(dir.c_str(), 0755);
    mmca_test::write_safetensors(dir + "/s1.safetensors", {{"x", "F32", {2}, mmca_test::float_bytes({1, 2}, "F32")}});
    mmca_test::write_safetensors(dir + "/s2.safetensors", {{"y", "BF16", {1}, mmca_test::float_bytes({4}, "BF16")},
                                                          {"z", "F32", {1}, mmca_test::float_bytes({5}, "F32")}});
    std::ofstream(dir + "/model.safetensors.index.json")
        << R"({"metadata": {"total_size": 14}, "weight_map": {"x": "s1.safetensors", "y": "s2.safetensors", "z": "s2.safetensors"}})";
    const auto c = mmca::io::checkpoint::open(dir);
    EXPECT_EQ(c.files().size(), 2u);
    EXPECT_EQ(c.size(), 3u);
    float z = 0.0f;  // z follows a 2-byte tensor: misaligned, so read it bytewise
    std::memcpy(&z, c.get("z").data, 4);
    EXPECT_EQ(z, 5.0f);
    EXPECT_FALSE(c.get("z").aligned());
    try {
        c.get("w");
        ADD_FAILURE();
    } catch (const mmca::invalid_argument& e) {
        EXPECT_NE(std::string(e.what()).find("no tensor 'w'"), std::string::npos) << e.what();
    }
    auto bad_index = [&](const std::string& text, const std::string& needle) {
        const std::string p = dir + "/bad.index.json";
        std::ofstream(p, std::ios::trunc) << text;
        try {
            mmca::io::checkpoint::open(p);
            ADD_FAILURE() << text;
        } catch (const mmca::invalid_argument& e) {
            EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
        }
    };
    bad_index(R"({"weight_map": {"x": "../s1.safetensors"}})", "plain file name");
    bad_index(R"({"weight_map": {"x": "/etc/passwd"}})", "plain file name");
    bad_index(R"({"weight_map": {"x": "s2.safetensors"}})", "does not contain it");
    bad_index(R"({"weight_map": {"x": "missing.safetensors"}})", "No such file");
    bad_index(R"({"metadata": {}})", "weight_map");
    bad_index(R"({"weight_map": {"x": 3}})", "not a string");
    bad_index(R"({"weight_map": {}})", "empty weight_map");
    bad_index("not json", "not valid JSON");
    try {
        mmca::io::checkpoint::open(temp_path("no_such_dir"));
        ADD_FAILURE();
    } catch (const mmca::invalid_argument& e) {
        EXPECT_NE(std::string(e.what()).find("No such file"), std::string::npos) << e.what();
    }
}

TEST(LlamaConfigJson, ParsesAndRejects) {
    const auto c = mmca::io::parse_llama_config(
        R"({"vocab_size": 32000, "hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
            "num_attention_heads": 64, "num_key_value_heads": 8, "rms_norm_eps": 1e-05, "max_position_embeddings": 4096,
            "rope_theta": 10000.0, "rope_scaling": {"type": "dynamic", "factor": 2.0}, "hidden_act": "silu",
            "bos_token_id": 1, "eos_token_id": 2, "tie_word_embeddings": false})");
    EXPECT_EQ(c.num_kv_heads, 8);
    EXPECT_EQ(c.head_dim(), 128);
    EXPECT_EQ(c.rope_scaling, mmca::nn::rope_scaling_type::dynamic);
    EXPECT_EQ(c.rope_factor, 2.0);
    const auto d = mmca::io::parse_llama_config(
        R"({"vocab_size": 10, "hidden_size": 8, "intermediate_size": 4, "num_hidden_layers": 1, "num_attention_heads": 2})");
    EXPECT_EQ(d.num_kv_heads, 2);        // default: as many kv heads as heads
    EXPECT_EQ(d.max_positions, 2048);    // HF's default
    auto bad = [](const std::string& text, const std::string& needle) {
        try {
            mmca::io::parse_llama_config(text);
            ADD_FAILURE() << text;
        } catch (const mmca::invalid_argument& e) {
            EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
        }
    };
    const std::string base = R"("vocab_size": 10, "intermediate_size": 4, "num_hidden_layers": 1, "num_attention_heads": 2)";
    bad("{" + base + "}", "'hidden_size'");
    bad(R"({"hidden_size": "8", )" + base + "}", "'hidden_size'");
    bad(R"({"hidden_size": 9, )" + base + "}", "num_attention_heads");
    bad(R"({"hidden_size": 8, "num_key_value_heads": 3, )" + base + "}", "num_key_value_heads");
    bad(R"({"hidden_size": 8, "rope_scaling": {"type": "yarn", "factor": 2}, )" + base + "}", "rope_scaling.type");
    bad(R"({"hidden_size": 8, "rope_scaling": {"type": "linear", "factor": 1.0}, )" + base + "}", "rope_scaling.factor");
    bad(R"({"hidden_size": 8, "hidden_act": "gelu", )" + base + "}", "hidden_act");
    bad(R"({"hidden_size": 8, "rms_norm_eps": -1, )" + base + "}", "rms_norm_eps");
    bad("[1]", "JSON object");
}

class LlamaLoader : public ::testing::Test {
protected:
    void SetUp() override {
        model = mmca_test::make_random_llama(mmca_test::tiny_config(), 17);
    }
    std::string write(const std::string& name, const std::string& dtype = "F32") {
        return mmca_test::write_llama(model, temp_path(name), dtype);
    }
    void expect_load_error(const std::string& dir, const std::string& needle) {
        try {
            mmca::io::load_llama_model<float>(dir);
            ADD_FAILURE() << "loaded a bad checkpoint; expected '" << needle << "'";
        } catch (const mmca::invalid_argument& e) {
            EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
        }
    }
    mmca_test::random_llama model;
};

TEST_F(LlamaLoader, LoadsEveryStorageDtypeInPlace) {
    for (const char* dt : {"F32", "F16", "BF16"}) {
        const std::string dir = write(std::string("ok_") + dt, dt);
        auto m = mmca::io::load_llama_model<float>(dir);
        EXPECT_EQ(m.config().num_layers, 2);
        const auto& w = m.weights();
        EXPECT_EQ(w.layers[1].mlp.down.type,
                  std::string(dt) == "F32" ? mmca::dtype::float32 : std::string(dt) == "F16" ? mmca::dtype::float16 : mmca::dtype::bfloat16);
        // The matrix points into the mapped file (no copy).
        auto owner = std::static_pointer_cast<const mmca::io::llama_storage>(w.storage);
        EXPECT_TRUE(owner->copies.empty());
        auto files = std::static_pointer_cast<const std::vector<std::shared_ptr<mmca::io::safetensors_file>>>(owner->files);
        ASSERT_EQ(files->size(), 1u);
        const auto* base = files->front()->mapping()->data();
        const auto* p = static_cast<const unsigned char*>(w.layers[1].mlp.down.data);
        EXPECT_GE(p, base);
        EXPECT_LE(p + w.layers[1].mlp.down.rows * w.layers[1].mlp.down.cols * mmca::nn::dtype_size(w.layers[1].mlp.down.type),
                  base + files->front()->mapping()->size());
    }
}

TEST_F(LlamaLoader, MisalignedTensorsAreCopiedAndGiveTheSameLogits) {
    const std::string aligned_dir = write("aligned");
    const std::string dir = temp_path("misaligned_model");
    ::mkdir(dir.c_str(), 0755);
    std::vector<st_tensor> ts = {{"a_odd_first", "U8", {3}, bytes_of(3)}};  // shifts every later tensor by 3 bytes
    for (const auto& kv : model.weights)
        ts.push_back({kv.first, "F32", model.shapes.at(kv.first), mmca_test::float_bytes(kv.second, "F32")});
    mmca_test::write_safetensors(dir + "/model.safetensors", ts);
    std::ofstream(dir + "/config.json") << mmca_test::config_json(model.config);
    auto a = mmca::io::load_llama_model<float>(aligned_dir);
    auto b = mmca::io::load_llama_model<float>(dir);
    EXPECT_FALSE(std::static_pointer_cast<const mmca::io::llama_storage>(b.weights().storage)->copies.empty());
    const std::vector<std::int32_t> ids = {1, 5, 9, 3};
    std::vector<float> la(4 * 61), lb(4 * 61);
    a.forward_tokens(mmca::tensor_ref<const std::int32_t, 2>(ids.data(), {1, 4}), {}, mmca::tensor_ref<float, 3>(la.data(), {1, 4, 61}));
    b.forward_tokens(mmca::tensor_ref<const std::int32_t, 2>(ids.data(), {1, 4}), {}, mmca::tensor_ref<float, 3>(lb.data(), {1, 4, 61}));
    EXPECT_EQ(la, lb);
}

TEST_F(LlamaLoader, MissingTensorWrongShapeUnsupportedDtype) {
    auto missing = model;
    missing.weights.erase("model.layers.1.mlp.up_proj.weight");
    expect_load_error(mmca_test::write_llama(missing, temp_path("missing")), "no tensor 'model.layers.1.mlp.up_proj.weight'");

    auto wrong = model;
    wrong.shapes["model.layers.0.self_attn.k_proj.weight"] = {32, 16};  // kv width is 16, stored transposed
    expect_load_error(mmca_test::write_llama(wrong, temp_path("wrong")), "of shape [32, 16]");

    const std::string dir = temp_path("int");
    ::mkdir(dir.c_str(), 0755);
    std::vector<st_tensor> ts;
    for (const auto& kv : model.weights) {
        const bool as_int = kv.first == "model.norm.weight";
        ts.push_back({kv.first, as_int ? "I32" : "F32", model.shapes.at(kv.first),
                      mmca_test::float_bytes(kv.second, "F32")});
    }
    mmca_test::write_safetensors(dir + "/model.safetensors", ts);
    std::ofstream(dir + "/config.json") << mmca_test::config_json(model.config);
    expect_load_error(dir, "dtype I32 (unsupported dtype)");

    const std::string noconf = temp_path("noconf");
    ::mkdir(noconf.c_str(), 0755);
    mmca_test::write_safetensors(noconf + "/model.safetensors", ts);
    expect_load_error(noconf, "config.json");
}

}  // namespace
