# The same commands CI runs (.ci/run), for local use.
.PHONY: setup test lint fmt bench demo broker-start broker-stop

setup:
	scripts/setup.sh

# Every test; starts the local broker when none answers.
test:
	scripts/test.sh

lint:
	cargo fmt --all -- --check
	cargo clippy --locked --all-targets -- -D warnings

fmt:
	cargo fmt --all

# In-process hot path (criterion), restore of a 1M-record changelog, and
# recovery after SIGKILL; the last two need the local broker.
bench:
	cargo bench --locked --bench pipeline
	cargo bench --locked --bench restore
	cargo bench --locked --bench recovery

# Broker, topology, router and a replay of real NYC 311 traffic.
demo:
	scripts/demo.sh

broker-start:
	scripts/kafka-local.sh start

broker-stop:
	scripts/kafka-local.sh stop
