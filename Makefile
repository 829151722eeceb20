# adrenaline_sgl: every command a user or CI runs. Each target installs what it needs through `setup`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
RESULTS_DIR ?= results
export RESULTS_DIR
FIGS := 1 2 5 6 7 8 9

.PHONY: setup test test-fast lint e2e chaos demo demo-check bench-kernels gpu-bundle gpu-import profile-cpu reproduce-all clean help \
	calibrate-real-cpu reproduce-real-cpu compare-real-cpu \
	$(addprefix reproduce-fig,$(FIGS))

help:
	@echo "make setup           create .venv with the CPU stack (GPU stack where nvidia-smi sees a GPU)"
	@echo "make test            setup, then the CPU test suite (GPU tests skip with a reason)"
	@echo "make test-fast       the layer rules and the pure layers (scheduler, proxy, sim, colocation): < 60 s"
	@echo "make lint            ruff"
	@echo "make reproduce-figN  figure N ($(FIGS)) into $(RESULTS_DIR)/figN/ (simulated on CPU)"
	@echo "make reproduce-all   every figure"
	@echo "make demo            1P1D SGLang stack with Adrenaline on loopback, until Ctrl-C"
	@echo "make demo-check      start the demo stack, ask one question, check the answer, stop"
	@echo "make e2e             end-to-end suite against real SGLang servers"
	@echo "make chaos           load and fault replay on the demo stack, figures into $(RESULTS_DIR)/chaos/ (ARGS=--quick)"
	@echo "make bench-kernels   decode-attention kernel benchmark CSV into $(RESULTS_DIR)/kernels/"
	@echo "make gpu-bundle      build .gpu/ for the GPU campaign and print the device call (docs/perf.md)"
	@echo "make gpu-import DIR=...  a GPU campaign's results into profiles, docs/perf.md tables, figure 9"
	@echo "make profile-cpu     this machine's CPU profile (one pinned core; run it on a quiet machine) into"
	@echo "                     $(PROFILE_CPU_OUT)/ (device spec, table, raw measurements)"
	@echo "make calibrate-real-cpu  SGLang's own CPU engine on the pinned pair (microbenchmarks) -> the simulator's"
	@echo "                     cpu-epyc-1core-sgl{,-exec} profiles (quiet machine; experiments/real_cpu/README.md)"
	@echo "make reproduce-real-cpu  measured on CPU: stock PD then Adrenaline on the pinned capacity-capped pair,"
	@echo "                     a rate sweep through bench_serving -> $(RESULTS_DIR)/real_cpu/ (e2e.csv, real_cpu.png)"
	@echo "make compare-real-cpu    the simulator on the same sweep -> sim_vs_real.csv, sim_vs_real.png, validation.md"

setup:
	@bash .ci/setup.sh

test: setup
	$(PY) -m pytest -m "not e2e" $(PYTEST_ARGS)

# No SGLang server, model run or kernel: pytest took 26 s on the 2-core dev machine at load average 5.6.
FAST_TESTS := tests/test_architecture.py tests/scheduler tests/proxy tests/sim tests/colocation
test-fast: setup
	$(PY) -m pytest -m "not e2e" $(FAST_TESTS) $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check adrenaline_sgl kernels experiments plots tests

e2e: setup
	$(PY) -m pytest -m e2e tests/e2e $(PYTEST_ARGS)

# Load and faults against the demo stack (docs/chaos.md). Bounded: a hard timeout (TERM, then KILL 30 s later)
# around a run that keeps its own budget below it; on any exit (timeout, Ctrl-C, failure) the trap stops every
# process the run started (they carry the run folder on PYTHONPATH). Exit 1 when a goal is missed.
CHAOS_DIR ?= $(RESULTS_DIR)/chaos
CHAOS_TIMEOUT_S ?= 900
chaos: setup
	@out="$(CHAOS_DIR)/$$(date -u +%Y%m%dT%H%M%SZ)"; \
	trap '$(PY) -m adrenaline_sgl.tools.chaos.reap "'"$$out"'"' EXIT; \
	timeout --foreground -k 30 $(CHAOS_TIMEOUT_S) \
	  $(PY) -m adrenaline_sgl.tools.chaos --out "$$out" --hard-timeout-s $(CHAOS_TIMEOUT_S) $(ARGS)

demo: setup
	$(PY) -m adrenaline_sgl.launch --config adrenaline_sgl/configs/cpu_demo.yaml

# The check passes when the answer contains Paris AND the logs show the request decoded offloaded: admitted
# on decode without local KV, and its KV released on prefill after executor layer calls (> 0).
DEMO_CHECK_DIR ?= $(RESULTS_DIR)/demo-check
demo-check: setup
	@rm -rf $(DEMO_CHECK_DIR)
	$(PY) -m adrenaline_sgl.launch --config adrenaline_sgl/configs/cpu_demo.yaml --check --run-dir $(DEMO_CHECK_DIR)
	@grep -h "adrenaline: admitted .* offloaded to" $(DEMO_CHECK_DIR)/*/decode-0.log \
	  && grep -hE "adrenaline: released KV of .* layer calls so far: [1-9]" $(DEMO_CHECK_DIR)/*/prefill-0.log \
	  && echo "demo-check: offload verified (decode admitted it offloaded, the prefill executor served its layers)" \
	  || { echo "demo-check: FAIL: no offloaded request in $(DEMO_CHECK_DIR)/*/{decode,prefill}-0.log"; exit 1; }

bench-kernels: setup
	$(PY) -m adrenaline_kernels.bench --out $(RESULTS_DIR)/kernels/bench.csv

# The GPU campaign (experiments/gpu_campaign/README.md): bundle to carry, then import what came back.
gpu-bundle: setup
	$(PY) -m experiments.gpu_campaign.bundle $(ARGS)

gpu-import: setup
	@test -n "$(DIR)" || { echo "usage: make gpu-import DIR=<folder that came back, or campaign.tar.gz>"; exit 2; }
	$(PY) -m experiments.gpu_campaign.importer "$(DIR)" $(ARGS)

# One pinned core, ~2 minutes; the files say `status: provisional` when the load average was not quiet.
PROFILE_CPU_OUT ?= adrenaline_sgl/scheduler/profiles
profile-cpu: setup
	$(PY) -m adrenaline_sgl.tools.profile_cpu --out $(PROFILE_CPU_OUT) $(ARGS)

# The real CPU experiment (experiments/real_cpu/README.md): servers pinned to CPUs 0 and 1; run on a quiet machine.
calibrate-real-cpu: setup
	$(PY) -m experiments.real_cpu.calibrate $(ARGS)
	$(PY) -m experiments.real_cpu.profile

reproduce-real-cpu: setup
	$(PY) -m experiments.real_cpu.run $(ARGS)

compare-real-cpu: setup
	$(PY) -m experiments.real_cpu.compare $(ARGS)

$(addprefix reproduce-fig,$(FIGS)): reproduce-fig%: setup
	$(PY) -m experiments.run fig$* $(ARGS)

reproduce-all: setup
	$(PY) -m experiments.run all $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
