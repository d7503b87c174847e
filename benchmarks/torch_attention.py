#!/usr/bin/python3
"""Times PyTorch 1.13 attention on the shapes of bench_attention and compares it with mmca's fused kernel.

Shapes: B1 H32 D128, S query rows and S keys, float32, the token layouts of bench_attention
(text; chat = 256 image + 192 text tokens repeated; image = 256 image + 64 text repeated).

Torch methods:
  sdpa        torch.nn.functional._scaled_dot_product_attention(q, k, v, is_causal=True), torch 1.13's
              (private) fused-op entry point; it returns (output, weights).
  two_softmax the reference code's MMCA (SPEC §2.3): two additive masks filled with finfo.min, each
              plus the causal mask (min + min overflows to -inf), two fp32 softmaxes, summed, times V.
              The masks depend only on the token types and are built once per layout outside the
              timed call, as the reference builds them once per forward for all layers.

mmca side: the fused kernel's `causal` (compared with sdpa), `mmca` and `mmca_reference` (compared
with two_softmax, which computes mmca_reference's rows), taken from the bench_attention binary run on
the same shapes in this invocation. The two sides take turns, one (thread count, S) at a time: mmca's
cases of that shape, then torch's, so that both sides of a ratio run within the same minute or two
of a machine whose speed drifts by ±20% over a run of this script.

Torch runs in a subprocess per (thread count, S) whose environment has OPENBLAS_CORETYPE and
OPENBLAS_L2_SIZE removed (they slow OpenBLAS down on this machine) and OMP/OPENBLAS/MKL thread counts
pinned; torch.set_num_threads is set as well.

  /usr/bin/python3 benchmarks/torch_attention.py                 # quick: S 512,1024, 1 thread
  /usr/bin/python3 benchmarks/torch_attention.py --full          # S 512..4096, 1 and 2 threads
  /usr/bin/python3 benchmarks/torch_attention.py --seq-lens 2048 --threads 1,2 --repeats 5 --markdown
"""
import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

HEADS = 32
HEAD_DIM = 128
LAYOUTS = ("text", "chat", "image")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------------------------------------
# Token layouts (the same definition as bench_attention.cpp)

def layout_types(layout, S):
    """Token types (1 text, 2 image) of S positions: periodic 256 image tokens followed by text."""
    if layout == "text":
        return [1] * S
    text_tokens = {"chat": 192, "image": 64}[layout]
    period = 256 + text_tokens
    return [2 if (i % period) < 256 else 1 for i in range(S)]


# ---------------------------------------------------------------------------------------------
# Torch worker (runs in the subprocess)

def two_softmax_masks(torch, types):
    """The reference code's two additive masks for one sequence, causal mask included: (S, S) each."""
    t = torch.tensor(types, dtype=torch.int8)
    S = t.numel()
    neg = torch.finfo(torch.float32).min
    zero = torch.zeros((), dtype=torch.float32)
    fill = torch.full((), neg, dtype=torch.float32)
    causal = torch.triu(torch.full((S, S), neg, dtype=torch.float32), diagonal=1)
    image_col = (t == 2)
    image_mask = torch.where(image_col[None, :], zero, fill).expand(S, S).clone()
    # Image rows see only themselves in the image term.
    image_rows = image_col.nonzero().flatten()
    image_mask[image_rows, :] = neg
    image_mask[image_rows, image_rows] = 0.0
    text_mask = torch.where((t == 1)[None, :], zero, fill).expand(S, S)
    return image_mask + causal, text_mask + causal


def two_softmax_attention(torch, q, k, v, masks):
    scores = torch.matmul(q, k.transpose(2, 3)) / math.sqrt(q.shape[-1])
    w_image = torch.nn.functional.softmax(scores + masks[0], dim=-1, dtype=torch.float32)
    w_text = torch.nn.functional.softmax(scores + masks[1], dim=-1, dtype=torch.float32)
    del scores
    return torch.matmul(w_image + w_text, v)


def sdpa_causal(torch, q, k, v):
    result = torch.nn.functional._scaled_dot_product_attention(q, k, v, is_causal=True)
    # torch 1.13 returns (output, attention weights); later versions return the output alone.
    return result[0] if isinstance(result, tuple) else result


def available_bytes():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def time_call(fn, repeats, min_time):
    """Median wall time and median process CPU time (seconds) of up to `repeats` calls, stopping once
    `min_time` seconds were spent. The first call is a warm-up, except when it alone takes longer
    than min_time: then it is the measurement (at S = 4096 one call is tens of seconds and warm-up
    effects are lost in it)."""
    def timed():
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        return time.perf_counter() - w0, time.process_time() - c0

    first = timed()
    if first[0] >= min_time:
        return first[0], first[1], 1
    walls, cpus = [], []
    while len(walls) < repeats and (not walls or sum(walls) < min_time):
        w, c = timed()
        walls.append(w)
        cpus.append(c)
    return statistics.median(walls), statistics.median(cpus), len(walls)


def torch_worker(args):
    import torch
    torch.set_num_threads(args.worker_threads)
    torch.manual_seed(0)
    results = []
    for S in args.seq_lens:
        q, k, v = (torch.rand(1, HEADS, S, HEAD_DIM) * 2 - 1 for _ in range(3))
        matrix = HEADS * S * S * 4  # one (H, S, S) float32 tensor
        # two_softmax holds about five such tensors at once (scores, two masked copies, two softmaxes).
        if 6 * matrix > 0.8 * available_bytes():
            results.append({"method": "two_softmax", "S": S, "layout": "*", "skipped": "not enough memory"})
            fits_sdpa = 3 * matrix < 0.8 * available_bytes()
        else:
            fits_sdpa = True
        if fits_sdpa:
            wall, cpu, n = time_call(lambda: sdpa_causal(torch, q, k, v), args.repeats, args.min_time)
            results.append({"method": "sdpa", "S": S, "layout": "*", "seconds": wall, "cpu_seconds": cpu,
                            "repeats": n})
        if 6 * matrix > 0.8 * available_bytes():
            continue
        for layout in args.layouts:
            masks = two_softmax_masks(torch, layout_types(layout, S))
            wall, cpu, n = time_call(lambda: two_softmax_attention(torch, q, k, v, masks), args.repeats,
                                     args.min_time)
            results.append({"method": "two_softmax", "S": S, "layout": layout, "seconds": wall, "cpu_seconds": cpu,
                            "repeats": n})
    json.dump({"threads": args.worker_threads, "torch": torch.__version__, "blas": loaded_blas(),
               "results": results}, sys.stdout)


OPENBLAS_DIRS = ("/usr/lib/x86_64-linux-gnu/openblas-pthread", "/usr/lib/x86_64-linux-gnu/openblas-openmp",
                 "/usr/lib/x86_64-linux-gnu/openblas-serial")


def loaded_blas():
    """The file behind libblas.so.3 in this process (Debian's torch links it through the alternatives
    system: the reference BLAS, or OpenBLAS when installed)."""
    with open("/proc/self/maps") as f:
        paths = {line.split()[-1] for line in f if line.split()[-1].endswith("libblas.so.3")}
    real = sorted(os.path.realpath(p) for p in paths)
    return ", ".join(real) if real else "none found"


def run_torch(args, threads, seq_lens):
    env = dict(os.environ)
    env.pop("OPENBLAS_CORETYPE", None)
    env.pop("OPENBLAS_L2_SIZE", None)
    if args.torch_blas == "openblas":
        # Debian's torch takes libblas.so.3 from the alternatives system; where that is the reference
        # BLAS, an installed OpenBLAS (apt-get install libopenblas0-pthread) is put first for torch only.
        found = [d for d in OPENBLAS_DIRS if os.path.isfile(os.path.join(d, "libblas.so.3"))]
        if found:
            env["LD_LIBRARY_PATH"] = found[0] + (":" + env["LD_LIBRARY_PATH"] if env.get("LD_LIBRARY_PATH") else "")
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[name] = str(threads)
    cmd = [sys.executable, os.path.abspath(__file__), "--worker-threads", str(threads),
           "--seq-lens", ",".join(map(str, seq_lens)), "--layouts", ",".join(args.layouts),
           "--repeats", str(args.repeats), "--min-time", str(args.min_time)]
    out = subprocess.run(cmd, env=env, check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out)


# ---------------------------------------------------------------------------------------------
# Cross-check: the torch methods against mmca's oracle (through the mmca Python package)

def check_against_mmca():
    """Compares the torch methods timed here with mmca's reference oracle on a small interleaved
    sequence (30 text tokens, then the chat layout): two_softmax must equal mmca_reference, sdpa
    must equal causal. Returns the process exit status."""
    import numpy as np
    import torch
    try:
        import mmca
    except ImportError:
        for d in ("build-bench", "build"):
            package = os.path.join(REPO, d, "python")
            if os.path.isdir(os.path.join(package, "mmca")):
                sys.path.insert(0, package)
                break
        try:
            import mmca
        except ImportError:
            print("--check needs the mmca Python package: build the _core target (cmake -DMMCA_BUILD_PYTHON=ON "
                  "-DPython_EXECUTABLE=/usr/bin/python3) or put it on PYTHONPATH", file=sys.stderr)
            return 2
    rng = np.random.default_rng(0)
    types = [1] * 30 + layout_types("chat", 670)
    S, H, D = len(types), 4, 32
    q, k, v = (rng.uniform(-1, 1, (1, H, S, D)).astype(np.float32) for _ in range(3))
    tt, kt, vt = (torch.from_numpy(x) for x in (q, k, v))
    token_types = np.array([types], dtype=np.int8)
    status = 0
    for name, torch_out, variant in (
            ("two_softmax", two_softmax_attention(torch, tt, kt, vt, two_softmax_masks(torch, types)),
             "mmca_reference"),
            ("sdpa", sdpa_causal(torch, tt, kt, vt), "causal")):
        for impl in ("reference", "fused"):
            ours = mmca.attention(q, k, v, token_types, variant, impl=impl)
            diff = float(np.abs(torch_out.numpy() - ours).max())
            ok = diff < 1e-4
            status |= 0 if ok else 1
            print("torch %-11s vs mmca %-14s (%-9s): max |difference| %.2e  %s" % (
                name, variant, impl, diff, "ok" if ok else "MISMATCH"))
    return status


# ---------------------------------------------------------------------------------------------
# mmca side: the bench_attention binary

def find_bench(path):
    candidates = [path] if path else [os.path.join(REPO, d, "benchmarks", "bench_attention")
                                      for d in ("build-bench", "build", "build-release")]
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    sys.exit("torch_attention.py: bench_attention not found (looked at %s); build it (cmake --build build-bench "
             "--target bench_attention) or pass --bench PATH" % ", ".join(candidates))


def parse_bench_name(name):
    """prefill/<variant>/<impl>/<layout>/S:<S>/threads:<t>[/...] (and the other families) -> dict of fields."""
    parts = name.split("/")
    fields = {"family": parts[0]}
    if parts[0] == "prefill":
        fields.update(variant=parts[1], impl=parts[2], layout=parts[3])
    elif parts[0] == "backward":
        fields.update(variant=parts[1], layout=parts[2])
    elif parts[0] == "decode":
        fields.update(variant=parts[1], dtype=parts[2], layout=parts[3])
    elif parts[0] == "kv_read":
        fields.update(dtype=parts[1])
    for p in parts[1:]:
        if ":" in p:
            key, value = p.split(":", 1)
            if key in ("S", "threads", "Lk"):
                fields[key] = int(value)
    return fields


def run_bench(bench, filter_regex, repetitions=1, extra=()):
    """Runs bench_attention with a filter and returns its benchmark entries (medians when repeated)."""
    cmd = [bench, "--benchmark_filter=" + filter_regex, "--benchmark_format=json"]
    if repetitions > 1:
        cmd += ["--benchmark_repetitions=%d" % repetitions, "--benchmark_report_aggregates_only=true"]
    cmd += list(extra)
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    data = json.loads(out)
    entries = []
    for b in data["benchmarks"]:
        if repetitions > 1 and b.get("aggregate_name") != "median":
            continue
        unit = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}[b.get("time_unit", "ns")]
        entry = parse_bench_name(b.get("run_name", b["name"]))
        entry["seconds"] = b["real_time"] * unit
        entry["cpu_seconds"] = b["cpu_time"] * unit  # of the calling thread only
        for key in ("GFLOPS", "useful_GFLOP", "bytes_per_second", "read_seconds", "vs_read"):
            if key in b:
                entry[key] = b[key]
        entries.append(entry)
    return entries, data.get("context", {})


def mmca_filter(seq_lens, threads, layouts):
    alt = lambda xs: "(" + "|".join(str(x) for x in xs) + ")"
    s, t = alt(seq_lens), alt(threads)
    return ("^prefill/causal/fused/text/S:%s/threads:%s/|^prefill/(mmca|mmca_reference)/fused/%s/S:%s/threads:%s/"
            % (s, t, alt(layouts), s, t))


# ---------------------------------------------------------------------------------------------
# Comparison table

def comparison_rows(torch_runs, mmca_entries):
    fused = {}
    for e in mmca_entries:
        fused[(e["variant"], e["layout"], e["S"], e["threads"])] = e
    rows = []
    for run in torch_runs:
        threads = run["threads"]
        for r in run["results"]:
            if "skipped" in r:
                rows.append(dict(threads=threads, S=r["S"], layout=r["layout"], torch_method=r["method"],
                                 torch_s=None, torch_cpu_s=None, mmca_variant="-", mmca_s=None, mmca_cpu_s=None,
                                 note=r["skipped"]))
                continue
            if r["method"] == "sdpa":
                pairs = [("causal", "text")]
            else:
                pairs = [("mmca", r["layout"]), ("mmca_reference", r["layout"])]
            for variant, layout in pairs:
                m = fused.get((variant, layout, r["S"], threads))
                rows.append(dict(threads=threads, S=r["S"], layout="any" if r["method"] == "sdpa" else r["layout"],
                                 torch_method=r["method"], torch_s=r["seconds"], torch_cpu_s=r.get("cpu_seconds"),
                                 mmca_variant=variant, mmca_s=m and m["seconds"],
                                 mmca_cpu_s=m and m.get("cpu_seconds"), note=""))
    rows.sort(key=lambda x: (x["threads"], x["S"], x["torch_method"] != "sdpa", x["layout"], x["mmca_variant"]))
    return rows


def rows_on_clock(rows, clock):
    """Rows with times on the chosen clock: 'real' (wall) or 'cpu'. CPU time stands in for wall time
    only at 1 thread (on a loaded machine it leaves out the time other processes held the core);
    rows with more threads keep wall time."""
    if clock == "real":
        return rows
    out = []
    for r in rows:
        r = dict(r)
        if r["threads"] == 1:
            r["torch_s"], r["mmca_s"] = r.get("torch_cpu_s"), r.get("mmca_cpu_s")
        out.append(r)
    return out


def fmt_ms(seconds):
    return "-" if seconds is None else "%.1f" % (seconds * 1e3)


def fmt_ratio(a, b):
    return "-" if a is None or b is None or b == 0 else "%.1f×" % (a / b)


def comparison_markdown(rows):
    lines = ["| threads | S | layout | torch method | torch ms | mmca fused | mmca ms | torch / mmca |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append("| %d | %d | %s | %s | %s | %s | %s | %s |" % (
            r["threads"], r["S"], r["layout"], r["torch_method"], fmt_ms(r["torch_s"]), r["mmca_variant"],
            fmt_ms(r["mmca_s"]), fmt_ratio(r["torch_s"], r["mmca_s"]) if not r["note"] else r["note"]))
    return "\n".join(lines)


def comparison_text(rows):
    head = "%-7s %5s %-6s %-12s %10s %-15s %9s %12s" % ("threads", "S", "layout", "torch", "torch ms",
                                                        "mmca fused", "mmca ms", "torch/mmca")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append("%-7d %5d %-6s %-12s %10s %-15s %9s %12s" % (
            r["threads"], r["S"], r["layout"], r["torch_method"], fmt_ms(r["torch_s"]), r["mmca_variant"],
            fmt_ms(r["mmca_s"]), fmt_ratio(r["torch_s"], r["mmca_s"]) if not r["note"] else r["note"]))
    return "\n".join(lines)


def int_list(text):
    return [int(x) for x in text.split(",") if x]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seq-lens", type=int_list, default=None, help="comma-separated S values (default 512,1024)")
    ap.add_argument("--threads", type=int_list, default=None, help="comma-separated thread counts (default 1)")
    ap.add_argument("--layouts", type=lambda s: s.split(","), default=list(LAYOUTS),
                    help="comma-separated layouts among text,chat,image (default all)")
    ap.add_argument("--repeats", type=int, default=3, help="timed torch calls per case, median taken (default 3)")
    ap.add_argument("--min-time", type=float, default=3.0,
                    help="stop repeating a torch case once this many seconds were spent (default 3)")
    ap.add_argument("--full", action="store_true", help="S 512,1024,2048,4096 and threads 1,2 (the doc table)")
    ap.add_argument("--bench", default=None, help="path of the bench_attention binary")
    ap.add_argument("--bench-repetitions", type=int, default=1,
                    help="bench_attention repetitions per case, median taken (default 1)")
    ap.add_argument("--json", default=None, help="also write all measurements to this JSON file")
    ap.add_argument("--markdown", action="store_true", help="print the table as markdown")
    ap.add_argument("--clock", choices=("real", "cpu"), default="real",
                    help="times shown: wall time (default) or, at 1 thread, CPU time of the timed thread "
                         "(a rough stand-in when other processes load the machine)")
    ap.add_argument("--torch-blas", choices=("openblas", "system"), default="openblas",
                    help="BLAS under torch: 'openblas' puts an installed OpenBLAS first for the torch subprocess "
                         "(default), 'system' keeps whatever libblas.so.3 the system selects")
    ap.add_argument("--check", action="store_true",
                    help="only check that the torch methods compute what the mmca variants compute (needs the "
                         "mmca Python package) and exit")
    ap.add_argument("--worker-threads", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker_threads is not None:
        torch_worker(args)
        return
    if args.check:
        sys.exit(check_against_mmca())
    for layout in args.layouts:
        if layout not in LAYOUTS:
            ap.error("unknown layout %r (expected one of %s)" % (layout, ", ".join(LAYOUTS)))
    if args.seq_lens is None:
        args.seq_lens = [512, 1024, 2048, 4096] if args.full else [512, 1024]
    if args.threads is None:
        args.threads = [1, 2] if args.full else [1]

    bench = find_bench(args.bench)
    load_before = os.getloadavg()
    print("mmca: %s (filter %s)" % (bench, mmca_filter(args.seq_lens, args.threads, args.layouts)), file=sys.stderr)
    mmca_entries, context, runs = [], {}, {}
    for threads in args.threads:
        for S in args.seq_lens:  # the two sides take turns, shape by shape
            entries, context = run_bench(bench, mmca_filter([S], [threads], args.layouts), args.bench_repetitions)
            mmca_entries += entries
            print("torch: %d thread(s), S %d" % (threads, S), file=sys.stderr)
            run = run_torch(args, threads, [S])
            runs.setdefault(threads, dict(run, results=[]))["results"] += run["results"]
    torch_runs = list(runs.values())
    for run in torch_runs:
        print("torch %s, %d thread(s), BLAS: %s" % (run["torch"], run["threads"], run["blas"]), file=sys.stderr)
    load_after = os.getloadavg()

    rows = comparison_rows(torch_runs, mmca_entries)
    shown = rows_on_clock(rows, args.clock)
    print(comparison_markdown(shown) if args.markdown else comparison_text(shown))
    if args.clock == "cpu":
        print("1-thread times are CPU times of the timed thread; others are wall times")
    print("load average (1 min) before / after: %.2f / %.2f" % (load_before[0], load_after[0]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"mmca": mmca_entries, "torch": torch_runs, "rows": rows, "context": context,
                       "load_before": load_before, "load_after": load_after}, f, indent=1)


if __name__ == "__main__":
    main()
