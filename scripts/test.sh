#!/usr/bin/env bash
# Install XR-0 Federated with its test extras into ./.venv and run the whole test suite (CPU only).
# README's test command and CI (.ci/run) both call this script.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv || exit 1
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]' || exit 1
# tests/report check report.html in headless Chromium (a Debian package), and tests/dashboard drive it through
# chromedriver (chromium-driver). Install them when missing and that is possible (CI runs as root on Debian with
# the package registry reachable); otherwise those tests fail and say how to get them: they never skip.
missing=""
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1 \
    && [ -z "${XR0_CHROMIUM:-}" ]; then
  missing="chromium"
fi
if ! command -v chromedriver >/dev/null 2>&1 && [ -z "${XR0_CHROMEDRIVER:-}" ]; then
  missing="$missing chromium-driver"
fi
if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing$missing for the browser tests (apt-get)" >&2
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing; } >/dev/null 2>&1 \
      || echo "could not install$missing: the browser tests will fail" >&2
  else
    echo "$missing missing and cannot be installed here (needs root and apt-get): the browser tests will fail" >&2
  fi
fi
# Two test processes (pytest-xdist): the deployment tests, which mostly wait on real Flower processes, overlap
# with the CPU-bound rest (one module per worker at a time; tests/conftest.py orders them). XR0_TEST_WORKERS=0 runs them in one process.
workers=${XR0_TEST_WORKERS:-2}
if [ "$workers" != 0 ]; then
  # One intra-op thread per test process: two processes of torch's default two threads on two cores spin against
  # each other (a tiny model's 600 steps took 149 CPU s that way, 25 s with one thread). Subprocesses inherit it.
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
fi
if [ "$workers" = 0 ]; then
  .venv/bin/python -m pytest "$@"
else
  .venv/bin/python -m pytest -n "$workers" --dist loadfile --no-loadscope-reorder "$@"
fi
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: that is a failure" >&2
  exit 1
fi
exit "$rc"
