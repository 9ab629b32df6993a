#!/usr/bin/env bash
# The xpkit demo: a prepare -> train (a sweep) -> evaluate pipeline in a fresh git project,
# then browsing, diffing and an MLflow sync into a local SQLite store.
# Usage: bash examples/demo.sh [DIR]   (default: a new temporary directory)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dest=${1:-$(mktemp -d)/xpkit-demo}
mkdir -p "$dest"
cp -r "$here/pipeline/." "$dest/"
cd "$dest"
if [ ! -d .git ]; then
  git init -q
  git add -A
  git -c user.name=demo -c user.email=demo@example.invalid commit -qm "demo project"
fi
say() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }
run() { say "$*"; "$@"; }

run python prepare.py
run python train.py lr=0.05
run python train.py --experiment fast
run python train.py --sweep lr=0.01,0.1 epochs=20,60 --backend joblib --jobs 2
run python evaluate.py
run xp ls results/train --sort -metrics.train_mse
run xp ls --where 'config.lr >= 0.1' --format csv
run xp show results/evaluate/latest
run xp lineage results/evaluate/latest
run xp diff results/train/latest "$(ls -d results/train/2* | head -n 1)"
run xp hash data
run xp log
echo
echo "demo project: $dest  (try: cd $dest && xp ui train --open)"
