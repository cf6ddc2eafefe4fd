# Two entry points (README quickstart): `make demo` and `make test`. Both set up what they need.
VENV        ?= .venv
PY          := $(VENV)/bin/python
# Torch build: this default is the wheel this project's CI machine has on disk; on a GPU cluster
# set TORCH_SPEC to your CUDA build (pyproject.toml itself declares ordinary ranges).
TORCH_SPEC  ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?= -q

.PHONY: setup data-packages demo demo-all sanity test slurm-up slurm-down perf-gpu

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q $(TORCH_SPEC)
	$(VENV)/bin/pip install -q -e ".[test]"
	touch $@

# Real CPU-scale data (Debian's clip-art and colour-emoji packages) and chromium (the report's browser
# test); needs root + apt, skipped otherwise.
data-packages:
	@if [ ! -d /usr/share/openclipart/png ] || [ ! -f /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf ] || \
	    ! command -v chromium >/dev/null; then \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	      openclipart-png fonts-noto-color-emoji chromium >/dev/null; \
	  else echo "note: install Debian packages openclipart-png fonts-noto-color-emoji chromium (demo data, report test)"; fi; fi

# The prepared GPU benchmark (one CUDA device, < 5 min): every method's paper preset at its real resolution,
# bf16, compile off and on, then the trainer's overhead / breakdown / MFU on the EDM ImageNet-64 preset.
perf-gpu: setup
	mkdir -p results
	$(VENV)/bin/bench perf gpu --json results/perf_gpu.json
	$(VENV)/bin/bench perf trainer --preset imagenet64 --batch 64 --steps 20 --repeats 1 --no-scaling \
	  --json results/perf_trainer_gpu.json

demo: setup data-packages
	OMP_NUM_THREADS=1 $(VENV)/bin/bench run suites/demo.yaml

# Every generative method, same settings as the demo (~30 min on 2 cores).
demo-all: setup data-packages
	OMP_NUM_THREADS=1 $(VENV)/bin/bench run suites/demo-all.yaml

# Learning checks of every method and the papers' orderings (README "Learning evidence").
sanity: setup data-packages
	OMP_NUM_THREADS=1 $(VENV)/bin/bench sanity all --claims

test: setup data-packages
	$(PY) -m pytest $(PYTEST_ARGS)

# A real single-node SLURM on this machine (root, Debian): the slurm tests use it when it is up.
slurm-up:
	bash slurm/ci-slurm-up.sh

slurm-down:
	bash slurm/slurm-down.sh
