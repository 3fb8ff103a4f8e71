# `make test` sets everything up from nothing: a virtual environment with the
# project, its test extras and all three Keras backends, then the suite on
# TensorFlow and the backend-sensitive tests again on JAX and torch.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST := $(PY) -m pytest -q -p no:cacheprovider
# pytest exits 5 when a marker selects nothing; that is not a failure here.
ALLOW_EMPTY := || test $$? -eq 5

.PHONY: test test-tf test-jax test-torch check-install demo bench install clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e '.[tensorflow,jax,torch,test,bench,release]'
	# tf-keras (a real Keras 2 writer, for the original-weights tests) asks for
	# the full `tensorflow` wheel; tensorflow-cpu provides the same module.
	$(PY) -m pip install -q -c constraints.txt --no-deps tf-keras
	touch $(STAMP)

test: $(STAMP)
	KERAS_BACKEND=tensorflow $(PYTEST) tests
	KERAS_BACKEND=jax $(PYTEST) -m backends tests $(ALLOW_EMPTY)
	KERAS_BACKEND=torch $(PYTEST) -m backends tests $(ALLOW_EMPTY)

test-tf: $(STAMP)
	KERAS_BACKEND=tensorflow $(PYTEST) tests

test-jax: $(STAMP)
	KERAS_BACKEND=jax $(PYTEST) -m backends tests $(ALLOW_EMPTY)

test-torch: $(STAMP)
	KERAS_BACKEND=torch $(PYTEST) -m backends tests $(ALLOW_EMPTY)

# Build the sdist and wheel, twine-check them, then for each backend extra a
# fresh venv with the wheel and that extra only (-c constraints.txt), running
# cmseg synth/train/evaluate/predict and the README quick start on that
# backend (tools/check_install.py; the README's install section is what it runs).
check-install: $(STAMP)
	$(PY) tools/check_install.py

demo: $(STAMP)
	$(PY) -m cmseg demo

# Each script rewrites its own section of BENCHMARKS.md; run on a quiet machine.
bench: $(STAMP)
	$(PY) benchmarks/losses.py
	$(PY) benchmarks/metrics.py
	$(PY) benchmarks/models.py
	$(PY) benchmarks/pipeline.py
	$(PY) benchmarks/multirater.py

clean:
	rm -rf $(VENV) build *.egg-info
