#!/bin/sh
# Started with --no_python: executed directly (no interpreter in front), records its rank and arguments.
printf '{"RANK": "%s", "LOCAL_RANK": "%s", "WORLD_SIZE": "%s", "argv": "%s", "shell": "%s"}' \
  "$RANK" "$LOCAL_RANK" "$WORLD_SIZE" "$*" "$0" > "$OUT_DIR/rank$RANK.json"
