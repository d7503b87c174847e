// mmca/train/trainer.hpp - the training loop of the visual-chat model (SPEC §8).
//
//   mmca::train::trainer_options o;                 // projector + embedding, AdamW (0.9, 0.95), lr 1e-3,
//   o.epochs = 5;                                   // 10% warm-up then cosine, clip 1.0
//   mmca::train::visual_chat_trainer<float> t(*model, data.size(), o);
//   while (!t.done()) t.step(data);                 // one optimizer step per call
//   t.save("run/state.safetensors");                // parameters, AdamW moments, counters, data order
//   ...
//   mmca::train::visual_chat_trainer<float> u(*model2, data.size(), o);
//   u.load("run/state.safetensors");                // continues bit for bit
//
// The trainer owns float32 copies of the trainable tensors (the copied token embedding
// lang_embed.weight, the projector of any kind, optionally the gated cross-attention blocks, optionally LoRA
// adapters on q/k/v/o) and points the model's weights at them, so the model's inference paths use
// the trained values while the frozen encoder and decoder stay memory-mapped in their stored dtype.
// The copies are kept alive by the model's weights (their `storage`), so the model stays usable
// after the trainer is gone.
//
// Data order: an epoch is a permutation of the data set's examples drawn from std::mt19937_64(seed)
// (Fisher-Yates with rejection sampling, so it does not depend on the standard library); a step
// takes micro_batch × accumulation examples from it in order; a step that would run past the end of
// the epoch starts the next one (the remainder is skipped, as a DataLoader with drop_last). The
// state of a run is therefore (optimizer step, epoch, position in the epoch, the generator before
// the epoch's shuffle), which save()/load() write to and read from a train-state file
// (train/train_state.hpp) together with the parameters and the AdamW moments. Resuming gives the
// same bits as an uninterrupted run: every pass is deterministic for any thread count.
#pragma once

#include "mmca/core/dtype.hpp"
#include "mmca/core/error.hpp"
#include "mmca/io/name_map.hpp"
#include "mmca/io/safetensors_writer.hpp"
#include "mmca/language/lora.hpp"
#include "mmca/model/visual_chat.hpp"
#include "mmca/model/visual_chat_loader.hpp"
#include "mmca/model/visual_chat_train.hpp"
#include "mmca/train/adamw.hpp"
#include "mmca/train/grad_accumulation.hpp"
#include "mmca/train/lr_schedule.hpp"
#include "mmca/train/parameters.hpp"
#include "mmca/train/progress.hpp"
#include "mmca/train/train_state.hpp"

#include <cmath>
#include <cstdint>
#include <deque>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <utility>
#include <vector>

namespace mmca::train {

/// One training example: token ids with <image> placeholders, labels (−100 where not supervised),
/// and the preprocessed pixels of its images, (images, 3, S, S) float32.
struct training_example {
    std::vector<std::int32_t> ids;
    std::vector<std::int32_t> labels;
    std::vector<float> pixels;
    std::int64_t images = 0;
};

/// What a trainer reads: size() examples, built one at a time on demand.
class example_source {
public:
    virtual ~example_source() = default;
    virtual std::int64_t size() const = 0;
    virtual training_example example(std::int64_t index) const = 0;
};

/// Examples held in memory.
class example_list : public example_source {
public:
    example_list() = default;
    explicit example_list(std::vector<training_example> examples) : examples_(std::move(examples)) {}
    void add(training_example e) { examples_.push_back(std::move(e)); }
    std::int64_t size() const override { return static_cast<std::int64_t>(examples_.size()); }
    training_example example(std::int64_t index) const override {
        MMCA_CHECK_ARG(index >= 0 && index < size(), "mmca::train::example_list::example", "index",
                       mmca::detail::to_text(index), "an index in [0, " + mmca::detail::to_text(size()) + ")");
        return examples_[static_cast<std::size_t>(index)];
    }

private:
    std::vector<training_example> examples_;
};

struct trainer_options {
    // What trains (the rest is frozen).
    bool projector = true;              ///< the projector (baseline, vit or perceiver)
    bool embedding = true;              ///< the copied token embedding lang_embed.weight
    bool cross_blocks = false;          ///< the decoder's gated cross-attention blocks (SPEC §2.5)
    std::string lora_targets;           ///< LoRA adapters on these of q/k/v/o ("qv", "qkvo", "all"); empty: none
    std::int64_t lora_rank = 8;
    double lora_alpha = 16.0;
    std::uint64_t lora_seed = 0;

    // Optimisation (SPEC §8 defaults).
    adamw_options adamw;                ///< lr 1e-3, betas (0.9, 0.95), eps 1e-8, weight decay 0
    double warmup_ratio = 0.1;          ///< warm-up steps = ⌈ratio · total⌉ unless warmup_steps ≥ 0
    std::int64_t warmup_steps = -1;
    double min_lr = 0.0;                ///< floor of the cosine
    double max_grad_norm = 1.0;         ///< global-norm clipping; 0: none
    std::int64_t micro_batch = 1;       ///< examples per forward/backward
    std::int64_t accumulation = 1;      ///< micro-batches per optimizer step
    loss_averaging averaging = loss_averaging::micro_batch_mean;
    std::int64_t epochs = 1;            ///< total_steps = epochs · steps per epoch unless total_steps > 0
    std::int64_t total_steps = 0;
    std::uint64_t seed = 0;             ///< data order
    bool shuffle = true;                ///< false: every epoch in data set order
    int num_threads = -1;               ///< -1: the model's

    void validate(const char* where) const {
        using mmca::detail::to_text;
        MMCA_CHECK_ARG(projector || embedding || cross_blocks || !lora_targets.empty(), where, "options",
                       "nothing trainable", "at least one of projector, embedding, cross_blocks, lora_targets");
        MMCA_CHECK_ARG(micro_batch >= 1, where, "micro_batch", to_text(micro_batch), "a count >= 1");
        MMCA_CHECK_ARG(accumulation >= 1, where, "accumulation", to_text(accumulation), "a count >= 1");
        MMCA_CHECK_ARG(epochs >= 1, where, "epochs", to_text(epochs), "a count >= 1");
        MMCA_CHECK_ARG(total_steps >= 0, where, "total_steps", to_text(total_steps), "a count >= 0 (0: from epochs)");
        MMCA_CHECK_ARG(std::isfinite(warmup_ratio) && warmup_ratio >= 0.0 && warmup_ratio <= 1.0, where,
                       "warmup_ratio", to_text(warmup_ratio), "a fraction in [0, 1]");
        MMCA_CHECK_ARG(std::isfinite(max_grad_norm) && max_grad_norm >= 0.0, where, "max_grad_norm",
                       to_text(max_grad_norm), "a finite value >= 0 (0: no clipping)");
        MMCA_CHECK_ARG(std::isfinite(min_lr) && min_lr >= 0.0, where, "min_lr", to_text(min_lr), "a finite value >= 0");
        MMCA_CHECK_ARG(num_threads >= -1, where, "num_threads", to_text(num_threads), "-1 (the model's), 0 or a count");
        adamw.validate(where);
    }
};

/// One optimizer step as logged.
struct step_record {
    std::int64_t step = 0;      ///< optimizer steps done after this one
    double loss = 0.0;          ///< the step's loss (see loss_averaging)
    double lr = 0.0;            ///< the learning rate of the update
    double grad_norm = 0.0;     ///< global gradient norm before clipping
    std::int64_t samples = 0;   ///< examples seen so far (steps · micro_batch · accumulation)
    std::int64_t tokens = 0;    ///< supervised tokens of this step
    bool skipped = false;       ///< non-finite gradient norm: no update
};

/// Held-out loss and answer accuracy. A round is a run of consecutive supervised labels (an answer
/// and its EOS); it is correct when the argmax of the logits predicts every one of its tokens from
/// the true prefix, i.e. when greedy decoding reproduces the answer exactly.
struct eval_result {
    double loss_sum = 0.0;
    std::int64_t tokens = 0;
    std::int64_t rounds = 0;
    std::int64_t correct = 0;
    std::vector<std::uint8_t> round_correct;  ///< per round, examples in order
    std::vector<std::int64_t> example_rounds; ///< rounds of each example
    double loss() const { return tokens > 0 ? loss_sum / static_cast<double>(tokens) : 0.0; }
    double accuracy() const { return rounds > 0 ? static_cast<double>(correct) / static_cast<double>(rounds) : 0.0; }
};

/// Rounds of a sequence from its logits (L, V) and spliced labels (≤ L): per run of supervised
/// labels, whether every token is the argmax of the previous row.
inline std::vector<std::uint8_t> round_correctness(const float* logits, std::int64_t V, const std::vector<std::int32_t>& labels) {
    std::vector<std::uint8_t> out;
    bool in_run = false, ok = true;
    for (std::size_t t = 1; t < labels.size(); ++t) {
        if (labels[t] == ignore_label) {
            if (in_run) out.push_back(ok ? 1 : 0);
            in_run = false;
            continue;
        }
        if (!in_run) in_run = true, ok = true;
        const float* row = logits + static_cast<std::int64_t>(t - 1) * V;
        std::int64_t best = 0;
        for (std::int64_t v = 1; v < V; ++v)
            if (row[v] > row[best]) best = v;
        ok = ok && best == labels[t];
    }
    if (in_run) out.push_back(ok ? 1 : 0);
    return out;
}

namespace detail {

/// Uniform integer in [0, n) by rejection sampling (no modulo bias, no library distribution).
inline std::uint64_t uniform_below(std::mt19937_64& g, std::uint64_t n) {
    const std::uint64_t limit = ~std::uint64_t{0} - (~std::uint64_t{0} % n);
    std::uint64_t x;
    do x = g();
    while (x >= limit);
    return x % n;
}

/// Float32 copies of the trainable tensors, owned together with the checkpoint storage they
/// replace, so a model whose weights point here keeps them alive.
struct trainable_storage {
    std::deque<std::vector<float>> buffers;
    std::shared_ptr<const void> previous;  ///< the storage of the frozen weights
};

}  // namespace detail

template <class KV = float>
class visual_chat_trainer {
public:
    /// Registers the trainable tensors of `model` (float32 copies that the model then uses) for a
    /// data set of `dataset_size` examples. The model must come from load_visual_chat_model (an
    /// encoder + projector tower) and outlive the trainer.
    visual_chat_trainer(visual_chat_model<KV>& model, std::int64_t dataset_size, trainer_options options = {})
        : model_(&model), options_(std::move(options)), storage_(std::make_shared<detail::trainable_storage>()) {
        using mmca::detail::to_text;
        const char* where = "mmca::train::visual_chat_trainer";
        options_.validate(where);
        tower_ = dynamic_cast<encoder_projector_tower*>(&model.tower());
        MMCA_CHECK_ARG(tower_ != nullptr, where, "model", "a model whose vision tower is not an encoder + projector",
                       "a model made by load_visual_chat_model");
        const std::int64_t per_step = options_.micro_batch * options_.accumulation;
        MMCA_CHECK_ARG(dataset_size >= per_step, where, "dataset_size", to_text(dataset_size),
                       "at least micro_batch · accumulation = " + to_text(per_step) + " examples");
        dataset_size_ = dataset_size;
        steps_per_epoch_ = dataset_size / per_step;
        total_steps_ = options_.total_steps > 0 ? options_.total_steps : options_.epochs * steps_per_epoch_;
        const std::int64_t warmup =
            options_.warmup_steps >= 0 ? options_.warmup_steps : warmup_steps_from_ratio(options_.warmup_ratio, total_steps_);
        schedule_ = cosine_schedule{options_.adamw.lr, warmup, total_steps_, options_.min_lr};

        const llama_config& c = model.language().config();
        MMCA_CHECK_ARG(!options_.cross_blocks || c.num_cross_blocks() > 0, where, "cross_blocks", "true",
                       "false for a decoder without gated cross-attention blocks (cross_attention_every = 0)");
        // Every projector kind trains; a vit layer with fused q/k/v has no checkpoint names to save under.
        MMCA_CHECK_ARG(!options_.projector || tower_->projector().kind() != vision::projector_kind::vit ||
                           tower_->projector().weights().layer.layout == vision::qkv_layout::separate,
                       where, "model", "a vit projector whose encoder layer has fused q/k/v weights",
                       "a vit projector with separate q/k/v weights (as load_visual_chat_model makes it) when the "
                       "projector trains");
        if (!options_.lora_targets.empty()) {
            lora_config lc;
            lc.rank = options_.lora_rank;
            lc.alpha = options_.lora_alpha;
            lc.targets = parse_lora_targets(options_.lora_targets, where);
            lc.validate(where);
            lora_ = make_llama_lora(c, lc, options_.lora_seed);
            has_lora_ = true;
        }
        grads_ = make_visual_chat_grads(model, options_.embedding, options_.projector, options_.cross_blocks,
                                        has_lora_ ? &lora_ : nullptr);
        register_parameters();
        optimizer_ = std::make_unique<adamw>(params_, options_.adamw, options_.num_threads < 0 ? 0 : options_.num_threads);
        epoch_rng_.seed(options_.seed);
        start_epoch(epoch_rng_);
    }

    visual_chat_trainer(const visual_chat_trainer&) = delete;
    visual_chat_trainer& operator=(const visual_chat_trainer&) = delete;

    const trainer_options& options() const { return options_; }
    parameter_registry& parameters() { return params_; }
    const parameter_registry& parameters() const { return params_; }
    adamw& optimizer() { return *optimizer_; }
    const adamw& optimizer() const { return *optimizer_; }
    const cosine_schedule& schedule() const { return schedule_; }
    const llama_lora* lora() const { return has_lora_ ? &lora_ : nullptr; }

    std::int64_t step_count() const { return optimizer_->step_count(); }
    std::int64_t total_steps() const { return total_steps_; }
    std::int64_t steps_per_epoch() const { return steps_per_epoch_; }
    std::int64_t samples_per_step() const { return options_.micro_batch * options_.accumulation; }
    std::int64_t samples_seen() const { return step_count() * samples_per_step(); }
    std::int64_t epoch() const { return epoch_; }
    std::int64_t data_position() const { return position_; }
    bool done() const { return step_count() >= total_steps_; }
    /// The example order of the current epoch.
    const std::vector<std::int64_t>& epoch_order() const { return order_; }
    /// Every step taken by this object (not those before a load).
    const std::vector<step_record>& history() const { return history_; }

    /// Optional progress output (train/progress.hpp), one record per step.
    void set_progress(const progress_options& o) { progress_ = std::make_unique<progress_logger>(o); }

    /// One optimizer step: micro_batch · accumulation examples of `data` in the epoch's order,
    /// forward and backward per micro-batch, clipping, AdamW at the schedule's rate.
    step_record step(const example_source& data) {
        using mmca::detail::to_text;
        const char* where = "mmca::train::visual_chat_trainer::step";
        MMCA_CHECK_ARG(data.size() == dataset_size_, where, "data", "a data set of " + to_text(data.size()) + " examples",
                       to_text(dataset_size_) + " (the size the trainer was made for)");
        const std::int64_t per_step = samples_per_step();
        if (position_ + per_step > dataset_size_) {
            epoch_rng_ = rng_;
            ++epoch_;
            start_epoch(epoch_rng_);
        }
        // The step's examples, built before any work (token_mean needs the step's label count).
        std::vector<training_example> examples;
        examples.reserve(static_cast<std::size_t>(per_step));
        for (std::int64_t i = 0; i < per_step; ++i) examples.push_back(data.example(order_[static_cast<std::size_t>(position_ + i)]));
        std::vector<std::vector<visual_sample>> micro(static_cast<std::size_t>(options_.accumulation));
        std::vector<std::int64_t> micro_tokens(micro.size(), 0);
        std::int64_t step_tokens = 0;
        for (std::int64_t a = 0; a < options_.accumulation; ++a) {
            auto& batch = micro[static_cast<std::size_t>(a)];
            for (std::int64_t j = 0; j < options_.micro_batch; ++j) {
                const training_example& e = examples[static_cast<std::size_t>(a * options_.micro_batch + j)];
                batch.push_back(sample_of(e, where));
            }
            micro_tokens[static_cast<std::size_t>(a)] = supervised_tokens(batch);
            step_tokens += micro_tokens[static_cast<std::size_t>(a)];
        }

        params_.zero_grad(threads0());
        grad_accumulation acc(options_.accumulation, options_.averaging);
        double loss = 0.0;
        for (std::size_t a = 0; a < micro.size(); ++a) {
            const std::int64_t n = micro_tokens[a];
            const double scale = acc.loss_scale(n, step_tokens);
            if (n == 0 || scale == 0.0) continue;
            const loss_result r = visual_chat_loss_and_gradients(*model_, micro[a], grads_, 1.0 / scale,
                                                                 options_.num_threads, has_lora_ ? &lora_ : nullptr);
            loss += r.sum * scale;
        }
        step_record rec;
        rec.tokens = step_tokens;
        rec.loss = loss;
        rec.grad_norm = options_.max_grad_norm > 0.0 ? params_.clip_grad_norm(options_.max_grad_norm, threads0())
                                                     : params_.grad_norm(threads0());
        rec.lr = schedule_.lr(optimizer_->step_count());
        if (std::isfinite(rec.grad_norm)) {
            optimizer_->step(rec.lr);
        } else {
            rec.skipped = true;  // no update, but the step and its data are used up
            optimizer_->set_step_count(optimizer_->step_count() + 1);
        }
        position_ += per_step;
        sync_to_model();
        rec.step = optimizer_->step_count();
        rec.samples = samples_seen();
        history_.push_back(rec);
        if (progress_) progress_->record(rec.step, rec.loss, rec.lr, per_step);
        return rec;
    }

    /// Steps until total_steps() (or `max_steps` more steps when > 0); returns the records.
    std::vector<step_record> run(const example_source& data, std::int64_t max_steps = 0) {
        std::vector<step_record> out;
        while (!done() && (max_steps <= 0 || static_cast<std::int64_t>(out.size()) < max_steps)) out.push_back(step(data));
        return out;
    }

    /// Held-out loss and answer accuracy of the first `limit` examples of `data` (0: all), in
    /// batches of the model's batch size. Runs the model's own forward (with merged adapters when
    /// LoRA trains).
    eval_result evaluate(const example_source& data, std::int64_t limit = 0) {
        const char* where = "mmca::train::visual_chat_trainer::evaluate";
        const std::int64_t n = limit > 0 ? std::min(limit, data.size()) : data.size();
        const std::int64_t B = model_->language().batch(), V = model_->language().config().vocab_size;
        // With adapters, the decoder layers are swapped for merged ones during the evaluation (only
        // the layers: the trainer's copies of the other tensors stay where they are).
        std::optional<std::vector<llama_layer_weights>> saved;
        std::optional<llama_weights> merged;
        if (has_lora_) {
            llama_weights& w = model_->language().mutable_weights();
            saved = w.layers;
            merged = merge_lora(model_->language().config(), w, lora_);
            w.layers = merged->layers;
        }
        eval_result out;
        try {
            std::vector<float> logits;
            for (std::int64_t i = 0; i < n; i += B) {
                std::vector<training_example> ex;
                std::vector<visual_sample> batch;
                for (std::int64_t j = i; j < std::min(n, i + B); ++j) ex.push_back(data.example(j));
                for (const auto& e : ex) batch.push_back(sample_of(e, where));
                std::int64_t L = 0;
                loss_result lr;
                const auto seqs = model_->forward(batch, logits, L, &lr);
                out.loss_sum += lr.sum;
                out.tokens += lr.count;
                const std::int64_t Lp = std::max<std::int64_t>(L, 1);
                for (std::size_t b = 0; b < seqs.size(); ++b) {
                    const auto rc = round_correctness(logits.data() + static_cast<std::int64_t>(b) * Lp * V, V, seqs[b].labels);
                    out.example_rounds.push_back(static_cast<std::int64_t>(rc.size()));
                    for (std::uint8_t r : rc) out.round_correct.push_back(r), out.rounds += 1, out.correct += r;
                }
            }
        } catch (...) {
            if (saved) model_->language().mutable_weights().layers = *saved;
            throw;
        }
        if (saved) model_->language().mutable_weights().layers = *saved;
        model_->reset();
        return out;
    }

    /// The configuration a train state must match to be loaded (stored as its config.* metadata).
    std::map<std::string, std::string> config_strings() const {
        using train::detail::exact_text;
        std::map<std::string, std::string> c;
        c["variant"] = to_string(model_->language().options().attention.variant);
        c["projector"] = options_.projector ? "1" : "0";
        c["embedding"] = options_.embedding ? "1" : "0";
        c["cross_blocks"] = options_.cross_blocks ? "1" : "0";
        c["lora"] = has_lora_ ? options_.lora_targets + "/" + std::to_string(options_.lora_rank) + "/" +
                                    exact_text(options_.lora_alpha)
                              : "";
        c["micro_batch"] = std::to_string(options_.micro_batch);
        c["accumulation"] = std::to_string(options_.accumulation);
        c["averaging"] = to_string(options_.averaging);
        c["dataset_size"] = std::to_string(dataset_size_);
        c["total_steps"] = std::to_string(total_steps_);
        c["warmup_steps"] = std::to_string(schedule_.warmup_steps);
        c["lr"] = exact_text(options_.adamw.lr);
        c["min_lr"] = exact_text(options_.min_lr);
        c["max_grad_norm"] = exact_text(options_.max_grad_norm);
        c["seed"] = std::to_string(options_.seed);
        c["shuffle"] = options_.shuffle ? "1" : "0";
        return c;
    }

    /// Writes the run's state (atomically: temporary file, then rename). Call between steps.
    void save(const std::string& path, const std::map<std::string, std::string>& extra_config = {}) const {
        train_state st;
        st.epoch = epoch_;
        st.data_position = position_;
        st.rng = epoch_rng_;
        st.config = config_strings();
        for (const auto& kv : extra_config) {
            MMCA_CHECK_ARG(st.config.find(kv.first) == st.config.end(), "mmca::train::visual_chat_trainer::save",
                           "extra_config", "the key '" + kv.first + "'", "a key other than the trainer's own");
            st.config[kv.first] = kv.second;
        }
        save_train_state(path, params_, *optimizer_, st);
    }

    /// Reads a state written by save() of a trainer of the same configuration; everything is checked
    /// before anything changes. Returns the file's config (extra keys included).
    std::map<std::string, std::string> load(const std::string& path) {
        const char* where = "mmca::train::visual_chat_trainer::load";
        // Check the configuration before the tensors (load_train_state checks those).
        {
            const io::safetensors_file f(path);
            const auto& meta = f.metadata();
            for (const auto& kv : config_strings()) {
                auto it = meta.find("config." + kv.first);
                const std::string seen = it == meta.end() ? std::string("(missing)") : "'" + it->second + "'";
                MMCA_CHECK_ARG(it != meta.end() && it->second == kv.second, where, "path",
                               "'" + path + "' with config." + kv.first + " = " + seen,
                               "'" + kv.second + "' (this trainer's)");
            }
        }
        train_state st;
        load_train_state(path, params_, *optimizer_, st);
        MMCA_CHECK_ARG(st.data_position <= dataset_size_, where, "path",
                       "'" + path + "' with data position " + mmca::detail::to_text(st.data_position),
                       "at most the data set size " + mmca::detail::to_text(dataset_size_));
        epoch_ = st.epoch;
        epoch_rng_ = st.rng;
        start_epoch(epoch_rng_);
        position_ = st.data_position;
        history_.clear();
        sync_to_model();
        return st.config;
    }

    /// Makes the model use the current parameter values: copies the vector and scalar parameters into
    /// the model's weights (matrices are used in place) and forgets its cached image rows. step() and
    /// load() do this; call it after changing values through parameters().
    void sync_to_model() {
        for (const auto& v : vectors_) std::copy(v.first, v.first + v.second->size(), v.second->begin());
        for (const auto& s : scalars_) *s.second = *s.first;
        model_->clear_image_cache();
    }

    /// Writes the trained tensors (float32, checkpoint names) as a safetensors file (atomically).
    void save_weights(const std::string& path, const std::map<std::string, std::string>& metadata = {}) const {
        io::safetensors_writer w;
        for (const parameter& p : params_) w.add(p.name, p.shape, static_cast<const float*>(p.value));
        for (const auto& kv : metadata) w.set_metadata(kv.first, kv.second);
        w.write(path);
    }

private:
    int threads0() const { return options_.num_threads < 0 ? 0 : options_.num_threads; }

    visual_sample sample_of(const training_example& e, const char* where) const {
        using mmca::detail::to_text;
        const std::int64_t S = tower_->image_size();
        MMCA_CHECK_ARG(e.images >= 0 && static_cast<std::int64_t>(e.pixels.size()) == e.images * 3 * S * S, where,
                       "data", "an example with " + to_text(e.images) + " images and " + to_text(e.pixels.size()) + " pixel values",
                       "images · 3 · " + to_text(S) + " · " + to_text(S) + " values (preprocessed to the model's image size)");
        visual_sample s;
        s.ids = e.ids;
        s.labels = e.labels;
        if (e.images > 0) s.images = tensor_ref<const float, 4>(e.pixels.data(), {e.images, 3, S, S});
        return s;
    }

    void start_epoch(std::mt19937_64 state_before_shuffle) {
        rng_ = state_before_shuffle;
        order_.resize(static_cast<std::size_t>(dataset_size_));
        for (std::int64_t i = 0; i < dataset_size_; ++i) order_[static_cast<std::size_t>(i)] = i;
        if (options_.shuffle)
            for (std::int64_t i = dataset_size_ - 1; i > 0; --i)
                std::swap(order_[static_cast<std::size_t>(i)],
                          order_[detail::uniform_below(rng_, static_cast<std::uint64_t>(i) + 1)]);
        position_ = 0;
    }

    /// A float32 copy of a stored matrix; the model's reference is pointed at it.
    float* own_matrix(nn::matrix_ref& m) {
        std::vector<float>& v = storage_->buffers.emplace_back(static_cast<std::size_t>(m.rows * m.cols));
        nn::dispatch_dtype(m.type, [&](auto t) {
            using T = decltype(t);
            to_float(m.as<T>(), v.data(), m.rows * m.cols);
        });
        m = nn::make_matrix(static_cast<const float*>(v.data()), m.rows, m.cols);
        return v.data();
    }
    /// A float32 copy of a model-owned vector (synced back after every update).
    float* own_vector(std::vector<float>& target) {
        std::vector<float>& v = storage_->buffers.emplace_back(target);
        vectors_.push_back({v.data(), &target});
        return v.data();
    }
    float* own_scalar(float& target) {
        std::vector<float>& v = storage_->buffers.emplace_back(1, target);
        scalars_.push_back({v.data(), &target});
        return v.data();
    }

    void register_parameters() {
        llama_weights& w = model_->language().mutable_weights();
        if (options_.embedding) {
            float* v = own_matrix(w.embed);
            params_.add_view("lang_embed.weight", {w.embed.rows, w.embed.cols}, v, grads_.embed.data());
        }
        if (options_.projector) register_projector();
        if (options_.cross_blocks) {
            const std::string prefix = io::visual_chat_names().cross_prefix;
            for (std::size_t b = 0; b < w.cross_blocks.size(); ++b) {
                auto& cb = w.cross_blocks[b];
                auto& g = grads_.decoder.cross_blocks[b];
                const std::string p = prefix + std::to_string(b) + ".";
                auto mat = [&](const char* name, nn::matrix_ref& m, std::vector<float>& gm) {
                    const std::int64_t rows = m.rows, cols = m.cols;
                    params_.add_view(p + name, {rows, cols}, own_matrix(m), gm.data());
                };
                const std::int64_t n1 = static_cast<std::int64_t>(cb.attn_norm.size());
                params_.add_view(p + "attn_norm.weight", {n1}, own_vector(cb.attn_norm), g.attn_norm.data()).weight_decay = false;
                mat("q_proj.weight", cb.q, g.q);
                mat("k_proj.weight", cb.k, g.k);
                mat("v_proj.weight", cb.v, g.v);
                mat("o_proj.weight", cb.o, g.o);
                params_.add_view(p + "attn_gate", {1}, own_scalar(cb.attn_gate), &g.attn_gate).weight_decay = false;
                const std::int64_t n2 = static_cast<std::int64_t>(cb.mlp_norm.size());
                params_.add_view(p + "mlp_norm.weight", {n2}, own_vector(cb.mlp_norm), g.mlp_norm.data()).weight_decay = false;
                mat("mlp.gate_proj.weight", cb.mlp.gate, g.gate);
                mat("mlp.up_proj.weight", cb.mlp.up, g.up);
                mat("mlp.down_proj.weight", cb.mlp.down, g.down);
                params_.add_view(p + "mlp_gate", {1}, own_scalar(cb.mlp_gate), &g.mlp_gate).weight_decay = false;
            }
        }
        if (has_lora_) {
            const std::string prefix = io::visual_chat_names().layer_prefix;
            static constexpr const char* proj[4] = {"q_proj", "k_proj", "v_proj", "o_proj"};
            for (std::size_t l = 0; l < lora_.layers.size(); ++l)
                for (std::size_t q = 0; q < 4; ++q) {
                    if (!lora_.has(q)) continue;
                    nn::lora_adapter& ad = lora_.layers[l][q];
                    nn::lora_adapter& gd = grads_.decoder.lora.layers[l][q];
                    const std::string p = prefix + std::to_string(l) + ".self_attn." + proj[q] + ".";
                    params_.add_view(p + "lora_A.weight", {ad.rank, ad.in}, ad.a.data(), gd.a.data());
                    params_.add_view(p + "lora_B.weight", {ad.out, ad.rank}, ad.b.data(), gd.b.data());
                }
        }
        w.storage = alias_storage(w.storage);
    }

    /// The projector's tensors under the names load_projector reads them from (io/projector_loader.hpp),
    /// in the order of vision::named_projector_gradients. Matrices and the perceiver's queries are
    /// weight-decayed, norms and biases are not; absent biases and the fixed positional tables of the
    /// perceiver are not parameters.
    void register_projector() {
        const std::string prefix = "projection.";  // the reference names (load_visual_chat_model's default)
        vision::projector_weights& pw = tower_->mutable_projector().mutable_weights();
        vision::projector_grads& g = grads_.projector;
        auto mat = [&](const std::string& name, nn::matrix_ref& m, std::vector<float>& gm) {
            const std::int64_t rows = m.rows, cols = m.cols;
            params_.add_view(prefix + name, {rows, cols}, own_matrix(m), gm.data());
        };
        auto vec = [&](const std::string& name, std::vector<float>& v, std::vector<float>& gv) {
            if (v.empty()) return;
            const std::int64_t n = static_cast<std::int64_t>(v.size());
            params_.add_view(prefix + name, {n}, own_vector(v), gv.data()).weight_decay = false;
        };
        // Linear (Dv -> H) then LayerNorm: the baseline projector, and the vit projector's tail.
        auto linear_then_norm = [&](const std::string& at) {
            mat(at + "0.weight", pw.linear, g.linear);
            vec(at + "0.bias", pw.linear_bias, g.linear_bias);
            vec(at + "1.weight", pw.norm_w, g.norm_w);
            vec(at + "1.bias", pw.norm_b, g.norm_b);
        };
        switch (tower_->projector().kind()) {
            case vision::projector_kind::baseline:
                linear_then_norm("");
                break;
            case vision::projector_kind::vit: {
                vision::encoder_layer_weights& L = pw.layer;
                vision::encoder_layer_grads& G = g.layer;
                const std::string l = "vis_layer.";
                vec(l + "layer_norm1.weight", L.ln1_w, G.ln1_w);
                vec(l + "layer_norm1.bias", L.ln1_b, G.ln1_b);
                mat(l + "self_attn.q_proj.weight", L.q, G.q);
                vec(l + "self_attn.q_proj.bias", L.q_bias, G.q_bias);
                mat(l + "self_attn.k_proj.weight", L.k, G.k);
                vec(l + "self_attn.k_proj.bias", L.k_bias, G.k_bias);
                mat(l + "self_attn.v_proj.weight", L.v, G.v);
                vec(l + "self_attn.v_proj.bias", L.v_bias, G.v_bias);
                mat(l + "self_attn.out_proj.weight", L.out, G.out);
                vec(l + "self_attn.out_proj.bias", L.out_bias, G.out_bias);
                vec(l + "layer_norm2.weight", L.ln2_w, G.ln2_w);
                vec(l + "layer_norm2.bias", L.ln2_b, G.ln2_b);
                mat(l + "mlp.fc1.weight", L.fc1, G.fc1);
                vec(l + "mlp.fc1.bias", L.fc1_bias, G.fc1_bias);
                mat(l + "mlp.fc2.weight", L.fc2, G.fc2);
                vec(l + "mlp.fc2.bias", L.fc2_bias, G.fc2_bias);
                linear_then_norm("projection.");
                break;
            }
            case vision::projector_kind::perceiver: {
                vision::attention_pool_weights& P = pw.pool;
                vision::attention_pool_grads& G = g.pool;
                const std::int64_t Q = tower_->projector().config().queries, E = tower_->projector().config().hidden;
                params_.add_view(prefix + "query", {Q, E}, own_vector(P.query), G.query.data());
                mat("kv_proj.weight", P.kv_proj, G.kv_proj);
                vec("kv_proj.bias", P.kv_proj_bias, G.kv_proj_bias);
                vec("ln_q.weight", P.ln_q_w, G.ln_q_w);
                vec("ln_q.bias", P.ln_q_b, G.ln_q_b);
                vec("ln_kv.weight", P.ln_kv_w, G.ln_kv_w);
                vec("ln_kv.bias", P.ln_kv_b, G.ln_kv_b);
                mat("attn.in_proj_weight", P.in_proj, G.in_proj);
                vec("attn.in_proj_bias", P.in_proj_bias, G.in_proj_bias);
                mat("attn.out_proj.weight", P.out_proj, G.out_proj);
                vec("attn.out_proj.bias", P.out_proj_bias, G.out_proj_bias);
                vec("projection.0.weight", pw.norm_w, g.norm_w);
                vec("projection.0.bias", pw.norm_b, g.norm_b);
                mat("projection.1.weight", pw.linear, g.linear);
                vec("projection.1.bias", pw.linear_bias, g.linear_bias);
                break;
            }
        }
        pw.storage = alias_storage(pw.storage);
    }

    /// The model's storage pointer, replaced by one that also keeps the trainable copies alive.
    std::shared_ptr<const void> alias_storage(std::shared_ptr<const void> previous) {
        auto holder = std::make_shared<std::pair<std::shared_ptr<detail::trainable_storage>, std::shared_ptr<const void>>>(
            storage_, std::move(previous));
        return std::shared_ptr<const void>(holder, holder.get());
    }

    visual_chat_model<KV>* model_;
    encoder_projector_tower* tower_ = nullptr;
    trainer_options options_;
    std::shared_ptr<detail::trainable_storage> storage_;
    std::vector<std::pair<float*, std::vector<float>*>> vectors_;
    std::vector<std::pair<float*, float*>> scalars_;
    llama_lora lora_;
    bool has_lora_ = false;
    visual_chat_grads grads_;
    parameter_registry params_;
    std::unique_ptr<adamw> optimizer_;
    cosine_schedule schedule_{};
    std::int64_t dataset_size_ = 0, steps_per_epoch_ = 0, total_steps_ = 0;
    std::int64_t epoch_ = 0, position_ = 0;
    std::mt19937_64 epoch_rng_, rng_;
    std::vector<std::int64_t> order_;
    std::vector<step_record> history_;
    std::unique_ptr<progress_logger> progress_;
};

}  // namespace mmca::train
