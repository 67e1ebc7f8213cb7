"""Tables of sampled captions during RL (TRL's `log_completions` idea): what the rewards see and do, step by step.

Every `log_completions_steps` optimizer steps of the REINFORCE term (its first step included), the rollout of
the main process hands its samples here: for the first `IMAGES_PER_TABLE` images of its batch, the H sampled
captions with each reward, the total, the baseline and the advantage, beside the reference caption. One JSON line per table is appended to
RUN/completions.jsonl; the table also goes to TensorBoard (as text) and Trackio (as a table) when the run
reports there. `fashioncap report` shows a run's first and last tables side by side.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

COMPLETIONS_FILE = "completions.jsonl"
IMAGES_PER_TABLE = 3


def completions_table(
    step: int,
    image_ids: list,
    references: list[str],
    captions: list[str],
    rewards: dict[str, torch.Tensor],
    total: torch.Tensor,
    baseline: torch.Tensor,
    keep: torch.Tensor | None = None,
) -> dict:
    """{"step", "images": [{"image_id", "reference", "samples": [{"caption", "rewards", "total",
    "baseline", "advantage"}]}]}: `captions`, the rewards, `total` and `baseline` hold H entries per image in
    image order; `total` and `baseline` are those the REINFORCE term used (after any scaling). `keep`: the
    samples the REINFORCE term kept (`mask_truncated_completions`); the others' advantage is 0, as it used."""
    h = len(captions) // len(image_ids)
    advantage = total - baseline if keep is None else (total - baseline) * keep.to(total.dtype)
    images = []
    for i, image_id in enumerate(image_ids[:IMAGES_PER_TABLE]):
        samples = [
            {
                "caption": captions[j],
                "rewards": {name: round(float(values[j]), 4) for name, values in rewards.items()},
                "total": round(float(total[j]), 4),
                "baseline": round(float(baseline[j]), 4),
                "advantage": round(float(advantage[j]), 4),
            }
            for j in range(i * h, (i + 1) * h)
        ]
        images.append({"image_id": int(image_id), "reference": references[i], "samples": samples})
    return {"step": step, "images": images}


def table_rows(table: dict) -> tuple[list[str], list[list[str]]]:
    """(header, rows): one row per sampled caption, with its image (and reference) on the image's first row."""
    names = list(table["images"][0]["samples"][0]["rewards"]) if table["images"] else []
    header = ["image", "caption", *names, "total", "baseline", "advantage"]
    rows = []
    for image in table["images"]:
        label = f"#{image['image_id']} (reference: {image['reference']})"
        for sample in image["samples"]:
            cells = [label, sample["caption"], *(f"{sample['rewards'][n]:.3f}" for n in names)]
            rows.append(cells + [f"{sample[k]:.3f}" for k in ("total", "baseline", "advantage")])
            label = ""
    return header, rows


def table_markdown(table: dict) -> str:
    """The table as Markdown (what TensorBoard's text tab shows)."""
    header, rows = table_rows(table)
    lines = [header, ["---"] * len(header), *rows]
    return "\n".join("| " + " | ".join(c.replace("|", "/") for c in line) + " |" for line in lines) + "\n"


def write_completions(
    output_dir: str | Path, table: dict, tensorboard=None, to_trackio: bool = False
) -> None:
    """Append the table to RUN/completions.jsonl; log it to TensorBoard (given its writer) as text, and to the
    current Trackio run (`to_trackio`) as a table."""
    path = Path(output_dir) / COMPLETIONS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(table, ensure_ascii=False) + "\n")
    if tensorboard is not None:
        tensorboard.add_text("completions", table_markdown(table), table["step"])
    if to_trackio:
        import trackio

        header, rows = table_rows(table)
        trackio.log({"completions": trackio.Table(columns=header, data=rows)}, step=table["step"])


def read_completions(run_dir: str | Path) -> list[dict]:
    """The run's tables in the order they were logged ([] when it logged none)."""
    path = Path(run_dir) / COMPLETIONS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
