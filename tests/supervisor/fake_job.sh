#!/usr/bin/env bash
# A stand-in job for the supervisor tests: prints a line per "batch"; on SIGTERM it finishes the
# running batch, prints "committed" and exits 0; `fake_job.sh crash` exits 3 after a moment.
if [[ "${1:-}" == crash ]]; then echo "crashing"; sleep 0.3; exit 3; fi
stop=0
trap 'stop=1' TERM
i=0
while ((stop == 0)); do echo "batch $i"; i=$((i + 1)); sleep 0.1; done
echo "committed batch $i, stopped"
exit 0
