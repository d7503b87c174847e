#!/usr/bin/python3
"""Runs the attention benchmarks and writes the measured tables of docs/benchmarks.md.

Stages (each is a few minutes on a 2-core machine; run them one at a time if you like, the results
of each stage are kept in --results and merged, so the doc can be regenerated from any mix):
  peak       fma_peak: the fp32 FMA ceiling of one and two cores
  prefill    fused kernel, every variant and layout, S 512..4096, 1 and 2 threads
  reference  the double-precision oracle next to the fused kernel, S 512 and 1024 only
  decode     Lq = 1 over a 4096-token kv_cache (f32, f16, bf16) and kv_read, the time to read its K and V
  backward   fused attention_backward (dq, dk, dv from the forward's stats), every variant and layout, S <= 2048
  torch      benchmarks/torch_attention.py on the same S and threads (torch 1.13 SDPA and two-softmax MMCA)

  /usr/bin/python3 benchmarks/make_tables.py --stages all --write docs/benchmarks.md
  /usr/bin/python3 benchmarks/make_tables.py --stages decode --write docs/benchmarks.md   # redo one stage
  /usr/bin/python3 benchmarks/make_tables.py --print                                      # tables from --results

The tables go between the markers '<!-- tables:begin -->' and '<!-- tables:end -->' of the --write file.
"""
import argparse
import datetime
import json
import os
import platform
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_attention as ta  # noqa: E402  (same folder)

REPO = ta.REPO
VARIANTS = ("causal", "mmca", "mmca_reference", "causal_cross")
LAYOUTS = ("text", "chat", "image")
LAYOUT_TEXT = {"text": "text only", "chat": "chat (256 img + 192 txt)", "image": "image-heavy (256 img + 64 txt)"}
DTYPES = ("f32", "f16", "bf16")
STAGES = ("peak", "prefill", "reference", "decode", "backward", "torch")
BEGIN, END = "<!-- tables:begin -->", "<!-- tables:end -->"

# Targets of the performance issue (1 thread, S = 2048, B1 H32 D128).
TARGET_MMCA_VS_TWO_SOFTMAX = 10.0
TARGET_CAUSAL_VS_SDPA = 3.0
TARGET_CAUSAL_SECONDS = 0.31
TARGET_PEAK_FRACTION = 0.40
DOC_PEAK_GFLOPS = 258.0  # one Zen 5 core, AVX-512 (docs of the project's reference machine)
TARGET_DECODE_RATIO = 1.3


def alt(xs):
    return "(" + "|".join(str(x) for x in xs) + ")"


def stage_filter(stage, seq_lens, threads):
    t = alt(threads)
    if stage == "peak":
        return "^fma_peak/threads:%s/" % t
    if stage == "prefill":
        return "^prefill/%s/fused/%s/S:%s/threads:%s/" % (alt(VARIANTS), alt(LAYOUTS), alt(seq_lens), t)
    if stage == "reference":
        small = [s for s in seq_lens if s <= 1024]
        return "^prefill/%s/(fused|reference)/%s/S:%s/threads:%s/" % (alt(VARIANTS), alt(LAYOUTS), alt(small), t)
    if stage == "decode":
        return "^(decode/[^/]+|kv_read)/%s/.*threads:%s/" % (alt(DTYPES), t)
    if stage == "backward":
        return "^backward/%s/%s/S:%s/threads:%s/" % (alt(VARIANTS), alt(LAYOUTS),
                                                    alt([s for s in seq_lens if s <= 2048]), t)
    raise ValueError(stage)


def machine_info():
    model, flags = "unknown", set()
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name") and model == "unknown":
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    simd = "AVX-512" if "avx512f" in flags else ("AVX2 + FMA" if "fma" in flags else "SSE")
    try:
        commit = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True).stdout.strip() or "unknown"
        changed = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no", "--", "include"],
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True).stdout.strip()
        if changed:
            commit += " with uncommitted changes under include/"
    except OSError:
        commit = "unknown"
    return {"cpu": model, "simd": simd, "cores": os.cpu_count(), "kernel": platform.release(), "commit": commit}


def build_bench(bench):
    """Rebuilds bench_attention when it sits in a CMake build tree, so that the timings are of the
    headers as they are now."""
    build_dir = os.path.dirname(os.path.dirname(os.path.abspath(bench)))
    if not os.path.isfile(os.path.join(build_dir, "CMakeCache.txt")):
        print("make_tables.py: %s is not in a CMake build tree; timing it as it is" % bench, file=sys.stderr)
        return
    subprocess.run(["cmake", "--build", build_dir, "--target", "bench_attention", "-j2"], check=True,
                   stdout=sys.stderr)


def run_stage(stage, args, bench):
    load_before = os.getloadavg()[0]
    started = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    print("== stage %s (load %.2f)" % (stage, load_before), file=sys.stderr)
    if stage == "torch":
        tmp = args.results + ".torch.json"
        cmd = [sys.executable, os.path.join(REPO, "benchmarks", "torch_attention.py"), "--bench", bench,
               "--seq-lens", ",".join(map(str, args.seq_lens)), "--threads", ",".join(map(str, args.threads)),
               "--json", tmp, "--repeats", str(args.torch_repeats), "--min-time", str(args.torch_min_time),
               "--bench-repetitions", str(args.repetitions)]
        subprocess.run(cmd, check=True, stdout=sys.stderr)
        with open(tmp) as f:
            data = json.load(f)
        os.remove(tmp)
    else:
        reps = args.repetitions if stage in ("peak", "prefill", "decode") else 1
        entries, context = ta.run_bench(bench, stage_filter(stage, args.seq_lens, args.threads), reps)
        data = {"entries": entries, "context": {k: context.get(k) for k in ("date", "host_name", "num_cpus",
                                                                           "mhz_per_cpu", "library_build_type")}}
    data["commit"] = machine_info()["commit"]
    data["load_before"] = load_before
    data["load_after"] = os.getloadavg()[0]
    data["started"] = started
    return data


# ---------------------------------------------------------------------------------------------
# Tables

def ms(seconds):
    return "%.1f" % (seconds * 1e3) if seconds >= 0.1e-3 else "%.3f" % (seconds * 1e3)


def us(seconds):
    return "%.0f" % (seconds * 1e6)


def index(entries, *keys):
    return {tuple(e.get(k) for k in keys): e for e in entries}


def load_note(stage):
    note = "load average %.2f before, %.2f after; started %s" % (stage["load_before"], stage["load_after"],
                                                                stage["started"])
    if stage.get("commit"):
        note += "; mmca commit %s" % stage["commit"]
    return note


def peak_gflops(results, threads):
    if "peak" not in results:
        return None
    for e in results["peak"]["entries"]:
        if e["threads"] == threads:
            return e["GFLOPS"]
    return None


def grid_tables(entries, out, title, cell):
    """One table per thread count: a row per (variant, layout), a column per S; title(threads) is the
    caption, cell(entry, threads) the text of a measured cell."""
    by = index(entries, "variant", "layout", "S", "threads")
    seq_lens = sorted({e["S"] for e in entries})
    for threads in sorted({e["threads"] for e in entries}):
        out.append("\n" + title(threads) + "\n")
        out.append("| variant | layout | " + " | ".join("S=%d" % s for s in seq_lens) + " |")
        out.append("|---|---|" + "---|" * len(seq_lens))
        for v in VARIANTS:
            for l in LAYOUTS:
                cells = []
                for s in seq_lens:
                    e = by.get((v, l, s, threads))
                    cells.append("-" if e is None else cell(e, threads))
                out.append("| %s | %s | %s |" % (v, LAYOUT_TEXT[l], " | ".join(cells)))


def plural(threads):
    return "%d thread%s" % (threads, "" if threads == 1 else "s")


def prefill_tables(results, out):
    st = results["prefill"]
    grid_tables(st["entries"], out,
                lambda t: "**Fused kernel, %s** — time in ms / useful GFLOP/s (%s)" % (plural(t), load_note(st)),
                lambda e, t: "%s / %.0f" % (ms(e["seconds"]), e["GFLOPS"]))


def backward_tables(results, out):
    st = results["backward"]
    fwd = index(results["prefill"]["entries"], "variant", "layout", "S", "threads") if "prefill" in results else {}

    def cell(e, threads):
        text = "%s / %.0f" % (ms(e["seconds"]), e["GFLOPS"])
        f = fwd.get((e["variant"], e["layout"], e["S"], threads))
        return text if f is None else text + " (%.1f×)" % (e["seconds"] / f["seconds"])

    grid_tables(st["entries"], out,
                lambda t: "**Fused backward, %s** — time in ms / GFLOP/s counted as 10·D flops per attended "
                          "(row, key) pair (2.5× the forward's count) / in brackets, the time over the fused "
                          "forward's at the same shape from the prefill stage (%s)" % (plural(t), load_note(st)),
                cell)


def reference_tables(results, out):
    st = results["reference"]
    fused = index([e for e in st["entries"] if e["impl"] == "fused"], "variant", "layout", "S", "threads")
    ref = index([e for e in st["entries"] if e["impl"] == "reference"], "variant", "layout", "S", "threads")
    out.append("\n**Reference oracle vs fused kernel** (S ≤ 1024 only: the oracle is O(H·S²·D) in double "
               "precision and takes minutes at S=4096; %s)\n" % load_note(st))
    out.append("| variant | layout | S | threads | reference ms | fused ms | fused speed-up |")
    out.append("|---|---|---|---|---|---|---|")
    for key in sorted(ref, key=lambda k: (k[3], VARIANTS.index(k[0]), LAYOUTS.index(k[1]), k[2])):
        r, f = ref[key], fused.get(key)
        out.append("| %s | %s | %d | %d | %s | %s | %s |" % (
            key[0], key[1], key[2], key[3], ms(r["seconds"]), "-" if f is None else ms(f["seconds"]),
            "-" if f is None else "%.0f×" % (r["seconds"] / f["seconds"])))


def decode_ratio(entry, kv_read):
    """Decode time over the time to stream its K and V once: the paired measurement of the decode
    benchmark itself when it has one, else the separate kv_read benchmark."""
    if "vs_read" in entry:
        return entry["vs_read"]
    return entry["seconds"] / kv_read["seconds"]


def decode_tables(results, out):
    st = results["decode"]
    dec = index([e for e in st["entries"] if e["family"] == "decode"], "variant", "dtype", "layout", "threads")
    kv = index([e for e in st["entries"] if e["family"] == "kv_read"], "dtype", "threads")
    for threads in sorted({e["threads"] for e in st["entries"]}):
        out.append("\n**Decode step, %d thread%s**: Lq = 1, kv_cache of 4096 tokens, H32 D128; time in µs and, "
                   "in brackets, its ratio to one streaming pass over the same K and V bytes run right after "
                   "each step (`vs_read`; the `kv_read` row is that pass on its own; %s)\n"
                   % (threads, "" if threads == 1 else "s", load_note(st)))
        out.append("| K/V storage | variant | " + " | ".join(LAYOUT_TEXT[l] for l in LAYOUTS) + " |")
        out.append("|---|---|" + "---|" * len(LAYOUTS))
        for d in DTYPES:
            base = kv.get((d, threads))
            if base:
                out.append("| %s | *kv_read* (%.1f GB/s) | %s |" % (
                    d, base["bytes_per_second"] / 1e9, " | ".join([us(base["seconds"])] * len(LAYOUTS))))
            for v in VARIANTS:
                cells = []
                for l in LAYOUTS:
                    e = dec.get((v, d, l, threads))
                    if e is None:
                        cells.append("-")
                    elif "vs_read" in e or base:
                        cells.append("%s (%.2f×)" % (us(e["seconds"]), decode_ratio(e, base)))
                    else:
                        cells.append(us(e["seconds"]))
                out.append("| %s | %s | %s |" % (d, v, " | ".join(cells)))


def torch_tables(results, out):
    st = results["torch"]
    blas = sorted({r.get("blas", "?") for r in st["torch"]})
    out.append("\n**mmca fused vs torch %s** (BLAS under torch: %s; %s)\n" % (
        st["torch"][0]["torch"], "; ".join(blas), load_note(st)))
    out.append(ta.comparison_markdown(st["rows"]))


def verdict(ok):
    return "**pass**" if ok else "**FAIL**"


def target_table(results, out):
    out.append("\n**Targets** (1 thread, S = 2048, B1 H32 D128 unless stated). Ratios to torch come from the torch "
               "stage, where mmca and torch run in the same invocation; absolute times from the prefill stage; "
               "decode ratios from the decode stage.\n")
    out.append("| target | measured | verdict |")
    out.append("|---|---|---|")
    rows = results.get("torch", {}).get("rows", [])

    def row(method, variant, layout, threads=1, S=2048):
        for r in rows:
            if (r["torch_method"], r["mmca_variant"], r["layout"], r["threads"], r["S"]) == (
                    method, variant, layout, threads, S) and r["torch_s"] and r["mmca_s"]:
                return r
        return None

    for layout in LAYOUTS:
        r = row("two_softmax", "mmca", layout)
        if r is None:
            out.append("| fused `mmca` ≥ %g× faster than torch two-softmax, %s | not measured | - |" % (
                TARGET_MMCA_VS_TWO_SOFTMAX, LAYOUT_TEXT[layout]))
            continue
        ratio = r["torch_s"] / r["mmca_s"]
        out.append("| fused `mmca` ≥ %g× faster than torch two-softmax, %s | %s ms vs %s ms: %.1f× | %s |" % (
            TARGET_MMCA_VS_TWO_SOFTMAX, LAYOUT_TEXT[layout], ms(r["mmca_s"]), ms(r["torch_s"]), ratio,
            verdict(ratio >= TARGET_MMCA_VS_TWO_SOFTMAX)))

    r = row("sdpa", "causal", "any")
    if r is None:
        out.append("| fused `causal` ≥ %g× faster than torch SDPA causal | not measured | - |" % TARGET_CAUSAL_VS_SDPA)
    else:
        ratio = r["torch_s"] / r["mmca_s"]
        out.append("| fused `causal` ≥ %g× faster than torch SDPA causal | %s ms vs %s ms: %.1f× | %s |" % (
            TARGET_CAUSAL_VS_SDPA, ms(r["mmca_s"]), ms(r["torch_s"]), ratio, verdict(ratio >= TARGET_CAUSAL_VS_SDPA)))

    causal = None
    if "prefill" in results:
        for e in results["prefill"]["entries"]:
            if (e["variant"], e["layout"], e["S"], e["threads"]) == ("causal", "text", 2048, 1):
                causal = e
    if causal is not None:
        out.append("| fused `causal` ≤ %.2f s | %.3f s | %s |" % (
            TARGET_CAUSAL_SECONDS, causal["seconds"], verdict(causal["seconds"] <= TARGET_CAUSAL_SECONDS)))
        frac_doc = causal["GFLOPS"] / DOC_PEAK_GFLOPS
        out.append("| fused `causal` ≥ %.0f%% of the %.0f GFLOP/s FMA peak (Zen 5 core, AVX-512) in useful FLOPs "
                   "| %.1f GFLOP/s = %.0f%% | %s |" % (TARGET_PEAK_FRACTION * 100, DOC_PEAK_GFLOPS, causal["GFLOPS"],
                                                      frac_doc * 100, verdict(frac_doc >= TARGET_PEAK_FRACTION)))
        peak = peak_gflops(results, 1)
        if peak:
            frac = causal["GFLOPS"] / peak
            out.append("| (same, against this machine's measured `fma_peak`, 1 thread: %.0f GFLOP/s) "
                       "| %.0f%% | %s |" % (peak, frac * 100, verdict(frac >= TARGET_PEAK_FRACTION)))

    if "decode" in results:
        st = results["decode"]["entries"]
        kv = index([e for e in st if e["family"] == "kv_read"], "dtype", "threads")
        for d in DTYPES:
            base = kv.get((d, 1))
            dec = [e for e in st if e["family"] == "decode" and e["dtype"] == d and e["threads"] == 1]
            if not base or not dec:
                continue
            worst = max(dec, key=lambda e: decode_ratio(e, base))
            ratio = decode_ratio(worst, base)
            read = worst.get("read_seconds", base["seconds"])
            out.append("| decode step (Lq=1, Lk=4096, %s K/V) within %.1f× of reading its K and V once, every "
                       "variant and layout | worst: %s on %s, %s µs vs %s µs: %.2f× | %s |" % (
                           d, TARGET_DECODE_RATIO, worst["variant"], worst["layout"], us(worst["seconds"]),
                           us(read), ratio, verdict(ratio <= TARGET_DECODE_RATIO)))


def on_cpu_clock(results):
    """A copy of results whose 1-thread times are CPU times of the timed thread (rates recomputed);
    times of runs with more threads stay wall times."""
    results = json.loads(json.dumps(results))
    for name, stage in results.items():
        if name == "machine":
            continue
        for e in stage.get("entries", []):
            if e.get("threads") != 1 or not e.get("cpu_seconds"):
                continue
            scale = e["seconds"] / e["cpu_seconds"]
            e["seconds"] = e["cpu_seconds"]
            for rate in ("GFLOPS", "bytes_per_second"):
                if rate in e:
                    e[rate] *= scale
        if "rows" in stage:
            stage["rows"] = ta.rows_on_clock(stage["rows"], "cpu")
    return results


def render(results, clock="real"):
    info = results.get("machine", machine_info())
    out = [BEGIN, "",
           "Measured on: %s (%s, %d cores), Linux %s, mmca commit %s (of the latest stage run; stages run "
           "since their commit was recorded name their own). Load averages are the 1-minute figures "
           "of the machine (other processes included) around each stage." % (
               info["cpu"], info["simd"], info["cores"], info["kernel"], info["commit"])]
    if clock == "cpu":
        results = on_cpu_clock(results)
        out.append("\n**Clock: 1-thread times below are CPU times of the timed thread**, not wall times: the "
                   "machine was loaded by other processes, and CPU time leaves out the time they held the core "
                   "(cache and memory-bandwidth interference remain). 2-thread times are wall times and are "
                   "inflated by the load. Rerun with an idle machine for the final figures.")
    if "peak" in results:
        peaks = ["%.0f GFLOP/s on %d thread%s" % (peak_gflops(results, t), t, "" if t == 1 else "s")
                 for t in (1, 2) if peak_gflops(results, t)]
        out.append("\nfp32 FMA peak measured by `fma_peak`: %s (%s)." % (", ".join(peaks), load_note(results["peak"])))
    if "torch" in results or "prefill" in results or "decode" in results:
        target_table(results, out)
    if "torch" in results:
        torch_tables(results, out)
    if "prefill" in results:
        prefill_tables(results, out)
    if "reference" in results:
        reference_tables(results, out)
    if "decode" in results:
        decode_tables(results, out)
    if "backward" in results:
        backward_tables(results, out)
    out += ["", END]
    return "\n".join(out)


def write_doc(path, tables):
    with open(path) as f:
        text = f.read()
    if BEGIN not in text or END not in text:
        sys.exit("make_tables.py: %s has no %s ... %s markers" % (path, BEGIN, END))
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    with open(path, "w") as f:
        f.write(head + tables + tail)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stages", default="", help="comma-separated stages to run (%s) or 'all'" % ",".join(STAGES))
    ap.add_argument("--bench", default=None, help="path of the bench_attention binary")
    ap.add_argument("--results", default=os.path.join(REPO, "build-bench", "bench_results.json"),
                    help="JSON file that keeps each stage's measurements (default build-bench/bench_results.json)")
    ap.add_argument("--seq-lens", type=ta.int_list, default=[512, 1024, 2048, 4096])
    ap.add_argument("--threads", type=ta.int_list, default=[1, 2])
    ap.add_argument("--repetitions", type=int, default=3,
                    help="bench_attention repetitions (median) for the peak, prefill and decode cases and for the mmca "
                         "side of the torch comparison (default 3)")
    ap.add_argument("--torch-repeats", type=int, default=3, help="torch calls per case (median; default 3)")
    ap.add_argument("--torch-min-time", type=float, default=12.0,
                    help="seconds of torch calls per case before it stops repeating (default 12: at S = 2048 "
                         "a warm-up and 3 timed calls; a case whose first call alone takes longer is timed once)")
    ap.add_argument("--no-build", action="store_true",
                    help="time the bench_attention binary as it is (default: rebuild it first)")
    ap.add_argument("--write", default=None, help="markdown file whose table section is replaced")
    ap.add_argument("--print", action="store_true", help="print the tables")
    ap.add_argument("--clock", choices=("real", "cpu"), default="real",
                    help="times in the tables: wall time (default) or, for 1-thread runs, CPU time of the "
                         "timed thread (a first reading on a machine loaded by other processes)")
    args = ap.parse_args()

    stages = list(STAGES) if args.stages == "all" else [s for s in args.stages.split(",") if s]
    for s in stages:
        if s not in STAGES:
            ap.error("unknown stage %r (expected %s or all)" % (s, ", ".join(STAGES)))
    results = {}
    if os.path.exists(args.results):
        with open(args.results) as f:
            results = json.load(f)
    if stages:
        bench = ta.find_bench(args.bench)
        if not args.no_build:
            build_bench(bench)
        for s in stages:
            results[s] = run_stage(s, args, bench)
            results["machine"] = machine_info()
            os.makedirs(os.path.dirname(os.path.abspath(args.results)), exist_ok=True)
            with open(args.results, "w") as f:
                json.dump(results, f, indent=1)
    tables = render(results, args.clock)
    if args.write:
        write_doc(args.write, tables)
        print("make_tables.py: wrote the tables of %s" % args.write, file=sys.stderr)
    if args.print or not args.write:
        print(tables)


if __name__ == "__main__":
    main()
