#!/usr/bin/env bash
# Build the sdist and wheel, install the wheel into a fresh venv, and run `jenga demo` from it.
#
# Usage: [TORCH_SPEC=torch==2.13.0] [VENV=path] bash tests/packaging_check.sh
#   from anywhere; the running Python ($PYTHON, default python) needs `pip install build`.
#   VENV: create the fresh venv there and keep it (CI then adds the test extra to it, so torch and the
#   dependencies are installed once); default: a temporary folder, removed at the end.
# Exits non-zero when the build, the install, the import or the demo fails.
#
# The fresh venv sees nothing of the running environment (no system site-packages, no .pth): it gets torch
# first (TORCH_SPEC, default `torch`; CI passes its CPU build so the resolver does not pull a CUDA one), then
# the wheel with the dependencies it declares, from the package index. A dependency the wheel forgets to
# declare therefore fails `jenga demo` here. The check also proves that jenga is imported from the wheel.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python}"
TORCH_SPEC="${TORCH_SPEC:-torch}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
VENV="${VENV:-$WORK/venv}"
[[ ! -e "$VENV" ]] || { echo "packaging check: $VENV exists; it must be a fresh venv"; exit 1; }
mkdir -p "$(dirname "$VENV")" && VENV="$(cd "$(dirname "$VENV")" && pwd)/$(basename "$VENV")"
started=$(date +%s)

echo "== build sdist + wheel into $WORK/dist"
"$PYTHON" -m build --sdist --wheel --outdir "$WORK/dist" "$ROOT" >"$WORK/build.log" 2>&1 || {
    tail -n 40 "$WORK/build.log"; echo "packaging check: build failed"; exit 1; }
ls -l "$WORK/dist"
wheel=$(ls "$WORK"/dist/*.whl)
sdist=$(ls "$WORK"/dist/*.tar.gz)

echo "== the wheel and sdist carry the package and the console script"
"$PYTHON" - "$wheel" "$sdist" <<'EOF'
import sys
import tarfile
import zipfile

wheel, sdist = sys.argv[1], sys.argv[2]
names = zipfile.ZipFile(wheel).namelist()
needed = ["jenga/__init__.py", "jenga/cli.py", "jenga/demo.py", "jenga/kernels/triton_block_sparse.py",
          "jenga/adapters/wan.py", "jenga/toy/model.py", "jenga/toy/weights/toy-wan.safetensors"]
missing = [n for n in needed if n not in names]
entry_points = [n for n in names if n.endswith("entry_points.txt")]
if missing or not entry_points:
    sys.exit(f"wheel lacks {missing or 'entry_points.txt'}")
if "jenga = jenga.cli:main" not in zipfile.ZipFile(wheel).read(entry_points[0]).decode():
    sys.exit("wheel has no `jenga` console script")
members = tarfile.open(sdist).getnames()
for tail in ("src/jenga/cli.py", "pyproject.toml", "src/jenga/toy/weights/toy-wan.safetensors"):
    if not any(m.endswith(tail) for m in members):
        sys.exit(f"sdist lacks {tail}")
print(f"ok: {len(names)} files in the wheel, {len(members)} in the sdist")
EOF

echo "== fresh isolated venv: torch ($TORCH_SPEC), then the wheel and its declared dependencies"
"$PYTHON" -m venv "$VENV"
venv_py="$VENV/bin/python"
"$venv_py" - <<'EOF2'
import sys

# nothing but the venv's own site-packages and the standard library may be on the path
outside = [p for p in sys.path if "site-packages" in p and not p.startswith(sys.prefix)]
if outside or sys.prefix == sys.base_prefix:
    sys.exit(f"packaging check: the venv is not isolated: {outside or 'no venv'}")
EOF2
install_started=$(date +%s)
"$venv_py" -m pip install --quiet $TORCH_SPEC
"$venv_py" -m pip install --quiet "$wheel"
"$venv_py" -m pip check
echo "installed torch and the wheel's dependencies in $(( $(date +%s) - install_started )) s"

cd "$WORK"  # away from the checkout: nothing may be imported from it
"$venv_py" - "$VENV" <<'EOF'
import sys

import jenga

venv = sys.argv[1]
if not jenga.__file__.startswith(venv):
    sys.exit(f"jenga imported from {jenga.__file__}, not from the wheel in {venv}")
print(f"ok: jenga {jenga.__version__} from {jenga.__file__}")
EOF

echo "== jenga --help, python -m jenga doctor, jenga demo"
"$VENV/bin/jenga" --help >/dev/null
"$venv_py" -m jenga doctor
"$VENV/bin/jenga" demo --out-dir "$WORK/demo" --no-progress
for f in dense_vs_jenga.gif block_mask.png; do
    [[ -s "$WORK/demo/$f" ]] || { echo "packaging check: demo did not write $f"; exit 1; }
done
echo "packaging check passed in $(( $(date +%s) - started )) s"
