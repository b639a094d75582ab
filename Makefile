# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# torch 2.13.0 is the local CPU build; install it first so nothing pulls a multi-GB CUDA wheel.
TORCH  ?= torch==2.13.0

.PHONY: demo test install install-dev chromium opencv-doc bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q -e ".[all]"
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed pyproject.toml
	$(PIP) install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev chromium opencv-doc

# The report's browser test (tests/test_report.py) renders the page in headless Chromium, Debian's `chromium`;
# skipped when a chromium is already on PATH, and the package lists are refreshed only if the first try fails.
# A machine where apt cannot install it still runs every other test (the browser test then skips, saying why).
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
		apt-get install -y -q chromium || { apt-get update -q && apt-get install -y -q chromium; } || \
		echo "WARNING: could not install chromium: tests/test_report.py's browser test will skip"

# Real photos with same-object pairs (box.png / box_in_scene.png, ...) that the image and quality tests use.
opencv-doc:
	@test -d /usr/share/doc/opencv-doc/examples/data || apt-get install -y -q opencv-doc || \
		{ apt-get update -q && apt-get install -y -q opencv-doc; } || \
		echo "WARNING: could not install opencv-doc: the tests that need its photos will skip"

demo: install
	$(VENV)/bin/visprep demo -w demo-workspace

test: install-dev
	$(PY) -m pytest -q -n 2 --dist loadfile

# img2dataset (the fetch baseline) lives in its own venv: it pins versions we must not inherit.
benchmarks/.work/i2d-venv/.installed:
	$(PYTHON) -m venv benchmarks/.work/i2d-venv
	NO_ALBUMENTATIONS_UPDATE=1 benchmarks/.work/i2d-venv/bin/pip install -q 'img2dataset==1.47.*'
	touch $@

# The experiment benchmark builds products from Debian's full Fashion-MNIST (70,000 real product photos).
/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz:
	apt-get install -y -q dataset-fashion-mnist

bench: install-dev benchmarks/.work/i2d-venv/.installed /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) demo-workspace .pytest_cache
