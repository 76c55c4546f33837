#!/usr/bin/env bash
# Wheels the lent GPU machine lacks, into .whl/ (git-ignored through .git/info/exclude), for
# scripts/gpu_check.sh to install there without a network. Run here, with PyPI reachable:
#
#     bash scripts/gpu_wheels.sh        # then carry .whl to the GPU machine; it runs scripts/gpu_check.sh
#
# The GPU machine: x86_64, Python 3.12, torch 2.11 (cu130), lightning 2.6.6, torchmetrics, torchvision, timm,
# numpy, scipy, scikit-image, opencv-python-headless, pandas, matplotlib, rich, pyyaml, cloudpickle ... but
# no Hydra, smp, albumentations, pydantic, pycocotools or optuna. Versions: those of this project's .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=.whl
PY=${PY:-python3}
mkdir -p "$DEST"
EXCLUDE=$(git rev-parse --git-path info/exclude)  # not .gitignore: local to this clone
mkdir -p "$(dirname "$EXCLUDE")"
grep -qxF ".whl/" "$EXCLUDE" 2>/dev/null || echo ".whl/" >> "$EXCLUDE"

# segsweep's imports on the train path, and what they import (pure-python wheels are py3-none-any;
# pydantic-core, simsimd, stringzilla, pycocotools and SQLAlchemy are cp312 manylinux builds).
PACKAGES=(
  hydra-core==1.3.8 omegaconf==2.3.1
  segmentation-models-pytorch==0.6.0
  albumentations==2.0.8 albucore==0.0.24 simsimd==6.5.16 stringzilla==5.3.2
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0
  pycocotools==2.0.11
  # Hydra imports every hydra_plugins module at start-up, segsweep's Optuna sweeper included
  optuna==5.1.0 alembic==1.20.1 sqlalchemy==2.1.9 colorlog==6.12.0 mako==1.4.3
)
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux1_x86_64 -d "$DEST" "${PACKAGES[@]}"
# antlr4-python3-runtime 4.9.3 (what omegaconf 2.3 needs) is published as source only: build its
# pure-python wheel here.
ls "$DEST"/antlr4_python3_runtime-4.9.3-*.whl >/dev/null 2>&1 \
  || "$PY" -m pip wheel --quiet --no-deps -w "$DEST" antlr4-python3-runtime==4.9.3
ls -la "$DEST"
du -sh "$DEST"
