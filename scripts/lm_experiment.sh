#!/usr/bin/env bash
# The language-model experiment: small byte-level transformers on the text of
# Debian's `fortunes`, Softmax against Scalable-Softmax, trained at context 128 and
# evaluated to 8x (16x) beyond it. Writes report.md, results.json, runs/ and PNG plots under
# --out (default out/lm).
#
#   bash scripts/lm_experiment.sh            # default: 3 seeds, about 10 min on 2 idle cores (9 min 33 s measured)
#   bash scripts/lm_experiment.sh --long     # longer training (8x the tokens; not timed)
#   bash scripts/lm_experiment.sh --x16      # evaluate to 16x the training context
#   bash scripts/lm_experiment.sh --docs     # also copy report and plots to docs/lm/
#   bash scripts/lm_experiment.sh --help     # this, and lm_length.py's options
# Other arguments go to python/experiments/lm/lm_length.py (--out DIR, --seeds N, --jobs N,
# --steps N, --ft-steps N, ...), which checks them before it writes anything and replaces
# only its own output files under --out. A relative --out is taken from the current folder.
#
# Needs the ssmax_torch extension: built into build/pyenv (python/setup.py's command) when
# neither build/pyenv nor /usr/bin/python3 can import it.
set -euo pipefail
here=$PWD
cd "$(dirname "$0")/.."

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }

find_python() {
  for candidate in build/pyenv/bin/python /usr/bin/python3; do
    if [ -x "$candidate" ] && "$candidate" -c "import ssmax_torch" 2>/dev/null; then
      echo "$candidate"
      return
    fi
  done
}

absolute() { case "$1" in /*) echo "$1" ;; *) echo "$here/$1" ;; esac; }

docs=0
help=0
out=$PWD/out/lm # lm_length.py's default, from the repository root
args=()
expect_out=0
for arg in "$@"; do
  if ((expect_out)); then
    out=$(absolute "$arg")
    args+=("$out")
    expect_out=0
    continue
  fi
  case "$arg" in
    --docs) docs=1 ;;
    -h | --help) help=1 ;;
    --out)
      expect_out=1
      args+=("$arg")
      ;;
    --out=*)
      out=$(absolute "${arg#--out=}")
      args+=("--out=$out")
      ;;
    *) args+=("$arg") ;;
  esac
done

if ((help)); then
  usage
  python=$(find_python)
  if [ -n "$python" ]; then
    echo
    "$python" python/experiments/lm/lm_length.py --help
  else
    echo
    echo "(lm_length.py's own options are listed once ssmax_torch is built:" \
      "bash scripts/python-test.sh, or a first run of this script)"
  fi
  exit 0
fi

bash scripts/install-deps.sh

python=$(find_python)
if [ -z "$python" ]; then
  echo "lm: building ssmax_torch into build/pyenv (a few minutes)" >&2
  /usr/bin/python3 -m venv --system-site-packages build/pyenv
  MAX_JOBS=2 build/pyenv/bin/pip install --no-build-isolation ./python >&2
  python=build/pyenv/bin/python
fi

# lm_length.py validates the arguments (exit 2 on a bad one, nothing written) and owns --out.
"$python" python/experiments/lm/lm_length.py "${args[@]+"${args[@]}"}"

if ((docs)); then
  mkdir -p docs/lm
  cp "$out"/report.md docs/lm/
  pngs=("$out"/*.png)
  if [ -e "${pngs[0]}" ]; then
    cp "${pngs[@]}" docs/lm/
    echo "lm: copied the report and plots from $out to docs/lm/" >&2
  else
    echo "lm: copied the report from $out to docs/lm/ (no plots: gnuplot missing)" >&2
  fi
fi
echo "lm: report in $out/report.md" >&2
