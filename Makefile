# make demo  -> offline SGD vs SWA demo on synthetic data (CPU, a few minutes)
# make test  -> the test suite (installs what it needs first)
# make bench -> throughput vs the authors' pipeline on this device (BENCH_ARGS="--repeats 3 ..."), see docs/performance.md
# make bench-gpu -> the GPU figures docs/performance.md records (and the sweeps' GPU-hour estimates read)
# make reproduce-cifar100 / reproduce-cifar10 / reproduce-fixed-lr -> paper tables (GPU)
#   MODELS=vgg16,wrn28x10 (default: all)  SEEDS=0,1,2  RUNS=runs  EXTRA="hydra/launcher=slurm ..."
#   DRY_RUN=1 prints the plan and GPU-hour estimate only
# make reproduce-imagenet -> Table 2 (GPUS=8 per run, IMAGENET=/path/with/train+val, MODELS=resnet50,...)
# make reproduce-uncertainty -> SGD / EMA / SWA / SWAG with calibration (DATASET=cifar100, VAL_SIZE=5000; GPU)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
DEMO_RUNS ?= runs/demo
DEMO_RUN_DIRS := $(DEMO_RUNS)/synthetic/small_cnn/sgd/seed0 $(DEMO_RUNS)/synthetic/small_cnn/swa/seed0

MODELS ?=
SEEDS ?= 0,1,2
GPUS ?= 1
IMAGENET ?= data/imagenet
DATASET ?= cifar100
VAL_SIZE ?= 5000
RUNS ?= runs
EXTRA ?=
SWEEP = $(PY) -m swa_repro.sweep $(if $(MODELS),--models $(MODELS)) --seeds $(SEEDS) --runs $(RUNS) \
	$(if $(DRY_RUN),--dry-run)

.PHONY: install demo test test-slow test-all lint clean-demo bench bench-gpu \
	reproduce-cifar100 reproduce-cifar10 reproduce-fixed-lr reproduce-imagenet reproduce-synthetic aggregate \
	reproduce-uncertainty \
	figures figures-demo

install: $(INSTALLED)

$(INSTALLED): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

demo: install
	$(PY) -m swa_repro.demo paths.runs=$(DEMO_RUNS)
	$(PY) plots/convergence.py $(DEMO_RUN_DIRS) --out figures/demo/convergence.png
	$(PY) plots/reliability.py $(word 1,$(DEMO_RUN_DIRS)):sgd,ema_0.99 \
		$(word 2,$(DEMO_RUN_DIRS)):swa,ema_0.99,swag_diag,swag --out figures/demo/reliability.png

# one pytest-xdist worker per core; costly runs are computed once and shared (tests/conftest.py)
test: install
	$(PY) -m pytest -q -n auto

test-slow: install
	$(PY) -m pytest -q -m slow

test-all: install
	$(PY) -m pytest -q -n auto -m "slow or not slow"

# Default: small_cnn on CPU (under a minute on 2 idle cores, a few when loaded); PreResNet164 and WRN28x10 on 50k images on a GPU (estimated 15-30 min).
BENCH_ARGS ?=
bench: install
	$(PY) -m swa_repro.bench --out experiments/results/bench.json $(BENCH_ARGS)

# On a GPU, what docs/performance.md records: the fast paths on PreResNet164 (the speed
# targets), then every Table 1 model faithful (fp32, the authors' batches: the reproduce
# targets' GPU-hour estimates read this JSON). Sized for about 8 minutes on one H100/H200
# (estimated); each JSON is rewritten after every model, so a cut-short run keeps what it did.
BENCH_GPU_ARGS ?= --train-size 5000 --test-size 1000 --repeats 3
bench-gpu: install
	$(PY) -m swa_repro.bench --models preresnet164 $(BENCH_GPU_ARGS) --out experiments/results/bench_gpu.json
	$(PY) -m swa_repro.bench --speed faithful --models preresnet164,wrn28x10,vgg16,preresnet110 \
		$(BENCH_GPU_ARGS) --out experiments/results/bench_gpu_faithful.json

lint: install
	$(PY) -m ruff check src tests plots
	$(PY) -m ruff format --check src tests plots

# W&B: online when WANDB_MODE or a `wandb login` says so, otherwise recorded offline (wandb sync later).
reproduce-cifar100: install
	$(SWEEP) table1 --dataset cifar100 --wandb --extra "logger=wandb $(EXTRA)"

reproduce-cifar10: install
	$(SWEEP) table1 --dataset cifar10 --wandb --extra "logger=wandb $(EXTRA)"

reproduce-fixed-lr: install
	$(SWEEP) fixed_lr --dataset cifar100 --wandb --extra "logger=wandb $(EXTRA)"

# Table 2: SWA fine-tuning of torchvision's pretrained ImageNet models, GPUS processes per run
# (torchrun here; with EXTRA="hydra/launcher=slurm ..." SLURM tasks, more nodes: hydra.launcher.nodes=K).
reproduce-imagenet: install
	$(SWEEP) table2 --dataset imagenet --gpus $(GPUS) --wandb \
		--extra "logger=wandb data.root=$(IMAGENET) $(EXTRA)"

# Beyond the paper: the Table 1 runs of DATASET (their SGD and SWA runs collect the EMAs and SWAG,
# nothing more to train for the plain rows), then for the temperature-scaled rows the same recipes
# with VAL_SIZE training images held out, in $(RUNS)/heldout (their Table 1 aggregate goes there too,
# not into experiments/results), then experiments/results/uncertainty_$(DATASET).md/.csv.
# Cost (the sweeps' estimates, DRY_RUN=1 prints them): twice the Table 1 sweep (see docs/config.md).
HELDOUT_SWEEP = $(PY) -m swa_repro.sweep $(if $(MODELS),--models $(MODELS)) --seeds $(SEEDS) \
	--runs $(RUNS)/heldout $(if $(DRY_RUN),--dry-run) --out $(RUNS)/heldout/results \
	--readme $(RUNS)/heldout/README.md
reproduce-uncertainty: install
	$(SWEEP) table1 --dataset $(DATASET) --wandb --extra "logger=wandb $(EXTRA)"
	$(HELDOUT_SWEEP) table1 --dataset $(DATASET) --extra "data.val_size=$(VAL_SIZE) logger=wandb $(EXTRA)"
	$(PY) -m swa_repro.aggregate uncertainty --dataset $(DATASET) --runs $(RUNS) \
		--heldout-runs $(RUNS)/heldout $(if $(MODELS),--models $(MODELS)) --seeds $(SEEDS)

# The whole Table 1 pipeline on the synthetic data, offline on CPU: a smoke test of sweeps and aggregation.
reproduce-synthetic: install
	$(PY) -m swa_repro.sweep table1 --dataset synthetic --models small_cnn --seeds 0,1 --runs $(RUNS) \
		--extra "progress=false $(EXTRA)"

# Rewrite the result tables from whatever runs exist (no training); EXTRA: the overrides the
# runs were trained with (as given to the reproduce targets). Every results table, of these
# and of the reproduce targets, goes to experiments/results/.
aggregate: install
	$(PY) -m swa_repro.aggregate table1 --dataset cifar100 --runs $(RUNS) --readme README.md --extra "$(EXTRA)"
	$(PY) -m swa_repro.aggregate table1 --dataset cifar10 --runs $(RUNS) --readme README.md --extra "$(EXTRA)"
	$(PY) -m swa_repro.aggregate table2 --dataset imagenet --runs $(RUNS) --readme README.md --extra "$(EXTRA)"
	$(PY) -m swa_repro.aggregate uncertainty --dataset cifar100 --runs $(RUNS)
	$(PY) -m swa_repro.aggregate uncertainty --dataset cifar10 --runs $(RUNS)
	$(PY) -m swa_repro.aggregate sharpness --dataset cifar100 --runs $(RUNS)

# Every figure of the paper from the Table 1 runs (PreResNet164, CIFAR-100, seed 0 by default),
# after a plan with the analyses' GPU-hour estimate; beyond the paper the Hessian spectra, the
# filter-normalised planes (51 x 51) and the flatness table of SGD, each EMA and SWA
# (docs/flatness.md), and the reliability diagrams of SGD, an EMA, SWA, SWAG-Diag and SWAG
# (plots/reliability.py).
FIGURE_SETUP ?= cifar100/preresnet164
FIGURE_RUNS = $(RUNS)/$(FIGURE_SETUP)
figures: install
	$(PY) -m swa_repro.figures --runs $(RUNS) --setup $(FIGURE_SETUP) --seed 0
	$(PY) plots/reliability.py $(FIGURE_RUNS)/sgd/seed0:sgd,ema_0.9998 \
		$(FIGURE_RUNS)/swa/seed0:swa,ema_0.9998,swag_diag,swag \
		--out figures/$(subst /,_,$(FIGURE_SETUP))/reliability.png

# The same end to end on the demo's synthetic runs (trained if missing), small grids and
# subsets (--flatness demo), CPU; the flatness table as markdown beside the figures.
figures-demo: install
	$(PY) -m swa_repro.figures --demo
	$(PY) plots/reliability.py runs/demo/synthetic/small_cnn/sgd/seed0:sgd,ema_0.99 \
		runs/demo/synthetic/small_cnn/swa/seed0:swa,ema_0.99,swag_diag,swag \
		--out figures/synthetic_small_cnn/reliability.png

clean-demo:
	rm -rf $(DEMO_RUNS) figures/demo figures/synthetic_small_cnn
