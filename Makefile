# Tern: two commands on a fresh Debian machine.
#   make demo   start a local 3-replica cluster, run a mixed workload, print results, stop it
#   make test   every test: unit, property, protocol rules, XDP program, real-process system tests, chaos, fuzzing
#   make bench-compare   user-space vs XDP coordinator, alternating runs, medians and ratio
#   make bench-migrate   live slot migration against stop-and-copy and ownership-first (NetMigrate's experiment)
#   make bench-replication   write latency vs 1-7 replicas, chain, fan-out and early commit, beside Redis (Whale's experiment)
SHELL := /bin/bash
CARGO ?= cargo
DEMO_DIR ?= $(CURDIR)/target/demo-cluster
DEMO_DURATION ?= 10s
DEMO_CLIENTS ?= 8
FUZZ_SECONDS ?= 20
# auto: the XDP coordinator where this machine allows it (root, clang-19 at
# build time), else the user-space one; cluster up says which it used.
DEMO_MODE ?= auto
# always (default: nothing acknowledged is ever lost), interval or none.
DEMO_DURABILITY ?= always
COMPARE_REPEAT ?= 5
COMPARE_DURATION ?= 10s
TERN := $(CURDIR)/target/release/tern

.PHONY: demo test check unit fuzz deps bench-compare bench-peers bench-migrate bench-replication

deps:
	@scripts/install-deps.sh

demo: deps
	$(CARGO) build --release --bin tern
	@$(TERN) cluster down --dir $(DEMO_DIR) >/dev/null 2>&1 || true
	$(TERN) cluster up --dir $(DEMO_DIR) --fresh --shards 1 --replicas 3 --mode $(DEMO_MODE) --durability $(DEMO_DURABILITY)
	@$(TERN) cluster status --dir $(DEMO_DIR)
	@status=0; \
	$(TERN) --cluster $(DEMO_DIR)/cluster.toml bench --duration $(DEMO_DURATION) --clients $(DEMO_CLIENTS) --keys 10000 --read-fraction 0.9 || status=$$?; \
	$(TERN) --cluster $(DEMO_DIR)/cluster.toml stats | grep -E '^xdp\.(reads|writes|acks|pass)' || true; \
	$(TERN) cluster down --dir $(DEMO_DIR); \
	exit $$status

test: deps check unit fuzz

# Formatting and lints, as CI enforces them.
check:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets --quiet -- -D warnings

unit:
	$(CARGO) test --workspace

# Short coverage-guided runs of each fuzz target. cargo-fuzz needs unstable
# compiler flags; RUSTC_BOOTSTRAP=1 allows them on the stable toolchain.
fuzz:
	@scripts/install-deps.sh --fuzz
	cd fuzz && for target in decode replica_step multi; do \
		RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run $$target -- -max_total_time=$(FUZZ_SECONDS) -dict=tern.dict -print_final_stats=1 2>&1 | grep -E "^(Done|stat::number_of_executed_units|INFO: Seed)|ERROR|panicked" ; \
		test $${PIPESTATUS[0]} -eq 0 || exit 1; \
	done

# The XDP coordinator against the user-space one on the same netns topology:
# 95% GET / 5% PUT, scrambled zipfian keys, runs alternating (needs root).
bench-compare: deps
	$(CARGO) build --release --bin tern
	$(TERN) bench compare --modes user,xdp --repeat $(COMPARE_REPEAT) --duration $(COMPARE_DURATION) \
		--read-fraction 0.95 --distribution zipfian --keys 10000 --clients 8

# Live slot migration against stop-and-copy and ownership-first under a zipfian workload
# (NetMigrate's experiment), write fractions 0-30%, runs alternating (needs
# root): MIGRATE_MODE=user|xdp, MIGRATE_REPEAT=N. Series and plots in
# target/bench-migrate.
MIGRATE_MODE ?= user
MIGRATE_REPEAT ?= 3
bench-migrate: deps
	$(CARGO) build --release --bin tern
	$(TERN) bench migrate --mode $(MIGRATE_MODE) --repeat $(MIGRATE_REPEAT) --duration 10s \
		--write-fractions 0,0.05,0.1,0.3

# Write latency and throughput against 1, 2, 3, 5 and 7 replicas, committing
# at the tail (chain) and early (K = 2), workloads A and B, beside Redis with
# two asynchronous replicas; at 8 clients (the machine saturated) and at 1
# (latency alone). Runs alternate (needs root: netns). Figures and plots in
# target/bench-replication/{clients-8,clients-1}.
REPLICATION_REPEAT ?= 3
bench-replication:
	@scripts/install-deps.sh
	$(CARGO) build --release --bin tern
	$(TERN) bench replication --repeat $(REPLICATION_REPEAT) --duration 5s --records 10000 --clients 8 \
		--out target/bench-replication/clients-8
	$(TERN) bench replication --repeat $(REPLICATION_REPEAT) --duration 5s --records 10000 --clients 1 \
		--workloads a --replica-counts 1,3,5,7 --out target/bench-replication/clients-1

# Tern (user and XDP coordinators) against Redis 7 (a primary and two
# replicas, with and without WAIT 2 0), workloads B and A, 8 clients each.
PEERS_REPEAT ?= 3
PEERS_DURATION ?= 8s
bench-peers:
	@scripts/install-deps.sh
	$(CARGO) build --release --bin tern
	for workload in b a; do \
		$(TERN) bench compare --targets redis,redis-wait,user-loopback,user,xdp --repeat $(PEERS_REPEAT) \
			--duration $(PEERS_DURATION) --workload $$workload --records 10000 --clients 8 || exit 1; \
	done
