#!/bin/sh
# Installs the gateway part of llm-platform into a virtual environment, the one way both `make install-gateway`
# and the builder stage of gateway/Dockerfile do it (tests/packaging/test_gateway_image.py runs it and checks
# that the Dockerfile calls it):
#
#   requirements/install-gateway.sh deps VENV      # a venv, the pinned pip, then every package of the gateway
#                                                  # lock, each checked against its hash; nothing resolved
#   requirements/install-gateway.sh project VENV   # the project itself, --no-deps: its dependencies are the lock's,
#                                                  # built with the backend requirements/build.lock pins
#
# Two steps so that an image build caches the dependency layer while only the source changes.
# Run from the repository root (or the image's copy of it). PYTHON picks the interpreter (default python3).
set -eu

PIP_VERSION=26.3
step=${1:?usage: install-gateway.sh deps|project VENV}
venv=${2:?usage: install-gateway.sh deps|project VENV}

case "$step" in
  deps)
    test -x "$venv/bin/python" || "${PYTHON:-python3}" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet "pip==$PIP_VERSION"
    "$venv/bin/python" -m pip install --quiet --require-hashes -r requirements/gateway.lock
    ;;
  project)
    # The build backend, too, only as build.lock pins and hashes it.
    "$venv/bin/python" -m pip install --quiet --no-deps --build-constraint requirements/build.lock .
    ;;
  *)
    echo "install-gateway.sh: unknown step '$step' (deps or project)" >&2
    exit 2
    ;;
esac
