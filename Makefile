# containerd-shim-runc-v2 (Rust). Run as root on Debian; targets install what they need.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: help deps build release lint test test-loom test-reference soak soak-long cri-long demo bench bench-shim bench-density clean

help: ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

deps: ## install system packages (runc, containerd, busybox-static, ...)
	hack/install-deps.sh

build: ## debug build of the shim, the test wrapper and the tests
	$(CARGO) build --workspace --all-targets

release: ## optimized shim binary in target/release
	$(CARGO) build --release -p shim

lint: ## clippy with warnings as errors, rustfmt check, rustdoc without warnings (broken intra-doc links)
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) fmt --all -- --check
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --workspace --no-deps -q

# The e2e cases against each containerd version's own Go shim (#[ignore]d in the main run).
REFERENCE = target/debug/reap-run $(CARGO) test -p shim-tests --no-fail-fast --test e2e_containerd --test e2e_faults --test e2e_crun -- --ignored _go_v --nocapture

test: deps build lint ## everything CI runs: unit, property, loom, integration (real runc) and end-to-end (real containerd 1.6, 1.7, 2.x) tests, then the e2e reference run with each version's Go shim
	set -o pipefail; $(MAKE) -s test-loom 2>&1 | tee target/test.log
	set -o pipefail; target/debug/reap-run $(CARGO) test --workspace -- --test-threads=4 2>&1 | tee -a target/test.log
	set -o pipefail; $(REFERENCE) --test-threads=4 2>&1 | tee -a target/test.log
	@grep -E '(EXPECTED FAILURE|known Go-shim bug did not show)' target/test.log || true
	@awk '/^test result:/ {p += $$4; f += $$6} END {printf "tests: %d passed, %d failed\n", p, f}' target/test.log

test-reference: deps build ## the end-to-end tests against each containerd version's own Go shim (the reference; known Go-shim bugs are reported as expected failures)
	set -o pipefail; $(REFERENCE) --test-threads=2 2>&1 | tee target/test-reference.log
	@grep -E '(EXPECTED FAILURE|known Go-shim bug did not show)' target/test-reference.log || true

test-loom: ## model-check the reaper's subscribe/route/claim protocol with loom
	CARGO_TARGET_DIR=target/loom RUSTFLAGS="--cfg shim_loom" $(CARGO) test -p shim-runtime --test loom_reaper --release

soak: build ## full soak: 10 000 execs in batches of 50 + 1 000 create/start/delete cycles through one grouped shim (debug build)
	SOAK_EXECS=$${SOAK_EXECS:-10000} SOAK_CYCLES=$${SOAK_CYCLES:-1000} target/debug/reap-run $(CARGO) test -p shim-tests --test soak -- --nocapture

cri-long: deps build ## the CRI suite on every containerd version with 20 concurrent pods of 3 containers (CI runs it with 5)
	CRI_PODS=$${CRI_PODS:-20} target/debug/reap-run $(CARGO) test -p shim-tests --test cri -- --test-threads=2 --nocapture

demo: deps release ## build, start a private containerd with this shim, run containers and an exec storm
	$(CARGO) build -p shim-tests --bin reap-run --bin cri-demo
	target/debug/reap-run hack/demo.sh target/release

ifndef BENCH_OUT
BENCH_OUT := /tmp/shim-bench-$(shell date +%Y%m%d-%H%M%S)
endif
export BENCH_OUT

bench: deps release ## both benchmarks below: through containerd (hack/bench.sh), then shim-level (bench-shim); one results dir
	$(CARGO) build -p shim-tests --bin reap-run
	BENCH_COMMAND="make bench" target/debug/reap-run hack/bench.sh target/release
	$(MAKE) -s bench-shim

bench-shim: release ## shim-level (ttrpc) benchmark: Stats cost, exec cycles, idle density; ours vs Go 2.1, rust-extensions 0.2.0, runc (env in hack/bench-shim.py)
	hack/install-peers.sh
	$(CARGO) build -p shim-tests --bin reap-run --bin shim-load
	target/debug/reap-run hack/bench-shim.py --load target/debug/shim-load --ours target/release/containerd-shim-runc-v2 \
		--out $(BENCH_OUT) --only $${BENCH_SHIM_ONLY:-stats,exec,density}

bench-density: release ## density only: 10/50/100 idle containers (one shim each) and pods of 4 sharing a shim
	$(MAKE) -s bench-shim BENCH_SHIM_ONLY=density

soak-long: release ## 100 000 exec cycles at the ttrpc level against one shim: RSS/fds/maps slope per 10 000 execs
	$(MAKE) -s bench-shim BENCH_SHIM_ONLY=soak

clean:
	$(CARGO) clean
