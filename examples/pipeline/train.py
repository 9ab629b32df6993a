"""Train: fit a linear model by gradient descent on a prepared split."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import xpkit as xp


@dataclass
class Config:
    prep: str = "results/prepare/latest"  # the prepare run to train on (a run dir or id)
    lr: float = 0.1  # learning rate
    epochs: int = 50  # passes over the training set


@xp.stage(upstream=["prep"])
def main(cfg: Config) -> dict[str, float]:
    # %% data
    rows = json.loads((Path(cfg.prep) / "train.json").read_text())
    features = [k for k in rows[0] if k != "y"]
    w = dict.fromkeys(features, 0.0)
    b = 0.0

    # %% gradient descent
    for epoch in range(cfg.epochs):
        grad_w = dict.fromkeys(features, 0.0)
        grad_b = 0.0
        loss = 0.0
        for r in rows:
            err = sum(w[k] * r[k] for k in features) + b - r["y"]
            loss += err * err
            grad_b += err
            for k in features:
                grad_w[k] += err * r[k]
        n = len(rows)
        w = {k: w[k] - cfg.lr * 2 * grad_w[k] / n for k in features}
        b -= cfg.lr * 2 * grad_b / n
        xp.log_metrics({"train_mse": loss / n}, step=epoch)

    # %% save
    (Path(cfg.save_dir) / "model.json").write_text(json.dumps({"w": w, "b": b}))
    return {"train_mse": loss / n}


if __name__ == "__main__":
    xp.run(main)
