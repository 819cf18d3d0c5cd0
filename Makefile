# Two commands: `make run` starts the service, `make test` runs the tests. Both install what they need.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

# Offline development machines cannot download Keras' class index; use the copy in ../shared
# when it is there. Set CLASS_INDEX yourself to override; leave it empty to let Keras download it.
export CLASS_INDEX ?= $(wildcard $(CURDIR)/../shared/assets/imagenet_class_index.json)

.PHONY: install run test clean

install: $(VENV)/.installed

$(VENV)/.installed: requirements/api.txt requirements/worker.txt requirements/client.txt requirements/dev.txt
	$(PYTHON) -m venv $(VENV) || { echo "python3 -m venv failed: on Debian/Ubuntu run 'apt-get install python3-venv'"; exit 1; }
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements/dev.txt
	touch $@

run: install
	$(PY) -m scripts.run

test: install
	$(PY) -m pytest

clean:
	rm -rf $(VENV) var .pytest_cache
