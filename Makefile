# The two entry points of the README. Both set up .venv first (idempotent).
.PHONY: setup run test
setup:
	bash scripts/setup.sh
run: setup
	.venv/bin/lifelong train --model sim_hard
test: setup
	.venv/bin/python -m pytest -q -p no:cacheprovider --durations=15 -n 2 --dist loadfile --no-loadscope-reorder
