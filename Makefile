# Two commands do everything on a fresh machine:  make demo  and  make test.
# Both create the virtual environment first if it is missing (idempotent: a second run reuses it).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU build of torch; override e.g. TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu124"
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.course-installed

.PHONY: env demo test lectures clean-env

env: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	@touch $@

demo: $(STAMP)
	$(PY) -m course_lib.demo $(DEMO_ARGS)

# Two pytest workers, one torch thread each (tests/conftest.py): uses both cores of a laptop or CI machine.
PYTEST_ARGS ?= -n 2
test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

clean-env:
	rm -rf $(VENV)

# Editing a lecture or an assignment (README): re-run one lecture with papermill and keep its outputs
# (make lecture NB=03_ddpm; FAST=1 runs the quick version into lectures/outputs/ and leaves the lecture as it is),
# and regenerate the student release assignments/ from solutions/ (nbgrader), checking that it scores nothing.
.PHONY: lecture release
lecture: $(STAMP)
	$(if $(NB),,$(error name the lecture, e.g. make lecture NB=03_ddpm))
	$(PY) tools/run_lecture.py $(NB) $(if $(FAST),--fast)

release: $(STAMP)
	$(PY) -m course_lib.grading release all
