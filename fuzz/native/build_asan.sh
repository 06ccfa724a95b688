#!/usr/bin/env bash
# Build every native accelerator (src/ckptguard/_native/*.c) with AddressSanitizer and
# UndefinedBehaviorSanitizer into a throw-away copy of the package, then run a fuzz target
# under it:
#     fuzz/native/build_asan.sh fuzz/native/fuzz_<module>.py [atheris args...]
# gcc has no libFuzzer, so atheris drives the inputs (seeded with the valid fixtures) and
# ASan/UBSan catch every out-of-bounds access, use-after-free and overflow in the C code.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT="${ASAN_BUILD_DIR:-/tmp/ckptguard-asan}"
rm -rf "$OUT" && mkdir -p "$OUT"
cp -r src/ckptguard "$OUT/ckptguard"
find "$OUT/ckptguard" -name '*.so' -delete
PYINC="$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
for c in src/ckptguard/_native/*.c; do
  stem="$(basename "$c" .c)"
  gcc -shared -fPIC -O1 -g -std=c11 -fno-omit-frame-pointer -fsanitize=address,undefined \
      -fno-sanitize-recover=undefined -I"$PYINC" "$c" \
      -o "$OUT/ckptguard/_native/$stem$(python3 -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')"
done
[ $# -eq 0 ] && { echo "built into $OUT"; exit 0; }
export PYTHONPATH="$OUT${PYTHONPATH:+:$PYTHONPATH}"
export LD_PRELOAD="$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libubsan.so)"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:allocator_may_return_null=1"
exec python3 "$@"
