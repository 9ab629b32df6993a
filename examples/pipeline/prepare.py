"""Prepare: read the raw CSV, standardize the features, split train/test into the run dir."""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass
from pathlib import Path

import xpkit as xp


@dataclass
class Config:
    raw: str = "data/houses.csv"  # the raw data: hashed on every run
    test_fraction: float = 0.25  # share of rows held out for evaluation
    seed: int = 0  # shuffling seed


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / len(values)
    return mean, var**0.5 or 1.0


@xp.stage(data=["raw"])
def main(cfg: Config) -> dict[str, int]:
    # %% load
    with open(cfg.raw, newline="") as f:
        rows = [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]
    features = [k for k in rows[0] if k != "price_k"]

    # %% standardize and split
    stats = {k: _mean_std([r[k] for r in rows]) for k in features}
    scaled = [
        {**{k: (r[k] - stats[k][0]) / stats[k][1] for k in features}, "y": r["price_k"]}
        for r in rows
    ]
    random.Random(cfg.seed).shuffle(scaled)
    n_test = int(len(scaled) * cfg.test_fraction)

    # %% save the split
    out = Path(cfg.save_dir)
    (out / "train.json").write_text(json.dumps(scaled[n_test:]))
    (out / "test.json").write_text(json.dumps(scaled[:n_test]))
    (out / "features.json").write_text(json.dumps({"features": features, "stats": stats}))
    xp.log_metrics({"rows": len(rows), "test_rows": n_test})
    xp.get_logger().info("%d rows, %d features, %d held out", len(rows), len(features), n_test)
    return {"rows": len(rows)}


if __name__ == "__main__":
    xp.run(main)
