#!/usr/bin/env bash
# Regenerates the comparison tables of docs/methods.md: every method x seeds 0,1,2 on the three
# bundled configs (full runs), one run at a time, then pastes each DIR/comparison.md between the
# markers <!-- comparison:NAME --> ... <!-- /comparison:NAME --> of docs/methods.md.
#
#   benchmarks/comparison_table.sh                      # all methods below, all three configs
#   METHODS=vanilla,ogm_ge CONFIGS=ucimf benchmarks/comparison_table.sh
#   COMPARE_ROOT=/tmp/runs benchmarks/comparison_table.sh
#
# Resumable: finished runs are skipped, so adding a method to METHODS runs only its runs; the
# table of each config covers exactly the methods in METHODS. The synthetic set is made
# one-sided (modality a's class signal 3.0, b's 1.0), so that one modality dominates.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
ROOT="${COMPARE_ROOT:-/work/compare_runs}"
METHODS="${METHODS:-vanilla,uniform,gblend,greedy,ogm_ge,agm,pmr,mmpareto,mla,inforeg}"
CONFIGS="${CONFIGS:-synthetic ucimf cgmnist}"
SEEDS=0,1,2
status=0

overrides() {
  case "$1" in
    synthetic) echo "--config.data.signal=(3.0, 1.0)" ;;
    *) ;;
  esac
}

for name in $CONFIGS; do
  extra="$(overrides "$name")"
  nice -n 19 python -m mmjax.cli compare --config "configs/$name.py" --methods "$METHODS" \
      --seeds "$SEEDS" --workdir "$ROOT/$name" --processes 1 --config.progress_bar=False \
      ${extra:+"$extra"} > /dev/null || status=1
  python - "$name" "$ROOT/$name/comparison.md" <<'PY' || status=1
import re, sys
name, table_path = sys.argv[1:]
doc_path = 'docs/methods.md'
table = open(table_path, encoding='utf-8').read().strip()
doc = open(doc_path, encoding='utf-8').read()
start, end = f'<!-- comparison:{name} -->', f'<!-- /comparison:{name} -->'
if start not in doc or end not in doc:
  sys.exit(f'{doc_path} has no {start} ... {end} markers')
pattern = re.compile(re.escape(start) + '.*?' + re.escape(end), re.S)
doc = pattern.sub(lambda _: f'{start}\n{table}\n{end}', doc)
open(doc_path, 'w', encoding='utf-8').write(doc)
PY
done
exit $status
