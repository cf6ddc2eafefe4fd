# Two entry points (README quickstart): `make demo` and `make test`. Both set up what they need.
VENV        ?= .venv
PY          := $(VENV)/bin/python
# Torch build: this default is the wheel this project's CI machine has on disk; on a GPU cluster
# set TORCH_SPEC to your CUDA build (pyproject.toml itself declares ordinary ranges).
TORCH_SPEC  ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?= -q

.PHONY: setup data-packages demo test slurm-up slurm-down

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

demo: setup data-packages
	$(VENV)/bin/bench run suites/demo.yaml

test: setup data-packages
	$(PY) -m pytest $(PYTEST_ARGS)

# A real single-node SLURM on this machine (root, Debian): the slurm tests use it when it is up.
slurm-up:
	bash slurm/ci-slurm-up.sh

slurm-down:
	bash slurm/slurm-down.sh
