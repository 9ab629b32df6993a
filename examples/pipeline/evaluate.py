"""Evaluate: score a trained model on the held-out split of its prepare run."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import xpkit as xp


@dataclass
class Config:
    model: str = "results/train/latest"  # the train run to evaluate (a run dir or id)


@xp.stage(upstream=["model"])
def main(cfg: Config) -> dict[str, float]:
    # %% load the model and the held-out rows
    train_run = xp.Run(cfg.model)
    prep_dir = Path(train_run.config.prep)
    rows = json.loads((prep_dir / "test.json").read_text())
    model = json.loads((Path(cfg.model) / "model.json").read_text())

    # %% score
    preds = [sum(model["w"][k] * r[k] for k in model["w"]) + model["b"] for r in rows]
    ys = [r["y"] for r in rows]
    mse = sum((p - y) ** 2 for p, y in zip(preds, ys, strict=True)) / len(ys)
    mean = sum(ys) / len(ys)
    r2 = 1 - mse / (sum((y - mean) ** 2 for y in ys) / len(ys))
    xp.log_metrics({"test_mse": mse, "r2": r2})
    return {"test_mse": mse, "r2": r2}


if __name__ == "__main__":
    xp.run(main)
