#!/usr/bin/env bash
# `make gpu-check`: the GPU path, run once on a machine with an NVIDIA GPU after `make
# install`, in under 8 minutes end to end (its step limits; not yet timed on a GPU). It
# prints torch, CUDA and the GPUs,
# then runs three steps, each under its own time limit, each ending in one line
# "PASS|FAIL <step> <seconds> s ..."; a failed step does not stop the next:
#   gpu-tests  pytest -m gpu tests/gpu: auto precision trains in bf16 with TF32 matmuls,
#              inference afterwards in exactly the precision asked for, the standard recipe
#              still learns in bf16, a real CUDA out-of-memory error fails only its trial;
#   bench-gpu  make bench's GPU part: a BERT-base-size model's bf16 samples/s and MFU;
#   launch     `focaltune launch --workers 2` on a tiny study: every trial completes on a
#              cuda device, one GPU per worker (on a 1-GPU machine both share GPU 0).
# Everything measured, with each step's log, goes to $OUT (else runs/gpu-check/):
# gpu-check.json holds it all. Exit 0: every step passed; 1: one failed; 2: nothing could
# run (no CUDA device, no virtual environment, no data), with one line saying why.
# Settings: NSMC4 (data folder, default ../shared/data/nsmc4), VENV (default .venv),
# GPU_PEAK_TFLOPS (bf16 peak of a GPU benchmarks/gpu.py does not know).
set -uo pipefail
SELF=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")
cd "$(dirname "$SELF")/.." || exit 2

PY=${VENV:-.venv}/bin/python
NSMC4=${NSMC4:-../shared/data/nsmc4}
OUT_DIR=${OUT:-runs/gpu-check}
[[ $OUT_DIR == /* ]] || OUT_DIR=$PWD/$OUT_DIR
# Seconds from the start within which every step's limit ends; each step's own limit is
# its cap, cut so that the steps after it keep their minimum. Worst case: TOTAL + 5 s per
# killed step + the summary, under 8 minutes.
TOTAL=455
STEPS=(gpu-tests bench-gpu launch)
declare -A CAP=([gpu-tests]=240 [bench-gpu]=200 [launch]=150)
declare -A MIN=([gpu-tests]=120 [bench-gpu]=100 [launch]=70)

die() {
    echo "gpu-check: $*" >&2
    exit 2
}

# --- the steps (each runs as `gpu-check.sh --step NAME` under `timeout`) -------------------

step_gpu_tests() {
    "$PY" -m pytest -m gpu tests/gpu -p no:cacheprovider -p no:xdist -q \
        --basetemp "$WORK/pytest" --junitxml "$OUT_DIR/gpu-tests.xml" --timeout 200
    local rc=$?
    # A skipped GPU test fails the step: on a GPU machine every one of them must run.
    "$PY" - "$OUT_DIR/gpu-tests.xml" "$OUT_DIR/gpu-tests.note" <<'EOF' || rc=1
import sys
import xml.etree.ElementTree as ET

root = ET.parse(sys.argv[1]).getroot()
suite = root if root.tag == "testsuite" else root.find("testsuite")
n = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
note = ", ".join(f"{v} {k}" for k, v in n.items())
open(sys.argv[2], "w").write(note + "\n")
print(f"gpu tests: {note}")
sys.exit(1 if n["skipped"] or n["tests"] < 4 else 0)
EOF
    return $rc
}

step_bench_gpu() {
    local peak=()
    [[ -n ${GPU_PEAK_TFLOPS:-} ]] && peak=(--peak-tflops "$GPU_PEAK_TFLOPS")
    # Only part 4 runs. bench.py always builds its CPU parts' backbone first (unused here):
    # --backbone-texts/--vocab-size keep that to seconds instead of minutes (all reviews).
    "$PY" benchmarks/bench.py --gpu --skip-search --skip-overhead --skip-orchestration \
        --out "$OUT_DIR/bench-gpu.json" --data "$NSMC4" --work "$WORK/bench" \
        --backbone-cache "$WORK/backbones" --backbone-texts 2000 --vocab-size 2000 "${peak[@]}" ||
        return 1
    "$PY" - "$OUT_DIR/bench-gpu.json" "$OUT_DIR/bench-gpu.note" <<'EOF'
import json
import sys

gpu = json.load(open(sys.argv[1]))["gpu"]
note = (
    f"MFU {100 * gpu['trainer_mfu']:.1f} % (Trainer path), {100 * gpu['bare_mfu']:.1f} % (bare"
    f" loop); {gpu['trainer_samples_per_second']:.0f} samples/s; target >= 40 %: "
    + ("met" if gpu["trainer_mfu"] >= 0.4 else "not met")
)
open(sys.argv[2], "w").write(note + "\n")
print(note)
EOF
}

step_launch() {
    local dir=$WORK/launch rc
    local url=sqlite:///$dir/launch.db
    mkdir -p "$dir"
    "$PY" - "$NSMC4/train.csv.gz" "$dir/train.csv" <<'EOF' || return 1
import sys

import pandas as pd

pd.read_csv(sys.argv[1], nrows=2000).to_csv(sys.argv[2], index=False)
EOF
    # tests/conftest.py's tiny_backbone, through the CLI.
    "$PY" -m search.cli backbone build --train "$dir/train.csv" --out "$dir/backbone" \
        --vocab-size 2000 --layers 2 --hidden 64 --heads 2 --max-length 64 || return 1
    cat > "$dir/study.yaml" <<EOF
study: {name: gpu-launch, n_trials: 4, pruner: {type: none}}
data: {train: "$dir/train.csv", max_train_samples: 1000, max_eval_samples: 300, max_length: 64}
model: {name_or_path: "$dir/backbone"}
train: {batch_size: 32, evals_per_epoch: 1}
space: {learning_rate: [5.0e-4, 5.0e-3], epochs: [1, 2]}
tracking: {artifacts: "$dir/artifacts"}
EOF
    COLUMNS=200 "$PY" -m search.cli launch "$dir/study.yaml" --workers 2 --storage "$url" 2>&1 |
        tee "$dir/launch.out"
    rc=${PIPESTATUS[0]}
    "$PY" -m search.cli status --storage "$url" --study gpu-launch --json \
        > "$OUT_DIR/launch-status.json" || rc=1
    # status --json has counts, not devices: each trial's `device` attribute (the objective's)
    # and the worker that ran it (launch's "w<i> trial <n>" lines) come from the study.
    "$PY" - "$dir/launch.out" "$OUT_DIR/launch-status.json" "$url" "$OUT_DIR/launch.json" \
        "$OUT_DIR/launch.note" <<'EOF' || rc=1
import json
import re
import sys

import optuna
import torch

text, status = open(sys.argv[1]).read(), json.load(open(sys.argv[2]))
url, out, note_path = sys.argv[3:6]
optuna.logging.set_verbosity(optuna.logging.WARNING)
study = optuna.load_study(study_name="gpu-launch", storage=url)
worker_of = {int(n): int(w) for w, n in re.findall(r"^w(\d+) trial +(\d+) ", text, re.M)}
trials = [
    {
        "number": t.number,
        "state": t.state.name,
        "worker": worker_of.get(t.number),
        "device": t.user_attrs.get("device"),
        "accuracy": t.value,
        "train_seconds": t.user_attrs.get("train_seconds"),
        "train_samples_per_second": t.user_attrs.get("train_samples_per_second"),
    }
    for t in study.get_trials(deepcopy=False)
]
problems = []
if status["finished"] < status["budget"]:
    problems.append(f"{status['finished']} of {status['budget']} trials finished")
if status["counts"].get("FAIL"):
    problems.append(f"{status['counts']['FAIL']} trial(s) failed")
complete = [t for t in trials if t["state"] == "COMPLETE"]
off_gpu = [t["number"] for t in complete if not str(t["device"]).startswith("cuda")]
if off_gpu:
    problems.append(f"trials {off_gpu} did not run on a cuda device")
gpus_of: dict[int, set[str]] = {}
for t in complete:
    entry = re.search(r"CUDA_VISIBLE_DEVICES=([^,)]+)", str(t["device"]))
    gpus_of.setdefault(t["worker"], set()).add(entry.group(1) if entry else "?")
for worker in (0, 1):
    if worker not in gpus_of:
        problems.append(f"worker {worker} finished no trial")
visible = torch.cuda.device_count()  # NVML: CUDA is not started
warned = "share each GPU" in text
used = sorted(set().union(*gpus_of.values())) if gpus_of else []
if visible >= 2 and len(used) < 2:
    problems.append(f"{visible} GPUs visible but both workers used {used}")
if visible == 1 and not warned:
    problems.append("2 workers on 1 GPU but launch did not warn that they share it")
seconds = re.search(r"launch finished in (\d+) s", text)
if visible == 1:
    note = f"1 GPU visible: both workers shared GPU {','.join(used)} (launch warned)"
else:
    note = f"{visible} GPUs visible: worker GPUs " + ", ".join(
        f"w{w}={','.join(sorted(g))}" for w, g in sorted(gpus_of.items(), key=str)
    )
summary = {
    "budget": status["budget"],
    "counts": status["counts"],
    "trials": trials,
    "gpus_visible": visible,
    "gpus_by_worker": {str(w): sorted(g) for w, g in gpus_of.items()},
    "launch_warned_of_sharing": warned,
    "launch_seconds": int(seconds.group(1)) if seconds else None,
    "note": note,
    "problems": problems,
}
json.dump(summary, open(out, "w"), indent=2)
note = "; ".join(problems) if problems else f"{len(complete)} trials on cuda; {note}"
open(note_path, "w").write(note + "\n")
print(note)
sys.exit(1 if problems else 0)
EOF
    return $rc
}

if [[ ${1:-} == --step ]]; then
    "step_${2//-/_}"
    exit $?
fi

# --- before the steps: the virtual environment, the GPU, the data ---------------------------

[[ -x $PY ]] || die "no virtual environment at ${VENV:-.venv}; run make install first"
# One line and exit 2 when torch sees no CUDA device (the import takes a second or two).
"$PY" - "$OUT_DIR/device.json" <<'EOF' || exit 2
import json
import os
import shutil
import subprocess
import sys

try:
    import torch
except Exception as err:
    print(f"gpu-check: cannot import torch ({type(err).__name__}: {err}); run make install",
          file=sys.stderr)
    sys.exit(2)
smi, listed = shutil.which("nvidia-smi"), []
if smi:
    query = ["--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"]
    try:
        found = subprocess.run([smi, *query], capture_output=True, text=True, timeout=20)
        listed = [line.strip() for line in found.stdout.splitlines() if line.strip()]
    except (OSError, subprocess.SubprocessError):
        pass
if not torch.cuda.is_available():
    build = f"a CUDA {torch.version.cuda} build" if torch.version.cuda else "a CPU-only build"
    seen = f"; nvidia-smi lists {len(listed)} GPU(s): {listed[0]}" if listed else ""
    print(f"gpu-check: no CUDA device visible (torch {torch.__version__}, {build}{seen}); "
          "run it on a machine with an NVIDIA GPU and a CUDA build of torch", file=sys.stderr)
    sys.exit(2)
gpus = []
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    gpus.append({"index": i, "name": p.name, "memory_gib": round(p.total_memory / 2**30, 1),
                 "capability": f"{p.major}.{p.minor}"})
info = {
    "torch": torch.__version__,
    "cuda": torch.version.cuda,
    "cudnn": torch.backends.cudnn.version(),
    "bf16_in_hardware": torch.cuda.is_bf16_supported(including_emulation=False),
    "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
    "gpus": gpus,
    "nvidia_smi": listed,
}
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {info['cudnn']}; "
      f"{len(gpus)} GPU(s) visible, bf16 in hardware: {info['bf16_in_hardware']}")
for g in gpus:
    print(f"GPU {g['index']}: {g['name']}, {g['memory_gib']} GiB, compute capability "
          f"{g['capability']}")
for line in listed:
    print(f"nvidia-smi: {line}")
os.makedirs(os.path.dirname(sys.argv[1]), exist_ok=True)
json.dump(info, open(sys.argv[1], "w"), indent=2)
EOF
[[ -f $NSMC4/train.csv.gz ]] || die "no data at $NSMC4 (train.csv.gz); set NSMC4=folder"
NSMC4=$(cd "$NSMC4" && pwd)

WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX") || die "cannot make a scratch folder"
STEP_PID=
cleanup() {
    [[ -n $STEP_PID ]] && kill -TERM "$STEP_PID" 2>/dev/null && wait "$STEP_PID" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'echo "gpu-check: interrupted"; exit 130' INT TERM
# Offline (no Hub), quiet tokenizers, W&B never online; caches and scratch in $WORK.
export OUT_DIR WORK NSMC4 PY
export FOCALTUNE_NSMC4=$NSMC4 FOCALTUNE_GPU_CHECK_OUT=$OUT_DIR FOCALTUNE_CACHE=$WORK/cache
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false WANDB_MODE=offline
rm -f "$OUT_DIR"/steps.tsv "$OUT_DIR"/*.note "$OUT_DIR"/*.log "$OUT_DIR"/gpu-tests.* \
    "$OUT_DIR"/bench-gpu.json "$OUT_DIR"/launch*.json "$OUT_DIR"/gpu-check.json

# --- the steps ------------------------------------------------------------------------------

failed=0
for i in "${!STEPS[@]}"; do
    name=${STEPS[$i]}
    later=0
    for next in "${STEPS[@]:$((i + 1))}"; do later=$((later + MIN[$next])); done
    left=$((TOTAL - SECONDS - later))
    limit=$((CAP[$name] < left ? CAP[$name] : left))
    log=$OUT_DIR/$name.log
    if ((limit < 30)); then
        status=FAIL rc=-1 took=0 note="not run: no time left"
    else
        echo "== $name (limit $limit s, log $log)"
        started=$SECONDS
        timeout --kill-after=5 "$limit" bash "$SELF" --step "$name" > "$log" 2>&1 &
        STEP_PID=$!
        wait "$STEP_PID"
        rc=$?
        STEP_PID=
        took=$((SECONDS - started))
        status=PASS
        note=$(cat "$OUT_DIR/$name.note" 2>/dev/null)
        if ((rc != 0)); then
            status=FAIL
            ((rc == 124 || rc == 137)) && note="timed out after $limit s${note:+; $note}"
        fi
    fi
    [[ $status == PASS ]] || failed=1
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$took" "$rc" "$note" >> "$OUT_DIR/steps.tsv"
    echo "$status $name $took s${note:+  ($note)}"
    if [[ $status == FAIL && -s $log ]]; then
        echo "-- last lines of $log:"
        tail -n 25 "$log" | sed 's/^/   /'
    fi
done

# --- everything in one file -----------------------------------------------------------------

"$PY" - "$OUT_DIR" "$SECONDS" <<'EOF'
import json
import sys
from pathlib import Path

out, seconds = Path(sys.argv[1]), int(sys.argv[2])


def read(name):
    path = out / name
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


steps = []
for line in (out / "steps.tsv").read_text().splitlines():
    name, status, took, rc, note = (line.split("\t") + [""] * 5)[:5]
    steps.append({"step": name, "status": status, "seconds": int(took), "exit_code": int(rc),
                  "note": note, "log": f"{name}.log"})
bench = read("bench-gpu.json")
summary = {
    "passed": all(s["status"] == "PASS" for s in steps),
    "seconds": seconds,
    "device": read("device.json"),
    "steps": steps,
    "gpu_tests": read("gpu-tests.json"),
    "bench_gpu": bench and {"gpu": bench.get("gpu"), "machine": bench.get("machine"),
                            "targets": bench.get("targets")},
    "launch": read("launch.json"),
}
(out / "gpu-check.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
EOF
echo "gpu-check: $([[ $failed == 0 ]] && echo "all steps passed" || echo "a step FAILED") in $SECONDS s; figures and logs in $OUT_DIR (gpu-check.json)"
exit $failed
