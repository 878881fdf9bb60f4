# Two commands do everything on a fresh machine:  make demo  and  make test.
# Both create the virtual environment first if it is missing (idempotent: a second run reuses it).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch first, the build that fits this machine (tools/install_torch.py prints its choice: CPU build without an
# NVIDIA GPU, CUDA build with one); force an index with e.g. TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126
export TORCH_INDEX_URL
STAMP := $(VENV)/.course-installed

.PHONY: env demo test lectures clean-env constraints student-export

env: $(STAMP)

# The term's exact versions (constraints.txt) of everything, the course package editable with all extras.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) tools/install_torch.py
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	@touch $@

demo: $(STAMP)
	$(PY) -m course_lib.demo $(DEMO_ARGS)

# Two pytest workers, one torch thread each (tests/conftest.py): uses both cores of a laptop or CI machine;
# the 30 slowest tests are listed at the end (the suite should stay under 15 minutes on 2 cores).
PYTEST_ARGS ?= -n 2 --dist worksteal --durations=30
test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

# The numerical tests again under torch's portable kernels and with 2 intra-op threads: other reduction orders,
# as on another CPU (Intel/AMD, AVX2/AVX-512). Tolerances follow from the arithmetic (tests/_numerics.py), so
# they pass on every CPU; CI runs this after `make test`.
PORTABLE_TESTS := tests/test_attention.py tests/test_schedulers.py tests/test_vae.py tests/test_lora.py \
	tests/test_metrics.py tests/test_unet.py tests/test_text.py tests/test_guidance.py tests/test_pipeline.py \
	tests/test_train.py tests/test_data.py tests/test_viz.py tests/test_bad_input.py tests/test_sd.py
.PHONY: test-portable
test-portable: $(STAMP)
	ATEN_CPU_CAPABILITY=default COURSE_TEST_THREADS=2 $(PY) -m pytest -p no:xdist -q -m "not slow" $(PORTABLE_TESTS)

clean-env:
	rm -rf $(VENV)

# After a tested upgrade of the environment: record its exact versions as the term's constraints.
constraints: $(STAMP)
	{ grep '^#' constraints.txt; $(PY) -m pip freeze --exclude-editable | sed -E 's/\+[a-z0-9.]+$$//'; } > constraints.tmp
	mv constraints.tmp constraints.txt

# The public student repository in a folder of its own (see README, "Publishing the course to students").
student-export: $(STAMP)
	$(PY) tools/export_student.py $(EXPORT_DIR)

# Editing a lecture or an assignment (README): re-run one lecture with papermill and keep its outputs
# (make lecture NB=03_ddpm; FAST=1 runs the quick version into lectures/outputs/ and leaves the lecture as it is),
# and regenerate the student release assignments/ from solutions/ (nbgrader), checking that it scores nothing.
.PHONY: lecture release
lecture: $(STAMP)
	$(if $(NB),,$(error name the lecture, e.g. make lecture NB=03_ddpm))
	$(PY) tools/run_lecture.py $(NB) $(if $(FAST),--fast)

release: $(STAMP)
	$(PY) -m course_lib.grading release all
