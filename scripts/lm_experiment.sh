#!/usr/bin/env bash
# The language-model experiment (issue 15): small byte-level transformers on the text of
# Debian's `fortunes`, Softmax against Scalable-Softmax, trained at context 128 and
# evaluated to 8x (16x) beyond it. Writes out/lm/: report.md, results.json, runs/, PNG plots.
#
#   bash scripts/lm_experiment.sh            # default: 3 seeds, ~11-12 min on 2 idle cores
#   bash scripts/lm_experiment.sh --long     # longer training (8x the tokens; not timed)
#   bash scripts/lm_experiment.sh --x16      # evaluate to 16x the training context
#   bash scripts/lm_experiment.sh --docs     # also copy report and plots to docs/lm/
# Other arguments go to python/experiments/lm/lm_length.py (--seeds N, --jobs N, --steps N).
#
# Needs the ssmax_torch extension: built into build/pyenv (python/setup.py's command) when
# neither build/pyenv nor /usr/bin/python3 can import it.
set -euo pipefail
cd "$(dirname "$0")/.."

docs=0
args=()
for arg in "$@"; do
  case "$arg" in
    --docs) docs=1 ;;
    *) args+=("$arg") ;;
  esac
done

bash scripts/install-deps.sh

python=""
for candidate in build/pyenv/bin/python /usr/bin/python3; do
  if [ -x "$candidate" ] && "$candidate" -c "import ssmax_torch" 2>/dev/null; then
    python=$candidate
    break
  fi
done
if [ -z "$python" ]; then
  echo "lm: building ssmax_torch into build/pyenv (a few minutes)" >&2
  /usr/bin/python3 -m venv --system-site-packages build/pyenv
  MAX_JOBS=2 build/pyenv/bin/pip install --no-build-isolation ./python >&2
  python=build/pyenv/bin/python
fi

out=out/lm
rm -rf "$out"
mkdir -p "$out"
"$python" python/experiments/lm/lm_length.py --out "$out" "${args[@]+"${args[@]}"}"

if ((docs)); then
  mkdir -p docs/lm
  cp "$out"/report.md "$out"/*.png docs/lm/
  echo "lm: copied the report and plots to docs/lm/" >&2
fi
echo "lm: report in $out/report.md" >&2
