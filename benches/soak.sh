#!/usr/bin/env bash
# Ten-minute soak of the release build: mixed http and tcp traffic through
# three data centers while scenarios switch every 1-3 s (tests/soak.rs).
# Prints the resident-set samples and the outcome counts; fails on a panic,
# a failed request no fault could reach, or a growing resident set.
# Usage: bash benches/soak.sh [SECONDS]   (default 600)
set -euo pipefail
cd "$(dirname "$0")/.."

FIREDRILL_SOAK_SECONDS="${1:-600}" \
    cargo test --release --locked --test soak -- --nocapture
