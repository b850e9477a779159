# shellcheck shell=bash
# Sourced at the end of ESPnet's TEMPLATE path.sh (through this recipe's path.sh, a link to
# ../../espnet_path.sh, which also puts sclite on PATH).  Nothing specific to this corpus.
