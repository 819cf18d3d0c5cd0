# Two commands: `make run` starts the service, `make test` runs the tests. Both install what they need.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

# Offline development machines cannot download Keras' class index; use the copy in ../shared
# when it is there. Set CLASS_INDEX yourself to override; leave it empty to let Keras download it.
export CLASS_INDEX ?= $(wildcard $(CURDIR)/../shared/assets/imagenet_class_index.json)

.PHONY: install run test clean browser perf-analyzer

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml src/imageclf/__init__.py requirements/api.txt requirements/model.txt requirements/worker.txt \
                   requirements/client.txt requirements/dev.txt
	$(PYTHON) -m venv $(VENV) || { echo "python3 -m venv failed: on Debian/Ubuntu run 'apt-get install python3-venv'"; exit 1; }
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements/dev.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

run: install
	$(PY) -m imageclf run

# Type checks and the documentation site first (broken links and missing pages fail it), then the tests.
test: install browser
	$(PY) -m mypy
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --quiet --site-dir var/site
	$(PY) -m pytest

# The browser tests drive Debian's chromium; install it when missing (needs root, as in CI).
browser:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; \
	  else echo "the browser tests need chromium: run 'sudo apt-get install chromium'"; exit 1; fi; }

# Triton's perf_analyzer (C++) for the benchmark's Open Inference Protocol table: see benchmarks/perf_analyzer.py.
perf-analyzer: install
	$(PY) -m benchmarks.perf_analyzer --install

clean:
	rm -rf $(VENV) var .pytest_cache
