"""ssmax_torch.attention against PyTorch's own attention composition, CPU, float32, causal.

    build/pyenv/bin/python python/bench/bench_attention.py [--quick] [--threads N]

For each head dimension d and length n (queries = keys = n, batch 1, 4 heads) it times the
forward and the forward + backward (gradients of q, k, v; ssmax with learnable per-head s,
torch with plain softmax) of
  ssmax:  ssmax_torch.attention(q, k, v, policy=SSMax(s), causal=True)  ([B, n, H, d])
  torch:  softmax((q k^T) * scale masked causally) v with torch ops    ([B, H, n, d])
(torch 1.13 has no torch.nn.functional.scaled_dot_product_attention; it came in 2.0).
Times are the best of up to 10 runs within the time budget (one run when it takes longer),
after one untimed run. Memory: each (implementation, d, n) runs in its own
process; "peak MiB" is that process's peak resident set (getrusage ru_maxrss) minus its
resident set just before the first call, so it counts what the operation allocates
(scores, softmax, saved tensors, gradients), not the inputs or torch itself. The forward
is measured before the forward + backward, so the second column is the larger peak.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

HEADS, BATCH = 4, 1


def rss_kib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def best_time(fn, budget_s, clock):
    times, spent = [], 0.0
    while not times or (spent < budget_s and len(times) < 10):
        t, c = time.perf_counter(), time.process_time()
        fn()
        wall = time.perf_counter() - t
        times.append(wall if clock == "wall" else time.process_time() - c)
        spent += wall
    return min(times)


def child(impl, d, n, threads, budget_s, clock):
    """Runs one case, prints a JSON line: forward / forward+backward seconds and peaks."""
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    scale = d ** -0.5
    if impl == "ssmax":
        import ssmax_torch as st

        shape = (BATCH, n, HEADS, d)
        s = torch.full((HEADS,), 0.4, requires_grad=True)

        def run(q, k, v):
            return st.attention(q, k, v, policy=st.SSMax(s), causal=True)
    else:
        shape = (BATCH, HEADS, n, d)
        mask = torch.ones(n, n, dtype=torch.bool).triu(1)

        def run(q, k, v):
            scores = (q @ k.transpose(-1, -2)) * scale
            return scores.masked_fill(mask, float("-inf")).softmax(-1) @ v

    q, k, v = (torch.randn(shape, requires_grad=True) for _ in range(3))
    dout = torch.randn(shape)
    before = rss_kib()

    def forward():
        with torch.no_grad():
            run(q, k, v)

    def forward_backward():
        torch.autograd.grad(run(q, k, v), (q, k, v), dout)

    forward()
    peak_fwd = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    t_fwd = best_time(forward, budget_s, clock)
    forward_backward()
    peak_bwd = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    t_bwd = best_time(forward_backward, budget_s, clock)
    print(json.dumps({"fwd": t_fwd, "fwd_bwd": t_bwd, "peak_fwd": max(0, peak_fwd) / 1024,
                      "peak_fwd_bwd": max(0, peak_bwd) / 1024}))


def run_case(impl, d, n, threads, budget_s, clock):
    out = subprocess.run([sys.executable, __file__, "--child", impl, str(d), str(n),
                          "--threads", str(threads), "--budget", str(budget_s),
                          "--clock", clock],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="n = 512, 2048 only (~1-2 min)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--budget", type=float, default=None, help="seconds of timing per case")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="cpu: process CPU time (all threads summed), steadier than wall "
                             "time on a shared machine; use it with --threads 1")
    parser.add_argument("--child", nargs=3, metavar=("IMPL", "D", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    budget = args.budget if args.budget is not None else (0.5 if args.quick else 2.0)
    if args.child:
        child(args.child[0], int(args.child[1]), int(args.child[2]), args.threads, budget, args.clock)
        return

    import torch

    lengths = [512, 2048] if args.quick else [512, 1024, 2048, 4096, 8192]
    print(f"# {cpu_name()}, {os.cpu_count()} CPUs, {args.threads} threads, torch "
          f"{torch.__version__}; float32, causal, batch {BATCH}, {HEADS} heads, {args.clock} time")
    print("# time ratio = torch / ssmax (> 1: ssmax faster); peak = extra resident MiB")
    header = (f"{'d':>4} {'n':>5} | {'fwd ssmax ms':>12} {'fwd torch ms':>12} {'ratio':>6} | "
              f"{'f+b ssmax ms':>12} {'f+b torch ms':>12} {'ratio':>6} | "
              f"{'peak ssmax':>10} {'peak torch':>10} (f+b MiB)")
    print(header)
    print("-" * len(header))
    for d in (64, 128):
        for n in lengths:
            a = run_case("ssmax", d, n, args.threads, budget, args.clock)
            b = run_case("torch", d, n, args.threads, budget, args.clock)
            print(f"{d:>4} {n:>5} | {a['fwd'] * 1e3:>12.1f} {b['fwd'] * 1e3:>12.1f} "
                  f"{b['fwd'] / a['fwd']:>6.2f} | {a['fwd_bwd'] * 1e3:>12.1f} "
                  f"{b['fwd_bwd'] * 1e3:>12.1f} {b['fwd_bwd'] / a['fwd_bwd']:>6.2f} | "
                  f"{a['peak_fwd_bwd']:>10.1f} {b['peak_fwd_bwd']:>10.1f}", flush=True)


if __name__ == "__main__":
    main()
