#!/usr/bin/env bash
# Puts a real helm binary at target/tools/helm and prints its path (see hack/tools.sh).
exec "$(dirname "$0")/tools.sh" helm
