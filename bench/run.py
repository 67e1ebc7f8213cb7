"""Run the benchmarks, write bench/results/latest.json (one key per figure) and BENCHMARKS.md's generated sections.

    python -m bench.run                      # make bench: data, metrics, eval, rewards, train step (tiny)
    python -m bench.run --only rewards eval  # re-run some; the other modules' last results are kept
    python -m bench.run --only zero3         # ZeRO-3 vs ZeRO-2 RL step, 2 CPU ranks (not in `make bench`)
    python -m bench.run --large              # make bench-large: train step at BLIP-large shape -> latest-large.json
    python -m bench.run --large --family florence2   # the same at Florence-2-base shape -> latest-large-florence2.json

BENCHMARKS.md is rewritten only between its markers: `<!-- bench:cpu -->` (or `bench:large`, `bench:large-florence2`)
from this run, and
`<!-- bench:gpu -->` from bench/results/gpu.json when that exists (written by bench/gpu_check.sh on a GPU).
Text outside the markers is kept. A module that fails is recorded as {"error": ...}, never as a number.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import platform
import re
import sys
import traceback
from pathlib import Path

from fashioncap.io_utils import write_json_atomic, write_text_atomic

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
MARKDOWN = ROOT / "BENCHMARKS.md"
MODULES = (
    "data",
    "metrics",
    "eval",
    "rewards",
    "train_step",
    "caption_memory",
)  # `make bench`; --large: below
ON_REQUEST = ("zero3",)  # --only zero3: minutes of 2-rank DeepSpeed launches

RL_H4_GOAL, RL_H1_GOAL = 1.3, 1.0
RL_H4_TARGET, DECODE_TARGET = 1.6, 1.4
ZERO3_GOAL = 1.3
# (figure key, module, path into its result, what it is, goal). The metrics figures are named by caption count.
FIGURES = [
    ("data_synthetic_images_per_s", "data", ("synthetic", "images_per_second"), "synthetic set build, 64 px", ""),
    ("data_facad_build_images_per_s", "data", ("facad_build", "images_per_second"),
     "FACAD build: 600x900 JPEG -> 384 px", ""),
    ("metrics_import_s", "metrics", ("import_s",), "import the metrics module", ""),
    ("metrics_{n}_cold_s", "metrics", ("cold_s",), "score {n} captions, all metrics, fresh process (JVMs start)", ""),
    ("metrics_{n}_warm_s", "metrics", ("warm_s",), "score {n} captions again, same process", ""),
    ("eval_batched_images_per_s", "eval", ("batched", "images_per_second"), "eval generate, beam 3, batched", ""),
    ("eval_single_images_per_s", "eval", ("single", "images_per_second"), "eval generate, one image a call", ""),
    ("eval_batched_over_single", "eval", ("eval_batched_over_single",), "batched / one at a time", "> 1"),
    ("rewards_cold_captions_per_s", "rewards", ("cold", "captions_per_second"), "ALS+SLS, distinct captions", ""),
    ("rewards_repeated_captions_per_s", "rewards", ("repeated", "captions_per_second"),
     "ALS+SLS, 4 samples/image (3 distinct), cache cleared first", ""),
    ("rewards_warm_captions_per_s", "rewards", ("warm", "captions_per_second"), "ALS+SLS, all cached", ""),
    ("rewards_repeated_over_cold", "rewards", ("repeated_over_cold",), "repeated / cold", "> 1"),
    ("rewards_warm_over_cold", "rewards", ("warm_over_cold",), "warm / cold", "> 1"),
    ("train_mle_s", "train_step", ("mle_s",), "train step, MLE only", ""),
    ("train_rl_h1_s", "train_step", ("rl_h1_s",), "train step, MLE + REINFORCE H=1", ""),
    ("train_rl_h4_s", "train_step", ("rl_h4_s",), "train step, MLE + REINFORCE H=4", ""),
    ("train_seed_s", "train_step", ("seed_s",), "train step, the seed's loop", ""),
    ("rl_h4_over_mle", "train_step", ("rl_h4_over_mle",), "H=4 / MLE", f"<= {RL_H4_GOAL} at BLIP-large shape"),
    ("rl_h1_over_mle", "train_step", ("rl_h1_over_mle",), "H=1 / MLE", ""),
    ("rl_h1_over_seed", "train_step", ("rl_h1_over_seed",), "H=1 / seed step", f"<= {RL_H1_GOAL} at BLIP-large shape"),
    ("seed_over_mle", "train_step", ("seed_over_mle",), "seed step / MLE", ""),
    ("train_rl_h4_sample_tokens", "train_step", ("rl_h4_sample_tokens",), "mean sampled tokens, H=4", ""),
    ("caption_500_peak_rss_mib", "caption_memory", ("500", "peak_rss_mib"), "`fashioncap caption`, 500 images", ""),
    ("caption_5000_peak_rss_mib", "caption_memory", ("5000", "peak_rss_mib"), "`fashioncap caption`, 5,000 images",
     ""),
    ("caption_rss_5000_over_500", "caption_memory", ("ratio",), "peak RSS 5,000 / 500 images", "<= 1.25"),
    ("zero3_rl_over_zero2_rl", "zero3", ("zero3_rl_over_zero2_rl",),
     "RL step, ZeRO-3 / ZeRO-2, 2 CPU ranks (decoder gathered once per decode)", f"<= {ZERO3_GOAL}"),
    ("zero3_synced_rl_over_zero2_rl", "zero3", ("zero3_synced_rl_over_zero2_rl",),
     "the same with `zero3_gathered_decoding: false` (per-module gathers every token, the path before)", ""),
    ("zero3_mle_over_zero2_mle", "zero3", ("zero3_mle_over_zero2_mle",),
     "MLE step, ZeRO-3 / ZeRO-2: the floor, no decoding", ""),
]  # fmt: skip
GOALS = {"rl_h4_over_mle": RL_H4_GOAL, "rl_h1_over_seed": RL_H1_GOAL}
# `--large`, per family: its marker section, results file, shape, and the goals set for it (issue 25: Florence-2's
# H=4 step at most 1.4 MLE steps, the engine at least 2x `generate` with the same captions).
LARGE = {
    "blip": {"tag": "large", "results": "latest-large.json", "title": "BLIP-large shape", "command": "make bench-large",
             "goals": GOALS, "rl_h4_target": RL_H4_TARGET, "decode_goal": DECODE_TARGET},
    "florence2": {"tag": "large-florence2", "results": "latest-large-florence2.json", "title": "Florence-2-base shape",
                  "command": "make bench-large", "goals": {"rl_h4_over_mle": 1.4}, "rl_h4_target": None,
                  "decode_goal": 2.0, "decode_limit": "each step reads the decoder's and the LM head's weights "
                  "(51,289 words) for a few rows on both sides alike, which bounds a CPU step; the engine saves the "
                  "cross-attention K/V projection per beam (once per image instead: a third of the rows) and "
                  "generate's cache reordering: by a FLOP count at most ~1.8x faster at batch 8, beam 3, 24 tokens"},
}  # fmt: skip
TINY_GOALS = {"zero3_rl_over_zero2_rl": ZERO3_GOAL}  # goals that apply to `make bench`'s tiny model
LIMITS = {
    "rl_h4_over_mle": "sampling is sequential: up to max_sample_tokens decoder steps of H x B rows, all of them here "
    "since random weights never emit [SEP], and the log-prob pass runs the decoder with backward over H x B more "
    "rows than the MLE pass; K/V of the 577 image tokens are computed once per image (the design's ~1.3x counts "
    "FLOPs; a CPU step of few rows is bound by per-token overhead, not FLOPs)",
    "zero3_rl_over_zero2_rl": "below the floor: ZeRO-3's per-module gathers in the forward and backward passes "
    "alone make the MLE step `zero3_mle_over_zero2_mle` times ZeRO-2's (a 0.4M-parameter model over gloo: the "
    "collectives, not the compute, are the step)",
    "rl_h1_over_seed": "sampling (torch.multinomial over the vocabulary at each token) and a decoder pass over twice "
    "the captions outweigh the seed's second vision pass where that pass is cheap",
}


def run_module(name: str, **kwargs) -> dict:
    """One bench module's run(**kwargs) in this process; a failure becomes {"error": ...}."""
    started = datetime.datetime.now(datetime.timezone.utc)
    try:
        module = importlib.import_module(f"bench.bench_{name}")
        result = module.run(**kwargs)
    except Exception as err:  # noqa: BLE001 - any failure is recorded, and the other modules still run
        traceback.print_exc()
        result = {"error": f"{type(err).__name__}: {err}"}
    seconds = (datetime.datetime.now(datetime.timezone.utc) - started).total_seconds()
    result["_bench_seconds"] = round(seconds, 1)
    result["_date"] = started.isoformat(timespec="seconds")
    print(f"[bench] {name}: {'error' if 'error' in result else 'ok'} in {seconds:.0f} s", file=sys.stderr)
    return result


def _lookup(result: dict, path: tuple):
    for key in path:
        if not isinstance(result, dict) or key not in result:
            return None
        result = result[key]
    return result


def figures(details: dict) -> dict:
    """The flat figure -> value map over every module's result."""
    flat = {}
    for key, module, path, _, _ in FIGURES:
        result = details.get(module, {})
        value = _lookup(result, path)
        if value is not None:
            flat[key.format(n=result.get("captions", ""))] = value
    return flat


def machine() -> dict:
    cpu = next(
        (line.split(":", 1)[1].strip() for line in _read("/proc/cpuinfo") if line.startswith("model name")),
        "",
    )
    mem = next((line.split()[1] for line in _read("/proc/meminfo") if line.startswith("MemTotal")), "0")
    import torch
    import transformers

    return {
        "cpu": cpu or platform.processor(),
        "cores": os.cpu_count(),
        "ram_gib": round(int(mem) / 2**20, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def _read(path: str) -> list[str]:
    try:
        return Path(path).read_text().splitlines()
    except OSError:
        return []


# --- markdown ---------------------------------------------------------------------------------------------------


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def _status(key: str, value, large: bool, goals: dict = GOALS) -> str:
    if key in TINY_GOALS:
        return "met" if value <= TINY_GOALS[key] else f"**missed**: {LIMITS[key]}"
    if key not in goals or value is None:
        return ""
    if not large:
        return "goal applies at BLIP-large shape (`make bench-large`)"
    return "met" if value <= goals[key] else f"**missed**: {LIMITS[key]}"


def _header(meta: dict) -> list[str]:
    m = meta["machine"]
    return [
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM; Python {m['python']}, torch {m['torch']}, "
        f"transformers {m['transformers']}. Command: `{meta['command']}`. Date: {meta['date']}.",
        "",
        f"torch threads: {meta['torch_threads']}. The cores are shared with other work: absolute times move with their "
        "load, while each ratio is measured side by side in one process (variants interleaved step by step), so "
        "load hits both sides alike.",
        "",
    ]


def cpu_section(meta: dict, details: dict) -> str:
    flat = figures(details)
    lines = ["## CPU (`make bench`: tiny BLIP, batch 16)", "", *_header(meta)]
    lines += ["| figure | value | what | goal | status |", "|---|---|---|---|---|"]
    for key, module, _, what, goal in FIGURES:
        n = details.get(module, {}).get("captions", "")
        name = key.format(n=n)
        if name in flat:
            value = flat[name]
            lines.append(
                f"| `{name}` | {_fmt(value)} | {what.format(n=n)} | {goal} | {_status(name, value, False)} |"
            )
    errors = {name: r["error"] for name, r in details.items() if "error" in r}
    lines += [f"| `{name}` | error | {msg.splitlines()[0][:200]} | | |" for name, msg in errors.items()]
    train = details.get("train_step", {})
    if "mle_s" in train:
        lines += ["", _train_note(train)]
    return "\n".join(lines)


def _train_note(train: dict) -> str:
    seed = (
        f", seed's greedy generate max_length {train['seed_greedy_max_length']}"
        if "seed_s" in train
        else " (no seed step: the seed's loop is BLIP's)"
    )
    return (
        f"Train step: median of {train['measured_steps']} steps after {train['warmup_steps']} warm-up, same batch "
        f"(mean reference length {train['reference_tokens']} tokens), trial-4 LoRA (r16, decoder + last "
        f"vision layers), AdamW; samples up to {train['max_sample_tokens']} new tokens (random weights: mean "
        f"{train.get('rl_h4_sample_tokens', '?')}){seed}; rewards {'+'.join(train['reward_funcs'])}; "
        f"{train['trainer']}."
    )


def large_section(meta: dict, result: dict, family: str = "blip") -> str:
    """The `--large` section of one family: its train-step figures and its decoding figures, against its goals."""
    spec = LARGE[family]
    goals, target = spec["goals"], spec["rl_h4_target"]
    lines = [f"## CPU, {spec['title']} (`{spec['command']}`: random weights, batch 2)", "", *_header(meta)]
    if "error" in result:
        return "\n".join([*lines, f"Error: {result['error']}"])
    lines += ["| figure | value | goal | status |", "|---|---|---|---|"]
    variants = [v for v in ("mle", "rl_h1", "rl_h4", "rl_h4_guard", "seed") if f"{v}_s" in result]
    for variant in variants:
        lines.append(f"| `train_{variant}_s` | {_fmt(result.get(f'{variant}_s'))} | | |")
    for key in ("rl_h4_over_mle", "rl_h4_over_mle_50", "rl_h1_over_mle", "rl_h1_over_seed", "seed_over_mle",
                "guard_check_over_rl_h4"):  # fmt: skip
        if key not in result:
            continue
        goal = f"<= {goals[key]}" if key in goals else ""
        status = _status(key, result.get(key), True, goals)
        if key == "rl_h4_over_mle" and target:
            goal = f"<= {target} (goal {goals[key]})"
            if result.get(key) is not None and result[key] <= target and status != "met":
                status = f"target met; goal {status}"
        lines.append(f"| `{key}` | {_fmt(result.get(key))} | {goal} | {status} |")
    decoding = result.get("decoding") or {}
    if "error" in decoding:
        lines.append(f"| decoding | error: {decoding['error']} | | |")
    else:
        for key, path in DECODING_FIGURES.items():
            value = _lookup(decoding, path)
            if value is None:
                continue
            goal = f">= {spec['decode_goal']}" if key == "decode_fast_over_generate" else ""
            status = "" if not goal else ("met" if value >= spec["decode_goal"] else "not met")
            if status == "not met" and spec.get("decode_limit"):
                status = f"**not met**: {spec['decode_limit']}"
            lines.append(f"| `{key}` | {_fmt(value)} | {goal} | {status} |")
    steps = "; ".join(f"{v} {result[f'{v}_all_s']}" for v in variants if v != "rl_h4_guard")
    return "\n".join(
        [
            *lines,
            "",
            _train_note(result),
            "",
            f"Every measured step (s): {steps}.",
            "",
            _decoding_note(decoding),
        ]
    )


def _decoding_note(decoding: dict) -> str:
    if "error" in decoding:
        return ""
    if "sample" in decoding:
        return _engine_note(decoding)
    beam, mle = decoding["beam"], decoding["mle"]
    return (
        f"Decoding (bench/bench_decoding.py, {decoding['torch_threads']} thread): beam {beam['num_beams']}, batch "
        f"{beam['batch']}, {beam['max_new_tokens']} new tokens from image embeddings: `generate` "
        f"{beam['generate_s']} s vs the shared-K/V engine {beam['decode_s']} s. Rollout (H=4, batch 2, sampling + "
        f"log-prob pass with backward): old {decoding['rollout_24']['rollout_old_s']} s vs new "
        f"{decoding['rollout_24']['rollout_new_s']} s at 24 tokens. SDPA vs eager: MLE step with "
        f"{mle['vision_layers']} vision layers, {mle['eager_s']} s vs {mle['sdpa_s']} s."
    )


def _engine_note(decoding: dict) -> str:
    """Florence-2's decoding figures: the engine against `generate` from the encoder's output."""
    beam, sample = decoding["beam"], decoding["sample"]
    return (
        f"Decoding (bench/bench_decoding.py, {decoding['torch_threads']} thread), from random encoder states of "
        f"{decoding['memory_tokens']} tokens (577 image tokens + the caption prompt) after the BART encoder, so "
        f"neither side runs the vision tower or the encoder: beam {beam['num_beams']}, batch {beam['batch']}, "
        f"{beam['max_new_tokens']} new tokens: `generate` {beam['generate_s']} s vs the shared-K/V engine "
        f"{beam['decode_s']} s, same captions: {beam['decode_fast_same_captions']}. Sampling with the trials' "
        f"decoder LoRA, H={sample['num_return_sequences']} per image, batch {sample['batch']}, "
        f"{sample['max_new_tokens']} new tokens, both seeded alike: `generate` {sample['generate_s']} s vs the "
        f"engine {sample['decode_s']} s ({sample['decode_fast_over_generate']}x), same captions draw for draw: "
        f"{sample['decode_fast_same_captions']}."
    )


def gpu_section(gpu: dict) -> str:
    """From bench/results/gpu.json (bench/gpu_check.py's output)."""
    variants = ("mle", "rl_h1", "rl_h4", "seed")
    lines = [
        f"## GPU ({gpu.get('device', '?')}; `bash bench/gpu_check.sh`)",
        "",
        f"{gpu.get('shape')} shape, random weights, batch {gpu.get('batch_size')}, bf16 autocast {gpu.get('bf16')}; "
        f"torch {gpu.get('torch')}, transformers {gpu.get('transformers')}; date {gpu.get('date')}; model init "
        f"{gpu.get('init_s')} s, whole check {gpu.get('total_s')} s. Rewards: {gpu.get('rewards_note', '')}",
        "",
        "| checkpointing | "
        + " | ".join(f"{v} s" for v in variants)
        + " | rl_h4/mle | rl_h1/seed | "
        + " | ".join(f"peak GiB {v}" for v in variants)
        + " |",
        "|---" * (2 * len(variants) + 3) + "|",
    ]
    for label, r in gpu.get("train", {}).items():
        keys = (
            [f"{v}_s" for v in variants]
            + ["rl_h4_over_mle", "rl_h1_over_seed"]
            + [f"{v}_peak_gib" for v in variants]
        )
        cells = [f"error: {r['error'][:200]}"] if "error" in r else [_fmt(r.get(k, "")) for k in keys]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| eval (beam 3) | generate images/s | fashioncap images/s | CUDA graph / eager | graph captions = eager |",
        "|---|---|---|---|---|",
    ]
    for label, r in gpu.get("eval", {}).items():
        if "error" in r:
            lines.append(f"| {label} | error: {r['error'][:200]} | | | |")
            continue
        same = r.get("graph_same_captions_as_eager", "")
        if r.get("cuda_graphs_failure"):
            same = f"graphs failed, eager used: {r['cuda_graphs_failure'][:200]}"
        # a gpu.json from before the engine was timed there holds generate's figure alone
        generate = r.get("generate", {}).get("images_per_second", r.get("images_per_second", ""))
        engine = r.get("fashioncap", {}).get("images_per_second", "")
        lines.append(
            f"| {label} | {_fmt(generate)} | {_fmt(engine)} | {_fmt(r.get('graph_over_eager', ''))} | {same} |"
        )
    return "\n".join(lines)


SKELETON = """# Benchmarks

Generated by `python -m bench.run` (`make bench`, `make bench-large`) between the markers below; the GPU section
comes from `bench/results/gpu.json` (`bench/gpu_check.sh` on a GPU machine). Text outside the markers is kept.

<!-- bench:cpu -->
<!-- /bench:cpu -->

<!-- bench:large -->
Not run yet: `make bench-large`.
<!-- /bench:large -->

<!-- bench:large-florence2 -->
Not run yet: `make bench-large`.
<!-- /bench:large-florence2 -->

<!-- bench:gpu -->
No GPU run recorded yet: on a GPU machine run `bash bench/gpu_check.sh` (writes `$OUT/gpu.json`), copy it to
`bench/results/gpu.json` and run `python -m bench.run --render` to render it here.
<!-- /bench:gpu -->
"""


def replace_section(text: str, tag: str, body: str) -> str:
    start, end = f"<!-- bench:{tag} -->", f"<!-- /bench:{tag} -->"
    block = f"{start}\n{body}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        return pattern.sub(lambda _: block, text, count=1)
    return text.rstrip("\n") + "\n\n" + block + "\n"


def update_markdown(sections: dict[str, str]) -> None:
    text = MARKDOWN.read_text(encoding="utf-8") if MARKDOWN.exists() else SKELETON
    gpu_json = RESULTS / "gpu.json"
    if gpu_json.exists():
        sections = {**sections, "gpu": gpu_section(json.loads(gpu_json.read_text(encoding="utf-8")))}
    for tag, body in sections.items():
        text = replace_section(text, tag, body)
    write_text_atomic(MARKDOWN, text)


def render() -> None:
    """The sections from the stored results, e.g. after copying a GPU machine's gpu.json into bench/results."""
    sections = {}
    latest = RESULTS / "latest.json"
    if latest.exists():
        stored = json.loads(latest.read_text(encoding="utf-8"))
        sections["cpu"] = cpu_section(stored["meta"], stored["details"])
    for family, spec in LARGE.items():
        path = RESULTS / spec["results"]
        if path.exists():
            stored = json.loads(path.read_text(encoding="utf-8"))
            sections[spec["tag"]] = large_section(stored["meta"], stored["details"], family)
    update_markdown(sections)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--large", action="store_true", help="the train step and decoding at the family's large shape only"
    )
    parser.add_argument(
        "--family", choices=LARGE, default="blip",
        help="with --large: BLIP-large's shape (blip) or Florence-2-base's (florence2)",
    )  # fmt: skip
    parser.add_argument(
        "--only", nargs="+", choices=MODULES + ON_REQUEST, metavar="NAME",
        help=f"some of {', '.join(MODULES + ON_REQUEST)}",
    )  # fmt: skip
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (default 1: the cores are shared)"
    )
    parser.add_argument(
        "--render", action="store_true", help="run nothing: rewrite BENCHMARKS.md from bench/results/*.json"
    )
    args = parser.parse_args(argv)
    if args.large and args.only:
        parser.error("--large runs the train step only; it takes no --only")
    if args.family != "blip" and not args.large:
        parser.error("--family picks the shape of --large; `make bench` is the tiny BLIP's")
    if args.render:
        render()
        return 0
    import torch

    torch.set_num_threads(args.threads)
    meta = {
        "command": " ".join(["python -m bench.run", *(argv if argv is not None else sys.argv[1:])]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "torch_threads": torch.get_num_threads(),
    }
    if args.large:
        spec = LARGE[args.family]
        result = run_module("train_step", large=True, family=args.family)
        result["decoding"] = run_module("decoding", family=args.family)
        write_json_atomic(RESULTS / spec["results"], {**_flat_large(result), "meta": meta, "details": result})
        update_markdown({spec["tag"]: large_section(meta, result, args.family)})
        return 1 if "error" in result or "error" in result["decoding"] else 0
    latest = RESULTS / "latest.json"
    previous = json.loads(latest.read_text(encoding="utf-8")).get("details", {}) if latest.exists() else {}
    details = {name: previous[name] for name in MODULES + ON_REQUEST if name in previous}
    for name in args.only or MODULES:
        details[name] = run_module(name)
    details = {name: details[name] for name in MODULES + ON_REQUEST if name in details}
    write_json_atomic(latest, {**figures(details), "meta": meta, "details": details})
    update_markdown({"cpu": cpu_section(meta, details)})
    return 1 if any("error" in r for r in details.values()) else 0


DECODING_FIGURES = {
    "decode_fast_over_generate": ("beam", "decode_fast_over_generate"),
    "decode_fast_same_captions": ("beam", "decode_fast_same_captions"),
    "rollout_24_new_over_old": ("rollout_24", "rollout_new_over_old"),
    "rollout_50_new_over_old": ("rollout_50", "rollout_new_over_old"),
    "sdpa_over_eager": ("mle", "sdpa_over_eager"),
    "sample_fast_over_generate": ("sample", "decode_fast_over_generate"),
    "sample_fast_same_captions": ("sample", "decode_fast_same_captions"),
}


def _flat_large(result: dict) -> dict:
    keys = ("mle_s", "rl_h1_s", "rl_h4_s", "rl_h4_guard_s", "seed_s", "rl_h4_50_s", "rl_h4_over_mle",
            "rl_h4_over_mle_50", "rl_h1_over_mle", "rl_h1_over_seed", "seed_over_mle", "guard_check_over_rl_h4")  # fmt: skip
    flat = {(f"train_{k}" if k.endswith("_s") else k): result[k] for k in keys if k in result}
    decoding = result.get("decoding") or {}
    flat.update(
        {k: _lookup(decoding, path) for k, path in DECODING_FIGURES.items() if "error" not in decoding}
    )
    return flat


if __name__ == "__main__":
    sys.exit(main())
