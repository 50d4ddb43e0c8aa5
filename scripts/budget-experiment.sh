#!/usr/bin/env bash
# The budget experiment: `scripts/experiment.sh budget start|status|stop|save` (see there).
exec "$(dirname "$0")/experiment.sh" budget "$@"
