#!/usr/bin/env bash
# Collect enrollment request files (one line each, as printed by sleepfed-enroll) into the
# CSV that `sleepfed-server boards register --csv` takes.
#   provisioning/fleet-request-to-csv.sh requests/*.txt > fleet.csv
set -euo pipefail
echo "board_id,public_key"
for file in "$@"; do
  read -r prefix board key_type key_data _ < "$file"
  if [ "$prefix" != "sleepfed-enroll-request/1" ]; then
    echo "not an enrollment request: $file" >&2
    exit 2
  fi
  echo "$board,$key_type $key_data"
done
