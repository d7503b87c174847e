// mmca/train/progress.hpp - the training log: a progress bar on a terminal, plain lines otherwise.
//
//   mmca::train::progress_options opt;
//   opt.total_steps = 1000;
//   mmca::train::progress_logger log(opt);
//   ... after each optimizer step:  log.record(step, loss, lr, samples_in_step);
//   log.finish();
//
// On a terminal (isatty of the stream) each record redraws one line:
//   [=========>          ]  450/1000 | 12.3 samples/s | loss 1.2345 | lr 6.00e-04 | 36.6 s
// Otherwise (a file, a pipe, CI) a plain line is written every log_every steps and at the last step:
//   step 450/1000 | 12.3 samples/s | loss 1.2345 (mean of 10: 1.2512) | lr 6.000e-04 | 36.6 s
// samples/s is measured over the steps since the previous line (the whole run for the bar).
// Every record is also kept in history() (step, loss, lr, seconds since the start).
#pragma once

#include "mmca/core/error.hpp"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

namespace mmca::train {

struct progress_options {
    std::int64_t total_steps = 0;  // 0: unknown (no bar, "step N")
    std::int64_t log_every = 10;   // plain mode: a line every log_every steps
    std::FILE* stream = stderr;    // where the log goes (nullptr: nowhere, history only)
    enum class mode { automatic, bar, plain } display = mode::automatic;  // automatic: bar on a terminal
    int bar_width = 30;
};

struct progress_record {
    std::int64_t step;     // optimizer steps done
    double loss;           // the step's loss
    double lr;             // the learning rate of the step
    std::int64_t samples;  // samples consumed by the step
    double seconds;        // since the logger was made
};

class progress_logger {
public:
    explicit progress_logger(const progress_options& options = {})
        : options_(options), start_(clock::now()), last_line_time_(0.0) {
        const char* where = "mmca::train::progress_logger";
        MMCA_CHECK_ARG(options.total_steps >= 0, where, "total_steps", std::to_string(options.total_steps), "a count >= 0");
        MMCA_CHECK_ARG(options.log_every >= 1, where, "log_every", std::to_string(options.log_every), "a count >= 1");
        MMCA_CHECK_ARG(options.bar_width >= 1, where, "bar_width", std::to_string(options.bar_width), "a width >= 1");
        if (options.display == progress_options::mode::automatic)
            bar_ = options.stream != nullptr && ::isatty(::fileno(options.stream)) == 1;
        else
            bar_ = options.display == progress_options::mode::bar;
    }

    /// Records optimizer step `step` (steps done, from 1) with its loss, learning rate and samples.
    void record(std::int64_t step, double loss, double lr, std::int64_t samples) {
        const double now = std::chrono::duration<double>(clock::now() - start_).count();
        history_.push_back(progress_record{step, loss, lr, samples, now});
        samples_total_ += samples;
        window_samples_ += samples;
        window_loss_ += loss;
        ++window_steps_;
        if (!options_.stream) return;
        if (bar_) {
            draw_bar(step, loss, lr, now);
            return;
        }
        const bool last = options_.total_steps > 0 && step >= options_.total_steps;
        if (step % options_.log_every == 0 || last) {
            const double dt = now - last_line_time_;
            const double rate = dt > 0.0 ? static_cast<double>(window_samples_) / dt : 0.0;
            std::fprintf(options_.stream, "step %s | %.1f samples/s | loss %.4f (mean of %lld: %.4f) | lr %.3e | %.1f s\n",
                         step_text(step).c_str(), rate, loss, static_cast<long long>(window_steps_),
                         window_loss_ / static_cast<double>(window_steps_), lr, now);
            std::fflush(options_.stream);
            last_line_time_ = now;
            window_samples_ = 0;
            window_loss_ = 0.0;
            window_steps_ = 0;
        }
    }

    /// Ends the bar's line (nothing in plain mode).
    void finish() {
        if (bar_ && options_.stream && drawn_) {
            std::fputc('\n', options_.stream);
            std::fflush(options_.stream);
            drawn_ = false;
        }
    }

    bool uses_bar() const { return bar_; }
    const std::vector<progress_record>& history() const { return history_; }
    /// Samples per second since the logger was made.
    double samples_per_second() const {
        const double s = std::chrono::duration<double>(clock::now() - start_).count();
        return s > 0.0 ? static_cast<double>(samples_total_) / s : 0.0;
    }

private:
    using clock = std::chrono::steady_clock;

    std::string step_text(std::int64_t step) const {
        return options_.total_steps > 0 ? std::to_string(step) + "/" + std::to_string(options_.total_steps)
                                        : std::to_string(step);
    }

    void draw_bar(std::int64_t step, double loss, double lr, double now) {
        std::string bar;
        if (options_.total_steps > 0) {
            const double frac = std::min(1.0, static_cast<double>(step) / static_cast<double>(options_.total_steps));
            const int full = static_cast<int>(frac * options_.bar_width);
            bar = "[" + std::string(static_cast<std::size_t>(full), '=') +
                  (full < options_.bar_width ? ">" : "") +
                  std::string(static_cast<std::size_t>(std::max(0, options_.bar_width - full - 1)), ' ') + "] ";
        }
        const double rate = now > 0.0 ? static_cast<double>(samples_total_) / now : 0.0;
        std::fprintf(options_.stream, "\r%s%s | %.1f samples/s | loss %.4f | lr %.2e | %.1f s\x1b[K", bar.c_str(),
                     step_text(step).c_str(), rate, loss, lr, now);
        std::fflush(options_.stream);
        drawn_ = true;
    }

    progress_options options_;
    clock::time_point start_;
    bool bar_ = false;
    bool drawn_ = false;
    std::vector<progress_record> history_;
    std::int64_t samples_total_ = 0;
    double last_line_time_;
    std::int64_t window_samples_ = 0;
    double window_loss_ = 0.0;
    std::int64_t window_steps_ = 0;
};

}  // namespace mmca::train
