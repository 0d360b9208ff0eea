#!/usr/bin/env bash
# The fast lane: every test not marked `slow` (slow = several processes, kill -9, pip installs, real models);
# property tests run a tenth of their examples. For the edit-test loop; CI (.ci/run) runs the whole suite.
exec bash "$(dirname "$0")/test.sh" -m "not slow" "$@"
