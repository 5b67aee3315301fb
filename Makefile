# The two commands of the README: `make up` and `make test`.
CARGO ?= cargo
STATE_DIR ?= .webstack
PROFILE ?=

.PHONY: up down status setup build test lint fmt clean fuzz bench

up: setup
	$(CARGO) build --release --bin webstack
	./target/release/webstack up --state-dir $(STATE_DIR) $(if $(PROFILE),--profile $(PROFILE),)

down:
	./target/release/webstack down --state-dir $(STATE_DIR)

status:
	./target/release/webstack status --state-dir $(STATE_DIR)

setup:
	scripts/setup

build:
	$(CARGO) build --workspace --all-targets

# cargo-nextest runs each test in its own process (tests start servers); plain cargo test
# where it is not installed.
test:
	scripts/setup --test
	$(CARGO) build --workspace --all-targets
	if $(CARGO) nextest --version >/dev/null 2>&1; then \
	  $(CARGO) nextest run --workspace --no-fail-fast; \
	else \
	  $(CARGO) test --workspace --no-fail-fast; \
	fi
	$(MAKE) lint

# The fuzz targets live outside the workspace: checked here too, so that an API change that
# breaks one is caught by make test, not by the next make fuzz.
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	cd fuzz && $(CARGO) check --bins --quiet

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean

# Fuzz every parser of outside input for FUZZ_SECONDS each (needs nightly and cargo-fuzz).
FUZZ_SECONDS ?= 60
fuzz:
	cd fuzz && for t in config_files static_path health_answer proxy_header ha_advert dns_query dns_answer cache_headers basic_credentials agent_reply upstream_response shop_input host_routing client_certificate takeover_snapshot; do \
	  cargo +nightly fuzz run $$t -- -max_total_time=$(FUZZ_SECONDS) || exit 1; \
	done

# Side by side with HAProxy and nginx on the same rig, in one run (see bench/RESULTS.md).
BENCH_ARGS ?=
bench:
	scripts/setup --bench
	$(CARGO) build --release --bin webstack
	python3 bench/proxy_bench.py $(BENCH_ARGS)
	python3 bench/handover_bench.py
	python3 bench/failover_bench.py
	python3 bench/app_bench.py
	python3 bench/db_failover_bench.py
