"""GPU check for a lent machine: BLIP-large shape, bf16 autocast, batch 16, train step and eval throughput.

Train step (bench/bench_train_step.py's code, the real FashionCapTrainer.compute_loss): MLE, MLE+REINFORCE H=1 and
H=4, and the seed's loop, with gradient checkpointing off and on (the seed's loop only off: it generated in train
mode, where checkpointing turns the KV cache off); median seconds and peak memory per variant. Eval: beam 3, 50 new
tokens, batch 16 and 64, images/s of `generate` and of fashioncap's shared-K/V engine (what `eval` runs), LoRA merged,
with its decoder step replayed as a CUDA graph and eagerly: both must give the same captions, and a graph that failed
(the engine then decodes eagerly, fashioncap.decoding.cuda_graphs_failure) is reported.

The GPU machine has no spaCy, datasets, evaluate, pycocoevalcap or deepspeed: only modules that import none of them
are used, and ALS is replaced by a bench-only stand-in (`als_ws_bench`: whitespace words instead of spaCy's
NOUN/ADJ, same set arithmetic). Sized for well under 8 minutes on an H100 (estimated: not yet run on one); a
section that would start after --budget-s is skipped and says so. `--smoke` is a dry run: tiny shapes on CPU with
those packages blocked.

    bash bench/gpu_check.sh            # on the GPU machine; JSON to $OUT/gpu.json and stdout, a table on stderr
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

ABSENT_ON_GPU_MACHINE = ("datasets", "evaluate", "pycocoevalcap", "spacy", "deepspeed")
# ViT-L forward at 384 px (~380), backward through the last 6 layers' LoRA (~190), decoder forward+backward (~70)
TRIAL4_GFLOP_PER_IMAGE = 640
START = time.monotonic()


def als_whitespace(completions, attributes, **_) -> list[float]:
    """ALS with whitespace words in place of spaCy's NOUN/ADJ tokens (no spaCy on the GPU machine)."""
    from fashioncap.rewards import clean_attributes

    refs = [clean_attributes(a) for a in attributes]
    return [
        len(set(c.lower().split()) & r) / len(r) if r else 0.0 for c, r in zip(completions, refs, strict=True)
    ]


def eval_throughput(model, processor, rows, batch_size: int, max_new_tokens: int, device: str, bf16: bool):
    """Images/s of captioning (beam 3) through `generate` and through fashioncap's shared-K/V engine
    (`fashioncap.inference.caption_pixels`, what `eval` and `caption` run) with and without CUDA graphs, same
    batch, median of 3 after warm-up; whether the three give the same captions."""
    import contextlib

    import torch

    from bench.bench_train_step import synchronize
    from fashioncap.data.collator import CaptionCollator
    from fashioncap.decoding import cuda_graphs_failure
    from fashioncap.inference import caption_pixels
    from fashioncap.trainer import eval_mode

    pixel_values = CaptionCollator(processor).pixel_values([r["image"] for r in rows[:batch_size]]).to(device)
    kwargs = dict(num_beams=3, max_new_tokens=max_new_tokens, min_new_tokens=5)
    paths = {
        "generate": lambda: model.generate(pixel_values=pixel_values, **kwargs),
        "fashioncap": lambda: caption_pixels(model, pixel_values=pixel_values, **kwargs),
        "fashioncap_eager": lambda: caption_pixels(
            model, pixel_values=pixel_values, cuda_graphs=False, **kwargs
        ),
    }
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    result, outputs = {"batch_size": batch_size, **kwargs}, {}
    with torch.no_grad(), eval_mode(model), autocast:
        for name, caption in paths.items():
            times = []
            for _ in range(4):
                synchronize(device)
                start = time.perf_counter()
                outputs[name] = caption()
                synchronize(device)
                times.append(time.perf_counter() - start)
            median = statistics.median(times[1:])
            result[name] = {"seconds": round(median, 4), "images_per_second": round(batch_size / median, 2)}
    decoded = {name: processor.batch_decode(ids, skip_special_tokens=True) for name, ids in outputs.items()}
    result["fashioncap_over_generate"] = round(
        result["fashioncap"]["images_per_second"] / result["generate"]["images_per_second"], 2
    )
    result["same_captions"] = decoded["generate"] == decoded["fashioncap"]
    result["graph_over_eager"] = round(
        result["fashioncap"]["images_per_second"] / result["fashioncap_eager"]["images_per_second"], 2
    )
    result["graph_same_captions_as_eager"] = decoded["fashioncap"] == decoded["fashioncap_eager"]
    result["cuda_graphs_failure"] = cuda_graphs_failure()
    return result


def check(smoke: bool, budget_s: float) -> dict:
    import torch
    import transformers

    from bench.bench_train_step import VARIANTS, build_model, facad_rows, measure
    from fashioncap.rewards import REWARD_FUNCS

    REWARD_FUNCS["als_ws_bench"] = als_whitespace  # bench-only registration, never in a recipe
    device = "cpu" if smoke else "cuda"
    shape, batch, evals, tokens = ("tiny", 4, (4,), 8) if smoke else ("large", 16, (16, 64), 50)
    steps = dict(warmup=1, steps=1) if smoke else dict(warmup=2, steps=3)
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu (smoke)",
        "smoke": smoke,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "shape": shape,
        "batch_size": batch,
        "bf16": not smoke,
        "rewards_note": "SLS + `als_ws_bench` (ALS over whitespace words; spaCy is not installed on the GPU machine)",
        "train": {},
        "eval": {},
    }
    rows, wordmap, words = facad_rows(max(evals), 64 if smoke else 384)
    start = time.perf_counter()
    model, processor = build_model(shape, words, device)
    result["init_s"] = round(time.perf_counter() - start, 1)
    built = (model, processor, rows, wordmap)
    for checkpointing in (False, True):
        label = f"checkpointing {'on' if checkpointing else 'off'}"
        result["train"][label] = _guarded(budget_s, lambda c=checkpointing: measure(
            shape, batch_size=batch, max_tokens=tokens, device=device, bf16=not smoke, gradient_checkpointing=c,
            reward_funcs=("als_ws_bench", "sls"), variants=VARIANTS if not c else VARIANTS[:3], built=built, **steps,
        ))  # fmt: skip
        print(f"[gpu_check] {label}: {result['train'][label]}", file=sys.stderr, flush=True)
    model.gradient_checkpointing_disable()
    merged = model.merge_and_unload()
    for size in evals:
        result["eval"][f"batch {size}"] = _guarded(
            budget_s,
            lambda s=size: eval_throughput(merged, processor, rows, s, tokens, device, not smoke),
        )
    if device == "cuda":
        result["max_memory_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    mle = result["train"].get("checkpointing off", {}).get("mle_s")
    if mle and not smoke:  # a trial-4 step at batch 16 is ~10.2 TFLOP (docs/design.md, "Where the time goes")
        result["mle_tflop_per_s"] = round(TRIAL4_GFLOP_PER_IMAGE * batch / 1000 / mle, 1)
    result["total_s"] = round(time.monotonic() - START, 1)
    return result


def _guarded(budget_s: float, section) -> dict:
    """Run a section unless the budget is spent; an exception is recorded, and the next section still runs."""
    if time.monotonic() - START > budget_s:
        return {"error": f"skipped: {budget_s:.0f} s budget spent"}
    try:
        return section()
    except Exception as err:  # noqa: BLE001 - the check reports what failed and goes on
        import traceback

        traceback.print_exc()
        return {"error": f"{type(err).__name__}: {err}"}


def table(result: dict) -> str:
    lines = [f"{result['device']}  batch {result['batch_size']}  init {result.get('init_s')} s",
             f"{'':18}{'mle':>8}{'rl_h1':>8}{'rl_h4':>8}{'seed':>8}{'h4/mle':>8}{'h1/seed':>8}{'peak GiB':>10}"]  # fmt: skip
    for label, r in result["train"].items():
        if "error" in r:
            lines.append(f"{label:18}{r['error'][:90]}")
            continue
        cells = [
            r.get(k) for k in ("mle_s", "rl_h1_s", "rl_h4_s", "seed_s", "rl_h4_over_mle", "rl_h1_over_seed")
        ]
        peak = max((v for k, v in r.items() if k.endswith("_peak_gib")), default="-")
        lines.append(
            f"{label:18}" + "".join(f"{c if c is not None else '-':>8}" for c in cells) + f"{peak:>10}"
        )
    for label, r in result["eval"].items():
        if "error" in r:
            lines.append(f"eval {label}: {r['error'][:90]}")
            continue
        lines.append(
            f"eval {label}: generate {r['generate']['images_per_second']} images/s, fashioncap "
            f"{r['fashioncap']['images_per_second']} ({r['fashioncap_over_generate']}x, same captions: "
            f"{r['same_captions']}); graph/eager {r['graph_over_eager']}x, same captions: "
            f"{r['graph_same_captions_as_eager']}, graph failure: {r['cuda_graphs_failure']}"
        )
    if "mle_tflop_per_s" in result:
        lines.append(f"MLE step: {result['mle_tflop_per_s']} TFLOP/s achieved")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/gpu.json"))
    parser.add_argument(
        "--budget-s", type=float, default=360, help="start no section after this many seconds"
    )
    parser.add_argument(
        "--smoke", action="store_true", help="tiny shapes on CPU, GPU-machine packages blocked"
    )
    args = parser.parse_args()
    if args.smoke:
        # As on the GPU machine: `import spacy` fails and find_spec("spacy") is None (None in sys.modules does both).
        sys.modules.update(dict.fromkeys(ABSENT_ON_GPU_MACHINE))
        import torch

        torch.set_num_threads(1)  # the CPU cores here are shared
        args.out = args.out.with_name("gpu-smoke.json")  # never overwrite a real GPU result
    result = check(args.smoke, args.budget_s)
    text = json.dumps(result, indent=2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    print(text)
    print(table(result), file=sys.stderr)
    failed = [k for section in ("train", "eval") for k, r in result[section].items() if "error" in r]
    failed += [k for k, r in result["eval"].items() if r.get("graph_same_captions_as_eager") is False]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
